"""The lab's mail store: Dovecot's ``mbox:~/mail:INBOX=/var/mail/%u``.

:class:`MboxStore` and :class:`MboxFolder` implement the mailbox interface
(:mod:`gponsim.server.mailstore.interface`); the protocols reach them only
through :func:`gponsim.server.mailstore.location.open_store`.

Under the lab root (the lab server's ``/``):

- INBOX is ``var/mail/<user>``, the file Postfix's local(8) appends to;
- every other folder is a file under ``home/<user>/mail/`` (``Sent``,
  ``Trash``, ``a/b`` for a child folder, whose parent is the directory
  ``mail/a``); subscriptions are the lines of ``home/<user>/mail/.subscriptions``.

UIDs, UIDVALIDITY and flags live in the mbox itself, in the private headers
Dovecot writes (lab-facts §4.3), so they survive restarts and real Dovecot
reads the same state (an empty folder's UIDVALIDITY comes from the user's
counter, ``home/<user>/mail/.imap/dovecot-uidvalidity``: :mod:`.uidvalidity`):

- ``X-IMAPbase: <uidvalidity> <last uid, %010u> [keywords]`` on the first
  message (or ``X-IMAP:`` on the "DON'T DELETE THIS MESSAGE" pseudo message
  kept in a folder whose messages were all expunged);
- ``X-UID: n``; ``Status: RO`` (R = \\Seen, O = no longer \\Recent);
  ``X-Status: AFTD`` (\\Answered \\Flagged \\Draft \\Deleted);
  ``X-Keywords:``; ``Content-Length:`` (body size).

These headers are hidden from clients. Messages appended by local delivery
have none: the next sync gives them the next UIDs, in file order.

Locking is local(8)'s: dotlock then fcntl (:class:`~gponsim.server.postfix.local.MailboxLock`),
the order Dovecot uses with ``mbox_write_locks = dotlock fcntl``, so a reader
here and a delivery never deadlock. Every change (new UIDs, flags, append,
expunge) reads the file under the lock and writes a complete new file
beside it, fsync'd, renamed over the old one, then fsyncs the directory: a
crash leaves either the old file or the new one, never half of each. A
writer that opened the old file before the rename notices (the inode it
locked is no longer the one at the path) and opens it again.

Parsing is cached per process (every session of the lab shares it): a file
whose inode, size, mtime and ctime are those last read or written here is
not read again (no lock needed to see that nothing changed), and a file that
only grew, its old end still in place, gets just the appended messages
parsed (a delivery); anything else is parsed whole. The cache keeps at most
:data:`CACHE_BYTES` of mail (the least recently used folders go first).

Threads: the IMAP and POP3 servers call this module from their mailbox
worker threads (:mod:`gponsim.server.mailstore.worker`), local(8) and LMTP
from theirs. One folder is used by one thread at a time (a lock per path,
taken before the dotlock), and the cache has a lock of its own.

A full disk (``ENOSPC``, ``EDQUOT``) does not lock a user out of their mail:
what only records Dovecot's bookkeeping (new UIDs, \\Recent seen) is kept
in memory until it can be written, flag changes too, and a rewrite that
makes the file smaller (EXPUNGE) is done in place when the new file cannot
be written beside the old one, so deleting mail makes room. A rewrite
killed midway leaves its temporary file ``.<name>.gponsim-<pid>.tmp``: the
next writer of that folder (or the next start of the lab,
:func:`~gponsim.server.mailstore.leftovers.remove_stale_temporaries`) deletes it.

Bodies are stored as written (the ``>From`` quoting of local(8) is never
undone, as in Dovecot); messages appended here are written mboxo-quoted
*and* with ``Content-Length``. Every entry of a rewritten file comes from
:func:`~gponsim.server.mailstore.mboxentry.mbox_entry`, the function local(8)
writes its deliveries with.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable

from gponsim.server.mailstore import interface
from gponsim.server.mailstore.interface import (
    ANSWERED, DELETED, DRAFT, FLAGGED, RECENT, SEEN, SYSTEM_FLAGS, FolderInfo, StoreError,
    is_inbox, split_flags,
)
from gponsim.server.mailstore.leftovers import remove_stale_temporaries, temporary_name
from gponsim.server.mailstore.location import MailLocation
from gponsim.server.mailstore.mailwatch import MailWatch
from gponsim.server.mailstore.mboxentry import from_line, mbox_entry, mboxo_quote
from gponsim.server.mailstore.uidvalidity import CONTROL_DIR, uidvalidity_next
from gponsim.server.mailstore.uidvalidity import FILE_NAME as UIDVALIDITY_FILE
from gponsim.server.postfix.local import MailboxError, MailboxLock

_XSTATUS = {"A": ANSWERED, "F": FLAGGED, "T": DRAFT, "D": DELETED}
_XSTATUS_ORDER = (("A", ANSWERED), ("F", FLAGGED), ("T", DRAFT), ("D", DELETED))

#: Headers Dovecot keeps for itself and never shows to clients.
PRIVATE_HEADERS = ("x-imapbase", "x-imap", "x-uid", "status", "x-status", "x-keywords",
                   "content-length")
PSEUDO_SUBJECT = "DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: Lock retries while the reactor waits: short, a delivery holds it briefly.
READER_LOCK_ATTEMPTS = 50
READER_LOCK_DELAY = 0.1


# --------------------------------------------------------------------------
# Names and paths

def valid_name(name: str) -> bool:
    """A folder name that stays inside the user's mail directory."""
    if not name or len(name) > 255 or name.startswith("/") or name.endswith("/"):
        return False
    if any(ord(c) < 0x20 or c == "\x7f" for c in name) or "~" in name[:1]:
        return False
    for part in name.split("/"):
        if not part or part in (".", "..") or part.startswith("."):
            return False
    return True


# --------------------------------------------------------------------------
# The message

@dataclass
class StoredMessage:
    """One message of a folder as Dovecot sees it."""

    uid: int
    from_line: bytes              # without the newline
    headers: bytes                # visible header block, LF line ends, ends with "\n"
    body: bytes                   # as stored, LF line ends
    flags: set = field(default_factory=set)
    keywords: list = field(default_factory=list)
    recent: bool = False          # no "O" in Status when first synced

    @property
    def content(self) -> bytes:
        """The message as a client gets it (LF line ends)."""
        return self.headers + b"\n" + self.body

    def wire(self) -> bytes:
        """The message with CRLF line ends, as IMAP and POP3 send it."""
        return to_crlf(self.content)

    @property
    def size(self) -> int:
        return len(self.wire())

    @property
    def internal_date(self) -> float:
        return from_line_time(self.from_line)

    def all_flags(self) -> list[str]:
        out = [f for f in SYSTEM_FLAGS if f in self.flags]
        out += list(self.keywords)
        if self.recent:
            out.append(RECENT)
        return out


def to_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def from_line_time(from_line: bytes) -> float:
    """The date of a From_ line (``From a@b  Mon Jan  1 12:00:00 2024``), local time."""
    text = from_line.decode("ascii", "replace")
    m = re.search(r"(\w{3}) +(\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) (\d{4})", text)
    if m:
        try:
            month = _MONTHS.index(m.group(2).title()) + 1
            return time.mktime((int(m.group(7)), month, int(m.group(3)), int(m.group(4)),
                                int(m.group(5)), int(m.group(6)), 0, 0, -1))
        except (ValueError, OverflowError):
            pass
    return 0.0


def dovecot_from_line(envelope: str, when: float) -> bytes:
    """Dovecot's own From_ line: zero-padded day (``src/lib-mail/mbox-from.c``)."""
    return from_line(envelope, when, zero_pad_day=True)


# --------------------------------------------------------------------------
# Parsing and writing mbox files

@dataclass
class _Raw:
    from_line: bytes
    header_lines: list          # list of (name_lower, raw bytes incl. continuation lines)
    body: bytes


def _split_headers(block: bytes) -> list:
    out: list = []
    for line in block.split(b"\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and out:
            name, raw = out[-1]
            out[-1] = (name, raw + b"\n" + line)
        else:
            name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
            out.append((name, line))
    return out


def parse_mbox(data: bytes) -> list[_Raw]:
    """Split an mbox into messages (any variant; Content-Length honoured when it fits)."""
    messages: list[_Raw] = []
    pos = 0
    n = len(data)
    # Skip anything before the first From_ line (a broken file).
    if not data.startswith(b"From "):
        first = data.find(b"\nFrom ")
        if first < 0:
            return []
        pos = first + 1
    while pos < n:
        eol = data.find(b"\n", pos)
        if eol < 0:
            eol = n
        from_line = data[pos:eol]
        hstart = eol + 1
        hend = data.find(b"\n\n", hstart - 1)
        if hend < 0:
            header_block, bstart = data[hstart:], n
        else:
            header_block, bstart = data[hstart:hend + 1], hend + 2
        headers = _split_headers(header_block)
        end = None
        for name, raw in headers:
            if name == "content-length":
                try:
                    length = int(raw.split(b":", 1)[1].strip())
                except ValueError:
                    break
                cand = bstart + length
                if cand == n or (cand < n and data.startswith(b"\nFrom ", cand)):
                    end = cand
                elif cand + 1 == n and data[cand:cand + 1] == b"\n":
                    end = cand
                break
        if end is None:
            nxt = data.find(b"\n\nFrom ", max(bstart - 2, hstart))
            if hend < 0 or nxt < 0:
                end = n
                if data.endswith(b"\n\n") and end - 1 >= bstart:
                    end -= 1           # the blank line that ends the last message
            else:
                end = nxt + 1          # the body keeps its last newline
        body = data[bstart:end] if bstart <= end else b""
        messages.append(_Raw(from_line, headers, body))
        # Skip the separator blank line.
        pos = end
        while pos < n and data[pos:pos + 1] == b"\n":
            pos += 1
    return messages


def _header_value(raw: bytes) -> str:
    return raw.split(b":", 1)[1].decode("utf-8", "replace").strip() if b":" in raw else ""


@dataclass
class FolderState:
    uidvalidity: int
    uidnext: int
    messages: list[StoredMessage]
    keywords: list[str] = field(default_factory=list)
    changed: bool = False        # new UIDs were assigned: the file needs writing


def _message(raw: _Raw) -> tuple[StoredMessage, dict]:
    """One parsed message and its private header values."""
    values = {name: _header_value(line) for name, line in raw.header_lines
              if name in PRIVATE_HEADERS}
    try:
        uid = int(values.get("x-uid", "0").split()[0] or 0)
    except (ValueError, IndexError):
        uid = 0
    status = values.get("status", "")
    xstatus = values.get("x-status", "")
    flags = {flag for letter, flag in _XSTATUS.items() if letter in xstatus}
    if "R" in status:
        flags.add(SEEN)
    visible = b"".join(line + b"\n" for name, line in raw.header_lines
                       if name not in PRIVATE_HEADERS)
    msg = StoredMessage(uid=uid, from_line=raw.from_line, headers=visible, body=raw.body,
                        flags=flags, keywords=values.get("x-keywords", "").split(),
                        recent="O" not in status)
    return msg, values


def _assign_uids(messages: list[StoredMessage], last_uid: int, previous: int = 0) -> tuple[int, bool]:
    """UIDs must grow in file order; a message without one (a new delivery)
    or out of order gets the next UID, as Dovecot's mbox sync does.
    Returns (last UID, whether any was assigned)."""
    changed = False
    for msg in messages:
        if msg.uid <= previous or msg.uid <= 0:
            last_uid = max(last_uid, previous)
            last_uid += 1
            msg.uid = last_uid
            changed = True
        previous = msg.uid
        last_uid = max(last_uid, msg.uid)
    return last_uid, changed


def decode(data: bytes, now: Callable[[], float] = time.time,
           next_uidvalidity: Callable[[], int] | None = None) -> FolderState:
    """The folder's state from its file. A file without UIDVALIDITY gets one,
    as Dovecot's mbox sync gives it: the current time when it holds messages
    (a first delivery, ``mbox-sync-parse.c``), the user's next one
    (``next_uidvalidity``, :mod:`.uidvalidity`) when it holds none (a new
    mailbox, an empty INBOX, ``mbox-sync.c``)."""
    raws = parse_mbox(data)
    uidvalidity = 0
    last_uid = 0
    keywords: list[str] = []
    messages: list[StoredMessage] = []
    for index, raw in enumerate(raws):
        msg, values = _message(raw)
        base = values.get("x-imapbase") if index == 0 else None
        pseudo = "x-imap" in values and index == 0
        if base or pseudo:
            parts = (base or values.get("x-imap", "")).split()
            try:
                uidvalidity = int(parts[0])
                last_uid = int(parts[1])
            except (IndexError, ValueError):
                pass
            keywords = parts[2:]
        if pseudo:
            continue
        messages.append(msg)
    changed = False
    if not uidvalidity:
        uidvalidity = (next_uidvalidity() if next_uidvalidity is not None and not messages
                       else int(now()))
        changed = True
    last_uid, assigned = _assign_uids(messages, last_uid)
    return FolderState(uidvalidity, last_uid + 1, messages, keywords, changed or assigned)


def decode_appended(state: FolderState, tail: bytes) -> None:
    """Add the messages appended after the part of the file ``state`` was
    read from (a delivery): they get the next UIDs, as a whole-file
    :func:`decode` would give them."""
    new = [_message(raw)[0] for raw in parse_mbox(tail)]
    previous = state.messages[-1].uid if state.messages else 0
    last_uid, assigned = _assign_uids(new, state.uidnext - 1, previous)
    state.messages.extend(new)
    state.uidnext = last_uid + 1
    state.changed = state.changed or assigned


def clone(state: FolderState) -> FolderState:
    """A copy callers may change without touching the shared cache."""
    return FolderState(state.uidvalidity, state.uidnext,
                       [StoredMessage(m.uid, m.from_line, m.headers, m.body, set(m.flags),
                                      list(m.keywords), m.recent) for m in state.messages],
                       list(state.keywords), state.changed)


def encode(state: FolderState) -> bytes:
    """The whole mbox file for ``state`` (Dovecot's header order); every
    entry written by :func:`~gponsim.server.mailstore.mboxentry.mbox_entry`."""
    last_uid = state.uidnext - 1
    keywords = "".join(" " + k for k in state.keywords)
    if not state.messages:
        now = time.time()
        header = (b"Date: " + time.strftime("%d %b %Y %H:%M:%S %z").encode() + b"\n"
                  + b"From: Mail System Internal Data <MAILER-DAEMON@gponlab.local>\n"
                  + f"Subject: {PSEUDO_SUBJECT}\n".encode()
                  + b"Message-ID: <" + str(int(now)).encode() + b"@gponlab.local>\n"
                  + f"X-IMAP: {state.uidvalidity} {last_uid:010d}{keywords}\n".encode()
                  + b"Status: RO\n\n")
        body = (b"This text is part of the internal format of your mail folder, and is not\n"
                b"a real message.  It is created automatically by the mail system software.\n"
                b"If deleted, important folder data will be lost, and it will be re-created\n"
                b"with the data reset to initial values.\n")
        return mbox_entry(from_line("MAILER_DAEMON", now, zero_pad_day=True), header, body,
                          quote=False)
    out = bytearray()
    for index, msg in enumerate(state.messages):
        private = []
        if index == 0:
            private.append(f"X-IMAPbase: {state.uidvalidity} {last_uid:010d}{keywords}\n")
        private.append(f"X-UID: {msg.uid}\n")
        # "O" (old) once a read-write session has reported the message as
        # \Recent; until then, like Dovecot, no O (and no Status at all if unread).
        status = ("R" if SEEN in msg.flags else "") + ("" if msg.recent else "O")
        if status:
            private.append(f"Status: {status}\n")
        xstatus = "".join(letter for letter, flag in _XSTATUS_ORDER if flag in msg.flags)
        if xstatus:
            private.append(f"X-Status: {xstatus}\n")
        if msg.keywords:
            private.append("X-Keywords: " + " ".join(msg.keywords) + "\n")
        private.append(f"Content-Length: {len(msg.body)}\n\n")
        # The body as stored: quoted when it was first written.
        out += mbox_entry(msg.from_line, msg.headers + "".join(private).encode(), msg.body,
                          quote=False)
    return out                  # (a bytearray: not copied once more)


def _keep_new_mail_mark(path, old: os.stat_result | None) -> None:
    """A rewrite by the server does not change whether the folder has new mail
    (LIST's \\Marked: modified since last read): the new file is "read" unless
    the old one had unread changes, whose access time it keeps (Dovecot's mbox
    sync sets the access time back after it writes)."""
    st = os.stat(path)
    if old is not None and old.st_size and old.st_mtime_ns > old.st_atime_ns:
        atime = old.st_atime_ns
    else:
        atime = st.st_mtime_ns
    os.utime(path, ns=(atime, st.st_mtime_ns))


# --------------------------------------------------------------------------
# A folder file

#: Bytes of a file's end kept to recognise an append (the old end still there).
_TAIL = 256


def _ident(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev)


@dataclass
class _Cached:
    ident: tuple
    state: FolderState
    tail: bytes
    size: int = 0                # bytes of mail it holds (the file's size)


class _LRU(OrderedDict):
    """At most MAX_CACHED folders and CACHE_BYTES of mail kept; the least
    recently used go first. Every use holds ``_CACHE_LOCK``."""

    bytes = 0

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def pop(self, key, default=None):
        if key not in self:
            return default
        value = super().pop(key)
        self.bytes -= value.size
        return value

    def __setitem__(self, key, value):
        self.pop(key)
        super().__setitem__(key, value)
        self.bytes += value.size
        while len(self) > 1 and (len(self) > MAX_CACHED or self.bytes > CACHE_BYTES):
            _key, old = self.popitem(last=False)
            self.bytes -= old.size


#: How many parsed folders the cache keeps (a class's INBOXes and folders)...
MAX_CACHED = 256
#: ...and how much mail they may hold together (one bigger folder is kept alone).
CACHE_BYTES = 128 * 1024 * 1024

#: Parsed folders of this process, by path: every session shares them, and a
#: command on an unchanged file parses nothing.
_CACHE: dict[str, _Cached] = _LRU()
_CACHE_LOCK = threading.Lock()


class _PathLock:
    """One folder's lock among this process's threads (reentrant)."""

    __slots__ = ("lock", "__weakref__")

    def __init__(self) -> None:
        self.lock = threading.RLock()


_PATH_LOCKS: "weakref.WeakValueDictionary[str, _PathLock]" = weakref.WeakValueDictionary()


def _path_lock(key: str) -> _PathLock:
    with _CACHE_LOCK:
        lock = _PATH_LOCKS.get(key)
        if lock is None:
            lock = _PATH_LOCKS[key] = _PathLock()
        return lock


#: What a full disk looks like: the bookkeeping waits, an expunge rewrites in place.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
class MboxFolder(interface.Folder):
    """One mbox file: every operation locks, reads the current file, and
    (when something changed) writes it back safely."""

    def __init__(self, path: Path, name: str, *, lock_attempts: int = READER_LOCK_ATTEMPTS,
                 lock_delay: float = READER_LOCK_DELAY, create: bool = True,
                 next_uidvalidity: Callable[[], int] | None = None) -> None:
        self.path = Path(path)
        self.name = name
        self.lock_attempts = lock_attempts
        self.lock_delay = lock_delay
        self.create = create
        #: the user's next UIDVALIDITY, for the folder while its file is empty
        self.next_uidvalidity = next_uidvalidity

    def exists(self) -> bool:
        return self.path.is_file()

    def _key(self) -> str:
        return os.fspath(self.path)

    def cached(self) -> FolderState | None:
        """The shared cached state if the file is unchanged since it was read
        or written here (same inode, size, mtime and ctime), without the
        file's lock: a writer that has not yet changed a byte is not visible
        yet anyway. (Callers hold the folder's thread lock.)"""
        with _CACHE_LOCK:
            entry = _CACHE.get(self._key())
        if entry is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return entry.state if entry.ident == _ident(st) else None

    def _read_state(self, fd: int) -> FolderState:
        """The folder's state under the lock: the cache when the file is
        unchanged, the cache plus the appended messages when the file only
        grew (a delivery), else the whole file parsed."""
        key = self._key()
        st = os.fstat(fd)
        with _CACHE_LOCK:
            entry = _CACHE.pop(key, None)   # back in the cache only once consistent
        if entry is not None:
            if entry.ident == _ident(st):
                return entry.state
            ino, size = entry.ident[0], entry.ident[1]
            if (st.st_ino == ino and st.st_size > size and size >= len(entry.tail)
                    and os.pread(fd, len(entry.tail), size - len(entry.tail)) == entry.tail):
                tail = _read_all(fd, size)
                if tail.startswith(b"From "):
                    decode_appended(entry.state, tail)
                    return entry.state
        return decode(_read_all(fd), next_uidvalidity=self.next_uidvalidity)

    def _remember(self, state: FolderState, fd: int | None, written: bytes | None = None,
                  st: os.stat_result | None = None) -> None:
        """Cache ``state`` as what the file now holds (still under the lock);
        ``st``: the file's status when it held exactly ``written``."""
        if st is None:
            try:
                st = os.fstat(fd)
            except OSError:
                return
        if written is not None:
            tail = written[-_TAIL:]
        else:
            tail = os.pread(fd, _TAIL, max(0, st.st_size - _TAIL))
        if st.st_size and not tail.endswith(b"\n\n"):
            tail = b"\0"                    # never matches: a later append is parsed whole
        with _CACHE_LOCK:
            _CACHE[self._key()] = _Cached(_ident(st), state, tail, st.st_size)

    def _locked(self, mutate: Callable[[FolderState], object] | None = None,
                lock_attempts: int | None = None, may_wait: bool = False):
        """Run ``mutate(state)`` under the lock; write back if it changed.

        Returns ``(state, result)``: a copy of the state callers may change.
        ``mutate`` returns a value and may set ``state.changed``.
        ``may_wait``: the change only records Dovecot's bookkeeping (UIDs,
        \\Recent) or flags: on a full disk it waits in memory instead of
        failing (the next write of the folder takes it along).
        """
        with _path_lock(self._key()).lock:
            return self._locked_file(mutate, lock_attempts, may_wait)

    def _locked_file(self, mutate, lock_attempts, may_wait):
        for _attempt in range(5):
            flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)
            if self.create:
                flags |= os.O_CREAT
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileNotFoundError:
                raise StoreError(f"Mailbox doesn't exist: {self.name}", "NONEXISTENT") from None
            except OSError as exc:
                raise StoreError(f"Internal error: {exc.strerror}", "SERVERBUG") from None
            lock = MailboxLock(self.path, attempts=lock_attempts or self.lock_attempts,
                               delay=self.lock_delay, fcntl_only_when_full=True)
            try:
                try:
                    lock.acquire(fd)
                except MailboxError as exc:
                    raise StoreError(f"Mailbox is locked: {exc.reason}", "INUSE") from None
                try:
                    try:
                        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:
                        continue            # replaced by a rewrite meanwhile: reopen
                    remove_stale_temporaries(self.path.parent, self.path.name)
                    state = self._read_state(fd)
                    result = mutate(state) if mutate is not None else None
                    if state.changed:
                        try:
                            written, st = self._write(state, fd)
                        except OSError as exc:
                            if exc.errno not in _NO_SPACE:
                                raise
                            self._no_space(state, fd, may_wait)
                        else:
                            state.changed = False
                            if st is not None:
                                self._remember(state, None, written, st)
                    else:
                        self._remember(state, fd)
                    return clone(state), result
                finally:
                    lock.release()
            finally:
                os.close(fd)
        raise StoreError("Mailbox keeps being replaced; try again", "INUSE")

    def _no_space(self, state: FolderState, fd: int, may_wait: bool) -> None:
        """The new file did not fit beside the old one. A file no bigger is
        written over the old one in place (what makes room: an expunge; a
        crash meanwhile would leave it half written, as Dovecot's in-place
        rewrites would). Otherwise a change that ``may_wait`` stays in the
        cache, unwritten (still ``changed``: the next write of the folder
        takes it along); any other fails with Dovecot's ``[OVERQUOTA] Not
        enough disk space``."""
        data = encode(state)
        size = os.fstat(fd).st_size
        if len(data) <= size:
            view, offset = memoryview(data), 0
            while offset < len(data):
                offset += os.pwrite(fd, view[offset:], offset)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
            state.changed = False
            self._remember(state, fd)
            return
        if not may_wait:
            raise StoreError("Not enough disk space", "OVERQUOTA")
        with _CACHE_LOCK:
            _CACHE[self._key()] = _Cached(_ident(os.fstat(fd)), state, b"\0", size)

    def _write(self, state: FolderState, old_fd: int | None = None
               ) -> tuple[bytes, os.stat_result | None]:
        """Write ``state`` as a new file renamed over the folder's. Returns the
        bytes and the new file's status taken right after the rename, or None
        when a delivery has already appended to it: its lock is not the one
        this rewrite holds (that is on the old file), so the state written is
        no longer all the file holds, and must not be cached as if it were."""
        data = encode(state)
        tmp = self.path.with_name(temporary_name(self.path))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if old_fd is not None:
                # The new file keeps the old one's owner and mode, as Dovecot's
                # rewrite does: a real local(8) delivering as the user still can.
                st = os.fstat(old_fd)
                if os.geteuid() == 0:
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, st.st_mode & 0o7777)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            _keep_new_mail_mark(tmp, None if old_fd is None else os.fstat(old_fd))
            os.replace(tmp, self.path)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return data, (st if st.st_size == len(data) else None)

    # ---------------------------------------------------------------- API

    def sync(self, mark_old: bool = False, wait: bool = True) -> FolderState:
        """The current state; new deliveries get their UIDs (written back).

        ``mark_old``: a read-write SELECT has reported the \\Recent ones,
        store them as no longer recent (``Status: O``). The returned state
        still says which were recent. ``wait=False``: one try at the lock,
        StoreError INUSE if a writer holds it.
        """
        with _path_lock(self._key()).lock:
            cached = self.cached()
            if cached is not None and not cached.changed and \
                    not (mark_old and any(m.recent for m in cached.messages)):
                return clone(cached)

            def mutate(state: FolderState):
                recent = [m.uid for m in state.messages if m.recent]
                if mark_old and recent:
                    for m in state.messages:
                        m.recent = False
                    state.changed = True
                return recent
            state, recent = self._locked(mutate, None if wait else 1, may_wait=True)
        for m in state.messages:
            m.recent = m.uid in recent
        return state

    def append_many(self, messages: list, envelope: str = "") -> tuple[int, list[int]]:
        """Append ``[(content, flags, when)]`` all at once, in one rewrite
        (MULTIAPPEND: all or none); returns (uidvalidity, [uids])."""
        prepared = []
        for content, flags, when in messages:
            content = content.replace(b"\r\n", b"\n")
            head, sep, body = content.partition(b"\n\n")
            if not sep:
                head, body = content.rstrip(b"\n"), b""
            headers = b"".join(line + b"\n" for name, line in _split_headers(head + b"\n")
                               if name not in PRIVATE_HEADERS)
            body = mboxo_quote(body)      # stored quoted, as it is written
            if body and not body.endswith(b"\n"):
                body += b"\n"
            system, keywords = split_flags(flags)
            from_line = dovecot_from_line(envelope, time.time() if when is None else when)
            prepared.append((from_line, headers, body, system, keywords))

        def mutate(state: FolderState):
            uids = []
            for from_line, headers, body, system, keywords in prepared:
                uid = state.uidnext
                state.uidnext += 1
                for kw in keywords:
                    if kw not in state.keywords:
                        state.keywords.append(kw)
                state.messages.append(StoredMessage(        # new here: \Recent
                    uid=uid, from_line=from_line, headers=headers, body=body,
                    flags=set(system), keywords=keywords, recent=True))
                uids.append(uid)
            state.changed = True
            return uids
        state, uids = self._locked(mutate)
        return state.uidvalidity, uids

    def store(self, uids: Iterable[int], flags: Iterable[str], mode: int) -> dict[int, list[str]]:
        """Set (0), add (+1) or remove (-1) flags; returns {uid: new flags}."""
        wanted = set(uids)
        system, keywords = split_flags(flags)

        def mutate(state: FolderState):
            out = {}
            for msg in state.messages:
                if msg.uid not in wanted:
                    continue
                if mode == 0:
                    msg.flags, msg.keywords = set(system), list(keywords)
                elif mode > 0:
                    msg.flags |= set(system)
                    msg.keywords += [k for k in keywords if k not in msg.keywords]
                else:
                    msg.flags -= set(system)
                    msg.keywords = [k for k in msg.keywords if k not in keywords]
                out[msg.uid] = msg
            for kw in keywords:
                if mode >= 0 and kw not in state.keywords:
                    state.keywords.append(kw)
            if out:
                state.changed = True
            return out
        _state, touched = self._locked(mutate, may_wait=True)
        return {uid: [f for f in SYSTEM_FLAGS if f in m.flags] + list(m.keywords)
                for uid, m in touched.items()}

    def define_keywords(self, keywords: Iterable[str]) -> None:
        """Add keywords to the folder's list (X-IMAPbase), set on no message."""
        _system, wanted = split_flags(keywords)

        def mutate(state: FolderState):
            known = {k.lower() for k in state.keywords}
            for kw in wanted:
                if kw.lower() not in known:
                    known.add(kw.lower())
                    state.keywords.append(kw)
                    state.changed = True
        self._locked(mutate, may_wait=True)

    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove the \\Deleted messages (only those in ``uids`` if given)."""
        only = set(uids) if uids is not None else None

        def mutate(state: FolderState):
            gone = [m.uid for m in state.messages
                    if DELETED in m.flags and (only is None or m.uid in only)]
            if gone:
                state.messages = [m for m in state.messages if m.uid not in gone]
                state.changed = True
            return gone
        return self._locked(mutate)[1]

    def add_messages(self, messages: list) -> tuple[int, list[int]]:
        """Copy messages in (COPY/MOVE): new UIDs here, flags kept, \\Recent.
        A message from an mbox keeps its From_ line; one from another format
        gets Dovecot's, dated with its internal date."""
        copies = [(getattr(src, "from_line", None)
                   or dovecot_from_line("", src.internal_date or time.time()), src)
                  for src in messages]

        def mutate(state: FolderState):
            uids = []
            for from_line_, src in copies:
                uid = state.uidnext
                state.uidnext += 1
                state.messages.append(StoredMessage(        # new here: \Recent
                    uid=uid, from_line=from_line_, headers=src.headers, body=src.body,
                    flags=set(src.flags), keywords=list(src.keywords), recent=True))
                uids.append(uid)
            state.changed = True
            return uids
        state, uids = self._locked(mutate)
        return state.uidvalidity, uids

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Remove messages whatever their flags (the second half of MOVE)."""
        wanted = set(uids)

        def mutate(state: FolderState):
            gone = [m.uid for m in state.messages if m.uid in wanted]
            if gone:
                state.messages = [m for m in state.messages if m.uid not in wanted]
                state.changed = True
            return gone
        return self._locked(mutate)[1]

    # ------------------------------------------------------- change notification

    def stamp(self) -> Hashable | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def watch(self, reactor, callback: Callable[[], None]) -> interface.Watch | None:
        watcher = MailWatch.for_reactor(reactor)
        handle = watcher.watch(self.path, callback)
        return None if handle is None else _FileWatch(watcher, handle)


class _FileWatch:
    """A :meth:`MboxFolder.watch` subscription."""

    def __init__(self, watcher: MailWatch, handle) -> None:
        self._watcher, self._handle = watcher, handle

    def cancel(self) -> None:
        if self._handle is not None:
            self._watcher.unwatch(self._handle)
            self._handle = None


def _read_all(fd: int, offset: int = 0) -> bytes:
    """The file from ``offset`` on, read at once (no second copy of a big mailbox)."""
    size = os.fstat(fd).st_size - offset
    data = os.pread(fd, max(size, 0), offset) if size > 0 else b""
    if len(data) < size or size <= 0:       # changed meanwhile: read what is there
        chunks = [data]
        offset += len(data)
        while True:
            chunk = os.pread(fd, 1 << 20, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        data = b"".join(chunks)
    return data


# --------------------------------------------------------------------------
# A user's store

class MboxStore(interface.MailStore):
    """The folders of one user under the lab root."""

    def __init__(self, lab_root: str | os.PathLike, user: str, *,
                 inbox_template: str = "/var/mail/%u", mail_dir: str = "~/mail",
                 home_template: str = "/home/%u") -> None:
        if not user or "/" in user or user.startswith(".") or "\0" in user:
            raise StoreError(f"invalid user name {user!r}")
        self.root = Path(lab_root).resolve()
        self.user = user
        home = home_template.replace("%u", user).replace("%n", user)
        self.home = self._under_root(home)
        mail_dir = mail_dir.replace("%u", user)
        if mail_dir.startswith("~/"):
            self.mail_dir = self.home / mail_dir[2:]
        elif mail_dir == "~":
            self.mail_dir = self.home
        else:
            self.mail_dir = self._under_root(mail_dir)
        self.inbox_path = self._under_root(inbox_template.replace("%u", user).replace("%n", user))

    def _under_root(self, lab_path: str) -> Path:
        path = (self.root / lab_path.lstrip("/")).resolve()
        if path != self.root and self.root not in path.parents:
            raise StoreError(f"{lab_path} leaves the lab root")
        return path

    # ---------------------------------------------------------------- paths

    def path_for(self, name: str) -> Path:
        if is_inbox(name):
            return self.inbox_path
        if not name:
            raise StoreError("Invalid mailbox name: Name is empty", "CANNOT")
        if not valid_name(name):
            raise StoreError(f"Invalid mailbox name: {name}"[:200], "CANNOT")
        path = (self.mail_dir / name).resolve()
        if self.mail_dir.resolve() not in path.parents:
            raise StoreError(f"Invalid mailbox name: {name}"[:200], "CANNOT")
        return path

    def folder(self, name: str, create: bool = False) -> MboxFolder:
        path = self.path_for(name)
        if is_inbox(name):
            path.parent.mkdir(parents=True, exist_ok=True)
            return MboxFolder(path, "INBOX", create=True, next_uidvalidity=self.next_uidvalidity)
        if not path.is_file():
            if path.is_dir():
                raise StoreError(f"Mailbox isn't selectable: {name}", "NONEXISTENT")
            if not create:
                raise StoreError(f"Mailbox doesn't exist: {name}", "NONEXISTENT")
        return MboxFolder(path, name, create=create, next_uidvalidity=self.next_uidvalidity)

    # -------------------------------------------------------------- folders

    def exists(self, name: str) -> bool:
        try:
            path = self.path_for(name)
        except StoreError:
            return False
        return is_inbox(name) or path.exists()

    def list(self) -> list[FolderInfo]:
        out = [FolderInfo("INBOX", True, False)]
        base = self.mail_dir
        if base.is_dir():
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = Path(dirpath).relative_to(base)
                for d in dirnames:
                    name = str(rel / d) if str(rel) != "." else d
                    has = any(not e.startswith(".") for e in os.listdir(Path(dirpath) / d))
                    out.append(FolderInfo(name, False, has))
                for f in sorted(filenames):
                    if f.startswith(".") or f.endswith(".lock"):
                        continue
                    name = str(rel / f) if str(rel) != "." else f
                    if is_inbox(name):
                        continue
                    out.append(FolderInfo(name, True, False))
        return out

    def create(self, name: str) -> None:
        if is_inbox(name):
            raise StoreError("Mailbox already exists", "ALREADYEXISTS")
        directory = name.endswith("/")
        clean = name.rstrip("/")
        path = self.path_for(clean)
        if path.exists():
            raise StoreError("Mailbox already exists", "ALREADYEXISTS")
        for parent in reversed(path.relative_to(self.mail_dir).parents):
            p = self.mail_dir / parent
            if p.is_file():
                raise StoreError("Mailbox doesn't allow inferior mailboxes", "CANNOT")
        path.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            path.mkdir()
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)

    def delete(self, name: str) -> None:
        if is_inbox(name):
            # (no resp-code: Dovecot's mailbox_delete() sets MAIL_ERROR_NOTPOSSIBLE
            # with this text, and cmd-delete.c sends it as a plain NO)
            raise StoreError("INBOX can't be deleted.", "")
        path = self.path_for(name)
        if path.is_dir():
            if any(path.iterdir()):
                raise StoreError("Mailbox has children, delete them first", "INUSE")
            path.rmdir()
        elif path.is_file():
            path.unlink()
        else:
            raise StoreError(f"Mailbox doesn't exist: {name}", "NONEXISTENT")
        self.unsubscribe(name)

    def rename(self, old: str, new: str) -> None:
        if is_inbox(old):
            # Dovecot's mbox renames the spool file itself: /var/mail (root:mail
            # 2775) does not let the user do it
            raise StoreError("Permission denied", "NOPERM")
        src, dst = self.path_for(old), self.path_for(new)
        if not src.exists():
            raise StoreError(f"Mailbox doesn't exist: {old}", "NONEXISTENT")
        if is_inbox(new) or dst.exists():      # (INBOX always exists)
            raise StoreError("Target mailbox already exists", "ALREADYEXISTS")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)

    # ---------------------------------------------------------- UIDVALIDITY

    @property
    def uidvalidity_path(self) -> Path:
        """Dovecot's ``dovecot-uidvalidity`` in the list's control directory
        (``~/mail/.imap`` for mbox)."""
        return self.mail_dir / CONTROL_DIR / UIDVALIDITY_FILE

    def next_uidvalidity(self) -> int:
        """The UIDVALIDITY for the next of this user's mailboxes that needs one."""
        return uidvalidity_next(self.uidvalidity_path)

    # --------------------------------------------------------- subscriptions

    @property
    def subscriptions_path(self) -> Path:
        return self.mail_dir / ".subscriptions"

    def subscriptions(self) -> list[str]:
        try:
            text = self.subscriptions_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line]

    def _write_subscriptions(self, names: list[str]) -> None:
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.subscriptions_path.with_name(".subscriptions.tmp")
        tmp.write_text("".join(n + "\n" for n in names), encoding="utf-8")
        os.replace(tmp, self.subscriptions_path)

    def subscribe(self, name: str) -> None:
        if not is_inbox(name) and not valid_name(name):
            raise StoreError(f"Invalid mailbox name: {name}"[:200], "CANNOT")
        name = "INBOX" if is_inbox(name) else name
        names = self.subscriptions()
        if name not in names:
            self._write_subscriptions(names + [name])

    def unsubscribe(self, name: str) -> None:
        name = "INBOX" if is_inbox(name) else name
        names = self.subscriptions()
        if name in names:
            self._write_subscriptions([n for n in names if n != name])


def open_store(lab_root: str | os.PathLike, user: str, location: MailLocation) -> MboxStore:
    """The store ``mbox:<root>:INBOX=<inbox>`` names (see :mod:`.location`)."""
    return MboxStore(lab_root, user, inbox_template=location.inbox or "/var/mail/%u",
                     mail_dir=location.root or "~/mail")
