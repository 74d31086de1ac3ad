"""``local_recipient_maps``: which local parts smtpd accepts in a local domain.

Debian's default is ``proxy:unix:passwd.byname $alias_maps``: a recipient of
``mydestination`` is known when its local part is a Unix account of the
server (``getpwnam()``, here the lab root's ``etc/passwd``) or an alias
(``/etc/aliases``). Anyone else gets ``550 5.1.1 <x>: Recipient address
rejected: User unknown in local recipient table`` at RCPT TO. The local part
is looked up in lower case, first as given and then without its address
extension (``user2+lab`` → ``user2``, ``recipient_delimiter = +``). An empty
``local_recipient_maps`` turns the check off, as in Postfix.
"""

from __future__ import annotations

from typing import Callable


class LocalRecipients:
    """``exists(local_part)`` for smtpd's ``reject_unlisted_recipient``."""

    def __init__(self, maps: list[str], alias_maps: list[str], *,
                 account_exists: Callable[[str], bool], alias_exists: Callable[[str], bool],
                 delimiter: str = "+") -> None:
        self.maps = [m.strip() for m in maps if m.strip()]
        self.alias_maps = {m.strip() for m in alias_maps if m.strip()}
        self.account_exists = account_exists
        self.alias_exists = alias_exists
        self.delimiter = delimiter

    @property
    def enabled(self) -> bool:
        return bool(self.maps)

    def _found(self, key: str) -> bool:
        for table in self.maps:
            kind = table.removeprefix("proxy:")
            if kind == "unix:passwd.byname":
                if self.account_exists(key):
                    return True
            elif table in self.alias_maps:
                if self.alias_exists(key):
                    return True
        return False

    def exists(self, local_part: str) -> bool:
        if not self.enabled:
            return True
        key = local_part.lower()
        if self._found(key):
            return True
        if self.delimiter and self.delimiter in key:
            base = key.split(self.delimiter, 1)[0]
            return bool(base) and self._found(base)
        return False
