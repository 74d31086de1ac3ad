"""qmgr(8): the active and deferred queues, routing to transports, retries.

cleanup hands qmgr each committed message (:meth:`Qmgr.queued`). qmgr logs
``QID: from=<...>, size=N, nrcpt=N (queue active)``, asks the
:class:`~gponsim.server.postfix.transport.Router` which transport and next
hop each pending recipient takes, and hands every group to its transport
(``local``, ``smtp``, ``lmtp``, ``error``) as one delivery request. When a
transport answers, each finished recipient (sent or bounced) is recorded in
the queue file at once (a ``D`` record, fsync-ed), as a Postfix delivery
agent marks a recipient done — unless that was the message's last answer
and nothing is deferred: then the file is simply removed. When every recipient has an answer, the
message is removed (``QID: removed``) or moved to ``deferred/`` with its
next attempt as the file's modification time.

Retries are Postfix's: the deferred queue is scanned every
``queue_run_delay``; a deferred message waits its age, clamped to
[``minimal_backoff_time``, ``maximal_backoff_time``]; after
``maximal_queue_lifetime`` it is returned to the sender
(``status=expired, returned to sender``). Bounced recipients go to the
``on_bounce`` hook (bounce(8), :mod:`.bounce`).

Everything here runs in the reactor thread, so Steps and log lines come out
in the order things happen; file system work (the queue file records,
renames) and deliveries run in worker threads (``deferToThread``).

Recovery at start: files left in ``incoming/`` that are complete (mode 0700)
were committed and go to ``active/``; the others were never acknowledged and
are removed. Messages in ``active/`` are delivered again; their delivery
requests say ``recovered``, so local(8) first looks whether a recipient's
copy is already in the mailbox (it was written, the ``D`` record was not):
an acknowledged message is delivered once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from gponsim.server import workpool
from gponsim.server.maillog import MailLog, delivery_line
from gponsim.server.postfix import queuefile
from gponsim.server.postfix.address import quote_822_local
from gponsim.server.postfix.queueid import hash_dir
from gponsim.server.postfix.queuefile import Envelope, Parsed, record
from gponsim.server.postfix.transport import (DeliveryRequest, RecipientStatus, Router,
                                              Transport, event)
from gponsim.steps import Emit


#: Seconds before qmgr tries again to remove or defer a queue file after an error.
FINISH_RETRY = 5.0
#: double_bounce_sender: mail to it in a local domain is discarded by qmgr
DOUBLE_BOUNCE = "double-bounce"


@dataclass
class BounceNotice:
    """Handed to ``on_bounce`` for each recipient returned to the sender."""

    qid: str
    envelope: Envelope
    recipient: str
    orig_recipient: str
    dsn: str
    reason: str
    content: bytes


@dataclass
class QueueTimes:
    """main.cf's queue timing (postconf(5) defaults)."""

    queue_run_delay: float = 300.0
    minimal_backoff_time: float = 300.0
    maximal_backoff_time: float = 4000.0
    maximal_queue_lifetime: float = 5 * 86400.0


@dataclass
class _Message:
    """qmgr's view of one queue file in the active queue."""

    qid: str
    path: Path
    env: Envelope
    content: bytes
    size: int
    final: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    deferred: dict[int, tuple[str, str]] = field(default_factory=dict)
    outstanding: int = 0
    active_arrival: float = 0.0
    recovered: bool = False

    @classmethod
    def of(cls, parsed: Parsed, path: Path) -> "_Message":
        return cls(parsed.qid, path, parsed.envelope, parsed.content, parsed.size,
                   final=dict(parsed.finals))

    def pending(self) -> list[int]:
        return [i for i in range(len(self.env.recipients)) if i not in self.final]


class Qmgr:
    """The queue manager. Call :meth:`start` (reactor thread) before use."""

    def __init__(self, spool: Path, *, router: Router, transports: dict[str, Transport],
                 log: MailLog, emit: Emit, reactor: Any = None, times: QueueTimes | None = None,
                 on_bounce: Callable[[BounceNotice], None] | None = None,
                 syslog_name: str = "postfix", clock: Callable[[], float] = time.time) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.spool = Path(spool)
        self.router = router
        self.transports = transports
        self.log = log
        self.emit = emit
        self.reactor = reactor
        self.times = times or QueueTimes()
        self.on_bounce = on_bounce
        self.syslog_name = syslog_name
        self.clock = clock
        self._deferred: dict[str, float] = {}     # qid -> next attempt
        self._active: set[str] = set()
        self._busy: set[defer.Deferred] = set()   # file and delivery work in flight
        self._timer: Any = None
        self._running = False
        queuefile.make_dirs(self.spool)

    # ------------------------------------------------------------- helpers
    def _thread(self, fn: Callable, *args: Any) -> defer.Deferred:
        """Run ``fn`` in a worker thread; :meth:`stop` waits for it."""
        d = workpool.run(self.reactor, "postfix-queue", fn, *args)
        self._busy.add(d)

        def done(result):
            self._busy.discard(d)
            return result
        return d.addBoth(done)

    def _logged(self, verb: str, msg: _Message, text: str, src: str = "qmgr",
                dst: str = "qmgr", **meta: Any) -> None:
        self.log.postfix("qmgr", text, self.syslog_name)
        self.emit(event("queue", src, dst, verb, text, msg.env.session, qid=msg.qid, **meta))

    def _warn(self, text: str) -> None:
        self.log.postfix("qmgr", f"warning: {text}", self.syslog_name)

    # --------------------------------------------------------- the queue
    def queued(self, parsed: Parsed, path: Path) -> None:
        """cleanup committed a message to ``active/``: deliver it."""
        self._take(_Message.of(parsed, path), "QUEUED", src="cleanup")

    def _take(self, msg: _Message, verb: str, src: str = "qmgr") -> None:
        msg.active_arrival = self.clock()
        self._active.add(msg.qid)
        self._logged(verb, msg, f"{msg.qid}: from=<{quote_822_local(msg.env.sender)}>, "
                     f"size={msg.size}, "
                     f"nrcpt={len(msg.pending())} (queue active)", src=src,
                     sender=msg.env.sender, size=msg.size, nrcpt=len(msg.pending()))
        try:
            self._route(msg)
        except Exception as exc:  # noqa: BLE001 - a failing lookup must not strand the mail
            self._warn(f"{msg.qid}: cannot route the message: {exc!r}")
            for index in msg.pending():
                msg.deferred[index] = ("4.3.0", "mail system configuration error")
            msg.outstanding = 0
            self._finish(msg)

    def _route(self, msg: _Message) -> None:
        groups: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
        discarded: list[tuple[int, str, str]] = []
        for index in msg.pending():
            rcpt = msg.env.recipients[index]
            final = self.router.recipient(rcpt)
            if self.router.is_local(rcpt) and final.rpartition("@")[0].lower() == DOUBLE_BOUNCE:
                discarded.append((index, final, msg.env.original(index)))
                continue
            groups.setdefault(self.router.resolve(rcpt), []).append(
                (index, final, msg.env.original(index)))
        msg.outstanding = len(groups) + bool(discarded)
        if discarded:
            self._discard(msg, discarded)
        if not groups and not discarded:
            self._finish(msg)
            return
        for (name, nexthop), rcpts in groups.items():
            transport = self.transports.get(name) or self.transports["error"]
            request = DeliveryRequest(msg.qid, msg.env, rcpts, msg.content, msg.active_arrival,
                                      nexthop=nexthop, recovered=msg.recovered)
            self._hand_over(msg, name if name in self.transports else "error", transport, rcpts)
            d = defer.maybeDeferred(transport.deliver, request)
            d.addErrback(lambda failure, rcpts=rcpts: self._transport_failed(msg, rcpts, failure))
            d.addCallback(self._delivered, msg, rcpts)
            d.addErrback(lambda failure: self._warn(f"{msg.qid}: {failure.getErrorMessage()}"))

    def _discard(self, msg: _Message, rcpts: list[tuple[int, str, str]]) -> None:
        """Mail to the local double-bounce address is dropped here, as
        qmgr_message_resolve() does (so a system can run without local(8))."""
        now = self.clock()
        reason = "undeliverable postmaster notification discarded"
        delays = (max(0.0, msg.active_arrival - msg.env.arrival),
                  max(0.0, now - msg.active_arrival), 0.0, 0.0)
        for _index, rcpt, orig in rcpts:
            self._logged("DROPPED", msg, delivery_line(
                msg.qid, rcpt, orig_to=orig, relay="none", delays=delays, dsn="2.0.0",
                status="sent", reason=reason), recipient=rcpt, status="sent")
        self._delivered([RecipientStatus(i, "sent", "2.0.0", reason) for i, _r, _o in rcpts],
                        msg, rcpts)

    def _hand_over(self, msg: _Message, name: str, transport: Transport,
                   rcpts: list[tuple[int, str, str]]) -> None:
        """The Step of qmgr handing recipients to a delivery agent (``actor``:
        local(8) also when it passes them on to ``mailbox_transport``)."""
        actor = getattr(transport, "actor", name)
        if name == "smtp":
            self.emit(event("queue", "qmgr", "smtp", "RELAY",
                            f"{msg.qid}: qmgr -> smtp: " + ", ".join(f"to=<{r}>" for _, r, _ in rcpts),
                            msg.env.session, qid=msg.qid, logged=False,
                            recipients=[r for _, r, _ in rcpts]))
        elif actor in ("local", "lmtp"):
            via = f" (mailbox_transport = {self.router.mailbox_transport})" if actor != name else ""
            for _index, rcpt, _orig in rcpts:
                self.emit(event("queue", "qmgr", actor, "DELIVER",
                                f"{msg.qid}: qmgr -> {actor}: to=<{rcpt}>{via}", msg.env.session,
                                qid=msg.qid, recipient=rcpt, logged=False,
                                transport=name if via else None))

    def _transport_failed(self, msg: _Message, rcpts, failure) -> list[RecipientStatus]:
        self._warn(f"{msg.qid}: delivery agent error: {failure.getErrorMessage()}")
        return [RecipientStatus(i, "deferred", "4.3.0", "mail system error") for i, _r, _o in rcpts]

    def _delivered(self, results: list[RecipientStatus], msg: _Message,
                   rcpts: list[tuple[int, str, str]]) -> defer.Deferred:
        by_index = {r.index: r for r in results}
        finals = []
        for index, rcpt, orig in rcpts:
            r = by_index.get(index) or RecipientStatus(index, "deferred", "4.3.0",
                                                       "no status from the delivery agent")
            if r.status in ("sent", "bounced"):
                msg.final[index] = (r.status, r.dsn, r.reason)
                finals.append(record("D", {"r": index, "status": r.status, "dsn": r.dsn,
                                           "reason": r.reason, "t": round(self.clock(), 3)}))
                if r.status == "bounced":
                    self._bounce(msg, index, r.dsn, r.reason)
            else:
                msg.deferred[index] = (r.dsn, r.reason)
        # The last answer of a message with nothing deferred: the file is removed
        # next, so the D records would be written for nothing (after a crash in
        # between, local(8) finds the copies it already made: see the docstring).
        removed_next = msg.outstanding == 1 and not msg.deferred
        d = self._thread(queuefile.append_records, msg.path, finals) \
            if finals and not removed_next else defer.succeed(None)

        def one_less(result):
            if isinstance(result, Failure):      # records not written (out of files?):
                self._warn(f"{msg.qid}: cannot update the queue file: "   # the mail goes on
                           f"{result.getErrorMessage()}")
            msg.outstanding -= 1
            if msg.outstanding == 0:
                self._finish(msg)
        return d.addBoth(one_less)

    def _bounce(self, msg: _Message, index: int, dsn: str, reason: str) -> None:
        if self.on_bounce is not None:
            self.on_bounce(BounceNotice(msg.qid, msg.env, msg.env.recipients[index],
                                        msg.env.original(index), dsn, reason, msg.content))

    # ------------------------------------------------------------- the end
    def _finish(self, msg: _Message) -> None:
        """Every recipient has an answer: remove the file or defer the message."""
        now = self.clock()
        self._active.discard(msg.qid)
        if not msg.deferred:
            d = self._thread(os.unlink, msg.path)
            d.addCallback(lambda _: self._logged("REMOVED", msg, f"{msg.qid}: removed"))
        elif now - msg.env.arrival > self.times.maximal_queue_lifetime:
            d = self._thread(os.unlink, msg.path)
            d.addCallback(lambda _: self._expired(msg))
        else:
            age = now - msg.env.arrival
            t = self.times
            next_attempt = now + min(max(age, t.minimal_backoff_time), t.maximal_backoff_time)
            reasons = [record("R", {"r": i, "dsn": dsn, "reason": why, "t": round(now, 3)})
                       for i, (dsn, why) in sorted(msg.deferred.items())]
            target = self.spool / "deferred" / hash_dir(msg.qid) / msg.qid
            d = self._thread(_move_to_deferred, msg.path, target, reasons, next_attempt)
            d.addCallback(lambda _: self._deferred.__setitem__(msg.qid, next_attempt))
        d.addErrback(self._finish_failed, msg)

    def _finish_failed(self, failure, msg: _Message) -> None:
        """Removing or deferring the file failed (no file descriptors left, a full
        disk): the message stays in the active queue; try again a little later."""
        self._warn(f"{msg.qid}: {failure.getErrorMessage()}; trying again in "
                   f"{FINISH_RETRY:g}s")
        self._active.add(msg.qid)
        if self._running:
            self.reactor.callLater(FINISH_RETRY, self._finish, msg)

    def _expired(self, msg: _Message) -> None:
        self._logged("EXPIRED", msg, f"{msg.qid}: from=<{quote_822_local(msg.env.sender)}>, "
                     f"status=expired, returned to sender", status="expired")
        for index, (dsn, why) in sorted(msg.deferred.items()):
            self._bounce(msg, index, "5" + dsn[1:], f"message expired: {why}")
        self._logged("REMOVED", msg, f"{msg.qid}: removed")

    # ------------------------------------------------------- deferred queue
    def _queue_run(self) -> None:
        """Every ``queue_run_delay``: retry the deferred mail that is due."""
        self._timer = None
        if not self._running:
            return
        now = self.clock()
        for qid in [q for q, when in self._deferred.items() if when <= now]:
            self._retry(qid)
        self._timer = self.reactor.callLater(self.times.queue_run_delay, self._queue_run)

    def flush(self) -> int:
        """``postqueue -f``: retry every deferred message now; returns how many."""
        qids = list(self._deferred)
        for qid in qids:
            self._retry(qid)
        return len(qids)

    def _retry(self, qid: str) -> None:
        if self._deferred.pop(qid, None) is None:
            return
        source = self.spool / "deferred" / hash_dir(qid) / qid
        target = self.spool / "active" / qid

        def take(parsed: Parsed | None) -> None:
            if parsed is None:         # deleted (postsuper -d) or unreadable
                return
            self._take(_Message.of(parsed, target), "RETRY")
        d = self._thread(_reactivate, source, target)
        d.addCallback(take)
        d.addErrback(lambda failure: self._warn(f"{qid}: {failure.getErrorMessage()}"))

    # ---------------------------------------------------- start and stop
    def start(self) -> defer.Deferred:
        """Recover what a previous run left (module docstring), then run."""
        self._running = True
        d = self._thread(_recover, self.spool)

        def resume(found: tuple[list[tuple[Parsed, Path]], dict[str, float], list[str]]) -> None:
            active, deferred, notes = found
            for text in notes:
                self.log.postfix("qmgr", text, self.syslog_name)
            self._deferred.update(deferred)
            for parsed, path in active:
                msg = _Message.of(parsed, path)
                msg.recovered = True
                self._take(msg, "RECOVERED")
            self._timer = self.reactor.callLater(0, self._queue_run)
        return d.addCallback(resume)

    def stop(self) -> defer.Deferred:
        """Stop retrying; fires when the file work and local deliveries in
        flight are done (committed mail stays queued for the next start)."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return defer.DeferredList(list(self._busy), consumeErrors=True)

    @property
    def idle(self) -> bool:
        """Nothing in the active queue and no file work in flight."""
        return not self._active and not self._busy


# -- file work, in worker threads

def _move_to_deferred(path: Path, target: Path, reasons: list[bytes], next_attempt: float) -> None:
    queuefile.append_records(path, reasons, mtime=next_attempt)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(path, target)


def _reactivate(source: Path, target: Path) -> Parsed | None:
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return None
    parsed = queuefile.parse(target)
    if parsed is None:
        _to_corrupt(target)
    return parsed


def _to_corrupt(path: Path) -> None:
    os.rename(path, path.parents[1] / "corrupt" / path.name)


def _recover(spool: Path) -> tuple[list[tuple[Parsed, Path]], dict[str, float], list[str]]:
    """Read what a previous run left: (active messages, deferred next attempts, log notes)."""
    notes: list[str] = []
    incoming, active = spool / "incoming", spool / "active"
    for p in list(incoming.iterdir()):
        try:
            ready = queuefile.is_queue_id(p.name) and bool(p.stat().st_mode & 0o100)
        except FileNotFoundError:
            continue
        if ready and queuefile.parse(p, with_content=False) is not None:
            os.rename(p, active / p.name)
        else:
            p.unlink()                      # never acknowledged
    found: list[tuple[Parsed, Path]] = []
    for p in sorted(active.iterdir()):
        parsed = queuefile.parse(p) if queuefile.is_queue_id(p.name) else None
        if parsed is None:
            _to_corrupt(p)
            notes.append(f"warning: {p.name}: unreadable queue file; moved to corrupt queue")
            continue
        if parsed.valid_end < parsed.file_size:      # a torn record: cut it off
            queuefile.truncate(p, parsed.valid_end)
        if not parsed.pending():
            p.unlink()
            notes.append(f"{parsed.qid}: removed")
            continue
        found.append((parsed, p))
    deferred: dict[str, float] = {}
    for p in queuefile.queue_files(spool, "deferred"):
        deferred[p.name] = p.stat().st_mtime
    return found, deferred, notes
