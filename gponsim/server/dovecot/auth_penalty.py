"""Dovecot's auth penalty (``src/auth/auth-penalty.c``): failed logins from one
address make that address's next logins wait.

Every failed authentication raises the address's penalty by one (anvil keeps
it, with the time of the last failure); a success clears it. Before a new
request from that address is looked at, Dovecot waits ``2 ** (penalty + 1)``
seconds (2, 4, 8, 15 at most), on top of ``auth_failure_delay`` when it
fails again: the second wrong password in a row from one computer takes
6 seconds, the third 10. The penalty fades: each step is dropped once its
time has passed since the last failure, and it is forgotten after 29
seconds. IPv6 addresses count by their /48 network. A request carrying
``no-penalty`` is exempt.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Callable

INIT_SECS = 2
MAX_SECS = 15
MAX_PENALTY = 4
TIMEOUT = INIT_SECS + 4 + 8 + MAX_SECS        # 29 s: the penalty is irrelevant after it


def to_secs(penalty: int) -> int:
    secs = INIT_SECS
    for _ in range(penalty):
        secs *= 2
    return min(secs, MAX_SECS)


def _key(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/48", strict=False))
    return str(addr)


class AuthPenalty:
    """anvil's PENALTY-GET / PENALTY-INC for the auth service."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._table: dict[str, tuple[int, float]] = {}

    def lookup(self, ip: str) -> int:
        """The penalty a new request from ``ip`` gets (0: none)."""
        now = self.clock()
        penalty, last = self._table.get(_key(ip), (0, 0.0))
        if penalty and now - last >= TIMEOUT:
            penalty = 0
        drop = MAX_PENALTY
        while penalty > 0:
            if now - last < to_secs(drop):
                break
            drop -= 1
            penalty -= 1
        return penalty

    def update(self, ip: str, value: int) -> None:
        key = _key(ip)
        if value:
            self._table[key] = (min(value, MAX_PENALTY), self.clock())
        else:
            self._table.pop(key, None)
