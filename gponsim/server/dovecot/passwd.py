"""The lab's users, kept as a Dovecot passwd-file.

The file is ``<lab root>/etc/dovecot/users``, one user per line in the
format Dovecot's ``passwd-file`` driver reads (``db-passwd-file.c``)::

    user:password:uid:gid:gecos:home:shell:extra_fields

gponsim writes ``user1:{BLF-CRYPT}$2y$05$...:::::`` (bcrypt, cost 5, the
``$2y$`` prefix that ``doveadm pw -s BLF-CRYPT`` writes). An instructor may
also type ``{PLAIN}secret`` / ``{CLEARTEXT}secret`` entries by hand, or a bare
``$2y$...`` hash (Dovecot's default ``CRYPT`` scheme). Empty lines and lines
starting with ``#`` are kept as they are when the file is rewritten.

A running lab sees ``gponsim users add`` at once: every query checks the
file's identity (mtime, size, inode) and reloads it when it changed.
"""

from __future__ import annotations

import hmac
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import bcrypt

#: Where the file lives, relative to the lab root (the lab server's "/").
RELATIVE_PATH = Path("etc/dovecot/users")
DEFAULT_USERS = (("user1", "pass"), ("user2", "pass"))
BCRYPT_COST = 5
#: bcrypt only looks at the first 72 bytes of a password.
MAX_PASSWORD_BYTES = 72

_NAME_RE = re.compile(r"[a-z0-9._-]+")
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_PLAIN_SCHEMES = ("PLAIN", "CLEARTEXT", "CLEAR")


class UsersError(Exception):
    """A clear, user-facing problem with the users file or a request."""


@dataclass(slots=True)
class _Entry:
    name: str
    fields: list[str]          # every field after the name (password first)

    @property
    def password(self) -> str:
        return self.fields[0] if self.fields else ""

    def line(self) -> str:
        return ":".join([self.name, *self.fields])


def path_for(lab_root: str | os.PathLike) -> Path:
    """The users file of the lab whose root folder is ``lab_root``."""
    return Path(lab_root) / RELATIVE_PATH


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid lab user name, else raise UsersError."""
    if not isinstance(name, str) or not name:
        raise UsersError("user name must not be empty")
    if not _NAME_RE.fullmatch(name):
        raise UsersError(f"invalid user name {name!r}: use only lowercase letters, "
                         "digits, '.', '_' and '-'")
    if name in (".", ".."):
        raise UsersError(f"invalid user name {name!r}")
    return name


def _password_bytes(password: str | bytes) -> bytes:
    data = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    # Dovecot handles passwords as C strings: nothing after a NUL counts.
    return data.split(b"\0", 1)[0]


def hash_password(password: str | bytes) -> str:
    """``{BLF-CRYPT}$2y$05$...`` exactly as ``doveadm pw -s BLF-CRYPT`` writes it."""
    raw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    if not raw:
        raise UsersError("password must not be empty")
    if b"\0" in raw or b"\n" in raw or b"\r" in raw:
        raise UsersError("password must not contain NUL or line breaks")
    data = _password_bytes(raw)
    if len(data) > MAX_PASSWORD_BYTES:
        raise UsersError(f"password is longer than {MAX_PASSWORD_BYTES} bytes "
                         "(bcrypt ignores everything after that)")
    hashed = bcrypt.hashpw(data, bcrypt.gensalt(rounds=BCRYPT_COST, prefix=b"2b"))
    # $2b$ and $2y$ are the same algorithm; Dovecot (crypt_blowfish) writes 2y.
    return "{BLF-CRYPT}$2y$" + hashed.decode("ascii")[4:]


def _split_scheme(stored: str) -> tuple[str, str]:
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 0:
            return stored[1:end].upper(), stored[end + 1:]
    return "CRYPT", stored


def _check_password_field(stored: str) -> str | None:
    """None if gponsim can verify ``stored``, else why not."""
    if stored == "":
        return None                     # no password: nobody can log in
    scheme, value = _split_scheme(stored)
    if scheme in _PLAIN_SCHEMES:
        return None
    if scheme in ("BLF-CRYPT", "CRYPT"):
        if value.startswith(_BCRYPT_PREFIXES) and len(value) == 60:
            return None
        if scheme == "CRYPT":
            return ("password is neither {BLF-CRYPT}, {PLAIN} nor a bcrypt "
                    "($2y$...) hash")
        return "malformed {BLF-CRYPT} hash (expected $2y$NN$ + 53 characters)"
    return (f"password scheme {{{scheme}}} is not supported by gponsim "
            "(use {BLF-CRYPT} through 'gponsim users', or {PLAIN})")


# A hash nobody's password matches, checked for unknown users so that they
# cost as much time as a wrong password.
_DUMMY_HASH = bcrypt.hashpw(b"gponsim-no-such-user",
                            bcrypt.gensalt(rounds=BCRYPT_COST, prefix=b"2b"))


def _matches(stored: str, password: bytes) -> bool:
    scheme, value = _split_scheme(stored)
    if scheme in _PLAIN_SCHEMES:
        bcrypt.checkpw(password[:MAX_PASSWORD_BYTES] or b"x", _DUMMY_HASH)
        return hmac.compare_digest(value.encode("utf-8"), password)
    if not value:
        bcrypt.checkpw(password[:MAX_PASSWORD_BYTES] or b"x", _DUMMY_HASH)
        return False
    return bcrypt.checkpw(password[:MAX_PASSWORD_BYTES], value.encode("ascii"))


class Users:
    """The users of one lab, backed by its passwd-file. Thread-safe."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._lines: list[str | _Entry] = []
        self._by_name: dict[str, _Entry] = {}
        self._identity: tuple | None = None

    # ---------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Users":
        """Read an existing users file (UsersError if missing or malformed)."""
        users = cls(path)
        with users._lock:
            users._reload()
        return users

    @classmethod
    def ensure_default(cls, path: str | os.PathLike) -> "Users":
        """Load the file, creating it with user1/pass and user2/pass if absent."""
        users = cls(path)
        with users._lock:
            if not users.path.exists():
                entries = [_Entry(name, [hash_password(pw), "", "", "", "", ""])
                           for name, pw in DEFAULT_USERS]
                users._write(entries)
            users._reload()
        return users

    def _stat_identity(self) -> tuple:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise UsersError(f"{self.path}: users file not found "
                             "(create it with 'gponsim users add')") from None
        except OSError as exc:
            raise UsersError(f"{self.path}: cannot read users file: {exc.strerror}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def _reload(self) -> None:
        identity = self._stat_identity()
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UsersError(f"{self.path}: not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise UsersError(f"{self.path}: cannot read users file: {exc.strerror}") from None
        lines: list[str | _Entry] = []
        by_name: dict[str, _Entry] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            stripped = raw.strip()
            if not stripped or stripped.startswith("#"):
                lines.append(raw)
                continue
            where = f"{self.path}:{number}"
            if ":" not in raw:
                raise UsersError(f"{where}: malformed line (expected "
                                 "user:password:uid:gid:gecos:home:shell:extra)")
            name, *fields = raw.split(":")
            try:
                check_name(name)
            except UsersError as exc:
                raise UsersError(f"{where}: {exc}") from None
            if name in by_name:
                raise UsersError(f"{where}: user {name!r} is listed twice")
            problem = _check_password_field(fields[0])
            if problem:
                raise UsersError(f"{where}: user {name!r}: {problem}")
            entry = _Entry(name, fields)
            lines.append(entry)
            by_name[name] = entry
        self._lines, self._by_name, self._identity = lines, by_name, identity

    def _fresh(self) -> None:
        """Reload if the file changed on disk since we last read it."""
        if self._identity is None or self._stat_identity() != self._identity:
            self._reload()

    # ---------------------------------------------------------------- writing

    def _write(self, lines: list[str | _Entry]) -> None:
        text = "".join((item.line() if isinstance(item, _Entry) else item) + "\n"
                       for item in lines)
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".users.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _commit(self) -> None:
        self._write(self._lines)
        self._reload()

    # ---------------------------------------------------------------- API

    def add(self, name: str, password: str) -> None:
        check_name(name)
        hashed = hash_password(password)
        with self._lock:
            self._fresh()
            if name in self._by_name:
                raise UsersError(f"user {name!r} already exists")
            self._lines.append(_Entry(name, [hashed, "", "", "", "", ""]))
            self._commit()

    def delete(self, name: str) -> None:
        with self._lock:
            self._fresh()
            entry = self._by_name.get(name)
            if entry is None:
                raise UsersError(f"no such user: {name!r}")
            self._lines.remove(entry)
            self._commit()

    def set_password(self, name: str, password: str) -> None:
        hashed = hash_password(password)
        with self._lock:
            self._fresh()
            entry = self._by_name.get(name)
            if entry is None:
                raise UsersError(f"no such user: {name!r}")
            entry.fields[0] = hashed
            self._commit()

    def names(self) -> list[str]:
        with self._lock:
            self._fresh()
            return sorted(self._by_name)

    def exists(self, name: str) -> bool:
        with self._lock:
            self._fresh()
            return name in self._by_name

    def verify(self, name: str, password: str | bytes) -> bool:
        """True if ``password`` is ``name``'s. Unknown users cost the same time.

        Blocking (bcrypt): the auth server runs it in a thread.
        """
        data = _password_bytes(password)
        with self._lock:
            self._fresh()
            entry = self._by_name.get(name)
            stored = entry.password if entry is not None else None
        if stored is None:
            bcrypt.checkpw(data[:MAX_PASSWORD_BYTES] or b"x", _DUMMY_HASH)
            return False
        return _matches(stored, data)
