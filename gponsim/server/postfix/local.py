"""local(8): delivery to ``/var/mail/<user>`` in mbox format, as Postfix does it.

Each message is appended (``src/local/mailbox.c``, ``src/global/mail_copy.c``)
as::

    From user1@gponlab.local  Mon Jan  1 12:00:00 2024      <- From_ line (RFC 4155)
    Return-Path: <user1@gponlab.local>
    X-Original-To: user2@gponlab.local                      <- the RCPT TO address
    Delivered-To: user2@gponlab.local                       <- the final recipient
    Received: from ...                                      <- the queued message
    ...
    >From the body, quoted                                  <- mboxo quoting
                                                            <- one blank line

- From_ line: ``From``, the envelope sender (``MAILER-DAEMON`` for the null
  sender ``<>``), **two** spaces, the 24-character ``asctime()`` of the
  delivery time in local time (day padded with a space, unlike Dovecot's own
  zero-padded From_ lines).
- Every line that starts with ``From `` gets a ``>`` in front (the mboxo
  variant: ``>From`` lines are left alone, so the quoting cannot be undone).
- A message without a final newline gets one, then the blank line.
- The entry is built by :func:`gponsim.server.mailstore.mboxentry.mbox_entry`,
  the one function every mbox writer of the lab uses (Dovecot's own with
  its zero-padded From_ day).
- The file is opened ``O_APPEND|O_CREAT`` mode 0600 and locked the way
  ``mailbox_delivery_lock = fcntl, dotlock`` does on Debian: first the
  dotlock ``/var/mail/user.lock`` (``O_CREAT|O_EXCL``; up to 20 attempts
  1 s apart; a lock file older than 500 s is stale and removed; like
  Dovecot, gponsim writes ``pid:hostname`` in its lock files and also breaks
  a lock whose process is gone), then a kernel ``fcntl`` lock. Dovecot takes the same locks in the same order
  (``mbox_write_locks = dotlock fcntl``), so the two never deadlock.
- After writing, the file is ``fsync``-ed; on any error it is truncated back
  to its original size, so a reader never sees half a message.
- ``mailbox_size_limit`` (default 51200000, 0 = unlimited) is enforced like
  Postfix's file size resource limit: a message that would make the mailbox
  larger fails with ``EFBIG`` and bounces (``dsn=5.2.2``)::

    cannot update mailbox /var/mail/user2 for user user2. error writing message: File too large

The kernel lock is an open-file-description lock (``F_OFD_SETLK``) where
the platform has it: it conflicts with the classic ``fcntl`` locks that real
Postfix and Dovecot take, *and* between threads of this process (classic
POSIX locks do not exclude threads of one process). Code in gponsim that reads
or rewrites a mailbox (the IMAP/POP3 servers) should use :class:`MailboxLock`.

:class:`LocalTransport` is what qmgr talks to: one delivery at a time per
mailbox, the mailbox written in a worker thread, the log lines and Steps
back in the reactor thread; a locked mailbox is retried on a timer, so the
wait holds no thread. A message found in the active queue at start
(a crash came between the mailbox write and the queue file update) is
looked for in the mailbox first — ``Delivered-To:`` and the queue id of
smtpd's ``Received:`` header — so it is not delivered twice.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from twisted.internet import defer, task

from gponsim.server import workpool
from gponsim.server.maillog import MailLog, delivery_line
from gponsim.server.mailstore.leftovers import pid_alive, temporary_name
from gponsim.server.mailstore.mboxentry import from_line, mbox_entry
from gponsim.server.postfix.address import quote_822_local
from gponsim.server.postfix.queuefile import fault
from gponsim.server.postfix.transport import DeliveryRequest, RecipientStatus, event
from gponsim.steps import Emit

#: postconf(5) defaults (Debian 12, Postfix 3.7).
MAILBOX_SIZE_LIMIT = 51_200_000
#: Names local(8) must not bounce (RFC 5321 §4.5.1): mail to one that is no
#: alias nor account is discarded, with ``warning: required alias not found``.
REQUIRED_ALIASES = ("mailer-daemon", "postmaster")
DELIVER_LOCK_ATTEMPTS = 20
DELIVER_LOCK_DELAY = 1.0
STALE_LOCK_TIME = 500.0

_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_FLOCK_FORMAT = "=hh4xqqi4x"   # struct flock on Linux (x86_64, aarch64)


class MailboxError(Exception):
    """A delivery to a mailbox failed: ``dsn`` (``4.x.x`` defers, ``5.x.x`` bounces)."""

    def __init__(self, dsn: str, reason: str) -> None:
        super().__init__(reason)
        self.dsn = dsn
        self.reason = reason


class LockBusy(Exception):
    """Someone else holds the mailbox lock and attempts remain: try again in
    ``delay`` seconds, with the same :class:`MailboxLock` (it counts the attempts).
    Raised instead of sleeping by a lock made with ``wait=False``."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"mailbox locked; retry in {delay:g}s")
        self.delay = delay


def mbox_dsn(err: int, default: str) -> str:
    """Map an errno to a mailbox DSN detail (Postfix ``mbox_dsn``).

    One difference: running out of file descriptors or memory defers
    (``4.3.0``) instead of bouncing. A real local(8) is a process of its own;
    here every service shares one process, so a flood of idle connections
    must not make local delivery return mail to its sender.
    """
    if err in (errno.EAGAIN, errno.ESTALE):
        return "4.2.0"
    if err in (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return "4.3.0"
    if err in (errno.EDQUOT, errno.EFBIG):
        return "5.2.2"
    return default


# --------------------------------------------------------------------------
# The mbox entry

def render_entry(content: bytes, *, sender: str, orig_rcpt: str, delivered_to: str,
                 when: float) -> bytes:
    """The bytes local(8) appends for one message (see the module docstring).

    ``content`` is the queued message with LF line ends (it already starts
    with the ``Received:`` header). ``orig_rcpt`` empty: no X-Original-To.
    """
    quoted_sender = quote_822_local(sender) if sender else ""
    head = [f"Return-Path: <{quoted_sender}>"]
    if orig_rcpt:
        head.append(f"X-Original-To: {quote_822_local(orig_rcpt)}")
    head.append(f"Delivered-To: {quote_822_local(delivered_to)}")
    trace = "".join(line + "\n" for line in head).encode("utf-8")
    return mbox_entry(from_line(quoted_sender, when, zero_pad_day=False), trace, content,
                      quote=True)


# --------------------------------------------------------------------------
# Locking

#: What gponsim writes in its dotlock files: ``pid:hostname``, as Dovecot does.
_LOCK_OWNER = f"{os.getpid()}:{socket.gethostname()}"


def _create_owned(lock_path: Path) -> None:
    """Make the dotlock with its owner already written in it: the owner goes
    into a temporary file of this thread's, which is then linked to the lock's
    name (``link`` fails with EEXIST when the lock exists, as ``O_EXCL``
    would). A process killed at any moment leaves no lock without an owner —
    one it would otherwise wait ``stale_lock_time`` for — only, at worst, a
    temporary file the next start removes (``remove_stale_temporaries``)."""
    tmp = lock_path.with_name(temporary_name(lock_path.with_name(
        f"{lock_path.name}.{threading.get_ident()}")))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.write(fd, _LOCK_OWNER.encode())
        finally:
            os.close(fd)
        os.link(tmp, lock_path)
    finally:
        os.unlink(tmp)


def _owner_is_gone(lock_path: Path) -> bool:
    """True when a dotlock says ``pid:thishost`` and that process no longer exists.

    Postfix leaves its dotlocks empty and waits for ``stale_lock_time``;
    Dovecot writes ``pid:host`` and breaks the lock of a dead process at once.
    gponsim does the latter, so a lab killed while delivering does not leave
    its mailboxes locked for 500 s.
    """
    try:
        with open(lock_path, "rb") as fh:
            text = fh.read(256).decode("ascii", "replace").strip()
    except OSError:
        return False
    pid, _, host = text.partition(":")
    return pid.isdigit() and host == socket.gethostname() and not pid_alive(int(pid))


class MailboxLock:
    """``dotlock`` + ``fcntl`` exclusive lock on an mbox file, Postfix style.

    The dotlock file holds ``pid:hostname`` (like Dovecot's): a lock left by
    a process that died is broken at the next attempt.

    ``display`` is the path shown in error texts (the lab's ``/var/mail/x``,
    not the real path under the lab root). ``on_wait(attempt, reason)`` is
    called each time an attempt failed and the lock will be retried after
    ``delay`` seconds.

    ``wait=False``: instead of sleeping between attempts, :meth:`acquire`
    raises :class:`LockBusy`; calling it again later goes on counting
    attempts where the last call stopped. A caller that waits on a timer
    holds no thread while the mailbox is locked. (One difference from
    Postfix, whose local(8) keeps its dotlock while it waits for the kernel
    lock: between such calls the dotlock is let go, so a lab stopped
    meanwhile leaves no lock file of its own behind.)
    """

    def __init__(self, path: str | Path, display: str | None = None, *,
                 attempts: int = DELIVER_LOCK_ATTEMPTS, delay: float = DELIVER_LOCK_DELAY,
                 stale: float = STALE_LOCK_TIME, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 on_wait: Callable[[int, str], None] | None = None,
                 fcntl_only_when_full: bool = False, wait: bool = True) -> None:
        self.path = Path(path)
        self.display = display or str(path)
        self.lock_path = Path(str(self.path) + ".lock")
        self.attempts = max(1, attempts)
        self.delay = delay
        self.stale = stale
        self.clock = clock
        self.sleep = sleep
        self.on_wait = on_wait
        #: a full disk leaves no room for the dotlock: lock with fcntl alone
        #: (a reader that wants to delete mail; a writer would not fit anyway)
        self.fcntl_only_when_full = fcntl_only_when_full
        self.wait = wait
        self._count_anew()
        self._dotlocked = False
        self._fd: int | None = None

    def _count_anew(self) -> None:
        #: the next attempt of each kind (kept between calls when ``wait`` is False)
        self._attempt = {"dotlock": 1, "fcntl": 1}

    def _retry_later(self, kind: str) -> None:
        """Attempt ``self._attempt[kind]`` failed and another is allowed: wait ``delay``."""
        if self.on_wait:
            self.on_wait(self._attempt[kind], kind)
        self._attempt[kind] += 1
        if not self.wait:
            raise LockBusy(self.delay)
        self.sleep(self.delay)

    # dotlock (src/global/dot_lockfile.c)
    def _dotlock(self) -> None:
        while True:
            try:
                _create_owned(self.lock_path)
            except OSError as exc:
                err = exc.errno
                if err in (errno.ENOSPC, errno.EDQUOT) and self.fcntl_only_when_full:
                    return
            else:
                self._dotlocked = True
                return
            if self._attempt["dotlock"] >= self.attempts or err != errno.EEXIST:
                break
            try:
                st = os.stat(self.lock_path)
                if self.clock() > st.st_ctime + self.stale:
                    os.unlink(self.lock_path)
                elif _owner_is_gone(self.lock_path):
                    os.unlink(self.lock_path)
                    self._attempt["dotlock"] += 1
                    continue            # a dead owner: no need to wait
            except FileNotFoundError:
                pass
            except OSError as exc:
                err = exc.errno
                break
            self._retry_later("dotlock")
        dsn = mbox_dsn(errno.EAGAIN if err == errno.EEXIST else err, "5.2.0")
        raise MailboxError(dsn, f"unable to create lock file {self.display}.lock: "
                                f"{os.strerror(err)}")

    # kernel lock (src/global/deliver_flock.c)
    def _kernel_lock(self, fd: int) -> None:
        while True:
            try:
                if _F_OFD_SETLK is not None:
                    fcntl.fcntl(fd, _F_OFD_SETLK,
                                struct.pack(_FLOCK_FORMAT, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
                else:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                err = exc.errno
                if err not in (errno.EAGAIN, errno.EACCES):
                    break
                if self._attempt["fcntl"] >= self.attempts:
                    break
                self._retry_later("fcntl")
        raise MailboxError(mbox_dsn(errno.EAGAIN if err == errno.EACCES else err, "5.2.0"),
                           f"unable to lock for exclusive access: {os.strerror(err)}")

    def acquire(self, fd: int) -> None:
        """Dotlock, then the kernel lock on ``fd`` (an open descriptor of the mbox)."""
        self._dotlock()
        try:
            self._kernel_lock(fd)
        except BaseException:
            self._remove_dotlock()
            raise
        self._fd = fd
        self._count_anew()          # for the next acquisition

    def release(self) -> None:
        if self._fd is not None:
            try:
                if _F_OFD_SETLK is not None:
                    fcntl.fcntl(self._fd, _F_OFD_SETLK,
                                struct.pack(_FLOCK_FORMAT, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))
                else:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass
            self._fd = None
        self._remove_dotlock()

    def _remove_dotlock(self) -> None:
        if self._dotlocked:
            try:
                os.unlink(self.lock_path)
            except FileNotFoundError:
                pass
            self._dotlocked = False


# --------------------------------------------------------------------------
# The delivery agent

@dataclass
class LocalJob:
    """One recipient of one queued message, for local delivery."""

    qid: str
    index: int                 #: recipient index in the queue file
    sender: str
    recipient: str             #: final address (Delivered-To, ``to=<>`` in the log)
    orig_rcpt: str             #: as given in RCPT TO (X-Original-To, ``orig_to=``)
    content: bytes
    arrival: float             #: message arrival
    active_arrival: float      #: entered the active queue
    session: str = ""
    ref: object = None         #: the queue's own handle for the message
    #: Delivered-To: the first alias expanded on the way (``postmaster@...``
    #: for mail to postmaster that reaches root), else the recipient
    delivered_to: str = ""
    #: an alias led to a target gponsim does not deliver to (file, command...)
    unsupported: str = ""


@dataclass
class LocalResult:
    job: LocalJob
    status: str                #: sent | bounced | deferred
    dsn: str
    reason: str                #: text inside ``status=... (reason)``
    line: str = ""             #: the log text written (after ``local[pid]: ``)
    mailbox: str = ""          #: the lab path of the mailbox
    offset: int = -1           #: where the entry starts in the mailbox (sent)
    length: int = 0
    warning: str = ""          #: a ``warning:`` line local(8) writes before ``line``

    @property
    def final(self) -> bool:
        return self.status in ("sent", "bounced")


@dataclass
class _Plan:
    n: int                     #: position of the job in the batch
    job: LocalJob
    entry: bytes
    offset: int


class LocalAgent:
    """Delivers to ``<lab root>/var/mail/<user>`` and logs like ``postfix/local``."""

    def __init__(self, lab_root: str | Path, *, user_exists: Callable[[str], bool],
                 log: MailLog, syslog_name: str = "postfix", recipient_delimiter: str = "+",
                 aliases: Callable[[str], list[str] | None] | None = None,
                 myorigin: str = "", is_local_domain: Callable[[str], bool] | None = None,
                 mailbox_size_limit: int = MAILBOX_SIZE_LIMIT,
                 lock_attempts: int = DELIVER_LOCK_ATTEMPTS, lock_delay: float = DELIVER_LOCK_DELAY,
                 stale_lock_time: float = STALE_LOCK_TIME, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 on_lock_wait: Callable[[str, "LocalJob", int, str], None] | None = None
                 ) -> None:
        self.root = Path(lab_root)
        self.spool = self.root / "var" / "mail"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.user_exists = user_exists
        self.aliases = aliases
        self.myorigin = myorigin
        self.is_local_domain = is_local_domain or (lambda domain: True)
        self.log = log
        self.syslog_name = syslog_name
        self.delimiter = recipient_delimiter
        self.size_limit = mailbox_size_limit
        self.lock_attempts = lock_attempts
        self.lock_delay = lock_delay
        self.stale = stale_lock_time
        self.clock = clock
        self.sleep = sleep
        self.on_lock_wait = on_lock_wait

    # -- names
    def split_recipient(self, address: str) -> tuple[str, str]:
        """``(user, localpart)``: the mailbox owner and the full local part.

        The local part is folded to lower case; ``user`` drops the address
        extension after ``recipient_delimiter`` (``user2+lab`` -> ``user2``).
        """
        local = address.rpartition("@")[0] if "@" in address else address
        local = local.lower()
        user = local
        if self.delimiter and self.delimiter in local:
            head = local.split(self.delimiter, 1)[0]
            if head:
                user = head
        return user, local

    def mailbox_path(self, user: str) -> tuple[Path, str]:
        """The real path under the lab root, and the path as the lab shows it."""
        return self.spool / user, f"/var/mail/{user}"

    def lock_for(self, user: str, job: "LocalJob | None" = None, *, wait: bool = True
                 ) -> MailboxLock:
        """The delivery lock of ``user``'s mailbox (``wait``: see :class:`MailboxLock`)."""
        path, display = self.mailbox_path(user)
        on_wait = None
        if self.on_lock_wait is not None and job is not None:
            hook = self.on_lock_wait
            on_wait = lambda attempt, kind: hook(user, job, attempt, kind)  # noqa: E731
        return MailboxLock(path, display, attempts=self.lock_attempts, delay=self.lock_delay,
                           stale=self.stale, clock=self.clock, sleep=self.sleep, on_wait=on_wait,
                           wait=wait)

    def expand(self, address: str, depth: int = 0, delivered: str = ""
               ) -> list[tuple[str, str, str]]:
        """alias_maps, as local(8) applies them before the mailbox (``deliver_alias``).

        Returns ``(recipient, delivered_to, unsupported)`` for each final
        recipient: ``address`` itself when it is no alias, else what the
        alias lists, each member expanded in turn (``root`` becomes
        ``root@$myorigin``). ``delivered_to`` is the first alias expanded
        (local(8)'s Delivered-To:). An alias naming itself means its
        mailbox. ``unsupported`` names a member gponsim does not deliver to
        (``/file``, ``|command``, ``:include:``, another domain).
        """
        if self.aliases is None or depth > 20:
            return [(address, delivered or address, "")]
        user, local = self.split_recipient(address)
        members = self.aliases(local)
        if members is None and user != local:
            members = self.aliases(user)
        if members is None:
            return [(address, delivered or address, "")]
        delivered = delivered or address
        out: list[tuple[str, str, str]] = []
        for member in members:
            member = member.strip('"')
            if member.startswith(("/", "|", ":include:")):
                out.append((address, delivered, member))
                continue
            target = member if "@" in member else f"{member}@{self.myorigin}"
            if not self.is_local_domain(target.rpartition("@")[2].lower()):
                out.append((target, delivered, member))
            elif self.split_recipient(target)[1] == local:
                out.append((target, delivered, ""))          # "user: user": the mailbox
            else:
                out.extend(self.expand(target, depth + 1, delivered))
        return out

    @staticmethod
    def _valid_user(user: str) -> bool:
        return bool(user) and "/" not in user and "\0" not in user and not user.startswith(".")

    # -- delivery
    def deliver(self, user: str, jobs: Sequence[LocalJob], check_delivered: bool = False, *,
                lock: MailboxLock | None = None, handoff: float | None = None
                ) -> list[LocalResult]:
        """Deliver ``jobs`` (all for mailbox ``user``, in order) under one lock.

        Returns one result per job, in order, each with its log line
        (``line``), which the caller writes. ``check_delivered``: first look
        for each job's copy in the mailbox (a recovered message) and do not
        append the ones found.

        ``lock``: the mailbox's lock (:meth:`lock_for`); one made with
        ``wait=False`` makes this raise :class:`LockBusy` while someone else
        holds the mailbox, and the caller calls again later with the same lock
        and the ``handoff`` time of the first call (the log's delays count the
        wait as local(8)'s own time, as Postfix's do).
        """
        handoff = self.clock() if handoff is None else handoff
        results: list[LocalResult] = []
        path, display = self.mailbox_path(user)
        unsupported = [job for job in jobs if job.unsupported]
        jobs = [job for job in jobs if not job.unsupported]
        for job in unsupported:
            results.append(LocalResult(job, "deferred", "4.3.0",
                                       f"gponsim does not deliver to alias member "
                                       f"{job.unsupported} (not simulated)"))
        if not (self._valid_user(user) and self.user_exists(user)):
            for job in jobs:
                local = self.split_recipient(job.recipient)[1]
                if local in REQUIRED_ALIASES:
                    # local(8) deliver_unknown(): no alias for a required name
                    results.append(LocalResult(job, "sent", "2.0.0", "discarded",
                                               warning=f"warning: required alias not found: "
                                                       f"{local}"))
                    continue
                results.append(LocalResult(job, "bounced", "5.1.1", f'unknown user: "{local}"'))
            return self._lines(results, handoff)
        if not jobs:
            return self._lines(results, handoff)

        fd = -1
        access = os.O_RDWR if check_delivered else os.O_WRONLY     # reading: to look for copies
        if lock is None:
            lock = self.lock_for(user, jobs[0])
        try:
            try:
                fd = os.open(path, access | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                             | getattr(os, "O_NOFOLLOW", 0), 0o600)
                st = os.fstat(fd)
            except OSError as exc:
                raise MailboxError(mbox_dsn(exc.errno, "5.2.0"),
                                   f"cannot open file: {os.strerror(exc.errno)}") from None
            if not stat.S_ISREG(st.st_mode):
                raise MailboxError("5.2.0", f"destination {display} is not a regular file")
            lock.acquire(fd)
            for _attempt in range(REOPEN_ATTEMPTS):
                if not _replaced(fd, path):
                    break
                # A reader (IMAP/POP3) rewrote the mailbox (new file renamed
                # over it) while we waited for the lock: append to the new one,
                # which may itself have been rewritten by the time it is ours.
                lock.release()
                os.close(fd)
                fd = -1
                fd = os.open(path, access | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                             | getattr(os, "O_NOFOLLOW", 0), 0o600)
                lock.acquire(fd)
            else:
                lock.release()
                raise MailboxError("4.2.0", "unable to lock for exclusive access: "
                                   "the mailbox keeps being replaced")
            try:
                results += self._append(fd, user, display, jobs, check_delivered)
            finally:
                lock.release()
        except MailboxError as exc:
            reason = f"cannot update mailbox {display} for user {user}. {exc.reason}"
            status = "deferred" if exc.dsn.startswith("4") else "bounced"
            results += [LocalResult(job, status, exc.dsn, reason, mailbox=display) for job in jobs]
        finally:
            if fd >= 0:
                os.close(fd)
        return self._lines(results, handoff)

    def _append(self, fd: int, user: str, display: str, jobs: Sequence[LocalJob],
                check_delivered: bool) -> list[LocalResult]:
        original = os.fstat(fd).st_size
        when = self.clock()
        outcome: dict[int, LocalResult] = {}
        plans: list[_Plan] = []
        size = original
        found = _delivered(fd, original, jobs) if check_delivered and original else set()
        for n, job in enumerate(jobs):
            if n in found:
                outcome[n] = LocalResult(job, "sent", "2.0.0", "delivered to mailbox",
                                         mailbox=display)
                continue
            entry = render_entry(job.content, sender=job.sender, orig_rcpt=job.orig_rcpt,
                                 delivered_to=job.delivered_to or job.recipient, when=when)
            if self.size_limit and size + len(entry) > self.size_limit:
                outcome[n] = LocalResult(
                    job, "bounced", mbox_dsn(errno.EFBIG, "5.3.0"),
                    f"cannot update mailbox {display} for user {user}. "
                    f"error writing message: {os.strerror(errno.EFBIG)}", mailbox=display)
                continue
            plans.append(_Plan(n, job, entry, size))
            size += len(entry)
        if plans:
            try:
                data = memoryview(b"".join(p.entry for p in plans))
                while data:
                    written = os.write(fd, data)
                    data = data[written:]
                os.fsync(fd)
            except OSError as exc:
                try:
                    os.ftruncate(fd, original)
                    os.fsync(fd)
                except OSError:
                    pass
                dsn = mbox_dsn(exc.errno or errno.EIO, "5.3.0")
                status = "deferred" if dsn.startswith("4") else "bounced"
                reason = (f"cannot update mailbox {display} for user {user}. "
                          f"error writing message: {os.strerror(exc.errno or errno.EIO)}")
                for p in plans:
                    outcome[p.n] = LocalResult(p.job, status, dsn, reason, mailbox=display)
            else:
                for p in plans:
                    outcome[p.n] = LocalResult(
                        p.job, "sent", "2.0.0", "delivered to mailbox", mailbox=display,
                        offset=p.offset, length=len(p.entry))
        return [outcome[n] for n in range(len(jobs))]

    def _lines(self, results: list[LocalResult], handoff: float) -> list[LocalResult]:
        """Each result's log line (written by the caller, in the reactor thread)."""
        done = self.clock()
        for r in results:
            job = r.job
            delays = (max(0.0, job.active_arrival - job.arrival),
                      max(0.0, handoff - job.active_arrival), 0.0, max(0.0, done - handoff))
            r.line = delivery_line(job.qid, job.recipient, orig_to=job.orig_rcpt, relay="local",
                                   delays=delays, dsn=r.dsn, status=r.status, reason=r.reason)
        return results


def _per_recipient(results: list[LocalResult]) -> list[RecipientStatus]:
    """One status per queue recipient: an alias expanded into several
    recipients is done when all are; it waits (deferred) while one waits,
    and bounces only when none was delivered."""
    by_index: dict[int, list[LocalResult]] = {}
    for r in results:
        by_index.setdefault(r.job.index, []).append(r)
    out = []
    for index, rs in by_index.items():
        pick = (next((r for r in rs if r.status == "deferred"), None)
                or next((r for r in rs if r.status == "sent"), None) or rs[0])
        out.append(RecipientStatus(index, pick.status, pick.dsn, pick.reason))
    return out


#: How often local(8) follows a mailbox that a reader's rewrite replaced while
#: it waited for the lock, before it defers the delivery (the next try succeeds).
REOPEN_ATTEMPTS = 20


def _replaced(fd: int, path: Path) -> bool:
    """True when ``path`` no longer names the file open as ``fd``."""
    try:
        return os.fstat(fd).st_ino != os.stat(path).st_ino
    except FileNotFoundError:
        return True


def _delivered(fd: int, size: int, jobs: Sequence[LocalJob]) -> set[int]:
    """The positions of the ``jobs`` whose copy is already in the mailbox:
    an entry whose headers carry ``Delivered-To: <recipient>`` and the queue
    id of smtpd's ``Received:`` header (read under the delivery lock).

    An entry a crash cut short is the mailbox's last one and is shorter than
    the entry would be (a reader such as Dovecot may add headers, never take
    them away): it is truncated off the mailbox and the job is delivered again.
    """
    data = os.pread(fd, size, 0)
    wanted = {(f"\nDelivered-To: {quote_822_local(job.delivered_to or job.recipient)}\n"
               .encode(), job.qid): n
              for n, job in enumerate(jobs)}
    found: set[int] = set()
    for start, end, headers in _entries(data):
        for (marker, qid), n in wanted.items():
            if n not in found and marker in headers and (
                    f" id {qid}\n".encode() in headers or f" id {qid};\n".encode() in headers):
                job = jobs[n]
                # (From_ dates are fixed-width: any time gives the entry's length)
                whole = render_entry(job.content, sender=job.sender, orig_rcpt=job.orig_rcpt,
                                     delivered_to=job.recipient, when=0)
                if end == len(data) and end - start < len(whole):
                    os.ftruncate(fd, start)         # cut short: take it away, deliver again
                    os.fsync(fd)
                    return found
                found.add(n)
    return found


def _entries(data: bytes):
    """(start, end, header block) of each message of an mbox (From_ line included)."""
    pos = 0
    while pos < len(data):
        nxt = data.find(b"\n\nFrom ", pos)
        end = len(data) if nxt < 0 else nxt + 2
        header_end = data.find(b"\n\n", pos)
        yield pos, end, data[pos:(end if header_end < 0 or header_end > end else header_end + 1)]
        pos = end


# --------------------------------------------------------------------------
# The transport qmgr talks to

class LocalTransport:
    """local(8) behind qmgr: one delivery at a time per mailbox (per-mailbox
    order is kept), the mailbox written in a worker thread; the log lines and
    Steps come back to the reactor thread. A mailbox whose lock is held by
    another program only holds up its own mail: its next attempt waits on a
    timer, as each of Postfix's local(8) processes waits on its own."""

    def __init__(self, agent: LocalAgent, *, emit: Emit, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.agent = agent
        self.emit = emit
        self.reactor = reactor
        self._locks: dict[str, defer.DeferredLock] = {}
        agent.on_lock_wait = self._lock_wait

    def deliver(self, request: DeliveryRequest) -> defer.Deferred:
        env = request.envelope
        by_user: dict[str, list[LocalJob]] = {}
        for index, rcpt, orig in request.recipients:
            for target, delivered, unsupported in self.agent.expand(rcpt):
                user = self.agent.split_recipient(target)[0]
                by_user.setdefault(user, []).append(LocalJob(
                    qid=request.qid, index=index, sender=env.sender, recipient=target,
                    orig_rcpt=orig or rcpt, content=request.content, arrival=env.arrival,
                    active_arrival=request.active_arrival, session=env.session,
                    delivered_to=delivered if delivered != target else "",
                    unsupported=unsupported))
        runs = [self._lock(user).run(self._deliver_user, user, jobs, request.recovered)
                for user, jobs in by_user.items()]
        d = defer.gatherResults(runs, consumeErrors=True)
        return d.addCallback(lambda lists: _per_recipient(
            [r for results in lists for r in results]))

    def _lock(self, user: str) -> defer.DeferredLock:
        lock = self._locks.get(user)
        if lock is None:
            lock = self._locks[user] = defer.DeferredLock()
        return lock

    def _deliver_user(self, user: str, jobs: list[LocalJob], recovered: bool) -> defer.Deferred:
        # A mailbox locked by someone else is waited for on the reactor's clock, not
        # in a worker thread: the pool's few threads go on delivering to the others.
        lock = self.agent.lock_for(user, jobs[0], wait=False)
        handoff = self.agent.clock()

        def work() -> list[LocalResult]:
            results = self.agent.deliver(user, jobs, check_delivered=recovered, lock=lock,
                                         handoff=handoff)
            fault("after-mailbox")
            return results

        def attempt() -> defer.Deferred:
            return workpool.run(self.reactor, "postfix-local", work).addErrback(busy)

        def busy(failure):
            failure.trap(LockBusy)
            return task.deferLater(self.reactor, failure.value.delay, attempt)
        return attempt().addCallback(self._report)

    def _report(self, results: list[LocalResult]) -> list[LocalResult]:
        """Reactor thread: local(8)'s log line and Step for each recipient."""
        for r in results:
            job = r.job
            if r.warning:
                self.agent.log.postfix("local", r.warning, self.agent.syslog_name)
            self.agent.log.postfix("local", r.line, self.agent.syslog_name)
            if r.warning:
                step = event("delivery", "local", "local", "DISCARDED", r.line, job.session,
                             qid=job.qid, recipient=job.recipient, orig_to=job.orig_rcpt,
                             status=r.status, dsn=r.dsn)
            elif r.status == "sent":
                step = event("delivery", "local", "mailbox", "DELIVERED", r.line, job.session,
                             qid=job.qid, recipient=job.recipient, orig_to=job.orig_rcpt,
                             mailbox=r.mailbox, status="sent", dsn=r.dsn, length=r.length)
            else:
                step = event("delivery", "local", "qmgr",
                             "BOUNCED" if r.status == "bounced" else "DEFERRED", r.line,
                             job.session, qid=job.qid, recipient=job.recipient,
                             status=r.status, dsn=r.dsn, reason=r.reason)
            self.emit(step)
        return results

    def _lock_wait(self, user: str, job: LocalJob, attempt: int, kind: str) -> None:
        """Worker thread: the mailbox is locked by someone else; local(8) waits."""
        _path, display = self.agent.mailbox_path(user)
        what = f"{display}.lock exists" if kind == "dotlock" else f"{display} is fcntl-locked"
        line = (f"{job.qid}: {what}, retry {attempt + 1}/{self.agent.lock_attempts} in "
                f"{self.agent.lock_delay:g}s")
        self.reactor.callFromThread(self.emit, event(
            "delivery", "local", "mailbox", "LOCKWAIT", line, job.session, qid=job.qid,
            mailbox=display, attempt=attempt, lock=kind, logged=False))
