"""The queue side of one Postfix instance: cleanup, qmgr and the transports.

:class:`Mta` wires them as Postfix's master.cf does: smtpd (and bounce)
hand messages to :class:`~.cleanup.Cleanup`, which writes the queue file and
tells :class:`~.qmgr.Qmgr`, which hands recipients to the delivery agents —
``local`` (:class:`~.local.LocalTransport`), ``smtp`` (the relay client),
``lmtp`` (Dovecot's LMTP service) and ``error``. Which one a recipient takes
follows main.cf (:class:`~.transport.Router`): ``mydestination``,
``mailbox_transport``, ``default_transport``, ``relayhost``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gponsim.server.maillog import MailLog
from gponsim.server.postfix.address import own_address_set, resolve_local
from gponsim.server.postfix.bounce import Bouncer
from gponsim.server.postfix.cleanup import Cleanup
from gponsim.server.postfix.lmtp import MailboxTransport
from gponsim.server.postfix.local import (DELIVER_LOCK_ATTEMPTS, DELIVER_LOCK_DELAY,
                                          MAILBOX_SIZE_LIMIT, STALE_LOCK_TIME, LocalAgent,
                                          LocalTransport)
from gponsim.server.postfix.qmgr import BounceNotice, Qmgr, QueueTimes
from gponsim.server.postfix.queuefile import SPOOL, list_queue
from gponsim.server.postfix.transport import ErrorTransport, Router, Transport
from gponsim.steps import Emit, null_emit


@dataclass
class QueueSettings:
    """The main.cf parameters the queue and its agents use (postconf(5) defaults)."""

    myhostname: str = "mail.gponlab.local"
    myorigin: str = ""
    mydestination: frozenset = frozenset({"mail.gponlab.local", "gponlab.local",
                                          "localhost.localdomain", "localhost"})
    recipient_delimiter: str = "+"
    mailbox_size_limit: int = MAILBOX_SIZE_LIMIT
    mailbox_transport: str = ""
    default_transport: str = "smtp"
    relayhost: str = ""
    always_add_missing_headers: bool = False
    syslog_name: str = "postfix"
    times: QueueTimes = field(default_factory=QueueTimes)
    #: the server's own addresses (cleanup adds missing headers for these clients;
    #: ``[address]`` is a local domain)
    interface_addresses: tuple[str, ...] = ("127.0.0.1", "::1")

    @classmethod
    def from_profile(cls, profile, interface_addresses: tuple[str, ...]) -> "QueueSettings":
        main = profile.main
        return cls(
            myhostname=main("myhostname"), myorigin=profile.myorigin(),
            mydestination=frozenset(d.lower() for d in profile.list("mydestination")),
            recipient_delimiter=main("recipient_delimiter"),
            mailbox_size_limit=profile.size("mailbox_size_limit"),
            mailbox_transport=main("mailbox_transport"),
            default_transport=main("default_transport") or "smtp",
            relayhost=main("relayhost"),
            times=QueueTimes(queue_run_delay=profile.time("queue_run_delay"),
                             minimal_backoff_time=profile.time("minimal_backoff_time"),
                             maximal_backoff_time=profile.time("maximal_backoff_time"),
                             maximal_queue_lifetime=profile.time("maximal_queue_lifetime")),
            interface_addresses=interface_addresses)


class Mta:
    """cleanup + qmgr + transports. ``start()``/``stop()`` run in the reactor
    thread and return Deferreds."""

    def __init__(self, lab_root: str | Path, settings: QueueSettings | None = None, *,
                 user_exists: Callable[[str], bool], log: MailLog | None = None,
                 aliases: Callable[[str], list[str] | None] | None = None,
                 emit: Emit = null_emit, reactor: Any = None,
                 transports: dict[str, Transport] | None = None,
                 is_local_domain: Callable[[str], bool] | None = None,
                 on_bounce: Callable[[BounceNotice], None] | None = None,
                 lock_attempts: int = DELIVER_LOCK_ATTEMPTS,
                 lock_delay: float = DELIVER_LOCK_DELAY,
                 stale_lock_time: float = STALE_LOCK_TIME,
                 clock: Callable[[], float] = time.time) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        s = self.settings = settings or QueueSettings()
        self.root = Path(lab_root)
        self.spool = self.root / SPOOL
        self.log = log if log is not None else MailLog(self.root / "var/log/mail.log",
                                                       hostname=s.myhostname)
        self.emit = emit
        own = own_address_set(s.interface_addresses)
        local_domain = is_local_domain or (lambda d: resolve_local(d, s.mydestination, own))
        self.agent = LocalAgent(self.root, user_exists=user_exists, syslog_name=s.syslog_name,
                                aliases=aliases, myorigin=s.myorigin or s.myhostname,
                                is_local_domain=local_domain,
                                recipient_delimiter=s.recipient_delimiter,
                                mailbox_size_limit=s.mailbox_size_limit,
                                lock_attempts=lock_attempts, lock_delay=lock_delay,
                                stale_lock_time=stale_lock_time, clock=clock, log=self.log)
        all_transports: dict[str, Transport] = {
            "local": LocalTransport(self.agent, emit=emit, reactor=reactor),
            "error": ErrorTransport(log=self.log, emit=emit, syslog_name=s.syslog_name,
                                    clock=clock),
        }
        all_transports.update(transports or {})
        #: the delivery agents as given; :attr:`transports` is what qmgr uses
        self.agents = dict(all_transports)
        self.transports = all_transports
        self._is_local_domain = local_domain
        router = self._router(s.mailbox_transport)
        self.qmgr = Qmgr(self.spool, router=router, transports=all_transports, log=self.log,
                         emit=emit, reactor=reactor, times=s.times, on_bounce=self._bounce,
                         syslog_name=s.syslog_name, clock=clock)
        self.cleanup = Cleanup(self.spool, qmgr=self.qmgr, log=self.log, emit=emit,
                               myhostname=s.myhostname, myorigin=s.myorigin or s.myhostname,
                               interface_addresses=s.interface_addresses,
                               always_add_missing_headers=s.always_add_missing_headers,
                               syslog_name=s.syslog_name, reactor=reactor, clock=clock)
        #: bounce(8), unless the caller takes the notices itself
        self.bouncer = on_bounce or Bouncer(self.cleanup, myhostname=s.myhostname, log=self.log,
                                            emit=emit, reactor=reactor, syslog_name=s.syslog_name)

    def _router(self, mailbox_transport: str) -> Router:
        """trivial-rewrite's routing for ``mailbox_transport``; with one set
        (``lmtp:unix:private/dovecot-lmtp``), local(8) passes each local
        recipient to that transport (:class:`~.lmtp.MailboxTransport`)."""
        s = self.settings
        self.transports.clear()
        self.transports.update(self.agents)
        name = mailbox_transport.partition(":")[0].strip()
        if name and name != "local" and name in self.agents:
            self.transports[name] = MailboxTransport(self.agents[name], name, log=self.log,
                                                     emit=self.emit,
                                                     syslog_name=s.syslog_name)
        return Router(is_local_domain=self._is_local_domain, mailbox_transport=mailbox_transport,
                      default_transport=s.default_transport, relayhost=s.relayhost)

    def set_mailbox_transport(self, mailbox_transport: str) -> None:
        """``postfix reload`` after main.cf's ``mailbox_transport`` changed:
        mail queued from now on is routed the new way."""
        self.settings.mailbox_transport = mailbox_transport
        self.qmgr.router = self._router(mailbox_transport)

    def _bounce(self, notice: BounceNotice) -> None:
        self.bouncer(notice)

    def start(self):
        return self.qmgr.start()

    def stop(self):
        return self.qmgr.stop()

    def flush(self) -> int:
        return self.qmgr.flush()

    def entries(self):
        """What ``mailq`` would show (read from the spool)."""
        return list_queue(self.root)
