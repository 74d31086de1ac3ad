"""Postfix's queue directories and gponsim's queue file format.

Layout (all under the lab root, as on the lab server)
-----------------------------------------------------
``var/spool/postfix/``

- ``incoming/`` — cleanup creates the queue file here when smtpd accepts the
  first ``RCPT TO`` (:func:`create`); it is named by its queue id
  (microseconds + inode number, see :mod:`gponsim.server.postfix.queueid`),
  mode 0600 while being written.
- ``active/`` — at the end of DATA (:func:`commit`) the message is written,
  the file gets mode **0700** (Postfix's "this queue file is complete"
  mark), is ``fsync``-ed and renamed into ``active/``. Only then does smtpd
  answer ``250 2.0.0 Ok: queued as QID``. (Real Postfix's qmgr moves the
  file from incoming to active; gponsim does both in one step.)
- ``deferred/X/QID`` — messages with recipients that could not be
  delivered yet (hashed by the first character of the id,
  ``hash_queue_depth = 1``). The file's modification time is the time of
  the next attempt, as in Postfix. The deferral reasons, which Postfix keeps
  in ``defer/X/QID``, are records inside the queue file here.
- ``hold/``, ``corrupt/`` — as in Postfix; a queue file that cannot be read
  is moved to ``corrupt/``.

Queue file format (gponsim's own, readable with ``less``)
---------------------------------------------------------
::

    GPONSIM-QUEUE 1 {"qid": ..., "created": ..., "length": N, "size": S, "envelope": {...}}\\n
    <exactly N bytes: the message as queued, LF line ends, starting with Received:>
    D {"r": 0, "status": "sent", "dsn": "2.0.0", "reason": "...", "t": ...}\\n
    R {"r": 1, "dsn": "4.3.2", "reason": "deferred transport", "t": ...}\\n

Line 1 holds the envelope (:class:`Envelope` as JSON) — what Postfix stores
as envelope records (``REC_TYPE_FROM``, ``REC_TYPE_RCPT``, ...). Then the
message content (``REC_TYPE_NORM`` records). Then zero or more appended
records, one JSON object per line: ``D`` marks a recipient finished (sent
or bounced; Postfix rewrites the recipient record as ``REC_TYPE_DONE`` in
place), ``R`` keeps the latest deferral reason of a recipient (what
``mailq`` prints). A torn last record (crash while appending) is ignored
and cut off at recovery.

Durability is Postfix's: the queue file is ``fsync``-ed once before the
``250``; directory entries rely on the file system's journal (neither
Postfix nor gponsim fsyncs a directory after a rename). A ``kill -9`` loses
nothing that was written.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

from gponsim.server.postfix.queueid import is_queue_id, short_queue_id

SPOOL = Path("var", "spool", "postfix")
QUEUE_DIRS = ("incoming", "active", "deferred", "hold", "corrupt")
MAGIC = b"GPONSIM-QUEUE 1 "
WRITING_MODE = 0o600
READY_MODE = 0o700

#: Test-only crash points: a callable taking the point's name ("after-fsync":
#: the queue file written but still in incoming/; "after-commit": in active/,
#: 250 not sent yet; "after-mailbox": a mailbox written, the queue file not
#: yet updated), to simulate a crash there.
fault_hook: Callable[[str], None] | None = None


def fault(point: str) -> None:
    if fault_hook is not None:
        fault_hook(point)


class QueueWriteError(Exception):
    """The queue file could not be written; smtpd answers with :attr:`reply`."""

    reply = "451 4.3.0 Error: queue file write error"


@dataclass
class Envelope:
    """What smtpd knows about a message besides its content."""

    sender: str = ""                       #: '' = null sender <>
    recipients: list[str] = field(default_factory=list)
    helo: str | None = None
    client_ip: str = ""
    client_name: str = "unknown"
    protocol: str = "ESMTP"                #: ESMTP, ESMTPS, ESMTPA, ESMTPSA, SMTP...
    sasl_method: str | None = None
    sasl_username: str | None = None
    session: str = ""                      #: Step session id of the SMTP connection
    service: str = "smtp"                  #: smtp | submission
    size_param: int | None = None
    body_param: str | None = None
    arrival: float = field(default_factory=time.time)
    #: RCPT TO address as given, per recipient ('' = same as the recipient)
    orig_recipients: list[str] = field(default_factory=list)

    def original(self, index: int) -> str:
        if index < len(self.orig_recipients) and self.orig_recipients[index]:
            return self.orig_recipients[index]
        return self.recipients[index]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Envelope":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class QueueEntry:
    """One message as ``mailq`` shows it."""

    qid: str
    size: int
    arrival: float
    sender: str
    recipients: list[str]                  #: recipients still to be delivered
    state: str                             #: incoming | active | deferred | hold
    reason: str | None = None              #: last deferral reason, if any


@dataclass
class Parsed:
    """A queue file read back."""

    qid: str
    created: float
    size: int
    envelope: Envelope
    content: bytes
    finals: dict[int, tuple[str, str, str]]   #: index -> (status, dsn, reason)
    reasons: dict[int, tuple[str, str]]       #: index -> (dsn, reason) of the last deferral
    valid_end: int
    file_size: int

    def pending(self) -> list[int]:
        return [i for i in range(len(self.envelope.recipients)) if i not in self.finals]


# --------------------------------------------------------------------------
# Writing

def record(kind: str, data: dict) -> bytes:
    """One appended record line (``D`` done, ``R`` deferral reason)."""
    return kind.encode() + b" " + json.dumps(data, separators=(",", ":")).encode() + b"\n"


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def make_dirs(spool: Path) -> None:
    for name in QUEUE_DIRS:
        (spool / name).mkdir(parents=True, exist_ok=True)


_tmp_names = itertools.count(1)


def create(spool: Path, now: float) -> tuple[str, int]:
    """A new, empty queue file ``incoming/QID`` (mode 0600): ``(qid, fd)``.

    As Postfix's cleanup does, the file is made under a temporary name and
    renamed to its queue id, which needs its inode number.
    """
    incoming = spool / "incoming"
    tmp = incoming / f".t{os.getpid()}.{next(_tmp_names)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, WRITING_MODE)
    try:
        qid = short_queue_id(int((now % 1) * 1_000_000) % 1_000_000, os.fstat(fd).st_ino)
        os.rename(tmp, incoming / qid)
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        raise
    return qid, fd


def commit(spool: Path, qid: str, fd: int, *, created: float, envelope: Envelope,
           content: bytes, size: int) -> Path:
    """Write the message into its queue file, mark it complete (0700), fsync
    it and move it to ``active/``; returns the new path. Closes ``fd``.

    Runs in a worker thread. On an error the file is removed (nothing was
    acknowledged) and the OSError raised.
    """
    incoming = spool / "incoming" / qid
    header = {"qid": qid, "created": created, "length": len(content), "size": size,
              "envelope": envelope.to_dict()}
    try:
        try:
            write_all(fd, MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n"
                      + content)
            os.fchmod(fd, READY_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        fault("after-fsync")
        active = spool / "active" / qid
        os.rename(incoming, active)
    except OSError:
        try:
            os.unlink(incoming)
        except OSError:
            pass
        raise
    fault("after-commit")
    return active


def append_records(path: Path, records: list[bytes], mtime: float | None = None) -> None:
    """Append ``records`` (``D``/``R`` lines) and fsync; ``mtime``: the next attempt."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        if records:
            write_all(fd, b"".join(records))
        if mtime is not None:
            os.utime(fd, (time.time(), mtime))
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Reading

def parse(path: Path, with_content: bool = True) -> Parsed | None:
    """Read a queue file; None when it is not a complete gponsim queue file."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if not data.startswith(MAGIC):
        return None
    nl = data.find(b"\n")
    if nl < 0:
        return None
    try:
        header = json.loads(data[len(MAGIC):nl])
        start = nl + 1
        end = start + int(header["length"])
        envelope = Envelope.from_dict(header["envelope"])
        qid = str(header["qid"])
    except (ValueError, KeyError, TypeError):
        return None
    if len(data) < end:
        return None
    finals: dict[int, tuple[str, str, str]] = {}
    reasons: dict[int, tuple[str, str]] = {}
    pos = end
    while pos < len(data):
        eol = data.find(b"\n", pos)
        if eol < 0:
            break
        kind, _, body = data[pos:eol].partition(b" ")
        try:
            rec = json.loads(body)
            index = int(rec["r"])
            if kind == b"D":
                finals[index] = (rec["status"], rec.get("dsn", ""), rec.get("reason", ""))
            elif kind == b"R":
                reasons[index] = (rec.get("dsn", ""), rec.get("reason", ""))
            else:
                break
        except (ValueError, KeyError, TypeError):
            break
        pos = eol + 1
    return Parsed(qid, float(header.get("created", 0)), int(header.get("size", 0)), envelope,
                  data[start:end] if with_content else b"", finals, reasons, pos, len(data))


def entry_from(path: Path, state: str) -> QueueEntry | None:
    parsed = parse(path, with_content=False)
    if parsed is None:
        return None
    env = parsed.envelope
    pending = parsed.pending()
    reason = next((parsed.reasons[i][1] for i in pending if i in parsed.reasons), None)
    return QueueEntry(qid=parsed.qid, size=parsed.size, arrival=float(env.arrival),
                      sender=env.sender, recipients=[env.recipients[i] for i in pending],
                      state=state, reason=reason)


def queue_files(spool: Path, state: str) -> Iterable[Path]:
    """The queue files of one queue directory (``deferred`` is hashed)."""
    base = spool / state
    if not base.is_dir():
        return []
    if state == "deferred":
        paths = [p for sub in sorted(base.iterdir()) if sub.is_dir() for p in sorted(sub.iterdir())]
    else:
        paths = sorted(base.iterdir())
    return [p for p in paths if is_queue_id(p.name)]


def list_queue(lab_root: str | Path) -> list[QueueEntry]:
    """What ``mailq`` would show for the lab at ``lab_root``, oldest first.

    Reads the spool directly (like Postfix's showq), so it works from
    another process while the lab runs. Incoming files still being written
    are not shown.
    """
    spool = Path(lab_root) / SPOOL
    out: list[QueueEntry] = []
    for state in ("incoming", "active", "deferred", "hold"):
        for p in queue_files(spool, state):
            try:
                if state == "incoming" and not (p.stat().st_mode & 0o100):
                    continue
            except FileNotFoundError:
                continue
            entry = entry_from(p, state)
            if entry is not None:
                out.append(entry)
    out.sort(key=lambda e: (e.arrival, e.qid))
    return out
