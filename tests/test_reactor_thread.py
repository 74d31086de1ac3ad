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
    assert time.monotonic() - started < 0.5 and own.stuck is None


def test_a_deferred_that_never_fires_is_told_apart_from_a_busy_reactor(own):
    with pytest.raises(ReactorTimeout) as info:
        own.call(defer.Deferred, timeout=0.3)
    assert str(info.value) == "'Deferred' did not finish within 0.3 s: the reactor is free, the call's Deferred never fired"
    assert own.call(lambda: "next", timeout=1) == "next"


def test_a_stuck_reactor_fails_later_calls_at_once_with_the_first_cause(own, monkeypatch):
    monkeypatch.setattr(rt, "GRACE", 0.5)
    release = threading.Event()

    def hang():
        release.wait(60)
    try:
        with pytest.raises(ReactorTimeout) as first:
            own.call(hang, timeout=0.3)
        assert str(first.value).startswith("'test_a_stuck_reactor_fails_later_calls_at_once_with_the_first_cause."
                                           "<locals>.hang' did not finish within 0.3 s: the reactor thread is stuck in:")
        assert "in hang\n    release.wait(60)" in str(first.value)
        started = time.monotonic()
        with pytest.raises(ReactorTimeout) as later:
            own.call(lambda: 1, timeout=10)
        assert time.monotonic() - started < 5
        assert "not run: the reactor thread is stuck since" in str(later.value)
        assert "test_reactor_thread.py::test_a_stuck_reactor_fails_later_calls_at_once_with_the_first_cause" \
            in str(later.value)
        assert "release.wait(60)" in str(later.value)
    finally:
        release.set()
    assert own.call(lambda: "free", timeout=5) == "free" and own.stuck is None
