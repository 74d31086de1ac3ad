"""A capture file → Steps, plus what the summary needs.

:func:`analyze` reads a pcap/pcapng file packet by packet (never whole),
reassembles every TCP connection, finds the mail connections (by port, else
by their first bytes) and decodes them into Steps sent to ``emit``. It returns
an :class:`Analysis`: connections, clients, TLS, failures, credentials,
messages and the problems met (each naming the packet).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gponsim.capture.decoders import (DECODERS, IMPLICIT, PORTS, ConnInfo, Context, Credential,
                                      Message, sniff)
from gponsim.capture.pcap import (SUPPORTED_LINKS, CaptureError, ReadReport, UnknownLink,
                                  ether_ipv4_tcp, read_packets, tcp_segment)
from gponsim.capture.tcp import Connection, Tracker
from gponsim.capture.tls import TlsObserver, looks_like_tls
from gponsim.commentary import annotate
from gponsim.steps import Step, new_session, null_emit

__all__ = ["Analysis", "CaptureError", "analyze"]

#: Connections and messages listed one by one in the summary (the rest are counted).
MAX_LISTED = 10000

#: TLS ports of other services (HTTPS, DNS over TLS, LDAPS, XMPP, SIP, RDP, MQTT, AMQP):
#: unreadable TLS there is not worth a hint that it could be mail.
NOT_MAIL_TLS_PORTS = frozenset({443, 8443, 853, 636, 5223, 5061, 3389, 8883, 5671})


@dataclass
class Analysis:
    path: str
    report: ReadReport
    connections: list[ConnInfo] = field(default_factory=list)
    credentials: list[Credential] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    failures: list[Step] = field(default_factory=list)
    tcp_packets: int = 0
    steps: int = 0
    elapsed: float = 0.0
    unknown_links: dict = field(default_factory=dict)
    #: Connections and messages beyond the listed ones (memory stays bounded).
    more_connections: dict = field(default_factory=dict)
    more_messages: int = 0
    #: TLS connections on ports that are not mail ports, unreadable without their keys
    #: (the first few endpoints, and how many in all)
    unread_tls: list = field(default_factory=list)
    unread_tls_count: int = 0

    @property
    def connection_count(self) -> int:
        return len(self.connections) + sum(self.more_connections.values())

    def connection(self, key: str) -> "ConnInfo | None":
        """The connection numbered ``key`` (from 1, as the summary lists them) or with
        that session id; None when there is none."""
        return next((c for c in self.connections if key in (str(c.number), c.session)), None)

    def connections_text(self, most: int = 12) -> str:
        """The connections, for a message that names them: ``1 (capture-…-1), 2 (…)``."""
        shown = ", ".join(f"{c.number} ({c.session})" for c in self.connections[:most])
        return shown + (f" … ({len(self.connections)} in all)" if len(self.connections) > most else "")

    @property
    def readable(self) -> bool:
        """False when not a single packet could be understood."""
        return self.report.packets > 0 and (
            self.tcp_packets > 0 or len(self.unknown_links) < len(self.report.linktypes))

    def to_dict(self, reveal: bool = False) -> dict:
        return {
            "file": self.path, "format": self.report.format, "packets": self.report.packets,
            "tcp_packets": self.tcp_packets, "steps": self.steps,
            "link_types": sorted(self.report.linktypes),
            "connections": [{
                "session": c.session, "proto": c.proto, "endpoints": c.endpoints,
                "start": c.start, "first_packet": c.first_packet, "midstream": c.midstream,
                "one_direction": len(c.directions) == 1, "client_name": c.client_name,
                "software": c.software, "tls": c.tls, "steps": c.steps, "failures": c.failures,
                "server": ({"software": c.server.name, "lab": c.server.lab}
                           if c.server is not None else None),
                "gaps": c.gaps, "messages": c.messages} for c in self.connections],
            "failures": [s.to_dict(reveal) for s in self.failures],
            "credentials": [{
                "session": c.session, "proto": c.proto, "mechanism": c.mechanism, "user": c.user,
                "password": c.password if reveal else "********",
                "where": "inside TLS" if c.inside_tls else "in clear", "result": c.result}
                for c in self.credentials],
            "messages": self.messages,
            "more_connections": self.more_connections, "more_messages": self.more_messages,
            "unread_tls": self.unread_tls, "unread_tls_count": self.unread_tls_count,
            "problems": self.report.problems,
        }


class _Sniffer:
    """A connection on an unknown port: wait for its first bytes to tell."""

    def __init__(self, owner: "_Run", conn: Connection) -> None:
        self.owner = owner
        self.conn = conn
        self.held: list[tuple[str, bytes, float, int]] = []
        self.first = {"c2s": b"", "s2c": b""}
        self.decoder = None
        self.dropped = False
        self.tls: TlsObserver | None = None
        #: TLS that is not mail (or cannot be read), followed record by record for the
        #: packets view only (``on_record``).
        self.records: TlsObserver | None = None

    def data(self, direction: str, data: bytes, t: float, packet: int = 0) -> None:
        if self.decoder is not None:
            self.decoder.data(direction, data, t, packet)
            return
        if self.dropped:
            if self.records is not None:
                self.records.feed(direction, data, (packet,))
            return
        self.held.append((direction, data, t, packet))
        if self.tls is None and not self.first["c2s"] and not self.first["s2c"] \
                and looks_like_tls(data):
            # TLS from the first byte on an unknown port: only the plaintext can tell.
            self.tls = TlsObserver(self.owner.ctx.keylog)
        if self.tls is not None:
            for chunk in self.tls.feed(direction, data):
                self.first[direction] += chunk[:512]
            if self.tls.not_tls[direction] or (self.tls.server_hello and self.tls.keys is None) \
                    or any(self.tls.failed.values()) or len(self.held) > 64:
                self.dropped = True      # TLS we cannot read: not known to be mail
                if not self.tls.not_tls[direction]:
                    self._follow_records()
                self.held = []
                if not self.tls.not_tls[direction] and self.tls.keys is None:
                    self.owner.unreadable_tls(self.conn)
                return
        elif len(self.first[direction]) < 512:
            self.first[direction] += data[:512]
        proto = sniff(self.first["c2s"], self.first["s2c"])
        if proto is not None:
            self.decoder = self.owner.decoder_for(self.conn, proto, implicit=self.tls is not None)
            if self.tls is None and self.conn.handler is self:
                self.conn.handler = self.decoder      # from now on, straight to the decoder
            held, self.held = self.held, []
            for d, chunk, when, packet in held:
                self.decoder.data(d, chunk, when, packet)
        elif self.tls is None and (len(self.held) >= 4
                                   or sum(len(v) for v in self.first.values()) >= 1024):
            self.dropped = True       # not mail: forget it
            self.held = []

    def _follow_records(self) -> None:
        """TLS that is not mail: its records, for the packets view (when it asks)."""
        report = self.owner.ctx.on_record
        if report is None or self.records is not None:
            return

        def on_record(d, ctype, length, packets, handshake):
            report(None, d, ctype, length, packets, handshake)
        self.records = TlsObserver(None, on_record)
        for d, chunk, _when, number in self.held:
            self.records.feed(d, chunk, (number,))

    def gap(self, direction: str, nbytes: int, t: float, packet: int = 0) -> None:
        if self.decoder is not None:
            self.decoder.gap(direction, nbytes, t, packet)
        elif self.records is not None:
            self.records.resync(direction)

    def close(self, t: float) -> None:
        if self.decoder is not None:
            self.decoder.close(t)
        elif self.tls is not None and self.held and not self.dropped:
            self._follow_records()              # TLS to the end, never told apart


class _Run:
    def __init__(self, analysis: Analysis, emit: Callable[[Step], object],
                 keep_messages: bool, on_message: Callable[[Message], None] | None,
                 keylog=None, on_record=None) -> None:
        self.analysis = analysis
        self.emit_out = emit
        self.keep_messages = keep_messages
        self.user_on_message = on_message
        self.ctx = Context(emit, self.on_message, analysis.credentials.append, keylog,
                           failures=analysis.failures, on_record=on_record)
        self._connect_keys: dict[tuple, str | None] = {}

    def on_message(self, message: Message) -> None:
        meta = dict(message.meta)
        meta.update(session=message.session, proto=message.proto, verb=message.verb)
        if message.truncated:
            meta["incomplete"] = True
        meta["attachments"] = _attachments(message.data)
        if len(self.analysis.messages) < MAX_LISTED:
            self.analysis.messages.append(meta)
        else:
            self.analysis.more_messages += 1
        if self.user_on_message is not None:
            self.user_on_message(message)

    def unreadable_tls(self, conn: Connection) -> None:
        if conn.server[1] in NOT_MAIL_TLS_PORTS:
            return
        a = self.analysis
        a.unread_tls_count += 1
        if len(a.unread_tls) < 5:
            a.unread_tls.append(conn.four_tuple)

    def opened(self, conn: Connection):
        port = conn.server[1]
        proto = PORTS.get(port)
        if proto is None:
            return _Sniffer(self, conn)
        return self.decoder_for(conn, proto)

    def decoder_for(self, conn: Connection, proto: str, implicit: bool = False):
        endpoints = conn.four_tuple
        info = ConnInfo(number=self.analysis.connection_count + 1, session=new_session("capture"),
                        proto=proto, endpoints=endpoints, server_port=conn.server[1],
                        start=conn.first_t, first_packet=conn.first_packet, midstream=not conn.syn)
        if len(self.analysis.connections) < MAX_LISTED:
            self.analysis.connections.append(info)
        else:
            more = self.analysis.more_connections
            more[proto] = more.get(proto, 0) + 1
        decoder = DECODERS[proto](self.ctx, info, implicit_tls=implicit or conn.server[1] in IMPLICIT)
        server = decoder.server
        how = "SYN seen" if conn.syn else "the capture starts in the middle of this connection"
        step = Step(t=conn.first_t, session=info.session, proto=proto, src="client", dst=server,
                    dir="internal", kind="event", verb="CONNECT", key="capture.connect",
                    line=f"connection {endpoints} (packet {conn.first_packet}; {how})",
                    meta={"client": list(conn.client), "server": list(conn.server),
                          "packet": conn.first_packet, "midstream": not conn.syn},
                    packets=[conn.first_packet])
        decoder.t = conn.first_t
        # Every CONNECT Step of a protocol resolves to the same commentary: once.
        key = self._connect_keys.get((proto, server, conn.syn))
        if key is None:
            key = self._connect_keys[(proto, server, conn.syn)] = annotate(step).key
        step.key = key
        decoder.emit(step)
        return decoder


_NAME = None


def _attachments(message: bytes) -> list[str]:
    """File names of attachments (name= / filename= MIME parameters).

    A message without a Content-Type or Content-Disposition header has no MIME
    parts, so no attachments: its header (the first lines) is enough to tell.
    """
    global _NAME
    from gponsim.wire.smtp import header_end

    end = header_end(message)
    head = message[:end if end >= 0 else 65536].lower()
    if b"content-type" not in head and b"content-disposition" not in head:
        return []
    if b"name" not in message and b"NAME" not in message and b"Name" not in message:
        return []
    if _NAME is None:
        import re

        _NAME = re.compile(rb'name\*?=(?:"([^"\r\n]+)"|([^\s;]+))', re.I)
    out: list[str] = []
    for quoted, bare in _NAME.findall(message, 0, 1 << 22):
        name = (quoted or bare).decode("utf-8", "replace")
        if name not in out:
            out.append(name)
    return out[:20]


class Analyzer:
    """Packets in, Steps out: the engine of :func:`analyze`, also fed live by a sniffer."""

    def __init__(self, emit: Callable[[Step], object] = null_emit, *, name: str = "",
                 on_message: Callable[[Message], None] | None = None,
                 keylog: str | Path | None = None, report: ReadReport | None = None,
                 on_record=None) -> None:
        """``on_record(session, direction, content_type, length, packets, handshake_type)``:
        every TLS record of a mail connection, with the packets that carried it (the
        packets view)."""
        from gponsim.capture.tlsdecrypt import KeyLog

        self.report = report if report is not None else ReadReport()
        self.analysis = Analysis(path=name, report=self.report)
        self.keys = KeyLog.from_file(keylog) if keylog else KeyLog()
        self.run = _Run(self.analysis, emit, False, on_message, self.keys, on_record)
        self.tracker = Tracker(self.run.opened)
        self._tcp = self.tracker.tcp
        self.started = time.perf_counter()
        self.tcp_packets = 0
        self._embedded = 0

    def packet(self, number: int, t: float, link: int, frame: bytes) -> None:
        report = self.report
        if len(report.keylog) > self._embedded:          # pcapng Decryption Secrets Blocks
            self.keys.add_lines(report.keylog[self._embedded:])
            self._embedded = len(report.keylog)
        if link == 1:
            fields = ether_ipv4_tcp(frame)               # the common case, without a Segment
            if fields is not None:
                self.tcp_packets += 1
                try:
                    self._tcp(number, t, fields)
                except Exception as exc:  # noqa: BLE001 - one bad connection must not end it all
                    report.problem("decode_error", number=number,
                                   error=f"{type(exc).__name__}: {exc}")
                return
        try:
            seg = tcp_segment(link, frame)
        except UnknownLink:
            unknown = self.analysis.unknown_links
            if link not in unknown:
                unknown[link] = number
                report.problem("unknown_link", number=number, link=link, supported=", ".join(
                    f"{k} {v}" for k, v in sorted(SUPPORTED_LINKS.items())))
            return
        except (IndexError, ValueError) as exc:
            report.problem("malformed_headers", number=number, error=exc)
            return
        if seg is None:
            return
        self.tcp_packets += 1
        try:
            self.tracker.segment(number, t, seg)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not end the analysis
            report.problem("decode_error", number=number, error=f"{type(exc).__name__}: {exc}")

    def finish(self) -> Analysis:
        for key, values in self.tracker.finish():
            self.report.problem(key, **values)
        self.analysis.tcp_packets = self.tcp_packets
        self.analysis.steps = self.run.ctx.steps
        self.analysis.elapsed = time.perf_counter() - self.started
        return self.analysis


def analyze(path: str | Path, emit: Callable[[Step], object] = null_emit, *,
            on_message: Callable[[Message], None] | None = None,
            keylog: str | Path | None = None, on_record=None) -> Analysis:
    """Decode every mail connection of a capture file; Steps go to ``emit``.

    Raises :class:`CaptureError` only when the file cannot be read at all;
    later problems are in ``analysis.report.problems``. ``on_record``: see
    :class:`Analyzer`.
    """
    import gc

    engine = Analyzer(emit, name=str(path), on_message=on_message, keylog=keylog,
                      on_record=on_record)
    packet = engine.packet
    # The decoders make no reference cycles per packet (a closed connection lets go of
    # its handler): the collector's passes over the many short-lived Steps are wasted
    # work. A young-generation pass now and then keeps memory bounded all the same.
    enabled = gc.isenabled()
    gc.disable()
    report = engine.report
    tcp = engine.tracker.tcp
    fast = 0
    try:
        for number, t, link, frame in read_packets(path, report, tcp4=True):
            # Ethernet + IPv4 + TCP, the common case, straight to the tracker (what
            # Analyzer.packet does, without its checks for the other cases).
            if link is None:
                fields = frame                       # the reader's fast lane: parsed already
            elif link == 1 and len(report.keylog) == engine._embedded:
                fields = ether_ipv4_tcp(frame)
            else:
                fields = None
            if fields is None:
                packet(number, t, link, frame)
            else:
                fast += 1
                try:
                    tcp(number, t, fields)
                except Exception as exc:  # noqa: BLE001 - one bad connection must not end it all
                    report.problem("decode_error", number=number,
                                   error=f"{type(exc).__name__}: {exc}")
            if not number & 0x3FFFF:
                gc.collect(0)
    finally:
        if enabled:
            gc.enable()
    engine.tcp_packets += fast
    return engine.finish()
