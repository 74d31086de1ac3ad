"""The lab server's ``/etc/passwd``: its Unix accounts.

Postfix on Debian knows a local recipient when it is a Unix account
(``local_recipient_maps = proxy:unix:passwd.byname $alias_maps``, looked up
with ``getpwnam()``), and local(8) delivers only to an account's mailbox.
The lab root keeps that file as ``etc/passwd``, in the same format
(``name:x:uid:gid:gecos:home:shell``), so that ``root``, ``daemon`` or
``postfix`` are recipients as on the real server, and mail users are added
the way ``adduser`` would (first uid 1000).

A lab created by an older gponsim has no ``etc/passwd``: :func:`ensure` writes
Debian 12's base accounts, those its packages add (Postfix, Dovecot), and one
account for each mail user. The file is read again when it changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gponsim.server.parsedfile import ParsedFile

RELATIVE_PATH = Path("etc/passwd")

#: base-passwd's accounts on Debian 12, then the packages of the lab document
#: (in their installation order: postfix, then dovecot-core).
DEBIAN_ACCOUNTS = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
games:x:5:60:games:/usr/games:/usr/sbin/nologin
man:x:6:12:man:/var/cache/man:/usr/sbin/nologin
lp:x:7:7:lp:/var/spool/lpd:/usr/sbin/nologin
mail:x:8:8:mail:/var/mail:/usr/sbin/nologin
news:x:9:9:news:/var/spool/news:/usr/sbin/nologin
uucp:x:10:10:uucp:/var/spool/uucp:/usr/sbin/nologin
proxy:x:13:13:proxy:/bin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
backup:x:34:34:backup:/var/backups:/usr/sbin/nologin
list:x:38:38:Mailing List Manager:/var/list:/usr/sbin/nologin
irc:x:39:39:ircd:/run/ircd:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
postfix:x:100:102::/var/spool/postfix:/usr/sbin/nologin
dovecot:x:101:104:Dovecot mail server,,,:/usr/lib/dovecot:/usr/sbin/nologin
dovenull:x:102:105:Dovecot login user,,,:/nonexistent:/usr/sbin/nologin
"""
FIRST_UID = 1000


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str

    def line(self) -> str:
        return f"{self.name}:x:{self.uid}:{self.gid}:{self.gecos}:{self.home}:{self.shell}"


def path_for(lab_root: str | os.PathLike) -> Path:
    return Path(lab_root) / RELATIVE_PATH


def _parse(text: str) -> dict[str, Account]:
    accounts: dict[str, Account] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) != 7 or not fields[0] or line.startswith(("#", "+", "-")):
            continue        # getpwnam() skips what it cannot read
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        accounts.setdefault(fields[0], Account(fields[0], uid, gid, *fields[4:7]))
    return accounts


class Accounts:
    """``getpwnam()`` on the lab's ``etc/passwd`` (re-read when it changes)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = ParsedFile(self.path, _parse)

    def get(self, name: str) -> Account | None:
        return self._file.get().get(name)

    def exists(self, name: str) -> bool:
        return self.get(name) is not None

    def names(self) -> list[str]:
        return list(self._file.get())

    # -------------------------------------------------------------- writing

    def add_user(self, name: str) -> Account:
        """``adduser name``: the next free uid from 1000, a group of its own,
        home ``/home/<name>``. An existing account is left as it is."""
        with self._file.lock:
            accounts = self._file.get()
            if name in accounts:
                return accounts[name]
            taken = {a.uid for a in accounts.values()} | {a.gid for a in accounts.values()}
            uid = FIRST_UID
            while uid in taken:
                uid += 1
            account = Account(name, uid, uid, f"{name},,,", f"/home/{name}", "/bin/bash")
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
            if text and not text.endswith("\n"):
                text += "\n"
            self._write(text + account.line() + "\n")
            return account

    def remove_user(self, name: str) -> None:
        """``deluser name`` (a system account below uid 1000 is kept)."""
        with self._file.lock:
            account = self._file.get().get(name)
            if account is None or account.uid < FIRST_UID:
                return
            lines = self.path.read_text(encoding="utf-8").splitlines()
            self._write("".join(line + "\n" for line in lines
                                if line.split(":", 1)[0] != name))

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, self.path)
        self._file.changed()


def ensure(lab_root: str | os.PathLike, mail_users) -> Accounts:
    """The lab's accounts: Debian's when the file is missing, plus an account
    for every mail user that has none (as the lab's users were made with adduser)."""
    accounts = Accounts(path_for(lab_root))
    if not accounts.path.exists():
        accounts._write(DEBIAN_ACCOUNTS)
    for name in mail_users:
        accounts.add_user(name)
    return accounts
