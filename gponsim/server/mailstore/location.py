"""``mail_location`` and the store it opens: where a new mailbox format plugs in.

Dovecot's ``mail_location = <format>:<root>[:KEY=VALUE...]`` (``mbox:~/mail:
INBOX=/var/mail/%u`` in the lab) names the format and where a user's folders
are. :func:`open_store` reads it and returns the format's
:class:`~gponsim.server.mailstore.interface.MailStore` for one user.

A format is a module of this package with a function
``open_store(lab_root, user, location) -> MailStore``, registered in
:data:`FORMATS` by its ``mail_location`` prefix. Adding Maildir is writing
``maildir.py`` and one line here; nothing that uses the interface changes.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

from gponsim.server.mailstore.interface import MailStore, StoreError

#: mail_location prefix -> module implementing the format.
FORMATS = {
    "mbox": "gponsim.server.mailstore.mbox",
}

#: The lab's (conf.d/10-mail.conf), also used when mail_location is empty.
DEFAULT_LOCATION = "mbox:~/mail:INBOX=/var/mail/%u"


@dataclass(frozen=True)
class MailLocation:
    format: str                                   # mbox, maildir...
    root: str                                     # e.g. ~/mail
    options: dict[str, str] = field(default_factory=dict)   # e.g. {"INBOX": "/var/mail/%u"}

    @property
    def inbox(self) -> str | None:
        return self.options.get("INBOX")


def parse_mail_location(value: str) -> MailLocation:
    """``mbox:~/mail:INBOX=/var/mail/%u`` -> format mbox, root ~/mail,
    options {INBOX: /var/mail/%u}."""
    fmt, _, rest = value.partition(":")
    parts = rest.split(":") if rest else []
    root = parts[0] if parts and "=" not in parts[0] else ""
    options = {}
    for part in parts[1 if root else 0:]:
        key, _, item = part.partition("=")
        options[key] = item
    return MailLocation(fmt, root, options)


def check_format(location: str | MailLocation) -> str:
    """The location's format if gponsim has it (an empty mail_location is
    the lab's mbox); otherwise StoreError with what is supported."""
    if isinstance(location, str):
        location = parse_mail_location(location or DEFAULT_LOCATION)
    fmt = location.format or "mbox"
    if fmt not in FORMATS:
        raise StoreError(f"mail_location: mailbox format {fmt!r} is not simulated "
                         f"(gponsim has: {', '.join(sorted(FORMATS))})", "SERVERBUG")
    return fmt


def open_store(lab_root: str | os.PathLike, user: str,
               location: str | MailLocation = DEFAULT_LOCATION) -> MailStore:
    """The store of ``user`` under the lab root, in ``location``'s format."""
    if isinstance(location, str):
        location = parse_mail_location(location or DEFAULT_LOCATION)
    module = importlib.import_module(FORMATS[check_format(location)])
    return module.open_store(lab_root, user, location)
