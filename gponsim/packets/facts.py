"""What the analyzer learned about each packet (the packets view's first pass).

:func:`collect` runs the capture analyzer (:mod:`gponsim.capture.analyze`, the
fast path that makes the Steps) once over the file and keeps, per packet, the
Steps whose bytes it carried (``Step.packets``) and the TLS records that end
in it, and per connection its session, protocol and endpoints. The packets
view then reads the file a second time, packet by packet, for the headers.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

from gponsim.capture.analyze import Analysis, analyze
from gponsim.steps import Step

#: TLS record content types (RFC 8446 §5.1, RFC 6520 for heartbeat).
RECORD_TYPES = {20: "ChangeCipherSpec", 21: "Alert", 22: "Handshake", 23: "ApplicationData",
                24: "Heartbeat"}

#: Handshake message types (RFC 8446 §4, RFC 5246 §7.4).
HANDSHAKE_TYPES = {0: "HelloRequest", 1: "ClientHello", 2: "ServerHello", 4: "NewSessionTicket",
                   8: "EncryptedExtensions", 11: "Certificate", 12: "ServerKeyExchange",
                   13: "CertificateRequest", 14: "ServerHelloDone", 15: "CertificateVerify",
                   16: "ClientKeyExchange", 20: "Finished"}


@dataclass(slots=True)
class Record:
    """One TLS record, attributed to the packet where its last byte arrived (as
    Wireshark shows it: a record spread over several segments is dissected in
    the segment that completes it)."""

    session: str
    direction: str
    type: int
    length: int                 # of the record's body (the header's length field)
    packets: list[int]          # every packet that carried a byte of it
    handshake: int | None = None    # a handshake record in clear: its first message's type

    @property
    def name(self) -> str:
        return RECORD_TYPES.get(self.type, f"type {self.type}")

    @property
    def message(self) -> str | None:
        """The handshake message's name (ClientHello, ...), when it could be read."""
        if self.handshake is None:
            return None
        return HANDSHAKE_TYPES.get(self.handshake, f"handshake type {self.handshake}")


@dataclass
class Facts:
    analysis: Analysis
    steps: list[Step] = field(default_factory=list)
    #: packet number -> indices in ``steps`` of the Steps it carried bytes of
    by_packet: dict[int, list[int]] = field(default_factory=dict)
    #: packet number -> the TLS records that end in it
    records: dict[int, list[Record]] = field(default_factory=dict)
    #: endpoints ("a:p → b:p", client first) -> [(first packet, connection info)], in order
    _conns: dict[str, list] = field(default_factory=dict)

    def connection(self, src: tuple, dst: tuple, number: int):
        """The mail connection (:class:`~gponsim.capture.decoders.ConnInfo`) a packet
        between ``src`` and ``dst`` (``(ip, port)``) belongs to, or None: the
        latest one between those endpoints that began at or before the packet."""
        for key in (_endpoints(src, dst), _endpoints(dst, src)):
            found = self._conns.get(key)
            if found:
                i = bisect.bisect_right(found, number, key=lambda c: c[0]) - 1
                if i >= 0:
                    return found[i][1]
        return None


def _endpoints(a: tuple, b: tuple) -> str:
    def ep(ip, port):
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return f"{ep(*a)} → {ep(*b)}"


def collect(path: str | Path, keylog: str | Path | None = None) -> Facts:
    """Analyze ``path`` once and index what each packet carried."""
    steps: list[Step] = []
    records: dict[int, list[Record]] = {}

    def on_record(session, direction, ctype, length, packets, handshake=None):
        if packets:
            records.setdefault(packets[-1], []).append(
                Record(session, direction, ctype, length, list(packets), handshake))

    analysis = analyze(path, steps.append, keylog=keylog, on_record=on_record)
    facts = Facts(analysis, steps, records=records)
    by_packet = facts.by_packet
    for i, step in enumerate(steps):
        for p in step.packets or ():
            by_packet.setdefault(p, []).append(i)
    for info in analysis.connections:
        facts._conns.setdefault(info.endpoints, []).append((info.first_packet, info))
    for found in facts._conns.values():
        found.sort(key=lambda c: c[0])
    return facts
