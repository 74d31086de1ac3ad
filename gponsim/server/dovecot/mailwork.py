"""IMAP and POP3 commands that touch mailboxes run in the mail worker.

Dovecot runs each logged-in user in a process of its own, so one user
selecting a 48 MB INBOX, searching it or rewriting it never holds up
another. gponsim serves the whole lab from one process: a command that
reads or rewrites a mailbox runs in the mail worker's threads
(:mod:`gponsim.server.mailstore.worker`) while the reactor thread goes on
serving everybody else. Meanwhile the connection reads no further input
(its later, pipelined commands wait, in order, as they would behind
Dovecot's busy process); what the command writes, logs or schedules is
handed back to the reactor thread in order.

One user's jobs run one after the other (the worker's key is the user), so
ten IDLE sessions woken by one delivery parse the new mail once, not ten
times at once.
"""

from __future__ import annotations

import functools

from twisted.mail import imap4
from twisted.python import log as twlog
from twisted.python.compat import nativeString

from gponsim.server.mailstore.worker import MailWorker, in_worker

#: IMAP commands whose work reads or writes mailboxes (after login).
IMAP_WORKER_COMMANDS = frozenset({
    "SELECT", "EXAMINE", "STATUS", "FETCH", "STORE", "SEARCH", "SORT", "THREAD", "COPY",
    "MOVE", "EXPUNGE", "CLOSE", "CHECK", "NOOP", "IDLE", "APPEND", "LIST", "LSUB",
    "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE"})


def worker_of(ctx) -> MailWorker:
    """The lab's mail worker (made on first use: tests get the reactor's pool)."""
    worker = getattr(ctx, "worker", None)
    if worker is None:
        reactor = ctx.reactor
        if reactor is None:
            from twisted.internet import reactor
        worker = ctx.worker = MailWorker(reactor, reactor.getThreadPool())
    return worker


class MailWork:
    """Mixed into the IMAP and POP3 servers: run a job in the mail worker
    with the connection's input held until it is done."""

    _worker_busy = False

    def _hold_input(self) -> None:
        self.pauseProducing()

    def _release_input(self) -> None:
        self.resumeProducing()

    def _run_in_worker(self, fn, *args, tag=None):
        """``fn(*args)`` in the worker, keyed by the user; input waits meanwhile."""
        self._worker_busy = True
        self._hold_input()
        d = worker_of(self.lab).run(self.user, fn, *args)
        d.addErrback(self._worker_error, tag)
        d.addBoth(self._worker_done)
        return d

    def _worker_done(self, _result) -> None:
        self._worker_busy = False
        if not self._gone and not self.transport.disconnecting:    # (a BYE closed it)
            self._release_input()

    def _worker_error(self, failure, tag) -> None:
        """What Twisted's IMAP4Server.parse_command does with a handler's exceptions."""
        if self._gone:
            return
        text = str(failure.value).encode("utf-8", "replace")
        if failure.check(imap4.IllegalClientResponse):
            self.sendBadResponse(tag, b"Illegal syntax: " + text)
        elif failure.check(imap4.IllegalOperation):
            self.sendNegativeResponse(tag, b"Illegal operation: " + text)
        elif failure.check(imap4.IllegalMailboxEncoding):
            self.sendNegativeResponse(tag, b"Illegal mailbox name: " + text)
        else:
            self._worker_failed(failure, text)

    def _worker_failed(self, failure, text: bytes) -> None:
        twlog.err(failure)


class ImapMailWork(MailWork):
    """IMAP: the commands of :data:`IMAP_WORKER_COMMANDS` run in the worker."""

    def lookupCommand(self, cmd):
        found = super().lookupCommand(cmd)
        if found is None or self.user is None or in_worker() \
                or nativeString(cmd.upper()) not in IMAP_WORKER_COMMANDS:
            return found
        handler = functools.partial(ImapMailWork._in_worker_command, handler=found[0])
        return (handler,) + tuple(found[1:])

    def _in_worker_command(self, tag, *args, handler, **kwargs):
        self._run_in_worker(handler, self, tag, *args, tag=tag, **kwargs)

    def _worker_failed(self, failure, text: bytes) -> None:
        self.sendUntaggedResponse(b"BAD Server error: " + text)
        twlog.err(failure)

    def _run_in_worker(self, fn, *args, tag=None, **kwargs):
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return super()._run_in_worker(fn, *args, tag=tag)
