"""A packet's IP and TCP headers, read without Scapy where that is plain.

The packets view needs, per packet, what its IP and TCP headers say (endpoints,
flags, numbers, payload length, window, options), not a full dissection.
Scapy dissects a packet in about a millisecond; :func:`read` takes the common
shapes — Ethernet (with 802.1Q tags), Linux cooked, BSD loopback or raw IP,
then IPv4 (not a fragment) or IPv6 (no extension headers), then TCP — in a few
microseconds, with the values Scapy would give: the same option names and
values (``("MSS", 1460)``, ``("Timestamp", (tsval, tsecr))``...), the flags
with NS, the payload length from the IP header. Whatever else comes by
(fragments, tunnels, ICMP, extension headers, odd options, truncated headers)
returns None and is dissected by Scapy (:func:`from_scapy`), so the view
shows every packet the same way either way (tests/test_packets.py compares
both on every packet of the shared captures).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

#: TCP option kinds → (Scapy's name, struct format of the value), as
#: ``scapy.layers.inet.TCPOptions`` names them (29, TCP-AO, is left to Scapy).
OPTIONS = {2: ("MSS", "!H"), 3: ("WScale", "!B"), 4: ("SAckOK", None), 5: ("SAck", "!"),
           8: ("Timestamp", "!II"), 14: ("AltChkSum", "!BH"), 15: ("AltChkSumOpt", None),
           19: ("MD5", "16s"), 25: ("Mood", "!p"), 28: ("UTO", "!H"), 34: ("TFO", "!II")}

_TCP = struct.Struct("!HHIIBBH")
_U16 = struct.Struct("!H").unpack_from


@dataclass(slots=True)
class Header:
    ip: int             # 4 or 6
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int          # nine bits: FIN ... CWR and NS (0x100)
    window: int         # as on the wire
    length: int         # TCP payload bytes, as the IP header counts them (tshark's tcp.len)
    options: list       # (name, value) as Scapy gives them, NOP and EOL included


def read(link: int, frame: bytes) -> Header | None:
    """The headers of a plain TCP packet, or None (not TCP, or a shape left to Scapy)."""
    n = len(frame)
    if link == 1:                                          # Ethernet
        if n < 14:
            return None
        etype, off = (frame[12] << 8) | frame[13], 14
        while etype == 0x8100 and n >= off + 4:            # 802.1Q
            etype, off = (frame[off + 2] << 8) | frame[off + 3], off + 4
    elif link == 113:                                      # Linux cooked (SLL)
        if n < 16:
            return None
        etype, off = (frame[14] << 8) | frame[15], 16
    elif link == 276:                                      # Linux cooked v2 (SLL2)
        if n < 20:
            return None
        etype, off = (frame[0] << 8) | frame[1], 20
    elif link == 0:                                        # BSD loopback: the family, host order
        if n < 4:
            return None
        family = int.from_bytes(frame[:4], "little" if frame[0] else "big")
        etype, off = (0x0800 if family == 2 else 0x86DD if family in (24, 28, 30) else 0), 4
    elif link in (101, 12, 14):                            # raw IP
        if not n:
            return None
        etype, off = {4: 0x0800, 6: 0x86DD}.get(frame[0] >> 4, 0), 0
    else:
        return None
    if etype == 0x0800:
        if n < off + 20 or frame[off] >> 4 != 4 or frame[off + 9] != 6:
            return None
        ihl = (frame[off] & 0x0F) * 4
        total = _U16(frame, off + 2)[0]
        if ihl < 20 or frame[off + 6] & 0x3F or frame[off + 7]:      # fragments: Scapy's
            return None
        ip, src, dst = 4, socket.inet_ntop(socket.AF_INET, frame[off + 12:off + 16]), \
            socket.inet_ntop(socket.AF_INET, frame[off + 16:off + 20])
        at = off + ihl
        size = total - ihl if total else n - at           # 0: TSO on the capturing host
    elif etype == 0x86DD:
        if n < off + 40 or frame[off] >> 4 != 6 or frame[off + 6] != 6:
            return None                                    # extension headers: Scapy's
        plen = _U16(frame, off + 4)[0]
        if not plen:
            return None
        ip, src, dst = 6, socket.inet_ntop(socket.AF_INET6, frame[off + 8:off + 24]), \
            socket.inet_ntop(socket.AF_INET6, frame[off + 24:off + 40])
        at = off + 40
        size = plen
    else:
        return None
    if n < at + 20:
        return None
    sport, dport, seq, ack, doff, low, window = _TCP.unpack_from(frame, at)
    hdr = (doff >> 4) * 4
    if hdr < 20 or n < at + hdr or size < hdr:
        return None                         # a header cut short, or an IP length too short for it
    options = _options(frame[at + 20:at + hdr]) if hdr > 20 else []
    if options is None:
        return None
    return Header(ip, src, dst, sport, dport, seq, ack, ((doff & 1) << 8) | low, window,
                  size - hdr, options)


def _options(x: bytes) -> list | None:
    """TCP options as Scapy's ``TCPOptionsField`` reads them (None: one left to Scapy)."""
    out = []
    while x:
        kind = x[0]
        if kind == 0:
            out.append(("EOL", None))
            break
        if kind == 1:
            out.append(("NOP", None))
            x = x[1:]
            continue
        size = x[1] if len(x) > 1 else 0
        if size < 2:
            size = 2
        value = x[2:size]
        known = OPTIONS.get(kind)
        if known is None:
            if kind == 29:
                return None
            out.append((kind, value))
        else:
            name, fmt = known
            if kind == 5:
                fmt += "%iI" % (len(value) // 4)
            if fmt and struct.calcsize(fmt) == len(value):
                value = struct.unpack(fmt, value)
                if len(value) == 1:
                    value = value[0]
            out.append((name, value))
        x = x[size:]
    return out


def from_scapy(ip, tcp) -> Header:
    """The same :class:`Header` from Scapy's layers (``dissect.tcp_of``)."""
    from gponsim.packets import dissect

    return Header(6 if ip.version == 6 else 4, ip.src, ip.dst, tcp.sport, tcp.dport, tcp.seq,
                  tcp.ack, int(tcp.flags), tcp.window, dissect.tcp_length(ip, tcp),
                  list(tcp.options))
