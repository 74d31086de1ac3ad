"""A Twisted reactor running in a background thread, for tests.

Twisted's global reactor can run only once per process, so one reactor
thread serves the whole test session. A test cannot take it down with it: when
a call times out because the reactor thread is stuck (a blocking call in it),
the failure shows that thread's stack, and a fresh reactor, installed as
Twisted's global one, serves the next tests (see :meth:`ReactorThread._timed_out`). Tests talk to it with
:meth:`ReactorThread.call`: the function runs in the reactor thread and, if
it returns a Deferred, ``call`` waits for its result (or failure) with a
timeout. Blocking clients (smtplib, imaplib...) run in the test's own thread
while the servers run in the reactor.

Use in a test module (or a conftest.py)::

    from reactor_thread import reactor_thread  # noqa: F401  (the fixture)

    def test_something(reactor_thread):
        port = reactor_thread.call(start_server)
        ...
        reactor_thread.call(port.stopListening)
"""

from __future__ import annotations

import sys
import threading
import traceback
from typing import Any, Callable

import pytest

#: After a call timed out, how long the reactor thread may take to be free again
#: before it is taken as stuck and replaced (the failing test waits, not the next).
GRACE = 30.0


class ReactorTimeout(AssertionError):
    """The reactor did not finish a call in time; says what the reactor thread was doing."""


class ReactorThread:
    def __init__(self, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self._thread: threading.Thread | None = None
        #: Reactors replaced because their thread was stuck: (reactor, thread, why).
        self.abandoned: list[tuple[Any, threading.Thread, str]] = []

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> "ReactorThread":
        if self.running:
            return self
        started = threading.Event()
        self.reactor.callWhenRunning(started.set)
        self._thread = threading.Thread(
            target=self.reactor.run, kwargs={"installSignalHandlers": False},
            name="reactor", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise ReactorTimeout("the reactor did not start")
        return self

    def in_reactor_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0,
             **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the reactor thread and return its result.

        A Deferred result is waited for; a failure is re-raised here. Raises
        :class:`ReactorTimeout` after ``timeout`` seconds.
        """
        from twisted.internet import defer

        if self.in_reactor_thread():
            raise RuntimeError("call() from the reactor thread would deadlock")
        done = threading.Event()
        box: dict[str, Any] = {}

        def finished(result: Any) -> None:
            box["result"] = result
            done.set()

        def run() -> None:
            d = defer.maybeDeferred(fn, *args, **kwargs)
            d.addBoth(finished)

        self.reactor.callFromThread(run)
        if not done.wait(timeout):
            raise self._timed_out(f"{getattr(fn, '__qualname__', fn)!r} did not finish within {timeout} s")
        result = box["result"]
        from twisted.python.failure import Failure

        if isinstance(result, Failure):
            result.raiseException()
        return result

    def responsive(self, timeout: float) -> bool:
        """True when the reactor thread runs a call posted now within ``timeout`` seconds."""
        if not self.running:
            return False
        pong = threading.Event()
        self.reactor.callFromThread(pong.set)
        return pong.wait(timeout)

    def reactor_stack(self) -> str:
        """Where the reactor thread is now (its Python stack)."""
        frame = sys._current_frames().get(self._thread.ident) if self._thread else None
        return "".join(traceback.format_stack(frame)) if frame is not None else "(not running)\n"

    def _timed_out(self, what: str) -> ReactorTimeout:
        """The cause of a timeout, for the report: a call whose Deferred never fired, or a
        reactor thread busy elsewhere (its stack). A busy thread gets :data:`GRACE` seconds
        to be free; one still busy then is stuck: a fresh reactor replaces it, so the next
        test finds a working one."""
        if not self.running:
            return ReactorTimeout(f"{what}: the reactor thread has ended")
        stack = self.reactor_stack()
        if self.responsive(0.5):
            return ReactorTimeout(f"{what}: the reactor is free, the call's Deferred never fired")
        if self.responsive(GRACE):
            return ReactorTimeout(f"{what}: the reactor thread was busy (free again after the timeout) in:\n{stack}")
        self._replace(f"{what}, stuck in:\n{stack}")
        return ReactorTimeout(f"{what}: the reactor thread is stuck (the next tests get a fresh reactor) in:\n{stack}")

    def _replace(self, why: str) -> None:
        """Leave the stuck reactor to its thread; start a fresh one of the same kind (as
        Twisted's global reactor, when the stuck one was it)."""
        import twisted.internet

        old, thread = self.reactor, self._thread
        fresh = type(old)()
        if getattr(twisted.internet, "reactor", None) is old:
            twisted.internet.reactor = fresh
            sys.modules["twisted.internet.reactor"] = fresh
        self.abandoned.append((old, thread, why))
        self.reactor, self._thread = fresh, None
        self.start()

    def wait(self, deferred_factory: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Alias of :meth:`call` for a function that returns a Deferred."""
        return self.call(deferred_factory, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        for old, thread, _why in self.abandoned:     # they stop if they ever get free
            if thread.is_alive():
                old.callFromThread(old.stop)
        if not self.running:
            return
        self.reactor.callFromThread(self.reactor.stop)
        assert self._thread is not None
        self._thread.join(timeout)


_shared: ReactorThread | None = None


def shared_reactor_thread() -> ReactorThread:
    """The process-wide reactor thread, started on first use."""
    global _shared
    if _shared is None:
        _shared = ReactorThread()
    return _shared.start()


@pytest.fixture(scope="session")
def reactor_thread() -> ReactorThread:
    rt = shared_reactor_thread()
    yield rt
    # A reactor cannot be restarted, so it stops only when the session ends
    # (stopping also ends its thread pool, whose threads would keep the
    # interpreter alive).
    rt.stop()


@pytest.fixture
def reactor(reactor_thread):  # noqa: F811 - the fixture above
    """The reactor itself, running in the shared thread."""
    return reactor_thread.reactor


def call(reactor, fn, *args, timeout: float = 10.0, **kwargs):
    """Run ``fn`` in the reactor thread; wait (bounded) for its Deferred."""
    rt = shared_reactor_thread()
    for old, _thread, why in rt.abandoned:
        if reactor is old:
            raise ReactorTimeout(f"{getattr(fn, '__qualname__', fn)!r} not run: this test's reactor "
                                 f"was replaced after {why}")
    assert reactor is rt.reactor
    return shared_reactor_thread().call(fn, *args, timeout=timeout, **kwargs)
