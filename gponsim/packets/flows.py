"""TCP bookkeeping per connection, packet by packet, as Wireshark shows it.

Relative sequence numbers: a direction whose SYN was captured counts from its
initial sequence number (the SYN is 0, the first data byte 1); a direction
first seen in the middle counts from the byte before its first segment (so
that segment is 1), and an acknowledgment of a direction not yet seen sets
that direction's base the same way (its ACK reads 1). A packet without the
ACK flag shows its acknowledgment field as it is (0 in a SYN). Window scaling applies to a direction once its
SYN announced a scale (RFC 7323 §2.2) and stops applying when either SYN was
seen without one; SYN segments are never scaled.

Besides the numbers, each segment gets what a student should notice
(:class:`Segment.notes`): the handshake, retransmissions, segments after a
hole, duplicate ACKs, zero windows, window updates, keep-alives, ACKs that
came late (delayed ACKs), the teardown.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

M = 0xFFFFFFFF
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

#: An ACK this long after the data it acknowledges is called a delayed ACK.
DELAYED_ACK = 0.03


@dataclass(slots=True)
class Segment:
    """What the flow says about one TCP segment."""

    seq: int                    # relative
    ack: int                    # relative (the raw field without the ACK flag)
    next_seq: int               # relative sequence number after this segment
    window: int                 # as on the wire
    scaled: int                 # times the direction's scale, when known
    scale: int                  # the multiplier; -1 unknown, -2 scaling not in use
    client: bool                # sent by the side that opened the connection
    stream: int                 # the connection's index, from 0 (as Wireshark's tcp.stream)
    notes: list = field(default_factory=list)    # (key, values) pairs
    acked_bytes: int = 0        # bytes of the peer this segment acknowledges for the first time


class _Half:
    __slots__ = ("base", "wscale", "syn", "next", "last_ack", "last_win", "sent", "fin", "isn_seen",
                 "acked", "syn_t", "turn")

    def __init__(self) -> None:
        self.base: int | None = None
        self.wscale: int | None = None      # the shift its SYN announced; None: unknown
        self.syn: bool | None = None        # its SYN: None not seen, True with WS, False without
        self.next: int | None = None        # relative: highest seq + len seen
        self.last_ack: int | None = None
        self.last_win: int | None = None
        self.sent: deque = deque()          # (relative end, time) of data segments not yet ACKed
        self.fin = False
        self.isn_seen = False
        self.acked = 0                      # highest relative ACK this side sent
        self.syn_t: float | None = None      # when its SYN (or SYN/ACK) was captured
        #: How long this side takes to answer at the capture point when it does not wait:
        #: its handshake answer, else the quickest ACK seen from it.
        self.turn: float | None = None


class _Flow:
    __slots__ = ("halves", "client", "stream", "closed", "handshake")

    def __init__(self, client: tuple, stream: int) -> None:
        self.halves = {}
        self.client = client
        self.stream = stream
        self.closed = False
        self.handshake = 0          # 1: SYN seen, 2: SYN/ACK seen, 3: the third ACK seen

    def half(self, src: tuple) -> _Half:
        h = self.halves.get(src)
        if h is None:
            h = self.halves[src] = _Half()
        return h


def _option(options, name):
    for opt in options or ():
        if opt[0] == name:
            return opt[1]
    return None


class Flows:
    """Connections by their endpoints; :meth:`segment` reads one packet's TCP header."""

    def __init__(self) -> None:
        self.flows: dict[tuple, _Flow] = {}
        self.count = 0

    def segment(self, t: float, src: tuple, dst: tuple, seq: int, ack: int, flags: int,
                window: int, length: int, options=()) -> Segment:
        key = (src, dst) if src < dst else (dst, src)
        flow = self.flows.get(key)
        syn_only = flags & SYN and not flags & ACK
        if flow is not None and syn_only:
            mine = flow.halves.get(src)
            if flow.closed or (mine is not None and mine.base is not None and mine.isn_seen
                               and mine.base != seq) or (mine is not None and not mine.isn_seen):
                flow = None                 # the port pair used again: a new connection
        if flow is None:
            if flags & SYN and flags & ACK:
                client = dst
            elif flags & SYN:
                client = src
            else:
                client = src if dst[1] < src[1] else dst
            flow = self.flows[key] = _Flow(client, self.count)
            self.count += 1
        me, peer = flow.half(src), flow.half(dst)
        notes: list = []
        # ------------------------------------------------------------ numbers
        if flags & SYN:
            if me.base is None or not me.isn_seen:
                me.base = seq
                me.isn_seen = True
            ws = _option(options, "WScale")
            me.syn = ws is not None
            me.wscale = ws if ws is not None else None
        elif me.base is None:
            me.base = (seq - 1) & M
        if flags & ACK:
            if peer.base is None:
                peer.base = (ack - 1) & M
            rel_ack = (ack - peer.base) & M
        else:
            rel_ack = ack                   # not an acknowledgment: the field as it is
        rel_seq = (seq - me.base) & M
        span = length + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        end = (rel_seq + span) & M
        # ------------------------------------------------------------ window
        if flags & SYN:
            scale = -1 if me.syn else -2
            scaled = window
        else:
            if me.syn is False or peer.syn is False:
                scale = -2
            elif me.wscale is not None and peer.syn is not False:
                scale = 1 << min(me.wscale, 14)
            else:
                scale = -1
            scaled = window * scale if scale > 0 else window
        seg = Segment(rel_seq, rel_ack, end, window, scaled, scale, src == flow.client, flow.stream,
                      notes)
        # ------------------------------------------------------------ what to notice
        if flags & SYN and not flags & ACK:
            notes.append(("syn_retransmission" if flow.handshake >= 1 and me.next is not None
                          else "syn", _syn_values(options, window)))
            flow.handshake = max(flow.handshake, 1)
            me.syn_t = t
        elif flags & SYN:
            notes.append(("synack", _syn_values(options, window)))
            flow.handshake = max(flow.handshake, 2)
            me.syn_t = t
            if peer.syn_t is not None and me.turn is None:
                me.turn = t - peer.syn_t
        elif flow.handshake == 2 and src == flow.client and flags & ACK and rel_ack == 1 and not length:
            notes.append(("handshake_ack", {}))
            flow.handshake = 3
            if peer.syn_t is not None and me.turn is None:
                me.turn = t - peer.syn_t
        if flags & RST:
            notes.append(("rst", {}))
            flow.closed = True
        if flags & FIN:
            notes.append(("fin_second" if peer.fin else "fin", {}))
            me.fin = True
            if peer.fin:
                flow.closed = True
        elif me.fin and peer.fin and flags & ACK and not length and not flags & RST:
            notes.append(("last_ack", {}))
        data_like = span > 0
        if data_like and me.next is not None and not flags & SYN:
            if _before(rel_seq, me.next):
                if length <= 1 and (rel_seq + 1) & M == me.next and not flags & (FIN | RST):
                    notes.append(("keep_alive", {}))
                elif not _before(me.next, end):
                    notes.append(("retransmission", {"bytes": length}))
                else:
                    notes.append(("partial_retransmission",
                                  {"old": (me.next - rel_seq) & M, "new": (end - me.next) & M}))
            elif _before(me.next, rel_seq):
                notes.append(("hole_before", {"missing": (rel_seq - me.next) & M}))
        pure_ack = flags & ACK and not length and not flags & (SYN | FIN | RST)
        if window == 0 and not flags & (SYN | FIN | RST):
            notes.append(("zero_window", {}))
        elif pure_ack and me.last_ack == rel_ack and me.last_win is not None:
            if window != me.last_win:
                notes.append(("window_update", {"before": me.last_win, "now": window}))
            elif peer.next is not None and _before(rel_ack, peer.next) \
                    and not any(k == "keep_alive" for k, _ in notes):
                notes.append(("dup_ack", {}))
        if flags & ACK and peer.sent:
            # The data of the other side this ACK acknowledges for the first time.
            first_t, acked = None, 0
            while peer.sent and not _before(rel_ack, peer.sent[0][0]):
                end_seq, when, size = peer.sent.popleft()
                first_t = when if first_t is None else first_t
                acked += size
            if acked:
                seg.acked_bytes = acked
                if pure_ack and first_t is not None:
                    # Late beyond what this side takes to answer at once (seen from where
                    # the capture was made, that includes the round trip).
                    delay = t - first_t
                    if flow.handshake < 2 and (me.turn is None or delay < me.turn):
                        me.turn = delay             # no handshake seen: the quickest ACK
                    elif delay - me.turn >= max(DELAYED_ACK, me.turn / 2):
                        notes.append(("delayed_ack", {"ms": round(delay * 1000)}))
        if any(k in ("retransmission", "partial_retransmission") for k, _ in notes) and me.sent:
            # Sent again: an ACK of these bytes answers this copy, not the lost one.
            me.sent = deque((e, t if not _before(end, e) else when, size) for e, when, size in me.sent)
        if length and not any(k in ("retransmission", "keep_alive") for k, _ in notes):
            me.sent.append((end, t, length))
            if len(me.sent) > 10000:
                me.sent.popleft()
        if me.next is None or _before(me.next, end):
            me.next = end
        if flags & ACK:
            me.last_ack, me.last_win = rel_ack, window
        return seg


def _before(a: int, b: int) -> bool:
    """a comes before b in sequence space."""
    return a != b and ((b - a) & M) < 0x80000000


def _syn_values(options, window: int) -> dict:
    values = {"window": window, "mss": _option(options, "MSS"), "wscale": _option(options, "WScale"),
              "sack": any(o[0] == "SAckOK" for o in options or ()),
              "timestamps": _option(options, "Timestamp") is not None}
    return values
