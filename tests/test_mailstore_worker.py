"""The mail worker (gponsim.server.mailstore.worker): a stopping lab waits
for the mailbox commands in progress, but not for ever."""

from __future__ import annotations

from dovecot_memory import LabReactor

from gponsim.server.mailstore.worker import MailWorker


class _HeldPool:
    """A thread pool whose jobs run when the test says so."""

    def __init__(self) -> None:
        self.jobs: list = []

    def callInThreadWithCallback(self, on_result, func, *args, **kwargs):
        self.jobs.append(lambda: on_result(True, func(*args, **kwargs)))


def test_idle_fires_once_the_command_in_progress_has_answered():
    reactor, pool = LabReactor(), _HeldPool()
    worker = MailWorker(reactor, pool)
    answered = worker.run("user2", lambda: "FETCH answered")
    idle = []
    worker.idle(5.0).addCallback(idle.append)
    reactor.advance(1)
    assert idle == [] and not answered.called          # still working: the lab waits
    pool.jobs.pop()()
    reactor.advance(0)
    reactor.advance(0)
    assert answered.result == "FETCH answered" and idle == [None]


def test_idle_gives_up_after_its_timeout_and_fires_at_once_with_nothing_to_do():
    reactor, pool = LabReactor(), _HeldPool()
    worker = MailWorker(reactor, pool)
    now = []
    worker.idle(5.0).addCallback(now.append)
    assert now == [None]
    worker.run("user1", lambda: None)                 # a job that never ends
    late = []
    worker.idle(5.0).addCallback(late.append)
    reactor.advance(4.9)
    assert late == []
    reactor.advance(0.2)
    assert late == [None]
