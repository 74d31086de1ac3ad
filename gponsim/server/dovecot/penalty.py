"""Dovecot's auth penalty: a client address that keeps failing waits longer.

What Dovecot 2.3 does (``src/auth/auth-penalty.c`` with the table kept by its
``anvil`` process, ``src/anvil/penalty.c``; checked against Dovecot 2.3.19,
docs/hostile.md), and what this module simulates:

- Every failed authentication raises the *penalty* of the client's address
  (``rip``; an IPv6 address counts by its /48) by one, up to 4, and notes
  when. A success puts it back to 0.
- Before a new request from that address is looked at, the auth process
  waits ``2 s × 2^penalty``, at most 15 s: 4, 8, 15, 15 s. With
  ``auth_failure_delay`` (2 s) on each failure, a guesser's answers come
  after about 2, 6, 10, 17, 17... seconds, whichever connection it uses:
  the penalty belongs to the address, not to the connection.
- The same user *and* password failing again does not raise it (a mail
  client with an old password is not a guesser): the address keeps its
  penalty and the time it was last raised.
- Once 15 s have passed since it was last raised, the penalty is forgotten;
  a record not touched for 29 s is dropped (``AUTH_PENALTY_TIMEOUT``).
- A request with the ``no-penalty`` parameter, or without ``rip``, is never
  delayed or counted.

The table is bounded: records expire as above, and at most
:data:`MAX_RECORDS` addresses are kept (the oldest go first).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections import OrderedDict
from typing import Callable

INIT_SECS = 2                                 # AUTH_PENALTY_INIT_SECS
MAX_SECS = 15                                 # AUTH_PENALTY_MAX_SECS
MAX_PENALTY = 4                               # AUTH_PENALTY_MAX_PENALTY
#: How long an untouched record is kept (AUTH_PENALTY_TIMEOUT = 2 + 4 + 8 + 15).
TIMEOUT = INIT_SECS + 4 + 8 + MAX_SECS
#: How many different user+password checksums an address remembers.
CHECKSUMS_KEPT = 10
#: The most addresses remembered at once (gponsim's bound on the table).
MAX_RECORDS = 65536
#: An IPv6 client counts by its first 48 bits (PENALTY_IPV6_MASK_BITS).
IPV6_MASK_BITS = 48


def to_secs(penalty: int) -> int:
    """How long a request waits at this penalty: 2 s doubled per point, at most 15 s."""
    return min(INIT_SECS << penalty, MAX_SECS)


def ident(rip: str | None) -> str | None:
    """The key of a client address in the table (None: no penalty for it)."""
    if not rip:
        return None
    try:
        addr = ipaddress.ip_address(rip)
    except ValueError:
        return None
    if addr.version == 4:
        return str(addr)
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    net = ipaddress.ip_network(f"{addr}/{IPV6_MASK_BITS}", strict=False)
    return str(net.network_address)


def checksum(user: str | None, password: bytes | None) -> int:
    """What identifies "the same user and password" (0: no password known)."""
    if password is None:
        return 0
    value = zlib.crc32((user or "").encode("utf-8"), zlib.crc32(password))
    return value or 1


class _Record:
    __slots__ = ("penalty", "last_penalty", "last_update", "checksums")

    def __init__(self) -> None:
        self.penalty = 0
        self.last_penalty = 0.0      # when the penalty was last raised (or reset)
        self.last_update = 0.0       # when the record was last touched
        self.checksums: list[int] = []


class AuthPenalty:
    """The penalty table of one auth server. ``clock()`` gives the time in seconds."""

    def __init__(self, clock: Callable[[], float], max_records: int = MAX_RECORDS) -> None:
        self.clock = clock
        self.max_records = max_records
        self._records: OrderedDict[str, _Record] = OrderedDict()   # oldest update first

    def __len__(self) -> int:
        self._expire(self.clock())
        return len(self._records)

    def _expire(self, now: float) -> None:
        records = self._records
        while records:
            key, rec = next(iter(records.items()))
            if rec.last_update > now - TIMEOUT and len(records) <= self.max_records:
                break
            del records[key]

    def lookup(self, rip: str | None) -> int:
        """The penalty a new request from ``rip`` starts with (anvil's
        PENALTY-GET, then auth's decay: after 15 s without a new failure the
        address is forgiven)."""
        key = ident(rip)
        now = self.clock()
        self._expire(now)
        rec = self._records.get(key) if key is not None else None
        if rec is None:
            return 0
        penalty = rec.penalty
        last = min(rec.last_penalty, now)
        drop = MAX_PENALTY
        while penalty > 0 and now - last >= to_secs(drop):
            drop -= 1
            penalty -= 1
        return penalty

    def update(self, rip: str | None, value: int, check: int = 0) -> None:
        """anvil's PENALTY-INC: a failure sets ``value`` (the request's
        penalty + 1), a success 0 with no checksum."""
        key = ident(rip)
        if key is None:
            return
        value = min(value, MAX_PENALTY)
        now = self.clock()
        rec = self._records.pop(key, None)
        if rec is None:
            rec = _Record()
        if check == 0:
            rec.penalty, rec.last_penalty = value, now
        elif check in rec.checksums:
            # the same user+password again: not a new guess
            rec.checksums.remove(check)
            rec.checksums.insert(0, check)
            rec.penalty = value - 1
        else:
            rec.checksums.insert(0, check)
            del rec.checksums[CHECKSUMS_KEPT:]
            rec.penalty, rec.last_penalty = value, now
        rec.last_update = now
        self._records[key] = rec                 # newest last
        self._expire(now)
