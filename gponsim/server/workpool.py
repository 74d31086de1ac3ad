"""Thread pools for the lab's file work: one small pool per kind of work.

The reactor thread never waits for a disk: queue files (cleanup, qmgr),
mailbox deliveries (local) and mailbox commands (IMAP, POP3) run in worker
threads. Each kind has a pool of its own, as Postfix and Dovecot give each
its own processes: a mailbox delivery does not hold up a queue file's
commit, and a class full of mailbox commands does not delay a login (the
reactor's own pool checks passwords). A delivery that finds a mailbox locked
gives its thread back and tries again on a timer (``local.LockBusy``).

The pools are small on purpose. Python threads share one interpreter lock,
which every file system call gives up and takes back; with many threads
taking turns on a short job each, handing that lock around (``futex`` calls,
context switches) cost more than the work (bench/README, "one process").
A pool of two keeps a burst of jobs on the threads already awake.

One pool of each name per reactor, started on first use and stopped when the
reactor shuts down. A test's memory reactor runs the work its own way
(``reactor.getThreadPool()``, often inline).
"""

from __future__ import annotations

import weakref

from twisted.internet import defer, posixbase, threads
from twisted.python.threadpool import ThreadPool

#: Threads of the pools :func:`run` knows: queue files (cleanup, qmgr) and
#: mailbox deliveries (local).
THREADS = {"postfix-queue": 2, "postfix-local": 2}

_pools: "weakref.WeakKeyDictionary[object, dict[str, ThreadPool]]" = weakref.WeakKeyDictionary()


def pool_for(reactor, name: str, size: int):
    """The pool ``name`` of ``reactor`` (``size`` threads at most), made on first use."""
    if not isinstance(reactor, posixbase.PosixReactorBase):
        return reactor.getThreadPool()
    pools = _pools.setdefault(reactor, {})
    pool = pools.get(name)
    if pool is None:
        pool = pools[name] = ThreadPool(minthreads=0, maxthreads=size, name=name)
        pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _stop, reactor, name)
    return pool


def run(reactor, name: str, fn, *args, **kwargs) -> defer.Deferred:
    """``fn(*args, **kwargs)`` in the pool ``name`` (one of :data:`THREADS`);
    the Deferred fires in the reactor thread with its result."""
    return threads.deferToThreadPool(reactor, pool_for(reactor, name, THREADS[name]),
                                     fn, *args, **kwargs)


def _stop(reactor, name: str) -> None:
    pool = _pools.get(reactor, {}).pop(name, None)
    if pool is not None:
        pool.stop()
