"""The tests' reactor thread: a call that times out says why, and does not take the reactor down.

Played on reactors of their own (not the shared one), each in its own thread.
"""

from __future__ import annotations

import threading
import time

import pytest
from twisted.internet import defer
from twisted.internet.selectreactor import SelectReactor

import reactor_thread as rt
from reactor_thread import ReactorThread, ReactorTimeout


@pytest.fixture
def own():
    thread = ReactorThread(SelectReactor()).start()
    yield thread
    thread.stop()


def block_for(seconds):
    time.sleep(seconds)


def test_a_busy_reactor_is_named_and_free_again_for_the_next_call(own):
    with pytest.raises(ReactorTimeout) as info:
        own.call(block_for, 1.5, timeout=0.3)
    message = str(info.value)
    assert message.startswith("'block_for' did not finish within 0.3 s: the reactor thread was busy "
                              "(free again after the timeout) in:")
    assert "in block_for\n    time.sleep(seconds)" in message
    started = time.monotonic()
    assert own.call(lambda: 42, timeout=1) == 42
    assert time.monotonic() - started < 0.5 and not own.abandoned


def test_a_deferred_that_never_fires_is_told_apart_from_a_busy_reactor(own):
    with pytest.raises(ReactorTimeout) as info:
        own.call(defer.Deferred, timeout=0.3)
    assert str(info.value) == "'Deferred' did not finish within 0.3 s: the reactor is free, the call's Deferred never fired"
    assert own.call(lambda: "next", timeout=1) == "next"


def test_a_stuck_reactor_is_replaced_for_the_next_calls(own, monkeypatch):
    monkeypatch.setattr(rt, "GRACE", 0.5)
    release = threading.Event()

    def hang():
        release.wait(60)
    stuck = own.reactor
    try:
        with pytest.raises(ReactorTimeout) as first:
            own.call(hang, timeout=0.3)
        assert str(first.value).startswith("'test_a_stuck_reactor_is_replaced_for_the_next_calls.<locals>.hang' "
                                           "did not finish within 0.3 s: the reactor thread is stuck (the next "
                                           "tests get a fresh reactor) in:")
        assert "in hang\n    release.wait(60)" in str(first.value)
        # The next call runs at once, on a fresh reactor of the same kind, in a thread of its own.
        started = time.monotonic()
        assert own.call(threading.current_thread, timeout=5).name == "reactor"
        assert time.monotonic() - started < 1
        assert own.reactor is not stuck and type(own.reactor) is type(stuck)
        [(old, thread, why)] = own.abandoned
        assert old is stuck and thread.is_alive() and "release.wait(60)" in why
    finally:
        release.set()
    own.stop()
    thread.join(10)
    assert not thread.is_alive()             # the stuck one stopped once free


def test_the_global_reactor_is_replaced_when_it_is_the_stuck_one(monkeypatch):
    """Code that asks Twisted for its reactor (``from twisted.internet import reactor``)
    gets the fresh one. Played with a stand-in global, put back afterwards."""
    import sys

    import twisted.internet

    stand_in = SelectReactor()
    monkeypatch.setattr(twisted.internet, "reactor", stand_in, raising=False)
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", stand_in)
    monkeypatch.setattr(rt, "GRACE", 0.2)
    own = ReactorThread(stand_in).start()
    release = threading.Event()
    try:
        with pytest.raises(ReactorTimeout):
            own.call(release.wait, 60, timeout=0.2)
        from twisted.internet import reactor as now
        assert now is own.reactor is sys.modules["twisted.internet.reactor"] and now is not stand_in
    finally:
        release.set()
        own.stop()
