"""Scapy's layers, loaded on first use.

Importing Scapy takes about half a second (its TLS layer most of it), so
nothing at gponsim's top level imports it: :func:`scapy` loads the layers the
packet level uses the first time a packet is dissected.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

_LOADED: SimpleNamespace | None = None


def quiet() -> None:
    """Scapy says nothing on its own (its warnings go through logging)."""
    logging.getLogger("scapy").setLevel(logging.ERROR)


def scapy() -> SimpleNamespace:
    """Scapy's classes the packet level uses (imported once)."""
    global _LOADED
    if _LOADED is None:
        quiet()
        from scapy.config import conf
        from scapy.layers import inet, inet6, l2
        from scapy.packet import Packet, Raw, Padding
        from scapy.utils import hexdump

        conf.verb = 0
        _LOADED = SimpleNamespace(conf=conf, Ether=l2.Ether, Dot1Q=l2.Dot1Q, CookedLinux=l2.CookedLinux,
                                  Loopback=l2.Loopback, IP=inet.IP, TCP=inet.TCP, ICMP=inet.ICMP,
                                  IPv6=inet6.IPv6, Raw=Raw, Padding=Padding, Packet=Packet,
                                  hexdump=hexdump, tls=None)
    return _LOADED


def tls():
    """Scapy's TLS layer (``scapy.layers.tls``), loaded when a TLS record is shown."""
    s = scapy()
    if s.tls is None:
        from scapy.layers.tls import record

        s.tls = record
    return s.tls


def dissect(linktype: int, frame: bytes):
    """The frame as Scapy's layers for its link type (``conf.l2types``); raw bytes
    of an unknown link type come back as one ``Raw`` layer."""
    s = scapy()
    cls = s.conf.l2types.get(linktype)
    if cls is None:
        if linktype == 14:                       # raw IP, BSD's number for it
            cls = s.conf.l2types.get(12)
        else:
            return s.Raw(frame)
    try:
        return cls(frame)
    except Exception:  # noqa: BLE001 - a frame Scapy cannot take apart is still shown, raw
        return s.Raw(frame)


def tcp_of(pkt):
    """``(ip, tcp)``: the TCP layer of a dissected frame and the IP layer right under
    it (IPv4 or IPv6; the inner one of a tunnel), or None. A TCP header quoted in an
    ICMP error is not the frame's TCP (Scapy names it ``TCPerror``)."""
    s = scapy()
    tcp = pkt.getlayer(s.TCP)
    if tcp is None:
        return None
    ip = tcp.underlayer
    while ip is not None and not isinstance(ip, (s.IP, s.IPv6)):
        ip = ip.underlayer                   # IPv6 extension headers
    if ip is None:
        return None
    return ip, tcp


def payload_of(ip, tcp) -> bytes:
    """The TCP payload's bytes, without an Ethernet trailer (Scapy's ``Padding``)."""
    return bytes(tcp.payload)[:tcp_length(ip, tcp)]


def tcp_length(ip, tcp) -> int:
    """The TCP payload length as the IP header gives it (Wireshark's ``tcp.len``)."""
    s = scapy()
    hdr = tcp.dataofs * 4 if tcp.dataofs else 20
    if isinstance(ip, s.IP):
        if ip.len:
            return max(0, ip.len - ip.ihl * 4 - hdr)
    elif tcp.underlayer is ip and ip.plen:
        return max(0, ip.plen - hdr)
    pad = tcp.getlayer(s.Padding)
    return len(bytes(tcp.payload)) - (len(pad.load) if pad is not None else 0)
