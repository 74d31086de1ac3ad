"""anvil(8): how many connections each client has open, and how fast it opens them.

Postfix's smtpd asks anvil at every connection (``src/anvil/anvil.c``,
``src/smtpd/smtpd.c``), per master.cf service and client address:

- the *count* of connections that client has open to that service now
  (this one included), checked against ``smtpd_client_connection_count_limit``
  (default 50);
- the *rate*: connections in the current time unit (``anvil_rate_time_unit``,
  60 s), checked against ``smtpd_client_connection_rate_limit`` (default 0,
  no limit). The counter simply starts again once a unit has passed since
  the unit began (anvil: "easier than a moving average, and a quicker
  response to trespassers").

A connection over a limit is still counted (it is open until smtpd hangs
up), so Postfix logs ``Connection concurrency limit exceeded: 51 from ...``.
Clients in ``smtpd_client_event_limit_exceptions`` (default: $mynetworks)
are never counted. A client's record is dropped one time unit after its
last connection closed, so the table holds only recent clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: anvil_rate_time_unit's default.
TIME_UNIT = 60.0


@dataclass
class _Remote:
    count: int = 0
    rate: int = 0
    start: float = 0.0
    idle_since: float | None = None      # count fell to 0: expires one unit later


class Anvil:
    """The connection counts of one lab (every smtpd service shares it)."""

    def __init__(self, clock: Callable[[], float], time_unit: float = TIME_UNIT) -> None:
        self.clock = clock
        self.time_unit = time_unit
        self._remotes: dict[tuple[str, str], _Remote] = {}

    def __len__(self) -> int:
        self._expire(self.clock())
        return len(self._remotes)

    def _expire(self, now: float) -> None:
        gone = [key for key, r in self._remotes.items()
                if r.count == 0 and r.idle_since is not None
                and r.idle_since + self.time_unit <= now]
        for key in gone:
            del self._remotes[key]

    def connect(self, service: str, address: str) -> tuple[int, int]:
        """A new connection: (connections open, connections this time unit)."""
        now = self.clock()
        self._expire(now)
        key = (service, address)
        remote = self._remotes.get(key)
        if remote is None:
            remote = self._remotes[key] = _Remote(count=1, rate=1, start=now)
            return remote.count, remote.rate
        if remote.start + self.time_unit < now:
            remote.rate, remote.start = 0, now
        remote.rate += 1
        remote.count += 1
        remote.idle_since = None
        return remote.count, remote.rate

    def disconnect(self, service: str, address: str) -> None:
        remote = self._remotes.get((service, address))
        if remote is not None and remote.count > 0:
            remote.count -= 1
            if remote.count == 0:
                remote.idle_since = self.clock()
