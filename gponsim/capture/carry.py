"""Which packets carried which bytes: the link from a Step back to the wire.

A decoder reads each direction of a connection as one stream of bytes, but
those bytes arrived in packets: a line may be split across two segments, one
segment may hold several pipelined commands, a TLS record may span many. A
:class:`Carrier` follows one direction: the bytes handed to the decoder and
not yet part of a Step, each run of them with the packet(s) that carried it.
When the decoder emits a Step it takes the bytes the Step was made of (all of
them but the ones still waiting in its buffer) and so learns its packets.

Bytes inside TLS are carried by the TLS records they were decrypted from, so a
run may name several packets (the ones that carried its record).
"""

from __future__ import annotations

from collections import deque


class Carrier:
    """Bytes of one direction not yet in a Step, by the packets that carried them."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: deque = deque()      # [bytes, packets (tuple)], in stream order
        self.size = 0

    def add(self, n: int, packets: tuple) -> None:
        if not n:
            return
        parts = self.parts
        if parts and parts[-1][1] == packets:
            parts[-1][0] += n
        else:
            parts.append([n, packets])
        self.size += n

    def take(self, n: int) -> list[int]:
        """The packets of the next ``n`` bytes, which leave the carrier (in order, each once)."""
        out: list[int] = []
        parts = self.parts
        self.size -= n
        while n > 0 and parts:
            part = parts[0]
            for p in part[1]:
                if not out or out[-1] != p:
                    out.append(p)
            if part[0] <= n:
                n -= part[0]
                parts.popleft()
            else:
                part[0] -= n
                n = 0
        if self.size < 0:
            self.size = 0
        return out

    def keep(self, rest: int) -> list[int]:
        """Take every byte but the last ``rest`` (those still wait in the decoder)."""
        parts = self.parts
        if not rest and len(parts) == 1:          # the common case: one segment, one Step
            self.size = 0
            return list(parts.pop()[1])
        return self.take(self.size - rest) if self.size > rest else []

    def clear(self) -> None:
        self.parts.clear()
        self.size = 0

    def move_to(self, other: "Carrier") -> None:
        """Hand every byte over to ``other`` (the same bytes, read by another layer)."""
        for n, packets in self.parts:
            other.add(n, packets)
        self.clear()
