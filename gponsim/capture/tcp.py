"""TCP reassembly: each connection's two byte streams, in order, gaps marked.

A :class:`Tracker` takes :class:`~gponsim.capture.pcap.Segment` objects in
capture order and hands every connection's handler the bytes of each
direction as soon as they are in order:

- retransmissions and overlapping segments are trimmed to the new bytes;
- out-of-order segments wait until the hole before them is filled;
- a hole that will never be filled (the peer acknowledged the bytes, too
  much data waits behind it, or the capture ends) is reported to the handler
  with ``gap(direction, nbytes, t)`` and decoding resumes after it;
- a capture that starts mid-connection (no SYN) starts each stream at its
  first segment; a capture with one direction only gives one stream.

The client is the side that sent the SYN; without a SYN, the side not on a
well-known mail port (else the higher port).
"""

from __future__ import annotations

import heapq
from typing import Callable, Protocol

from gponsim.capture.pcap import ACK, FIN, RST, SYN, Segment

_M = 0xFFFFFFFF
#: Bytes allowed to wait behind a hole before the hole is declared a gap.
PENDING_LIMIT = 1 << 18

MAIL_PORTS = frozenset({25, 465, 587, 2525, 110, 995, 143, 993, 10025, 10587, 10143, 10110,
                        10465, 10993, 10995})


def _rel(a: int, b: int) -> int:
    """a - b in sequence-number space (signed, mod 2**32)."""
    d = (a - b) & _M
    return d - 0x100000000 if d & 0x80000000 else d


class Handler(Protocol):
    #: ``packet``: the capture's number of the packet that carried these bytes.
    def data(self, direction: str, data: bytes, t: float, packet: int = 0) -> None: ...
    #: ``packet``: the first packet after the hole (Wireshark's "previous segment not
    #: captured").
    def gap(self, direction: str, nbytes: int, t: float, packet: int = 0) -> None: ...
    def close(self, t: float) -> None: ...


class Stream:
    """One direction of a connection. Out-of-order segments wait in ``pending``
    (by sequence number: their bytes and packet number) and in ``order``, a
    heap of their offsets from ``base`` (the stream position when the first of
    them arrived), so the earliest one is found in O(log n), however many wait."""

    __slots__ = ("direction", "next", "pending", "pending_bytes", "fin", "acked", "bytes",
                 "retrans", "gaps", "seen", "order", "base")

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.next: int | None = None
        self.pending: dict[int, tuple[bytes, int]] = {}
        self.order: list[int] = []
        self.base = 0
        self.pending_bytes = 0
        self.fin = False
        self.acked: int | None = None
        self.bytes = 0
        self.retrans = 0
        self.gaps = 0
        self.seen = False


class Connection:
    """One TCP connection: endpoints, the two streams, its handler."""

    __slots__ = ("client", "server", "c2s", "s2c", "handler", "first_packet", "first_t",
                 "last_t", "syn", "closed", "rst", "number")

    def __init__(self, client: tuple[str, int], server: tuple[str, int], packet: int, t: float,
                 syn: bool) -> None:
        self.client = client
        self.server = server
        self.c2s = Stream("c2s")
        self.s2c = Stream("s2c")
        self.handler: Handler | None = None
        self.first_packet = packet
        self.first_t = t
        self.last_t = t
        self.syn = syn
        self.closed = False
        self.rst = False
        self.number = 0

    @property
    def four_tuple(self) -> str:
        def ep(ip, port):
            return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        return f"{ep(*self.client)} → {ep(*self.server)}"


class Tracker:
    """Connections by 4-tuple; ``opened(conn)`` returns the handler (or None to ignore)."""

    def __init__(self, opened: Callable[[Connection], Handler | None]) -> None:
        self.opened = opened
        self.conns: dict[tuple, Connection] = {}
        self.count = 0
        #: Recently closed connections: late ACKs and FINs must not open new ones.
        self.ended: dict[tuple, bool] = {}

    def segment(self, number: int, t: float, seg: Segment) -> None:
        self.tcp(number, t, (seg.src, seg.sport, seg.dst, seg.dport, seg.seq, seg.ack, seg.flags,
                             seg.payload))

    def tcp(self, number: int, t: float, fields: tuple) -> None:
        """One TCP segment, by its fields ``(src, sport, dst, dport, seq, ack, flags,
        payload)``, as :func:`gponsim.capture.pcap.ether_ipv4_tcp` gives them."""
        src, sport, dst, dport, seq, ack, flags, payload = fields
        a, b = (src, sport), (dst, dport)
        key = (a, b) if a < b else (b, a)
        conn = self.conns.get(key)
        if flags == ACK and not payload and conn is not None:
            # A pure ACK of a known connection (a third of a mail capture): only the
            # acknowledgment number matters (the peer has the bytes before it).
            if conn.handler is None:
                return
            conn.last_t = t
            other = conn.s2c if a == conn.client else conn.c2s
            if other.next is not None and (other.acked is None
                                           or (ack - other.acked) & _M < 0x80000000):
                other.acked = ack
                if other.pending and _rel(ack, other.next) > 0:
                    self._flush(conn, other, t, upto=ack)
            return
        if conn is not None and flags & SYN and not flags & ACK and (
                conn.closed or conn.c2s.bytes or conn.s2c.bytes) and conn.client == a \
                and conn.c2s.next is not None and _rel(seq + 1, conn.c2s.next) != 0:
            self._close(key, conn, t)          # the port pair reused for a new connection
            conn = None
        if conn is None:
            if key in self.ended and not flags & SYN:
                return
            conn = self._open(key, number, t, Segment(src, sport, dst, dport, seq, ack, flags,
                                                      payload))
        if conn.handler is None:
            if flags & (FIN | RST):
                self._close(key, conn, t)
            return
        conn.last_t = t
        if a == conn.client:
            stream, other = conn.c2s, conn.s2c
        else:
            stream, other = conn.s2c, conn.c2s
        if flags & ACK and other.next is not None:
            if other.acked is None or (ack - other.acked) & 0xFFFFFFFF < 0x80000000:
                other.acked = ack
                if other.pending and _rel(ack, other.next) > 0:
                    self._flush(conn, other, t, upto=ack)
        if not payload and not flags & (SYN | FIN | RST):
            return                               # a pure ACK: nothing more to do
        self._data(conn, stream, seq, payload, flags, t, number)
        if flags & RST:
            conn.rst = True
            self._close(key, conn, t)
        elif conn.c2s.fin and conn.s2c.fin:
            self._close(key, conn, t)

    def _open(self, key, number: int, t: float, seg: Segment) -> Connection | None:
        a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
        flags = seg.flags
        if flags & SYN and not flags & ACK:
            client, server = a, b
        elif flags & SYN:
            client, server = b, a
        elif seg.dport in MAIL_PORTS and seg.sport not in MAIL_PORTS:
            client, server = a, b
        elif seg.sport in MAIL_PORTS and seg.dport not in MAIL_PORTS:
            client, server = b, a
        else:
            client, server = (a, b) if seg.sport > seg.dport else (b, a)
        conn = Connection(client, server, number, t, bool(flags & SYN))
        self.conns[key] = conn
        conn.handler = self.opened(conn)
        if conn.handler is not None:
            self.count += 1
            conn.number = self.count
        return conn

    def _data(self, conn: Connection, st: Stream, seq: int, payload: bytes, flags: int,
              t: float, number: int = 0) -> None:
        if st.next is None:
            if flags & SYN:
                st.next = (seq + 1) & _M
                return
            st.next = seq
        elif flags & SYN:
            return
        n = len(payload)
        if not n:
            if flags & FIN and not st.fin and _rel(seq, st.next) == 0:
                st.fin = True
                st.next = (st.next + 1) & _M
            return
        rel = (seq - st.next) & _M                     # _rel(seq, st.next), inline
        if rel & 0x80000000:
            rel -= 0x100000000
        if rel == 0 and not st.pending:                 # the common case: the next bytes
            st.next = (seq + n) & _M
            st.bytes += n
            st.seen = True
            conn.handler.data(st.direction, payload, t, number)
            if flags & FIN and not st.pending:
                st.fin = True
                st.next = (st.next + 1) & _M
            return
        if rel < 0:
            if rel + n <= 0:
                st.retrans += 1
                return
            payload = payload[-rel:]
            seq = st.next
            rel = 0
        if rel == 0:
            self._deliver(conn, st, payload, t, number)
            if st.pending:
                self._drain(conn, st, t)
            if flags & FIN and not st.pending:
                st.fin = True
                st.next = (st.next + 1) & _M
            return
        old = st.pending.get(seq)
        if old is None or len(old[0]) < n:
            if not st.pending:
                st.base, st.order = st.next, []
            if old is None:
                heapq.heappush(st.order, (seq - st.base) & _M)
            st.pending[seq] = (payload, number)
            st.pending_bytes += n - (len(old[0]) if old else 0)
        if st.pending_bytes > PENDING_LIMIT or (st.acked is not None and _rel(st.acked, st.next) > 0):
            self._flush(conn, st, t, upto=st.acked if st.pending_bytes <= PENDING_LIMIT else None)

    def _deliver(self, conn: Connection, st: Stream, payload: bytes, t: float, number: int) -> None:
        st.next = (st.next + len(payload)) & _M
        st.bytes += len(payload)
        st.seen = True
        conn.handler.data(st.direction, payload, t, number)

    @staticmethod
    def _first(st: Stream) -> int | None:
        """The sequence number of the earliest waiting segment."""
        while st.order:
            seq = (st.base + st.order[0]) & _M
            if seq in st.pending:
                return seq
            heapq.heappop(st.order)       # delivered already
        return None

    def _drain(self, conn: Connection, st: Stream, t: float) -> None:
        while (seq := self._first(st)) is not None:
            r = _rel(seq, st.next)
            if r > 0:
                return
            heapq.heappop(st.order)
            data, number = st.pending.pop(seq)
            st.pending_bytes -= len(data)
            if r + len(data) > 0:
                self._deliver(conn, st, data[-r:] if r else data, t, number)

    def _flush(self, conn: Connection, st: Stream, t: float, upto: int | None = None) -> None:
        """Declare the hole before the first waiting segment a gap, and go on."""
        while (first := self._first(st)) is not None:
            r = _rel(first, st.next)
            if upto is not None and _rel(first, upto) >= 0 and r > 0:
                return
            if r > 0:
                st.gaps += 1
                conn.handler.gap(st.direction, r, t, st.pending[first][1])
                st.next = first
            self._drain(conn, st, t)

    def _close(self, key, conn: Connection, t: float) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.handler is not None:
            for st in (conn.c2s, conn.s2c):
                if st.pending:
                    self._flush(conn, st, t)
            conn.handler.close(t)
            conn.handler = None           # handlers that keep their connection: no cycle left
        if self.conns.get(key) is conn:
            del self.conns[key]
        self.ended[key] = True
        if len(self.ended) > 20000:
            for old in list(self.ended)[:10000]:
                del self.ended[old]

    def finish(self) -> list[tuple[str, dict]]:
        """End of the capture: every open connection is flushed and closed.

        Returns what went wrong closing some of them (one connection's trouble
        does not keep the others from being closed), as problems for
        :meth:`~gponsim.capture.pcap.ReadReport.problem`: ``(key, values)``.
        """
        errors = []
        for key, conn in list(self.conns.items()):
            try:
                self._close(key, conn, conn.last_t)
            except Exception as exc:  # noqa: BLE001
                errors.append(("unfinished_connection", {
                    "endpoints": conn.four_tuple, "number": conn.first_packet,
                    "error": f"{type(exc).__name__}: {exc}"}))
        return errors
