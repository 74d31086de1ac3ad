"""The storage seam: the protocols see the mailbox interface, mail_location picks the format."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gponsim
from gponsim.server.dovecot.imap import ImapContext, ImapSettings
from gponsim.server.mailstore import interface
from gponsim.server.mailstore.location import (
    DEFAULT_LOCATION, FORMATS, MailLocation, check_format, open_store, parse_mail_location,
)
from gponsim.server.mailstore.mbox import MboxFolder, MboxStore

PACKAGE = Path(gponsim.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("module", sorted((PACKAGE / "server/dovecot").glob("*.py")),
                         ids=lambda p: p.name)
def test_dovecot_never_imports_a_mailbox_format(module):
    formats = set(FORMATS.values())
    assert not imported_modules(module) & formats, (
        f"{module.name} must use gponsim.server.mailstore.interface / .location, not a format")


def test_parse_mail_location():
    assert parse_mail_location(DEFAULT_LOCATION) == MailLocation(
        "mbox", "~/mail", {"INBOX": "/var/mail/%u"})
    location = parse_mail_location("mbox:/srv/%u/mail:INBOX=/srv/%u/inbox:INDEX=MEMORY")
    assert (location.format, location.root, location.inbox) == ("mbox", "/srv/%u/mail", "/srv/%u/inbox")
    assert location.options["INDEX"] == "MEMORY"
    assert parse_mail_location("") == MailLocation("", "", {})


def test_open_store_mbox_paths_come_from_the_location(tmp_path):
    store = open_store(tmp_path, "user2", "mbox:~/Mail:INBOX=/var/spool/mail/%u")
    assert isinstance(store, MboxStore) and isinstance(store, interface.MailStore)
    assert store.inbox_path == tmp_path.resolve() / "var/spool/mail/user2"
    assert store.mail_dir == tmp_path.resolve() / "home/user2/Mail"
    folder = store.folder("INBOX")
    assert isinstance(folder, MboxFolder) and isinstance(folder, interface.Folder)
    # an empty mail_location is the lab's layout
    lab = open_store(tmp_path, "user2", "")
    assert (lab.inbox_path, lab.mail_dir) == (tmp_path.resolve() / "var/mail/user2",
                                              tmp_path.resolve() / "home/user2/mail")


def test_a_format_gponsim_lacks_is_refused(tmp_path):
    with pytest.raises(interface.StoreError, match="'maildir' is not simulated"):
        open_store(tmp_path, "user2", "maildir:~/Maildir")
    assert check_format("") == "mbox"


def test_imap_context_opens_the_store_of_its_settings(tmp_path):
    settings = ImapSettings(mail_location=parse_mail_location("mbox:~/Mail:INBOX=/var/mail/%u"),
                            special_use=[("Sent", "\\Sent", "subscribe")])
    store = ImapContext(lab_root=tmp_path, settings=settings).store_for("user1")
    assert (tmp_path / "home/user1/Mail/Sent").is_file()
    assert store.subscriptions() == ["Sent"]


def test_interface_flags_and_split():
    assert interface.split_flags(["\\seen", "$Junk", "\\Recent", "\\Unknown", "bad(", "$Junk"]) == (
        [interface.SEEN], ["$Junk"])
