"""The students of a class and their lab accounts.

Every student has a mailbox pair of their own, so no one reads another's mail:

- by default the sender account ``student07`` and the receiver ``student07b``
  (the lab document's user1 → user2, on one student's PC);
- with a roster that names a ``partner``, two students write to each other:
  each one sends from their own account and reads their own mailbox, as on
  the lab document's two PCs.

Passwords are generated (:func:`new_password`), stored hashed in the lab's
passwd-file, and written in clear only to the accounts file
(:func:`write_accounts`, mode 0600) and the handouts, which the teacher hands
out; nothing else shows them.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from gponsim.server.dovecot.passwd import DEFAULT_USERS, Users, UsersError, check_name


class RosterError(Exception):
    """A roster or accounts file that cannot be used; says file:line and what is wrong."""


#: Letters that cannot be mistaken for others when read off a printed handout.
_CONSONANTS = "bcdfghjkmnprstvz"
_VOWELS = "aeiu"
#: Columns a roster CSV may have (``login`` is required).
ROSTER_COLUMNS = ("login", "name", "partner", "email", "idnumber")
#: Names the mail system keeps for itself (Postfix's aliases send them to the administrator).
SYSTEM_NAMES = ("root", "postmaster", "mailer-daemon", "abuse", "nobody")
#: The lab's own users (user1/pass, user2/pass, as in the lab document): not a student's.
LAB_USERS = tuple(name for name, _password in DEFAULT_USERS)
ACCOUNT_COLUMNS = ("student", "name", "partner", "account", "role", "password", "email", "idnumber")


def new_password() -> str:
    """A password a student can type from paper: four syllables and two digits
    (``bakunemo47``), about 30 bits from the system's random source."""
    syllables = "".join(secrets.choice(_CONSONANTS) + secrets.choice(_VOWELS) for _ in range(4))
    return syllables + f"{secrets.randbelow(100):02d}"


@dataclass
class Student:
    """One student and the two mailboxes of their practice."""

    login: str                 # the account they send from (student07)
    name: str = ""
    partner: str = ""          # another student's login (roster), or "" for a pair of their own
    email: str = ""            # for Moodle's grade import
    idnumber: str = ""
    reader: str = ""           # the account whose mailbox they read (student07b, or their own)
    send_to: str = ""          # the account they write to (student07b, or the partner's login)

    def __post_init__(self) -> None:
        if not self.reader:
            self.reader = self.login if self.partner else self.login + "b"
        if not self.send_to:
            self.send_to = self.partner or self.reader

    @property
    def accounts(self) -> tuple[str, ...]:
        """The accounts that are this student's own (sessions on them are theirs)."""
        return (self.login,) if self.reader == self.login else (self.login, self.reader)

    @property
    def reads_from(self) -> str:
        """Whose message arrives in the mailbox they read: their own, or their partner's."""
        return self.partner if self.reader == self.login and self.partner else self.login

    @property
    def label(self) -> str:
        return self.name or self.login

    def public(self) -> dict:
        """What pages may show (never a password)."""
        return {"login": self.login, "name": self.name, "partner": self.partner,
                "reader": self.reader, "send_to": self.send_to}


@dataclass
class Roster:
    students: list[Student]
    domain: str = "gponlab.local"
    #: account -> password; kept in memory and in the accounts file only
    passwords: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._owner: dict[str, Student] = {}
        for s in self.students:
            for account in s.accounts:
                self._owner[account] = s
        self._by_login = {s.login: s for s in self.students}

    def student_of(self, account: str | None) -> Student | None:
        """The student whose account this is (their sender or their receiver)."""
        return self._owner.get(account or "")

    def student(self, login: str) -> Student | None:
        return self._by_login.get(login)

    def accounts(self) -> list[tuple[Student, str, str]]:
        """(student, account, role) for every account, sender first."""
        out = []
        for s in self.students:
            out.append((s, s.login, "sender"))
            if s.reader != s.login:
                out.append((s, s.reader, "receiver"))
        return out

    def address(self, account: str) -> str:
        return f"{account}@{self.domain}"

    def is_password(self, text: str) -> bool:
        """True when ``text`` is one of the class's passwords (a student who typed the
        password into the user-name field: the name must be masked too)."""
        if not text:
            return False
        known = self.__dict__.get("_password_cache")
        if known is None or known[0] != len(self.passwords):
            known = self.__dict__["_password_cache"] = (len(self.passwords), frozenset(self.passwords.values()))
        return text in known[1]

    # ---------------------------------------------------------------- making

    @classmethod
    def numbered(cls, count: int, domain: str = "gponlab.local", prefix: str = "student") -> "Roster":
        """``student01``…: each with a receiver of their own (``student01b``)."""
        if not 1 <= count <= 999:
            raise RosterError(f"--students must be from 1 to 999, not {count}")
        width = max(2, len(str(count)))
        return cls([Student(login=f"{prefix}{n:0{width}d}") for n in range(1, count + 1)], domain)

    @classmethod
    def from_csv(cls, path: Path, domain: str = "gponlab.local", *, lab_accounts: bool = False) -> "Roster":
        """A roster CSV with a header: ``login`` (required), ``name``, ``partner``
        (another student's login: the two write to each other), ``email``, ``idnumber``.
        ``lab_accounts``: the logins become accounts in gponsim's lab (``class start``),
        so the names the lab keeps for itself (root, postmaster, user1...) are refused;
        a roster for grading captures of the real server may name any account."""
        try:
            raw = Path(path).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            line = Path(path).read_bytes()[:exc.start].count(b"\n") + 1
            raise RosterError(f"{path}:{line}: the roster is not UTF-8 text; save the CSV as UTF-8 "
                              f"(in LibreOffice or Excel: CSV UTF-8) / la lista no está en UTF-8; "
                              f"guarda el CSV como UTF-8 (en LibreOffice o Excel: CSV UTF-8)") from exc
        except OSError as exc:
            raise RosterError(f"{path}: cannot read the roster: {exc.strerror or exc}") from exc
        dialect = csv.excel
        try:
            dialect = csv.Sniffer().sniff(raw.split("\n", 1)[0], delimiters=",;\t")
        except csv.Error:
            pass
        reader = csv.DictReader(io.StringIO(raw), dialect=dialect)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if "login" not in header:
            raise RosterError(f"{path}:1: the roster needs a header line with a 'login' column "
                              f"(columns: {', '.join(ROSTER_COLUMNS)})")
        unknown = [h for h in header if h not in ROSTER_COLUMNS and h]
        if unknown:
            raise RosterError(f"{path}:1: unknown column(s) {', '.join(unknown)} "
                              f"(columns: {', '.join(ROSTER_COLUMNS)})")
        reader.fieldnames = header
        students: list[Student] = []
        seen: dict[str, int] = {}
        for n, row in enumerate(reader, 2):
            values = {k: (v or "").strip() for k, v in row.items() if k in ROSTER_COLUMNS}
            if not any(values.values()):
                continue
            login = values.get("login", "").lower()
            try:
                check_name(login)
            except UsersError as exc:
                raise RosterError(f"{path}:{n}: {exc}") from exc
            if lab_accounts and login in SYSTEM_NAMES:
                raise RosterError(f"{path}:{n}: {login} is a name the mail system keeps for itself "
                                  f"({', '.join(SYSTEM_NAMES)}): choose another login")
            if lab_accounts and login in LAB_USERS:
                raise RosterError(f"{path}:{n}: {login} is one of the lab's own users ({', '.join(LAB_USERS)}, "
                                  f"as in the lab document): choose another login")
            if login in seen:
                raise RosterError(f"{path}:{n}: {login} is already on line {seen[login]}")
            seen[login] = n
            students.append(Student(login=login, name=values.get("name", ""),
                                    partner=values.get("partner", "").lower(),
                                    email=values.get("email", ""), idnumber=values.get("idnumber", "")))
        if not students:
            raise RosterError(f"{path}: the roster has no students")
        cls._check_partners(path, students, seen)
        return cls(students, domain)

    @staticmethod
    def _check_partners(path, students: list[Student], lines: dict[str, int]) -> None:
        by_login = {s.login: s for s in students}
        for s in students:
            if not s.partner:
                continue
            other = by_login.get(s.partner)
            where = f"{path}:{lines[s.login]}"
            if other is None:
                raise RosterError(f"{where}: partner {s.partner} of {s.login} is not on the roster")
            if other is s:
                raise RosterError(f"{where}: {s.login} cannot be their own partner")
        named = {s.login for s in students if s.partner}
        for s in students:          # a partner named on one side only is mutual
            if s.partner and not by_login[s.partner].partner:
                mate = by_login[s.partner]
                mate.partner = s.login
                mate.reader, mate.send_to = mate.login, s.login
        # Checked once every pair is mutual: two students naming the same one are an
        # error even when that one named nobody (one of them would never get mail).
        for s in students:
            other = by_login[s.partner] if s.partner else None
            if other is not None and other.partner != s.login:
                how = (f"{other.login} names {other.partner}" if other.login in named
                       else f"{other.login} is already the partner of {other.partner}, who names them first")
                raise RosterError(f"{path}:{lines[s.login]}: {s.login} names {other.login} as partner, "
                                  f"but {how}")
        logins = set(by_login)
        for s in students:
            if s.reader != s.login and s.reader in logins:
                raise RosterError(f"{path}:{lines[s.login]}: the receiver account {s.reader} of "
                                  f"{s.login} is also a student on the roster; give them partners")

    # ------------------------------------------------------------- accounts

    def create_accounts(self, users: Users) -> list[str]:
        """Make every account in the lab's passwd-file with a new password (an account
        that exists gets a new one). Returns the accounts made."""
        made = []
        for _student, account, _role in self.accounts():
            password = self.passwords.get(account) or new_password()
            self.passwords[account] = password
            if users.exists(account):
                users.set_password(account, password)
            else:
                users.add(account, password)
                made.append(account)
        return made

    def write_accounts(self, path: Path) -> Path:
        """The accounts file: every account with its password (mode 0600: only the
        teacher reads it; the handouts are made from it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(ACCOUNT_COLUMNS)
            for student, account, role in self.accounts():
                out.writerow([student.login, student.name, student.partner, account, role,
                              self.passwords.get(account, ""), student.email, student.idnumber])
        return path

    @classmethod
    def read_accounts(cls, path: Path, domain: str = "gponlab.local") -> "Roster":
        """A roster back from its accounts file (the passwords included)."""
        try:
            with open(path, encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            raise RosterError(f"{path}: cannot read the accounts file: {exc.strerror}") from exc
        students: dict[str, Student] = {}
        passwords: dict[str, str] = {}
        for n, row in enumerate(rows, 2):
            missing = [c for c in ACCOUNT_COLUMNS if c not in row]
            if missing:
                raise RosterError(f"{path}:1: not an accounts file (no {', '.join(missing)} column)")
            login, account = row["student"], row["account"]
            s = students.get(login)
            if s is None:
                s = students[login] = Student(login=login, name=row["name"], partner=row["partner"],
                                              email=row["email"], idnumber=row["idnumber"])
            if row["role"] == "receiver":
                s.reader = s.send_to = account
            passwords[account] = row["password"]
        if not students:
            raise RosterError(f"{path}: no accounts in the file")
        return cls(list(students.values()), domain, passwords)
