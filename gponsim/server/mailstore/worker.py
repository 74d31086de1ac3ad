"""Mailbox work off the reactor thread.

Parsing a 48 MB mbox, rewriting it, searching every message: work that
takes a second or more must not happen in the reactor thread, where it
would hold up every other client of the lab (the IMAP, POP3, SMTP and auth
sessions of a whole classroom share that one thread).

:class:`MailWorker` runs such jobs in a small thread pool of its own (not
the reactor's, which checks passwords and delivers mail: a class full of
mailbox commands must not delay a login), with one rule: the jobs of one
*key* (a user) run one after the other, in the order asked, and a waiting
job holds no thread. So one user's commands, however slow or many, keep at
most one thread busy, and every other user still gets one.

Code running in a job can ask :func:`in_worker`; what must happen in the
reactor thread (writing to a connection, logging, timers) is handed back
with :func:`call_in_reactor`, in order.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Hashable

from twisted.internet import defer, threads
from twisted.python.failure import Failure

from gponsim.server import workpool

_local = threading.local()

#: Threads of the lab's mailbox pool.
THREADS = 4


def in_worker() -> bool:
    """True inside a :class:`MailWorker` job."""
    return getattr(_local, "reactor", None) is not None


def call_in_reactor(fn: Callable, *args: Any, **kwargs: Any) -> None:
    """Run ``fn`` in the reactor thread: at once when already there, else
    queued after everything the job handed back before (in order)."""
    reactor = getattr(_local, "reactor", None)
    if reactor is None:
        fn(*args, **kwargs)
    else:
        reactor.callFromThread(fn, *args, **kwargs)


class MailWorker:
    """Runs mailbox jobs in ``pool``, one at a time per key."""

    def __init__(self, reactor, pool=None, threads_: int = THREADS) -> None:
        self.reactor = reactor
        self._pool = pool
        self._threads = threads_
        self._queues: dict[Hashable, deque] = {}
        self._idle_waiters: list[defer.Deferred] = []

    @property
    def pool(self):
        if self._pool is None:
            self._pool = workpool.pool_for(self.reactor, "mailstore", self._threads)
        return self._pool

    def idle(self, timeout: float) -> defer.Deferred:
        """Fires once no job is running or waiting (or after ``timeout``
        seconds): a lab that stops lets the commands in progress answer."""
        d: defer.Deferred = defer.Deferred()
        if not self._queues:
            d.callback(None)
            return d
        self._idle_waiters.append(d)
        timer = self.reactor.callLater(timeout, self._wake_idle, d)
        d.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        return d

    def _wake_idle(self, d: defer.Deferred | None = None) -> None:
        waiters = [d] if d is not None else list(self._idle_waiters)
        for w in waiters:
            if w in self._idle_waiters:
                self._idle_waiters.remove(w)
                w.callback(None)

    def busy(self, key: Hashable) -> int:
        """Jobs of ``key`` running or waiting."""
        return len(self._queues.get(key, ()))

    def run(self, key: Hashable, fn: Callable, *args: Any, **kwargs: Any) -> defer.Deferred:
        """Run ``fn(*args, **kwargs)`` in the pool after the earlier jobs of
        ``key``; the Deferred fires in the reactor thread with its result."""
        d: defer.Deferred = defer.Deferred()
        queue = self._queues.setdefault(key, deque())
        queue.append((fn, args, kwargs, d))
        if len(queue) == 1:
            self._start(key)
        return d

    def _start(self, key: Hashable) -> None:
        fn, args, kwargs, _d = self._queues[key][0]
        job = threads.deferToThreadPool(self.reactor, self.pool, self._call, fn, args, kwargs)
        job.addBoth(self._finished, key)

    def _call(self, fn: Callable, args, kwargs):
        _local.reactor = self.reactor
        try:
            return fn(*args, **kwargs)
        finally:
            _local.reactor = None

    def _finished(self, result, key: Hashable) -> None:
        queue = self._queues[key]
        _fn, _args, _kwargs, d = queue.popleft()
        if queue:
            self._start(key)
        else:
            del self._queues[key]
            if not self._queues and self._idle_waiters:
                self.reactor.callLater(0, self._wake_idle)    # after this job's answer
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
