"""Build small pcap / pcapng files byte by byte for the capture tests.

A :class:`Conversation` plays a TCP connection (handshake, data segments
with the right sequence numbers, FIN) and lets a test drop, repeat or
reorder segments; :func:`write_pcap` / :func:`write_pcapng` wrap the frames
in any link type.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from pathlib import Path

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                       flags, 65535, 0, 0) + payload


@functools.lru_cache(maxsize=64)
def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def ipv4(src: str, dst: str, segment: bytes, proto: int = 6) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 1, 0x4000, 64, proto, 0,
                       _packed(src), _packed(dst)) + segment


def ipv6(src: str, dst: str, segment: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(segment), 6, 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + segment


def ip(src: str, dst: str, segment: bytes) -> bytes:
    return ipv6(src, dst, segment) if ":" in src else ipv4(src, dst, segment)


def link(kind: str, packet: bytes, vlan: int | None = None) -> bytes:
    """Wrap an IP packet: ether, sll, sll2, null, raw."""
    etype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
    if kind == "ether":
        head = b"\x00\x11\x22\x33\x44\x55" + b"\x66\x77\x88\x99\xaa\xbb"
        if vlan is not None:
            head += struct.pack("!HH", 0x8100, vlan)
        return head + struct.pack("!H", etype) + packet + (b"\0" * 6 if len(packet) < 46 else b"")
    if kind == "sll":
        return struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, etype) + packet
    if kind == "sll2":
        return struct.pack("!HHIHBB8s", etype, 0, 1, 772, 0, 6, b"\0" * 8) + packet
    if kind == "null":
        return struct.pack("<I", 30 if etype == 0x86DD else 2) + packet
    if kind == "raw":
        return packet
    raise ValueError(kind)


LINKTYPES = {"ether": 1, "sll": 113, "sll2": 276, "null": 0, "raw": 101}


def write_pcap(path: Path, frames: list[bytes], linktype: int = 1, t0: float = 1_700_000_000.0,
               endian: str = "<") -> Path:
    with open(path, "wb") as fh:
        fh.write(struct.pack(endian + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for i, frame in enumerate(frames):
            t = t0 + i * 0.001
            fh.write(struct.pack(endian + "IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)))
            fh.write(frame)
    return path


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def write_pcapng(path: Path, frames: list[bytes], linktype: int = 1,
                 t0: float = 1_700_000_000.0, keylog: str | None = None) -> Path:
    with open(path, "wb") as fh:
        fh.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        fh.write(_block(1, struct.pack("<HHI", linktype, 0, 262144)))
        if keylog:
            data = keylog.encode()
            fh.write(_block(0x0A, struct.pack("<II", 0x544C534B, len(data)) + data))
        for i, frame in enumerate(frames):
            ts = int((t0 + i * 0.001) * 1e6)
            fh.write(_block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame),
                                           len(frame)) + frame))
    return path


class Conversation:
    """One TCP connection as a list of IP packets, built in wire order."""

    def __init__(self, client=("10.0.0.1", 40000), server=("10.0.0.2", 25), handshake=True,
                 cseq=1000, sseq=5000) -> None:
        self.client, self.server = client, server
        self.cseq, self.sseq = cseq, sseq
        self.packets: list[bytes] = []
        if handshake:
            self.packets.append(self._pkt("c2s", SYN, seq=self.cseq - 1, ack=0))
            self.packets.append(self._pkt("s2c", SYN | ACK, seq=self.sseq - 1, ack=self.cseq))
            self.packets.append(self._pkt("c2s", ACK))

    def _pkt(self, d: str, flags: int, payload: bytes = b"", seq: int | None = None,
             ack: int | None = None) -> bytes:
        if d == "c2s":
            (sip, sp), (dip, dp) = self.client, self.server
            seq = self.cseq if seq is None else seq
            ack = self.sseq if ack is None else ack
        else:
            (sip, sp), (dip, dp) = self.server, self.client
            seq = self.sseq if seq is None else seq
            ack = self.cseq if ack is None else ack
        return ip(sip, dip, tcp(sp, dp, seq, ack, flags, payload))

    def send(self, d: str, data: bytes, mss: int = 0) -> list[bytes]:
        """Data from one side (split into segments of ``mss``); returns the new packets."""
        out = []
        chunks = [data[i:i + mss] for i in range(0, len(data), mss)] if mss else [data]
        for chunk in chunks:
            out.append(self._pkt(d, ACK | PSH, chunk))
            if d == "c2s":
                self.cseq += len(chunk)
            else:
                self.sseq += len(chunk)
        self.packets.extend(out)
        return out

    def c(self, data: bytes | str, mss: int = 0) -> list[bytes]:
        return self.send("c2s", data.encode() if isinstance(data, str) else data, mss)

    def s(self, data: bytes | str, mss: int = 0) -> list[bytes]:
        return self.send("s2c", data.encode() if isinstance(data, str) else data, mss)

    def ack(self, d: str) -> None:
        self.packets.append(self._pkt(d, ACK))

    def close(self) -> None:
        self.packets.append(self._pkt("c2s", FIN | ACK))
        self.cseq += 1
        self.packets.append(self._pkt("s2c", FIN | ACK))
        self.sseq += 1
        self.packets.append(self._pkt("c2s", ACK))

    def frames(self, kind: str = "ether", vlan: int | None = None) -> list[bytes]:
        return [link(kind, p, vlan) for p in self.packets]


def smtp_session(conv: Conversation, mss: int = 0) -> Conversation:
    """A plain SMTP session with pipelining, AUTH PLAIN, dot-stuffing."""
    conv.s("220 mail.gponlab.local ESMTP Postfix (Debian/GNU)\r\n")
    conv.c("EHLO [10.0.0.1]\r\n")
    conv.s("250-mail.gponlab.local\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 CHUNKING\r\n")
    conv.c("AUTH PLAIN AHVzZXIxAHBhc3M=\r\n")
    conv.s("235 2.7.0 Authentication successful\r\n")
    conv.c("MAIL FROM:<user1@gponlab.local>\r\nRCPT TO:<user2@gponlab.local>\r\nDATA\r\n")
    conv.s("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
    body = ("From: user1@gponlab.local\r\nTo: user2@gponlab.local\r\nSubject: Hola\r\n"
            "User-Agent: Mozilla/5.0 Thunderbird/128.0\r\n\r\nline one\r\n..a stuffed dot\r\n"
            + "x" * 3000 + "\r\n.\r\n")
    conv.c(body, mss=mss)
    conv.s("250 2.0.0 Ok: queued as 4ABCD123\r\n")
    conv.c("QUIT\r\n")
    conv.s("221 2.0.0 Bye\r\n")
    conv.close()
    return conv
