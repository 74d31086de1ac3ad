"""What qmgr hands a delivery agent, and what it gets back: Postfix's
delivery request (``src/global/deliver_request.h``), one interface for every
transport.

qmgr groups a message's pending recipients by transport and next hop (as
trivial-rewrite resolves them, :class:`Router`) and calls the transport's
``deliver(request)``, which returns (or fires a Deferred with) one
:class:`RecipientStatus` per recipient. A transport logs its own
``status=`` lines and emits its own Steps, as each Postfix delivery agent
writes its own log lines. The transports:

- ``local`` — local(8): the mbox in ``/var/mail`` (:mod:`.local`);
- ``smtp`` — smtp(8): the relay to ``relayhost`` (:mod:`.smtp`);
- ``lmtp`` — lmtp(8): Dovecot's LMTP service (:mod:`.lmtp`);
- ``error`` — error(8): defers (``defer_transports``) without trying.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from gponsim.commentary import annotate
from gponsim.server.maillog import MailLog, delivery_line
from gponsim.server.postfix.queuefile import Envelope
from gponsim.steps import Emit, Step


@dataclass
class DeliveryRequest:
    """One message's recipients for one transport and next hop."""

    qid: str
    envelope: Envelope
    recipients: list[tuple[int, str, str]]  #: (index in the queue file, address, original)
    content: bytes
    active_arrival: float                   #: when qmgr took the message into the active queue
    nexthop: str = ""
    #: The message was found in the active queue at start (a crash or a stop
    #: interrupted its delivery): a transport that can tell may check whether
    #: it already delivered a recipient before delivering again.
    recovered: bool = False


@dataclass
class RecipientStatus:
    """A delivery agent's verdict for one recipient."""

    index: int
    status: str                            #: sent | bounced | deferred
    dsn: str
    reason: str


class Transport(Protocol):
    """A delivery agent behind qmgr. Called in the reactor thread."""

    def deliver(self, request: DeliveryRequest) -> Any:  # list | Deferred[list[RecipientStatus]]
        ...


def event(proto: str, src: str, dst: str, verb: str, line: str, session: str,
          **meta: Any) -> Step:
    """An annotated event Step of the queue and its agents (``meta`` without Nones)."""
    return annotate(Step(t=time.time(), session=session, proto=proto, src=src, dst=dst,
                         dir="internal", kind="event", line=line, verb=verb,
                         meta={k: v for k, v in meta.items() if v is not None}))


def delays_for(request: DeliveryRequest, started: float, setup: float, now: float
               ) -> tuple[float, float, float, float]:
    """Postfix's ``delays=a/b/c/d``: before the active queue, in qmgr,
    connection setup, transmission."""
    return (max(0.0, request.active_arrival - request.envelope.arrival),
            max(0.0, started - request.active_arrival),
            max(0.0, setup - started), max(0.0, now - setup))


class Verdicts:
    """One delivery request's recipients waiting for their verdict, as a
    delivery agent that talks to a server (smtp(8), lmtp(8)) keeps them: each
    gets exactly one verdict, logged as Postfix logs it
    (``QID: to=<...>, relay=..., delay=..., delays=a/b/c/d, dsn=..., status=...``).

    ``relay`` is what the log names as the relay (``none`` until connected);
    ``setup`` the end of connection setup (delays' third part).
    ``logged(line, recipient, status, dsn)`` writes the line and its Step.
    """

    def __init__(self, request: DeliveryRequest, *, clock: Callable[[], float],
                 logged: Callable[[str, str, str, str], None]) -> None:
        self.request = request
        self.clock = clock
        self.logged = logged
        self.started = self.setup = clock()
        self.relay = "none"
        #: index -> (address, original address) of the recipients without a verdict yet
        self.pending = {index: (addr, orig) for index, addr, orig in request.recipients}
        self._results: dict[int, RecipientStatus] = {}

    def finish(self, index: int, status: str, dsn: str, reason: str) -> None:
        if index not in self.pending:
            return
        addr, orig = self.pending.pop(index)
        line = delivery_line(self.request.qid, addr, orig_to=orig, relay=self.relay,
                             delays=delays_for(self.request, self.started, self.setup,
                                               self.clock()),
                             dsn=dsn, status=status, reason=reason)
        self.logged(line, addr, status, dsn)
        self._results[index] = RecipientStatus(index, status, dsn, reason)

    def finish_rest(self, status: str, dsn: str, reason: str) -> None:
        """The same verdict for every recipient still pending."""
        for index in list(self.pending):
            self.finish(index, status, dsn, reason)

    def statuses(self) -> list[RecipientStatus]:
        return [self._results[i] for i in sorted(self._results)]


class ErrorTransport:
    """error(8) for a transport listed in ``defer_transports`` (the lab with
    no relay: ``defer_transports = smtp``): every recipient is deferred with
    ``deferred transport``, nothing is tried."""

    def __init__(self, *, log: MailLog, emit: Emit, syslog_name: str = "postfix",
                 clock: Callable[[], float] = time.time) -> None:
        self.log = log
        self.emit = emit
        self.syslog_name = syslog_name
        self.clock = clock

    def deliver(self, request: DeliveryRequest) -> list[RecipientStatus]:
        now = self.clock()
        out = []
        for index, rcpt, orig in request.recipients:
            line = delivery_line(request.qid, rcpt, orig_to=orig, relay="none",
                                 delays=delays_for(request, now, now, now), dsn="4.3.2",
                                 status="deferred", reason="deferred transport")
            self.log.postfix("error", line, self.syslog_name)
            self.emit(event("queue", "qmgr", "smtp", "DEFERRED", line, request.envelope.session,
                            qid=request.qid, recipient=rcpt, status="deferred", dsn="4.3.2"))
            out.append(RecipientStatus(index, "deferred", "4.3.2", "deferred transport"))
        return out


class Router:
    """trivial-rewrite's resolve: which transport and next hop a recipient takes.

    - a domain in ``mydestination`` (or no domain): the local class —
      ``mailbox_transport`` when main.cf sets one (``lmtp:unix:private/dovecot-lmtp``),
      else ``local``;
    - any other domain: ``default_transport`` (``smtp``) with ``relayhost``
      as next hop (or the domain itself when there is no relayhost).
    """

    def __init__(self, *, is_local_domain: Callable[[str], bool], mailbox_transport: str = "",
                 default_transport: str = "smtp", relayhost: str = "") -> None:
        self.is_local_domain = is_local_domain
        self.mailbox_transport = mailbox_transport.strip()
        self.default_transport = default_transport.strip() or "smtp"
        self.relayhost = relayhost.strip()

    def is_local(self, address: str) -> bool:
        if "@" not in address:
            return True
        return bool(self.is_local_domain(address.rpartition("@")[2].lower()))

    def recipient(self, address: str) -> str:
        """The recipient as trivial-rewrite's resolver gives it back, which is
        what qmgr hands the delivery agent (``to=<...>``): one trailing dot
        of the domain dropped; in a local domain an empty local part is
        ``MAILER-DAEMON`` (``<@gponlab.local>``: local(8) discards it unless
        an alias names it)."""
        local, at, domain = address.rpartition("@")
        if not at:
            return address
        if domain.endswith(".") and not domain.endswith(".."):
            domain = domain[:-1]
        if not local and self.is_local(address):
            local = "MAILER-DAEMON"
        return f"{local}@{domain}"

    def resolve(self, address: str) -> tuple[str, str]:
        """``(transport, nexthop)`` for one recipient address."""
        if self.is_local(address):
            name, _, nexthop = (self.mailbox_transport or "local").partition(":")
            return name, nexthop
        name, _, nexthop = self.default_transport.partition(":")
        return name, nexthop or self.relayhost or address.rpartition("@")[2].lower()
