"""The mail queue and the queue manager: Postfix's cleanup → qmgr → local path.

Layout (all under the lab root, as on the lab server)
-----------------------------------------------------
``var/spool/postfix/``

- ``incoming/`` — smtpd asks cleanup for a queue file at the first accepted
  ``RCPT TO`` (:meth:`MailQueue.open`); it appears here named by its queue
  id (microseconds + inode number, see :mod:`gponsim.server.postfix.queueid`).
  Mode 0600 while being written.
- ``active/`` — at the end of DATA (:meth:`QueueFile.commit`) the message is
  written, the file gets mode **0700** (Postfix's "this queue file is
  complete" mark) and is ``fsync``-ed in ``incoming/``, then renamed into
  ``active/``. Only then does smtpd answer ``250 2.0.0 Ok: queued as QID``.
  (Real Postfix hands the file to qmgr, which moves it from incoming to
  active; gponsim does both in one step.) See *Durability* below for why
  one ``fsync`` of the file is enough.
- ``deferred/X/QID`` — messages with recipients that could not be delivered
  yet (hashed by the first character of the id, ``hash_queue_depth = 1``).
  The file's modification time is the time of the next attempt, as in
  Postfix (``mtime`` in the future = not yet). The deferral reasons, which
  Postfix keeps in ``defer/X/QID``, are records inside the queue file here.
- ``hold/``, ``corrupt/`` — as in Postfix; a queue file that cannot be read
  is moved to ``corrupt/``.
- ``gponsim/journal.N`` — gponsim's own: one small crash journal per
  delivery worker (see *Exactly once* below); ``gponsim/spare/`` holds a few
  empty files ready to become queue files (see *Threads*) and the files of
  delivered messages waiting to be reused (*Recycled queue files*). Postfix
  has no equivalent of either; neither holds a message that is still queued.

Queue file format (gponsim's own, readable with ``less``)
---------------------------------------------------------
::

    GPONSIM-QUEUE 1 {"qid": ..., "created": ..., "length": N, "size": S, "envelope": {...}}\\n
    <exactly N bytes: the message as queued, LF line ends, starting with Received:>
    D {"r": 0, "status": "sent", "dsn": "2.0.0", "reason": "...", "t": ...}\\n
    R {"r": 1, "dsn": "4.3.2", "reason": "deferred transport", "t": ...}\\n

Line 1 holds the envelope (:class:`Envelope` as JSON: sender, recipients,
original recipients, client, HELO, protocol, SASL, session, ...) — what
Postfix stores as envelope records (``REC_TYPE_FROM``, ``REC_TYPE_RCPT``,
...). Then the message content (Postfix's ``REC_TYPE_NORM`` records). Then
zero or more appended records, one JSON object per line: ``D`` marks a
recipient finished (sent or bounced; Postfix rewrites the recipient record
as ``REC_TYPE_DONE`` in place), ``R`` keeps the latest deferral reason of a
recipient (what ``mailq`` prints). A torn last record (crash while appending)
is ignored and cut off at recovery.

Durability
----------
Like Postfix (cleanup fsyncs the queue file once, local(8) the mailbox
once; neither fsyncs a directory after a rename or an unlink), gponsim
relies on the file system journal for directory entries:

- A process crash (``kill -9``) loses nothing the process wrote: the page
  cache belongs to the kernel. Everything below is about power loss or a
  kernel crash.
- The queue file gets its name in ``incoming/`` (a rename from
  ``gponsim/spare/``) before it is written; ``fsync`` of the file then
  also makes that name durable on ext4 (all modes, with or without
  ``fast_commit``: the rename changed the inode, so the journal commit that
  fsync waits for contains it) and XFS (fsync forces the log up to the
  inode's last change, the rename included); btrfs's fsync logs a renamed
  file's new name too. So a 250 is only sent for a file that is complete
  (mode 0700) and durable under its queue id. On file systems without such
  ordering (ext2, vfat, some network file systems) neither Postfix's queue
  nor this one is power-loss safe.
- The rename ``incoming/`` → ``active/`` after the fsync is not waited for:
  after a power loss the file is in one of the two directories, and
  recovery treats a mode-0700 file in ``incoming/`` as committed.
- A queue file removed after local delivery stays covered by the worker's
  journal (below) until ``active/`` has been ``fsync``-ed after the removal:
  that is done once per delivery batch, just before a journal forgets its
  previous batch (and when a worker runs out of work), instead of once per
  removal. This part does not depend on
  the file system's ordering. Removals after relaying, and moves to
  ``deferred/``, have their directories fsync-ed at once (as before).

Exactly once
------------
A message acknowledged with 250 is on disk (see *Durability*).
Each finished recipient is recorded before anything could deliver it again:

- local(8) appends several messages to one mailbox under one lock. Before
  writing, the worker writes an *intent* (queue id, recipient, mailbox,
  offset, length, From_ time) to its journal and ``fsync``-s it; then the
  mailbox is written and ``fsync``-ed; then the queue file gets its ``D``
  records (``fsync``-ed) or is removed. The journal keeps the intents until
  the worker starts its next batch; only then, after an ``fsync`` of
  ``active/`` covering every removal made so far (by any worker), is the
  journal truncated. After a crash, :meth:`MailQueue.start` compares each journaled
  intent with the mailbox: the exact bytes at the offset mean "delivered";
  a partial entry at the end is truncated away and the message delivered
  again; if a reader rewrote the mailbox meanwhile, the entry is looked up
  by its ``Delivered-To:`` and the queue id in ``Received:``.
- Bounces (unknown user, mailbox full) are journaled before they are logged.

Threads
-------
The reactor thread makes no file system call: it takes a ready-made empty
queue file (``gponsim/spare/``, kept filled by a small thread) and runs
cleanup's header processing. A *cleanup/qmgr* thread moves the file into
``incoming/QID`` and group-commits: it writes and ``fsync``-s every queue
file committed since its last pass (the fsyncs side by side, so the file
system journal commits them together) and renames them all into
``active/``. Delivery workers (2 by default) take, per mailbox, every
waiting message and append them under one lock and one ``fsync``; a
mailbox's first waiting message waits up to ``BATCH_LINGER`` (10 ms) for
others, so that under load a batch holds many messages. A mailbox is
served by one worker at a time (per-mailbox order is kept) and a 1-s
dotlock retry only holds up that mailbox. Steps and
Deferred results are handed back to the reactor thread.

Recycled queue files
--------------------
Postfix unlinks a queue file once every recipient is done; gponsim's qmgr
renames it to ``gponsim/spare/r<QID>`` instead (at most ``RECYCLE_MAX``
such files wait there, the others are unlinked), and the spare-file thread
of any smtpd process takes those first: it renames one to its own spare
name (the rename decides which process gets it), opens it with
``O_TRUNC`` and gives it mode 0600 again. What a student sees in the queue
directories is the same: the file leaves ``active/`` when qmgr logs
``removed``. Why: creating a file costs a new inode, and ext4 without a
journal (the benchmark machines' file system) will not reuse an inode freed
in the last 1-6 minutes, so under load each new file made the kernel walk
past every queue file removed before it (a tenth of a millisecond per
message after a few thousand). Reusing the inodes avoids that walk; the
queue id stays unique (microseconds + inode, as ever: an inode is reused
only after its previous queue file is gone). A recycled file still holds
its delivered message until it is reused; ``start()`` empties
``gponsim/spare/``.

Routing (qmgr)
--------------
- Recipient domain local (``is_local_domain``) → local(8): mailbox
  ``var/mail/<localpart>`` (``+extension`` stripped; unknown user →
  ``status=bounced (unknown user: "name")``).
- Otherwise → ``relay_transport`` when there is one (the SMTP client to the
  relay, :mod:`gponsim.server.postfix.smtp`); without it, Postfix's ``defer_transports = smtp``
  behaviour: ``postfix/error[pid]: QID: to=<...>, relay=none, ...,
  dsn=4.3.2, status=deferred (deferred transport)`` and the message waits in
  the deferred queue, retried on each queue run (``queue_run_delay``) with
  the usual backoff (message age clamped to [minimal_backoff_time,
  maximal_backoff_time]) and bounced after ``maximal_queue_lifetime``.
- Bounce notifications (DSN) to the sender are a hook: ``on_bounce``
  (the lab's is :class:`gponsim.server.postfix.bounce.Bouncer`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import json
import os
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from gponsim.commentary import annotate
from gponsim.server.background import background_thread, lower_to_batch
from gponsim.server.postfix.cleanup import CleanupRejected, cleanup_message, is_local_client
from gponsim.server.postfix.local import (DELIVER_LOCK_ATTEMPTS, DELIVER_LOCK_DELAY, MAILBOX_SIZE_LIMIT,
                                  STALE_LOCK_TIME, Intent, LocalAgent, LocalJob, LocalResult)
from gponsim.server.maillog import MailLog, delivery_line, pid_for
from gponsim.server.postfix.queueid import hash_dir, is_queue_id, short_queue_id
from gponsim.steps import Emit, Step, null_emit

SPOOL = Path("var", "spool", "postfix")
QUEUE_DIRS = ("incoming", "active", "deferred", "hold", "corrupt")
MAGIC = b"GPONSIM-QUEUE 1 "
WRITING_MODE = 0o600
READY_MODE = 0o700
#: Jobs handed to local(8) in one batch (one lock, one fsync) at most.
BATCH_LIMIT = 256
#: A mailbox's first waiting job waits this long (seconds) for more mail to
#: the same mailbox before local(8) starts a batch, unless BATCH_LIMIT jobs
#: are waiting: under load, one lock and three fsyncs serve many messages.
BATCH_LINGER = 0.01
#: Empty queue files kept ready for open() (see MailQueue._new_spare).
SPARE_FILES = 32
#: open() wakes the spare-file thread when this many spares are left.
_SPARE_MARKS = (SPARE_FILES // 2 - 1, SPARE_FILES // 4 - 1, 0)
#: Seconds the spare-file thread waits for recycled files before it looks again.
SPARE_RETRY = 0.05
#: Delivered queue files kept in gponsim/spare/ for reuse at most (see
#: *Recycled queue files*); qmgr counts them again every RECYCLE_CHECK files.
RECYCLE_MAX = 256
RECYCLE_CHECK = 64

#: Test-only crash points: set to a callable taking the point's name
#: ("after-fsync": queue files written but still in incoming/;
#: "after-commit": in active/, 250 not sent yet; "after-mailbox": mailbox
#: written and fsync-ed, queue file not yet updated) to simulate a crash.
fault_hook: Callable[[str], None] | None = None


def _fault(point: str) -> None:
    if fault_hook is not None:
        fault_hook(point)


class QueueWriteError(Exception):
    """The queue file could not be written; smtpd answers with :attr:`reply`."""

    reply = "451 4.3.0 Error: queue file write error"


# --------------------------------------------------------------------------
# Data

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
class RelayRequest:
    """What qmgr hands the SMTP client (``relay_transport``) for one message."""

    qid: str
    envelope: Envelope
    recipients: list[tuple[int, str, str]]  #: (index, address, original address)
    content: bytes
    active_arrival: float


@dataclass
class RecipientStatus:
    """A delivery agent's verdict for one recipient."""

    index: int
    status: str                            #: sent | bounced | deferred
    dsn: str
    reason: str


class RelayTransport(Protocol):
    """The later SMTP client: called in the reactor thread; logs its own lines."""

    def deliver(self, request: RelayRequest) -> Any:  # Deferred[list[RecipientStatus]]
        ...


@dataclass
class BounceNotice:
    """Handed to ``on_bounce`` (reactor thread) for each bounced recipient."""

    qid: str
    envelope: Envelope
    recipient: str
    orig_recipient: str
    dsn: str
    reason: str
    content: bytes


class _Message:
    """qmgr's in-memory view of one queue file."""

    def __init__(self, qid: str, path: Path, env: Envelope, content: bytes | None,
                 size: int, created: float) -> None:
        self.qid = qid
        self.path = path
        self.env = env
        self.content = content
        self.size = size
        self.created = created
        self.lock = threading.Lock()
        self.final: dict[int, tuple[str, str, str]] = {}
        self.unsynced: list[int] = []          # finals not yet in the file
        self.deferred: dict[int, tuple[str, str]] = {}
        self.outstanding = 0
        self.active_arrival = 0.0
        self.done = False                      # removed, or moved to deferred
        self.next_attempt = 0.0

    def pending(self) -> list[int]:
        return [i for i in range(len(self.env.recipients)) if i not in self.final]


# --------------------------------------------------------------------------
# Queue files on disk

def _record(kind: str, data: dict) -> bytes:
    return kind.encode() + b" " + json.dumps(data, separators=(",", ":")).encode() + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Parsed:
    header: dict
    content: bytes
    finals: dict[int, tuple[str, str, str]]
    reasons: dict[int, tuple[str, str]]
    valid_end: int
    file_size: int


def _parse_queue_file(path: Path, with_content: bool = True) -> _Parsed | None:
    """Read a queue file; None when it is not a complete gponsim queue file."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if not data.startswith(MAGIC):
        return None
    nl = data.find(b"\n")
    try:
        header = json.loads(data[len(MAGIC):nl])
        start = nl + 1
        end = start + int(header["length"])
    except (ValueError, KeyError, TypeError):
        return None
    if nl < 0 or len(data) < end:
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
    return _Parsed(header, data[start:end] if with_content else b"", finals, reasons, pos,
                   len(data))


def _entry_from(path: Path, state: str) -> QueueEntry | None:
    parsed = _parse_queue_file(path, with_content=False)
    if parsed is None:
        return None
    env = Envelope.from_dict(parsed.header.get("envelope", {}))
    pending = [r for i, r in enumerate(env.recipients) if i not in parsed.finals]
    reason = None
    for i in range(len(env.recipients)):
        if i in parsed.reasons and i not in parsed.finals:
            reason = parsed.reasons[i][1]
            break
    return QueueEntry(qid=parsed.header["qid"], size=int(parsed.header.get("size", 0)),
                      arrival=float(env.arrival), sender=env.sender, recipients=pending,
                      state=state, reason=reason)


def list_queue(lab_root: str | Path) -> list[QueueEntry]:
    """What ``mailq`` would show for the lab at ``lab_root``, oldest first.

    Reads the spool directly (like Postfix's showq), so it works from
    another process while the lab runs. Incoming files still being written
    are not shown.
    """
    spool = Path(lab_root) / SPOOL
    out: list[QueueEntry] = []
    for state in ("incoming", "active", "deferred", "hold"):
        base = spool / state
        if not base.is_dir():
            continue
        paths: Iterable[Path]
        if state == "deferred":
            paths = (p for sub in sorted(base.iterdir()) if sub.is_dir() for p in sub.iterdir())
        else:
            paths = base.iterdir()
        for p in paths:
            if not is_queue_id(p.name):
                continue
            try:
                if state == "incoming" and not (p.stat().st_mode & 0o100):
                    continue
            except FileNotFoundError:
                continue
            entry = _entry_from(p, state)
            if entry is not None:
                out.append(entry)
    out.sort(key=lambda e: (e.arrival, e.qid))
    return out


# --------------------------------------------------------------------------
# Journal (one per delivery worker)

class _Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._dirty = os.fstat(self.fd).st_size > 0

    def begin(self, before_forgetting: Callable[[], None] | None = None) -> None:
        """Forget the previous batch (all its outcomes are in the queue files
        now); ``before_forgetting`` makes queue file removals durable first."""
        if self._dirty:
            if before_forgetting is not None:
                before_forgetting()
            os.ftruncate(self.fd, 0)
            self._dirty = False

    def record(self, intents: list[Intent], finals: list[LocalResult]) -> None:
        lines = []
        for it in intents:
            lines.append(_record("I", {"q": it.job.qid, "r": it.job.index, "m": it.user,
                                       "o": it.offset, "n": it.length, "t": it.when}))
        for res in finals:
            lines.append(_record("B", {"q": res.job.qid, "r": res.job.index,
                                       "status": res.status, "dsn": res.dsn,
                                       "reason": res.reason}))
        if not lines:
            return
        _write_all(self.fd, b"".join(lines))
        os.fsync(self.fd)
        self._dirty = True

    def close(self) -> None:
        os.close(self.fd)

    @staticmethod
    def read(path: Path) -> list[tuple[str, dict]]:
        out = []
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return out
        for line in data.split(b"\n"):
            kind, _, body = line.partition(b" ")
            try:
                out.append((kind.decode(), json.loads(body)))
            except ValueError:
                break
        return out


# --------------------------------------------------------------------------
# Scheduling of local deliveries: one worker per mailbox at a time

class _Scheduler:
    def __init__(self, linger: float = BATCH_LINGER) -> None:
        self._cond = threading.Condition()
        self._pending: collections.OrderedDict[str, list[LocalJob]] = collections.OrderedDict()
        self._since: dict[str, float] = {}     # when the user's oldest waiting job came
        self._busy: set[str] = set()
        self._stopping = False
        self.linger = linger

    def add(self, jobs: list[tuple[str, LocalJob]]) -> None:
        with self._cond:
            wake = False
            for user, job in jobs:
                waiting = self._pending.get(user)
                if waiting is None:
                    self._pending[user] = [job]
                    self._since[user] = time.monotonic()
                    wake = True
                else:
                    waiting.append(job)
                    wake = wake or len(waiting) == BATCH_LIMIT
            if wake:        # more jobs for an already waiting mailbox change nothing
                self._cond.notify()

    def take(self, idle: Callable[[], None] | None = None
             ) -> tuple[str, list[LocalJob]] | None:
        """The next batch (None when stopping); ``idle()`` is called, without
        the lock, before waiting with nothing at all to do."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                timeout: float | None = None
                for user, jobs in self._pending.items():
                    if user in self._busy:
                        continue
                    due = self._since[user] + self.linger
                    if len(jobs) < BATCH_LIMIT and now < due:
                        timeout = due - now if timeout is None else min(timeout, due - now)
                        continue
                    batch, rest = jobs[:BATCH_LIMIT], jobs[BATCH_LIMIT:]
                    if rest:
                        self._pending[user] = rest
                        self._pending.move_to_end(user)
                        self._since[user] = now
                    else:
                        del self._pending[user]
                        del self._since[user]
                    self._busy.add(user)
                    if timeout is not None or any(u not in self._busy for u in self._pending):
                        self._cond.notify()     # another mailbox for another worker
                    return user, batch
                if timeout is None and idle is not None:
                    self._cond.release()
                    try:
                        idle()
                    finally:
                        self._cond.acquire()
                    idle = None
                    continue
                self._cond.wait(timeout)

    def done(self, user: str) -> None:
        with self._cond:
            self._busy.discard(user)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()


# --------------------------------------------------------------------------
# The queue file handed to smtpd

class QueueFile:
    """A queue file being filled by one SMTP transaction (see :meth:`MailQueue.open`)."""

    def __init__(self, queue: "MailQueue", qid: str, fd: int, envelope: Envelope,
                 created: float, spare: str) -> None:
        self._queue = queue
        self.qid = qid
        self._fd = fd
        self.envelope = envelope
        self.created = created
        self._spare = spare            # where the file is until the qmgr thread moves it
        self.path = queue.spool / "incoming" / qid     #: until committed
        self.state = "open"            # open | committing | committed | aborted

    def add_recipient(self, address: str, original: str | None = None) -> None:
        """Record one more accepted recipient (``original``: as given in RCPT TO)."""
        if self.state != "open":
            raise RuntimeError(f"queue file {self.qid} is {self.state}")
        self.envelope.recipients.append(address)
        self.envelope.orig_recipients.append(original or "")

    def abort(self) -> None:
        """RSET, QUIT, a lost connection or a failed DATA: remove the queue file."""
        if self.state != "open":
            return
        self.state = "aborted"
        self._queue._submit(("abort", self))

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def commit(self, message: bytes):
        """Queue ``message`` (smtpd's Received header already on top).

        Returns a Deferred that fires with the queue id once the message is
        durable — smtpd answers ``250 2.0.0 Ok: queued as QID`` then — or
        fails with :class:`CleanupRejected` / :class:`QueueWriteError`.
        """
        from twisted.internet import defer

        if self.state != "open":
            return defer.fail(RuntimeError(f"queue file {self.qid} is {self.state}"))
        if not self.envelope.recipients:
            self.abort()
            return defer.fail(ValueError("no recipients"))
        try:
            msg = self._queue._cleanup(self, message)
        except CleanupRejected as exc:
            self.abort()
            return defer.fail(exc)
        self.state = "committing"
        d = defer.Deferred()
        self._queue._submit(("commit", self, msg, d))
        return d


# --------------------------------------------------------------------------
# The queue

class MailQueue:
    """Postfix's queue directories plus cleanup, qmgr, local(8) and error(8).

    ``is_local_domain(domain)`` and ``local_user_exists(user)`` are called
    from worker threads. ``emit`` receives Steps in the reactor thread.
    """

    def __init__(self, lab_root: str | Path, *, myhostname: str,
                 is_local_domain: Callable[[str], bool],
                 local_user_exists: Callable[[str], bool],
                 emit: Emit | None = None, log: MailLog | None = None, reactor: Any = None,
                 relay_transport: RelayTransport | None = None,
                 myorigin: str | None = None,
                 interface_addresses: Iterable[str] = ("127.0.0.1", "::1"),
                 always_add_missing_headers: bool = False,
                 recipient_delimiter: str = "+",
                 mailbox_size_limit: int = MAILBOX_SIZE_LIMIT,
                 syslog_name: str = "postfix",
                 queue_run_delay: float = 300.0,
                 minimal_backoff_time: float = 300.0,
                 maximal_backoff_time: float = 4000.0,
                 maximal_queue_lifetime: float = 5 * 86400.0,
                 delivery_workers: int = 2,
                 lock_attempts: int = DELIVER_LOCK_ATTEMPTS,
                 lock_delay: float = DELIVER_LOCK_DELAY,
                 stale_lock_time: float = STALE_LOCK_TIME,
                 on_bounce: Callable[[BounceNotice], None] | None = None,
                 on_lock_wait: Callable[[str, int, str], None] | None = None,
                 handoff: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.root = Path(lab_root)
        self.spool = self.root / SPOOL
        self.myhostname = myhostname
        self.myorigin = myorigin or myhostname
        self.is_local_domain = is_local_domain
        self.emit: Emit = emit or null_emit
        self.log = log if log is not None else MailLog(self.root / "var" / "log" / "mail.log",
                                                       hostname=myhostname)
        self.reactor = reactor
        self.relay_transport = relay_transport
        self.interface_addresses = tuple(interface_addresses)
        self.always_add_missing_headers = always_add_missing_headers
        self.syslog_name = syslog_name
        self.queue_run_delay = queue_run_delay
        self.minimal_backoff_time = minimal_backoff_time
        self.maximal_backoff_time = maximal_backoff_time
        self.maximal_queue_lifetime = maximal_queue_lifetime
        self.on_bounce = on_bounce
        #: Set in an smtpd process (:mod:`gponsim.server.smtpd_process`): committed
        #: queue ids go to it (in the reactor thread) instead of to this queue's qmgr.
        self.handoff = handoff
        self.clock = clock
        self._user_lock_hook = on_lock_wait
        self.agent = LocalAgent(self.root, user_exists=local_user_exists, log=self.log,
                                syslog_name=syslog_name, recipient_delimiter=recipient_delimiter,
                                mailbox_size_limit=mailbox_size_limit, lock_attempts=lock_attempts,
                                lock_delay=lock_delay, stale_lock_time=stale_lock_time,
                                clock=clock, on_lock_wait=self._lock_wait)
        self._workers_wanted = max(1, delivery_workers)
        self._lock = threading.Lock()
        self._messages: dict[str, _Message] = {}
        self._deferred: dict[str, _Message] = {}
        self._tasks: collections.deque = collections.deque()
        self._tasks_cond = threading.Condition()
        self._sched = _Scheduler()
        self._threads: list[threading.Thread] = []
        self._journals: list[_Journal] = []
        self._in_batch: dict[str, list[LocalJob]] = {}
        self._timer: Any = None
        self._tmp_counter = itertools.count(1)
        self._spare_dir = str(self.spool / "gponsim" / "spare")
        self._spares: collections.deque[tuple[int, str, int]] = collections.deque()
        self._spare_cond = threading.Condition()
        self._fsync_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._opened = 0                # queue files open() handed out so far
        self._retired = 0               # queue files qmgr finished with so far
        self._recycling = True          # ... kept for reuse (see _retire)
        self._removals = 0              # queue files removed from active/ so far
        self._removals_synced = 0       # ... of which active/ was fsync-ed after
        self._started = False
        self._stopping = False
        for name in QUEUE_DIRS + ("gponsim", "gponsim/spare"):
            (self.spool / name).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ steps
    def _step(self, proto: str, src: str, dst: str, verb: str, line: str, session: str,
              **meta: Any) -> Step:
        step = Step(t=self.clock(), session=session, proto=proto, src=src, dst=dst,
                    dir="internal", kind="event", line=line, verb=verb,
                    meta={k: v for k, v in meta.items() if v is not None})
        return annotate(step)

    def _post(self, steps: list[Step], calls: list[tuple[Callable, tuple]] = ()) -> None:
        """Hand Steps and callbacks to the reactor thread, in order."""
        if not steps and not calls:
            return
        self.reactor.callFromThread(self._run_posted, steps, list(calls))

    def _run_posted(self, steps: list[Step], calls: list[tuple[Callable, tuple]]) -> None:
        for step in steps:
            self.emit(step)
        for fn, args in calls:
            fn(*args)

    # ------------------------------------------------------------ smtpd side
    def open(self, envelope: Envelope, *, log_tag: str = "postfix/smtpd",
             log_client: bool = True) -> QueueFile:
        """Create a queue file in ``incoming/`` (smtpd calls this at the first
        accepted RCPT TO) and log ``QID: client=unknown[ip]``.

        ``log_tag`` is the smtpd's log name (``postfix/submission/smtpd``
        on port 587). Recipients already in ``envelope`` are kept; add the
        others with :meth:`QueueFile.add_recipient`.
        """
        try:
            fd, spare, inode = self._spares.popleft()
        except IndexError:
            fd, spare, inode = self._new_spare()
        created = self.clock()
        qid = short_queue_id(int((created % 1) * 1_000_000) % 1_000_000, inode)
        env = replace(envelope, recipients=list(envelope.recipients),
                      orig_recipients=list(envelope.orig_recipients))
        while len(env.orig_recipients) < len(env.recipients):
            env.orig_recipients.append("")
        text = f"{qid}: client={env.client_name or 'unknown'}[{env.client_ip}]"
        if env.sasl_method:
            text += f", sasl_method={env.sasl_method}, sasl_username={env.sasl_username or ''}"
        if log_client:   # bounce(8) posts its notifications without this line
            self.log.write(log_tag, pid_for(log_tag), text)
            self.emit(self._step("queue", "smtpd", "cleanup", "CLIENT", text, env.session,
                                 qid=qid, client=env.client_ip,
                                 sasl_username=env.sasl_username))
        qf = QueueFile(self, qid, fd, env, created, spare)
        self._opened += 1
        self._submit(("place", qf))
        if len(self._spares) in _SPARE_MARKS:
            with self._spare_cond:
                self._spare_cond.notify()
        return qf

    # Spare queue files. Creating or renaming a file in the reactor thread
    # would make every session wait behind the directory fsyncs of the other
    # threads, so a small thread keeps a few empty files ready in gponsim's
    # private ``gponsim/spare/``. open() takes one (its queue id is its inode
    # plus the microseconds of the time open() was called) and the qmgr
    # thread moves it to incoming/QID right away, before anything else it
    # does for that file (commit, abort).
    def _spare_path(self) -> str:
        """A new name in gponsim/spare/ for a spare file of this process."""
        return os.path.join(self._spare_dir, f"t{os.getpid()}.{next(self._tmp_counter)}")

    def _new_spare(self) -> tuple[int, str, int]:
        tmp = self._spare_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, WRITING_MODE)
        return fd, tmp, os.fstat(fd).st_ino

    def _recycled(self) -> list[tuple[str, int]] | None:
        """(name, inode) of the recycled queue files (``r<QID>``) waiting in
        gponsim/spare/; None when the folder cannot be read."""
        try:
            with os.scandir(self._spare_dir) as entries:
                return [(e.name, e.inode()) for e in entries if e.name.startswith("r")]
        except OSError:
            return None

    def _reused_spares(self, wanted: int) -> list[tuple[int, str, int]]:
        """Up to ``wanted`` spares made of recycled queue files."""
        out: list[tuple[int, str, int]] = []
        for name, inode in self._recycled() or ():
            if len(out) >= wanted or self._stopping:
                break
            tmp = self._spare_path()
            try:
                os.rename(os.path.join(self._spare_dir, name), tmp)  # taken by another process?
            except FileNotFoundError:
                continue
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
            except OSError:
                continue
            os.fchmod(fd, WRITING_MODE)
            out.append((fd, tmp, inode))         # a rename keeps the inode
        return out

    def _spare_loop(self) -> None:
        """Thread: keep about SPARE_FILES empty files ready (refill at half).

        Recycled queue files come first. New files are made only to keep
        SPARE_FILES // 4 ready; above that, while mail comes in, the thread
        looks again every SPARE_RETRY seconds until recycled files fill it
        up (under load, qmgr recycles one per delivered message). open()
        wakes it when the count falls below half or below a quarter.
        """
        half, quarter = SPARE_FILES // 2, SPARE_FILES // 4
        pause: float | None = 0.0       # before the next pass: None = until open() wakes it
        opened = 0
        while True:
            with self._spare_cond:
                if pause != 0.0 and not self._stopping:
                    self._spare_cond.wait(pause)
                while len(self._spares) >= half and not self._stopping:
                    self._spare_cond.wait()
            if self._stopping:
                return
            try:
                self._spares.extend(self._reused_spares(SPARE_FILES - len(self._spares)))
                while len(self._spares) < quarter and not self._stopping:
                    self._spares.append(self._new_spare())
            except OSError as exc:
                self.log.postfix("cleanup", f"warning: cannot create a queue file: {exc.strerror}",
                                 self.syslog_name)
                with self._spare_cond:
                    self._spare_cond.wait(5.0)
            # Short of spares: look again soon while mail is coming in; an
            # idle lab sleeps until open() takes one.
            if len(self._spares) >= half:
                pause = 0.0
            else:
                pause = SPARE_RETRY if self._opened != opened else None
            opened = self._opened

    def _task_place(self, qf: QueueFile) -> None:
        os.rename(qf._spare, qf.path)

    def _task_abort(self, qf: QueueFile) -> None:
        qf._close()
        for path in (qf.path, qf._spare):
            try:
                os.unlink(path)
                break
            except FileNotFoundError:
                continue

    def _drop_spares(self) -> None:
        while self._spares:
            fd, tmp, _inode = self._spares.popleft()
            os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _qualify(self, address: str) -> str:
        """``user`` -> ``user@$myorigin`` (trivial-rewrite's append_at_myorigin)."""
        return address if (not address or "@" in address) else f"{address}@{self.myorigin}"

    def _cleanup(self, qf: QueueFile, message: bytes) -> _Message:
        """cleanup(8) in the reactor thread: headers, dedup, logging."""
        env = qf.envelope
        env.sender = self._qualify(env.sender)
        seen: set[tuple[str, str]] = set()
        recipients, origs = [], []
        for i, rcpt in enumerate(env.recipients):
            orig = env.original(i)
            final = self._qualify(rcpt)
            key = (final.lower(), orig.lower())
            if key in seen:       # cleanup's duplicate recipient filter
                continue
            seen.add(key)
            recipients.append(final)
            origs.append(orig if orig != final else "")
        env.recipients, env.orig_recipients = recipients, origs
        local_client = is_local_client(env.client_ip, self.interface_addresses)
        result = cleanup_message(message, qid=qf.qid, sender=env.sender,
                                 arrival=env.arrival, created=qf.created,
                                 myhostname=self.myhostname,
                                 add_missing_headers=local_client or self.always_add_missing_headers)
        for text in result.log_lines:
            self.log.postfix("cleanup", f"{qf.qid}: {text}", self.syslog_name)
        self.emit(self._step("queue", "smtpd", "cleanup", "RECEIVED",
                             f"{qf.qid}: message-id={result.message_id}", env.session,
                             qid=qf.qid, message_id=result.message_id, size=result.size,
                             added_headers=result.added or None, hops=result.hops))
        return _Message(qf.qid, qf.path, env, result.content, result.size, qf.created)

    # ------------------------------------------------------- service thread
    def _submit(self, task: tuple) -> None:
        with self._tasks_cond:
            self._tasks.append(task)
            self._tasks_cond.notify()

    def _service_loop(self) -> None:
        while True:
            with self._tasks_cond:
                while not self._tasks and not self._stopping:
                    self._tasks_cond.wait()
                if not self._tasks and self._stopping:
                    return
                tasks = list(self._tasks)
                self._tasks.clear()
            # Files move into incoming/ first, then group commit, then the rest.
            for task in tasks:
                if task[0] == "place":
                    self._guard(self._task_place, task[1])
            commits = [t for t in tasks if t[0] == "commit"]
            if commits:
                self._guard(self._commit_group, commits)
            for task in tasks:
                if task[0] in ("place", "commit") or (self._stopping and task[0] != "abort"):
                    continue
                self._guard(getattr(self, "_task_" + task[0]), *task[1:])

    def _guard(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the queue
            self.log.postfix("qmgr", f"warning: {fn.__name__}: {exc!r}", self.syslog_name)

    def _commit_group(self, commits: list[tuple]) -> None:
        """Group commit: write + fsync every file, rename all, fsync the directory once."""
        active = self.spool / "active"
        written: list[tuple[QueueFile, _Message, Any]] = []
        failed: list[tuple[Callable, tuple]] = []
        def write(item: tuple) -> tuple:
            _, qf, msg, _d = item
            header = {"qid": qf.qid, "created": qf.created, "length": len(msg.content),
                      "size": msg.size, "envelope": msg.env.to_dict()}
            data = MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + msg.content
            try:
                _write_all(qf._fd, data)
                os.fchmod(qf._fd, READY_MODE)
                os.fsync(qf._fd)
            except OSError as exc:
                return item, exc
            return item, None

        # The fsyncs run side by side: the filesystem journal then commits
        # them together instead of one after another.
        if len(commits) > 1 and self._fsync_pool is not None:
            outcomes = list(self._fsync_pool.map(write, commits))
        else:
            outcomes = [write(item) for item in commits]
        for (_, qf, msg, d), exc in outcomes:
            if exc is None:
                qf._close()
            else:
                qf._close()
                try:
                    os.unlink(qf.path)
                except OSError:
                    pass
                qf.state = "aborted"
                self.log.postfix("cleanup", f"{qf.qid}: warning: queue file write error: "
                                 f"{os.strerror(exc.errno or 5)}", self.syslog_name)
                failed.append((d.errback, (QueueWriteError(str(exc)),)))
                continue
            written.append((qf, msg, d))
        _fault("after-fsync")
        # The files are durable and complete (mode 0700) in incoming/, which
        # recovery treats as committed: the move to active/ needs no
        # directory fsync (see *Durability* in the module docstring).
        moved: list[tuple[QueueFile, _Message, Any]] = []
        for qf, msg, d in written:
            try:
                os.rename(qf.path, active / qf.qid)
            except OSError as exc:
                try:
                    os.unlink(qf.path)          # not acknowledged: not queued
                except OSError:
                    pass
                qf.state = "aborted"
                failed.append((d.errback, (QueueWriteError(str(exc)),)))
                continue
            msg.path = active / qf.qid
            moved.append((qf, msg, d))
        written = moved
        _fault("after-commit")
        now = self.clock()
        steps: list[Step] = []
        calls: list[tuple[Callable, tuple]] = list(failed)
        for qf, msg, d in written:
            qf.state = "committed"
            if self.handoff is not None:      # an smtpd process: the master's qmgr takes it
                calls.append((self.handoff, (qf.qid,)))
            else:
                steps.append(self._queued(msg, now))
            calls.append((d.callback, (qf.qid,)))
        self._post(steps, calls)
        if self.handoff is None:
            for _qf, msg, _d in written:
                self._safe_activate(msg)

    def _queued(self, msg: _Message, now: float) -> Step:
        """qmgr takes a committed message into the active queue: its log line and Step."""
        msg.active_arrival = now
        with self._lock:
            self._messages[msg.qid] = msg
        return self._step("queue", "cleanup", "qmgr", "QUEUED", self._qmgr_active_line(msg),
                          msg.env.session, qid=msg.qid, sender=msg.env.sender, size=msg.size,
                          nrcpt=len(msg.env.recipients))

    def pickup(self, qid: str) -> None:
        """A queue file committed by an smtpd process (its cleanup's notice,
        as Postfix's cleanup tells qmgr through ``public/qmgr``): deliver it."""
        self._submit(("pickup", qid))

    def rescan(self) -> None:
        """Take every file in ``active/`` that qmgr does not know yet (after an
        smtpd process ended without telling qmgr of all it committed)."""
        self._submit(("rescan",))

    def _task_pickup(self, qid: str) -> None:
        with self._lock:
            if qid in self._messages or qid in self._deferred:
                return
        try:
            msg = self._load(self.spool / "active" / qid)
        except FileNotFoundError:      # delivered and removed already
            return
        if msg is None:
            return
        self._post([self._queued(msg, self.clock())])
        self._safe_activate(msg)

    def _task_rescan(self) -> None:
        for path in sorted((self.spool / "active").iterdir()):
            self._task_pickup(path.name)

    def _qmgr_active_line(self, msg: _Message) -> str:
        text = (f"{msg.qid}: from=<{msg.env.sender}>, size={msg.size}, "
                f"nrcpt={len(msg.env.recipients)} (queue active)")
        self.log.postfix("qmgr", text, self.syslog_name)
        return text

    # ----------------------------------------------------------------- qmgr
    def _is_local(self, address: str) -> bool:
        if "@" not in address:
            return True
        return bool(self.is_local_domain(address.rpartition("@")[2].lower()))

    def _safe_activate(self, msg: _Message) -> None:
        """``_activate``; if routing fails (a bug, a failing lookup), the
        message waits in the deferred queue instead of being stranded."""
        try:
            self._activate(msg)
        except Exception as exc:  # noqa: BLE001
            self.log.postfix("qmgr", f"warning: {msg.qid}: cannot route the message: {exc!r}",
                             self.syslog_name)
            for index in msg.pending():
                msg.deferred[index] = ("4.3.0", "mail system configuration error")
            msg.outstanding = 0
            with msg.lock:
                if not msg.done:
                    dirs = self._finalize_locked(msg)
                    for d in dirs:
                        _fsync_dir(d)

    def _activate(self, msg: _Message) -> None:
        """Route every pending recipient of an active message."""
        env = msg.env
        local_jobs: list[tuple[str, LocalJob]] = []
        relay: list[tuple[int, str, str]] = []
        deferrals: list[int] = []
        for index in msg.pending():
            rcpt = env.recipients[index]
            if self._is_local(rcpt):
                user, _local = self.agent.split_recipient(rcpt)
                orig = env.orig_recipients[index] if index < len(env.orig_recipients) else ""
                local_jobs.append((user, LocalJob(
                    qid=msg.qid, index=index, sender=env.sender, recipient=rcpt,
                    orig_rcpt=orig or rcpt, content=msg.content or b"", arrival=env.arrival,
                    active_arrival=msg.active_arrival, session=env.session, ref=msg)))
            elif self.relay_transport is not None:
                relay.append((index, rcpt, env.original(index)))
            else:
                deferrals.append(index)
        msg.outstanding = len(local_jobs) + (1 if relay else 0)
        steps = [self._defer_transport(msg, index) for index in deferrals]
        calls: list[tuple[Callable, tuple]] = []
        if relay:
            req = RelayRequest(qid=msg.qid, envelope=env, recipients=relay,
                               content=msg.content or b"", active_arrival=msg.active_arrival)
            steps.append(self._step("queue", "qmgr", "smtp", "RELAY",
                                    f"{msg.qid}: qmgr -> smtp: "
                                    + ", ".join(f"to=<{r[1]}>" for r in relay),
                                    env.session, qid=msg.qid, logged=False,
                                    recipients=[r[1] for r in relay]))
            calls.append((self._start_relay, (msg, req)))
        self._post(steps, calls)
        if local_jobs:
            self._sched.add(local_jobs)
        if not local_jobs and not relay:
            with msg.lock:
                dirs = self._finalize_locked(msg)
            for d in dirs:
                _fsync_dir(d)

    def _defer_transport(self, msg: _Message, index: int) -> Step:
        """``defer_transports = smtp``: error(8) defers the recipient."""
        now = self.clock()
        rcpt = msg.env.recipients[index]
        delays = (max(0.0, msg.active_arrival - msg.env.arrival),
                  max(0.0, now - msg.active_arrival), 0.0, 0.0)
        line = delivery_line(msg.qid, rcpt, orig_to=msg.env.original(index), relay="none",
                             delays=delays, dsn="4.3.2", status="deferred",
                             reason="deferred transport")
        self.log.postfix("error", line, self.syslog_name)
        msg.deferred[index] = ("4.3.2", "deferred transport")
        return self._step("queue", "qmgr", "smtp", "DEFERRED", line, msg.env.session,
                          qid=msg.qid, recipient=rcpt, status="deferred", dsn="4.3.2")

    def _start_relay(self, msg: _Message, req: RelayRequest) -> None:
        """Reactor thread: hand the non-local recipients to the SMTP client."""
        from twisted.internet import defer

        def failed(reason: Any) -> list[RecipientStatus]:
            text = reason.getErrorMessage() if hasattr(reason, "getErrorMessage") else str(reason)
            return [RecipientStatus(i, "deferred", "4.3.0", text) for i, _a, _o in req.recipients]

        d = defer.maybeDeferred(self.relay_transport.deliver, req)  # type: ignore[union-attr]
        d.addErrback(failed)
        d.addCallback(lambda results: self._submit(("relay_done", msg, req, results)))

    def _task_relay_done(self, msg: _Message, req: RelayRequest,
                         results: list[RecipientStatus]) -> None:
        by_index = {r.index: r for r in results}
        outcome = []
        for index, _addr, _orig in req.recipients:
            r = by_index.get(index) or RecipientStatus(index, "deferred", "4.3.0",
                                                       "no status from transport")
            outcome.append((msg, index, r.status, r.dsn, r.reason))
        self._record_outcomes(outcome, already_counted=1)

    def _task_reactivate(self, qid: str) -> None:
        with self._lock:
            msg = self._deferred.pop(qid, None)
        if msg is None:
            return
        active = self.spool / "active" / qid
        try:
            os.rename(msg.path, active)
        except FileNotFoundError:
            return
        parsed = _parse_queue_file(active)
        if parsed is None:
            self._corrupt(active)
            return
        msg.path = active
        msg.content = parsed.content
        msg.deferred.clear()
        msg.done = False
        msg.active_arrival = self.clock()
        with self._lock:
            self._messages[qid] = msg
        self._post([self._step("queue", "qmgr", "qmgr", "RETRY",
                               self._qmgr_active_line(msg), msg.env.session,
                               qid=qid, sender=msg.env.sender, size=msg.size,
                               nrcpt=len(msg.pending()))])
        self._safe_activate(msg)

    # ------------------------------------------------------ delivery workers
    def _lock_wait(self, user: str, attempt: int, kind: str) -> None:
        jobs = self._in_batch.get(user) or []
        path, display = self.agent.mailbox_path(user)
        if jobs:
            line = (f"{jobs[0].qid}: {display}.lock exists, retry {attempt + 1}/"
                    f"{self.agent.lock_attempts} in {self.agent.lock_delay:g}s"
                    if kind == "dotlock" else
                    f"{jobs[0].qid}: {display} is fcntl-locked, retry {attempt + 1}/"
                    f"{self.agent.lock_attempts} in {self.agent.lock_delay:g}s")
            self._post([self._step("delivery", "local", "mailbox", "LOCKWAIT", line,
                                   jobs[0].session, qid=jobs[0].qid, mailbox=display,
                                   attempt=attempt, lock=kind, logged=False)])
        if self._user_lock_hook is not None:
            self._user_lock_hook(user, attempt, kind)

    def _idle_sync(self) -> None:
        """A worker with nothing to do makes the removals durable now rather
        than at its next batch (fewer journaled intents to look up after a crash)."""
        try:
            self._sync_removals()
        except OSError as exc:
            self.log.postfix("qmgr", f"warning: fsync of the active queue: {exc.strerror}",
                             self.syslog_name)

    def _worker_loop(self, journal: _Journal) -> None:
        while True:
            item = self._sched.take(self._idle_sync)
            if item is None:
                return
            user, jobs = item
            try:
                self._deliver_batch(journal, user, jobs)
            except Exception as exc:  # noqa: BLE001
                self.log.postfix("qmgr", f"warning: local delivery to {user} failed: {exc!r}",
                                 self.syslog_name)
                self._record_outcomes([(job.ref, job.index, "deferred", "4.3.0",
                                        "mail system error") for job in jobs])
            finally:
                self._sched.done(user)

    def _sync_removals(self) -> None:
        """``fsync`` active/ if queue files were removed from it since the last time.

        Called before a delivery journal forgets its previous batch: the
        removals that stand for those outcomes (see :meth:`_record_outcomes`)
        are durable by then, whichever worker made them.
        """
        with self._lock:
            upto = self._removals
        if upto > self._removals_synced:
            _fsync_dir(self.spool / "active")
            with self._lock:
                self._removals_synced = max(self._removals_synced, upto)

    def _deliver_batch(self, journal: _Journal, user: str, jobs: list[LocalJob]) -> None:
        journal.begin(self._sync_removals)
        self._post([self._step("queue", "qmgr", "local", "DELIVER",
                               f"{job.qid}: qmgr -> local: to=<{job.recipient}>", job.session,
                               qid=job.qid, recipient=job.recipient, logged=False)
                    for job in jobs])
        self._in_batch[user] = jobs
        try:
            results = self.agent.deliver(user, jobs, journal=journal.record)
        finally:
            self._in_batch.pop(user, None)
        _fault("after-mailbox")
        steps = []
        bounces = []
        for r in results:
            job = r.job
            if r.status == "sent":
                steps.append(self._step("delivery", "local", "mailbox", "DELIVERED", r.line,
                                        job.session, qid=job.qid, recipient=job.recipient,
                                        orig_to=job.orig_rcpt, mailbox=r.mailbox,
                                        status="sent", dsn=r.dsn, length=r.length))
            else:
                verb = "BOUNCED" if r.status == "bounced" else "DEFERRED"
                steps.append(self._step("delivery", "local", "qmgr", verb, r.line, job.session,
                                        qid=job.qid, recipient=job.recipient,
                                        status=r.status, dsn=r.dsn, reason=r.reason))
                if r.status == "bounced":
                    bounces.append(r)
        self._record_outcomes([(r.job.ref, r.job.index, r.status, r.dsn, r.reason)
                               for r in results], journal=journal, steps=steps)

    def _record_outcomes(self, outcomes: list[tuple[_Message, int, str, str, str]],
                         already_counted: int | None = None, journal: _Journal | None = None,
                         steps: list[Step] | None = None) -> None:
        """Apply delivery verdicts; make finals durable; finish done messages.

        Each outcome counts one unit of ``outstanding``, except relay
        results, which count ``already_counted`` units for the whole batch.
        ``journal``: the delivery worker's journal, which holds every one of
        these outcomes (intent or bounce) until its next batch: a queue file
        removed here has its directory fsync-ed then (:meth:`_sync_removals`),
        not now. ``steps`` are posted first, with the REMOVED steps, in one
        hand-off.
        """
        steps = list(steps or [])
        touched: dict[str, _Message] = {}
        with self._lock:
            for msg, index, status, dsn, reason in outcomes:
                if status in ("sent", "bounced"):
                    msg.final[index] = (status, dsn, reason)
                    msg.unsynced.append(index)
                else:
                    msg.deferred[index] = (dsn, reason)
                if already_counted is None:
                    msg.outstanding -= 1
                touched[msg.qid] = msg
            if already_counted is not None:
                for msg in touched.values():
                    msg.outstanding -= already_counted
        dirs: set[Path] = set()
        calls: list[tuple[Callable, tuple]] = []
        for msg, index, status, dsn, reason in outcomes:
            if status == "bounced" and self.on_bounce is not None:
                calls.append((self.on_bounce, (BounceNotice(
                    msg.qid, msg.env, msg.env.recipients[index], msg.env.original(index), dsn,
                    reason, msg.content or b""),)))
        # Only local(8)'s "sent" outcomes are surely journaled (intents); a
        # bounce or deferral may not be, so its removal is fsync-ed at once.
        unjournaled = {m.qid for m, _i, status, _d, _r in outcomes if status != "sent"}
        for msg in touched.values():
            with msg.lock:
                if msg.done:
                    continue
                if msg.outstanding <= 0:
                    dirs |= self._finalize_locked(
                        msg, steps, journaled=journal is not None and msg.qid not in unjournaled)
                elif msg.unsynced:
                    self._append_records(msg, [])
        for d in dirs:
            _fsync_dir(d)
        self._post(steps, calls)

    def _append_records(self, msg: _Message, extra: list[bytes], mtime: float | None = None) -> None:
        with self._lock:       # other workers add to ``unsynced`` under this lock
            synced = list(msg.unsynced)
            finals = [(i, msg.final[i]) for i in synced]
        records = [_record("D", {"r": i, "status": s, "dsn": d, "reason": why,
                                 "t": round(self.clock(), 3)})
                   for i, (s, d, why) in finals]
        fd = os.open(msg.path, os.O_WRONLY | os.O_APPEND)
        try:
            if records or extra:
                _write_all(fd, b"".join(records + extra))
            if mtime is not None:
                os.utime(fd, (self.clock(), mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            msg.unsynced = [i for i in msg.unsynced if i not in synced]

    def _finalize_locked(self, msg: _Message, steps: list[Step] | None = None,
                         journaled: bool = False) -> set[Path]:
        """All recipients handled for now: remove the file or move it to deferred.

        Returns the directories to fsync. Caller holds ``msg.lock``.
        ``steps``: append the REMOVED step there instead of posting it.
        ``journaled``: the outcomes are in a delivery journal, so a removal
        is made durable later, by :meth:`_sync_removals`.
        """
        msg.done = True
        now = self.clock()
        if not msg.deferred:
            self._retire(msg.path, msg.qid)
            text = f"{msg.qid}: removed"
            self.log.postfix("qmgr", text, self.syslog_name)
            with self._lock:
                self._messages.pop(msg.qid, None)
                self._removals += 1
            step = self._step("queue", "qmgr", "qmgr", "REMOVED", text, msg.env.session,
                              qid=msg.qid)
            if steps is not None:
                steps.append(step)
            else:
                self._post([step])
            return set() if journaled else {msg.path.parent}
        if now - msg.env.arrival > self.maximal_queue_lifetime:
            return self._expire_locked(msg)
        age = now - msg.env.arrival
        backoff = min(max(age, self.minimal_backoff_time), self.maximal_backoff_time)
        msg.next_attempt = now + backoff
        extra = [_record("R", {"r": i, "dsn": d, "reason": why, "t": round(now, 3)})
                 for i, (d, why) in sorted(msg.deferred.items())]
        self._append_records(msg, extra, mtime=msg.next_attempt)
        target_dir = self.spool / "deferred" / hash_dir(msg.qid)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / msg.qid
        os.rename(msg.path, target)
        old_dir = msg.path.parent
        msg.path = target
        msg.content = None
        with self._lock:
            self._messages.pop(msg.qid, None)
            self._deferred[msg.qid] = msg
        return {target_dir, old_dir}

    def _retire(self, path: Path, qid: str) -> None:
        """Take a finished queue file out of the queue: to gponsim/spare/ for
        reuse while fewer than RECYCLE_MAX wait there, else unlink it."""
        with self._lock:
            self._retired += 1
            check = self._retired % RECYCLE_CHECK == 0
        if check:
            waiting = self._recycled()
            self._recycling = waiting is not None and len(waiting) < RECYCLE_MAX
        if self._recycling:
            try:
                os.rename(path, os.path.join(self._spare_dir, "r" + qid))
                return
            except OSError:
                pass
        os.unlink(path)

    def _expire_locked(self, msg: _Message) -> set[Path]:
        text = f"{msg.qid}: from=<{msg.env.sender}>, status=expired, returned to sender"
        self.log.postfix("qmgr", text, self.syslog_name)
        steps = [self._step("queue", "qmgr", "qmgr", "EXPIRED", text, msg.env.session,
                            qid=msg.qid, status="expired")]
        calls: list[tuple[Callable, tuple]] = []
        if self.on_bounce is not None:
            for i, (dsn, why) in sorted(msg.deferred.items()):
                calls.append((self.on_bounce, (BounceNotice(
                    msg.qid, msg.env, msg.env.recipients[i], msg.env.original(i),
                    "5" + dsn[1:], f"message expired: {why}", msg.content or b""),)))
        os.unlink(msg.path)
        removed = f"{msg.qid}: removed"
        self.log.postfix("qmgr", removed, self.syslog_name)
        steps.append(self._step("queue", "qmgr", "qmgr", "REMOVED", removed, msg.env.session,
                                qid=msg.qid))
        with self._lock:
            self._messages.pop(msg.qid, None)
        self._post(steps, calls)
        return {msg.path.parent}

    def _corrupt(self, path: Path) -> None:
        target = self.spool / "corrupt" / path.name
        os.rename(path, target)
        self.log.postfix("qmgr", f"warning: {path.name}: unreadable queue file; "
                         f"moved to corrupt queue", self.syslog_name)

    # ------------------------------------------------------- deferred queue
    def _queue_run(self) -> None:
        """Reactor thread, every ``queue_run_delay``: retry due deferred mail."""
        self._timer = None
        if self._stopping:
            return
        now = self.clock()
        with self._lock:
            due = [qid for qid, m in self._deferred.items() if m.next_attempt <= now]
        for qid in due:
            self._submit(("reactivate", qid))
        self._timer = self.reactor.callLater(self.queue_run_delay, self._queue_run)

    def flush(self) -> int:
        """``postqueue -f``: retry every deferred message now; returns how many."""
        with self._lock:
            qids = list(self._deferred)
        for qid in qids:
            self._submit(("reactivate", qid))
        return len(qids)

    # ------------------------------------------------------- start and stop
    def start(self) -> None:
        """Recover what a previous run left (see the module docstring), then run."""
        if self._started:
            return
        self._started = True
        journal_paths = sorted((self.spool / "gponsim").glob("journal.*"))
        journal: dict[tuple[str, int], tuple[str, dict]] = {}
        for jp in journal_paths:
            for kind, rec in _Journal.read(jp):
                try:
                    journal[(rec["q"], int(rec["r"]))] = (kind, rec)
                except (KeyError, TypeError, ValueError):
                    continue
        incoming = self.spool / "incoming"
        active = self.spool / "active"
        for p in list(Path(self._spare_dir).iterdir()):
            p.unlink()                          # spare and recycled files of a previous run
        for p in list(incoming.iterdir()):
            try:
                ready = is_queue_id(p.name) and bool(p.stat().st_mode & 0o100)
            except FileNotFoundError:
                continue
            if not ready or _parse_queue_file(p, with_content=False) is None:
                p.unlink()                      # never acknowledged
                continue
            os.rename(p, active / p.name)
        to_activate: list[_Message] = []
        dirs: set[Path] = {incoming, active}
        for p in sorted(active.iterdir()):
            msg = self._load(p)
            if msg is None:
                continue
            self._recover_finals(msg, journal)
            if not msg.pending():
                os.unlink(p)
                self.log.postfix("qmgr", f"{msg.qid}: removed", self.syslog_name)
                continue
            if msg.unsynced:
                self._append_records(msg, [])
            to_activate.append(msg)
        deferred = self.spool / "deferred"
        for sub in sorted(deferred.iterdir()):
            if not sub.is_dir():
                continue
            for p in sorted(sub.iterdir()):
                msg = self._load(p, with_content=False)
                if msg is None:
                    continue
                msg.done = True
                msg.next_attempt = p.stat().st_mtime
                self._deferred[msg.qid] = msg
        for d in dirs:
            _fsync_dir(d)
        self._journals = []
        for n in range(self._workers_wanted):
            j = _Journal(self.spool / "gponsim" / f"journal.{n}")
            j.begin()
            self._journals.append(j)
        for jp in journal_paths:
            if jp.name not in {f"journal.{n}" for n in range(self._workers_wanted)}:
                jp.unlink()
        self._start_threads()
        now = self.clock()
        for msg in to_activate:
            msg.active_arrival = now
            with self._lock:
                self._messages[msg.qid] = msg
            self._submit(("activate_recovered", msg))
        self._timer = self.reactor.callLater(0, self._queue_run)

    def start_cleanup(self) -> None:
        """Run cleanup's part only, in an smtpd process: queue files are
        written and committed here and handed to ``handoff``; the master's
        queue recovers, routes and delivers (so nothing is recovered here)."""
        if self._started:
            return
        if self.handoff is None:
            raise RuntimeError("start_cleanup() needs a handoff")
        self._started = True
        self._start_threads()

    def _start_threads(self) -> None:
        self._stopping = False
        self._threads = [background_thread(self._service_loop, "gponsim-qmgr")]
        for n, j in enumerate(self._journals):
            self._threads.append(background_thread(self._worker_loop, f"gponsim-local-{n}", (j,)))
        self._threads.append(background_thread(self._spare_loop, "gponsim-spares"))
        self._fsync_pool = concurrent.futures.ThreadPoolExecutor(4, "gponsim-fsync",
                                                                initializer=lower_to_batch)
        for t in self._threads:
            t.start()

    def _task_activate_recovered(self, msg: _Message) -> None:
        self._post([self._step("queue", "qmgr", "qmgr", "RECOVERED",
                               self._qmgr_active_line(msg), msg.env.session,
                               qid=msg.qid, sender=msg.env.sender, size=msg.size,
                               nrcpt=len(msg.pending()))])
        self._safe_activate(msg)

    def _load(self, path: Path, with_content: bool = True) -> _Message | None:
        if not is_queue_id(path.name):
            path.unlink()
            return None
        parsed = _parse_queue_file(path, with_content)
        if parsed is None:
            self._corrupt(path)
            return None
        if parsed.valid_end < parsed.file_size:      # torn record: cut it off
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, parsed.valid_end)
                os.fsync(fd)
            finally:
                os.close(fd)
        env = Envelope.from_dict(parsed.header["envelope"])
        msg = _Message(parsed.header["qid"], path, env, parsed.content if with_content else None,
                       int(parsed.header.get("size", 0)), float(parsed.header.get("created", 0)))
        msg.final = dict(parsed.finals)
        msg.deferred = {i: r for i, r in parsed.reasons.items() if i not in msg.final}
        return msg

    def _recover_finals(self, msg: _Message, journal: dict[tuple[str, int], tuple[str, dict]]
                        ) -> None:
        for index in msg.pending():
            entry = journal.get((msg.qid, index))
            if entry is None:
                continue
            kind, rec = entry
            if kind == "B":
                msg.final[index] = (rec.get("status", "bounced"), rec.get("dsn", ""),
                                    rec.get("reason", ""))
                msg.unsynced.append(index)
            elif kind == "I":
                rcpt = msg.env.recipients[index]
                orig = msg.env.orig_recipients[index] if index < len(msg.env.orig_recipients) else ""
                job = LocalJob(qid=msg.qid, index=index, sender=msg.env.sender, recipient=rcpt,
                               orig_rcpt=orig or rcpt, content=msg.content or b"",
                               arrival=msg.env.arrival, active_arrival=msg.env.arrival)
                if self.agent.find_delivered(rec["m"], job, int(rec["o"]), int(rec["n"]),
                                             float(rec["t"])):
                    msg.final[index] = ("sent", "2.0.0", "delivered to mailbox")
                    msg.unsynced.append(index)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the threads. Committed messages stay on disk for the next start.

        Commits already handed over are finished first (their senders may
        be waiting for the 250). A delivery waiting for a mailbox lock may
        take up to ``timeout`` to notice.
        """
        if not self._started or self._stopping:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        with self._tasks_cond:
            self._stopping = True
            self._tasks_cond.notify_all()
        with self._spare_cond:
            self._spare_cond.notify_all()
        self._sched.stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        if not alive:
            for j in self._journals:
                j.close()
            self._journals = []
            self._drop_spares()
        if self._fsync_pool is not None:
            self._fsync_pool.shutdown(wait=not alive)
            self._fsync_pool = None
        self._threads = alive
        self._started = False

    # ---------------------------------------------------------------- mailq
    def entries(self) -> list[QueueEntry]:
        """What ``mailq`` would show (read from the spool)."""
        return list_queue(self.root)
