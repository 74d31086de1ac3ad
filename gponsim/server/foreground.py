"""A lab in the foreground until Ctrl-C: what `gponsim serve` and `gponsim
class start` share.

The lab starts once the reactor runs; SIGINT and SIGTERM stop the reactor
(the lab notes which signal, for Postfix's ``terminating on signal N`` line),
and the lab stops before the reactor shuts down. A start that fails stops the
reactor too and is handed back to the caller to report.
"""

from __future__ import annotations

import signal
from typing import Any, Callable


def run_in_foreground(reactor, lab, start: Callable[[], Any], stop: Callable[[], Any],
                      started: Callable[[Any], None],
                      more_signals: Callable[[], None] | None = None) -> BaseException | None:
    """Run the reactor with ``start()``'s Deferred firing ``started``; returns
    the exception a failed start gave (None when the lab ran and was stopped)."""
    failure: list[BaseException] = []

    def failed(f) -> None:
        failure.append(f.value)
        reactor.stop()

    def on_signal(signum, _frame) -> None:
        lab.stop_signal = signum
        reactor.callFromThread(reactor.stop)

    def install() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        if more_signals is not None:
            more_signals()

    reactor.callWhenRunning(install)
    reactor.callWhenRunning(lambda: start().addCallbacks(started, failed))
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return failure[0] if failure else None
