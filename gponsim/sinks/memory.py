"""The in-memory sink: every Step kept in a list (tests, lessons, diagrams of a run)."""

from __future__ import annotations

import threading
import time
from typing import Callable

from gponsim.steps import Step


class ListSink:
    """Keeps every Step in memory (tests, lessons)."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self._cond = threading.Condition()
        self._stopped = False

    def step(self, step: Step) -> None:
        with self._cond:
            self.steps.append(step)
            self._cond.notify_all()

    def stop_waiting(self) -> None:
        """Every :meth:`wait_for`, now and later, returns at once (the run is interrupted)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Step], bool], timeout: float = 10.0,
                 start: int = 0) -> Step | None:
        """Block (in a thread other than the reactor's) until a Step from
        index ``start`` on matches; None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for s in self.steps[seen:]:
                    if predicate(s):
                        return s
                seen = len(self.steps)
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    return None
                self._cond.wait(left)
