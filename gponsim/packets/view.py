"""The packets view: one row per packet, what it carries, what to notice.

:func:`rows` reads a capture twice: first the analyzer (:func:`.facts.collect`)
for the Steps and TLS records of each packet, then every frame's headers
(:mod:`.headers`; Scapy for the shapes it leaves, and for a packet opened layer
by layer), with :class:`.flows.Flows` for the numbers as Wireshark shows
them. :class:`Renderer` prints the rows (with each note explained the first time
it comes up), :func:`row_dict` is a row as JSON.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterator

from gponsim.capture.pcap import read_packets
from gponsim.packets import dissect, headers
from gponsim.packets.facts import Facts, Record, collect
from gponsim.packets.flows import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, Flows
from gponsim.sinks.escape import visible
from gponsim.sinks.phrases import localize

#: Flag names in Wireshark's order.
FLAG_NAMES = ((FIN, "FIN"), (SYN, "SYN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"), (URG, "URG"),
              (ECE, "ECE"), (CWR, "CWR"), (0x100, "NS"))


@lru_cache(maxsize=1)
def _catalog() -> dict:
    return tomllib.loads(resources.files("gponsim.packets").joinpath("notes.toml").read_text("utf-8"))


def word(name: str, lang: str, **values) -> str:
    text = _catalog()["words"][lang][name]
    return text.format(**values) if values else text


def note_text(key: str, lang: str, values: dict, *, tag: bool) -> str:
    entry = _catalog()[key]
    text = entry[f"tag_{lang}" if tag else lang]
    try:
        return text.format(**values)
    except (KeyError, IndexError, ValueError):
        return text


def flag_text(flags: int) -> str:
    return ", ".join(name for bit, name in FLAG_NAMES if flags & bit) or "none"


@dataclass
class Selection:
    """Which packets to show: a range of numbers, a connection, a protocol."""

    first: int = 1
    last: int | None = None
    session: str | None = None        # a connection's number (as in the summary) or its session id
    proto: str | None = None          # smtp, imap, pop3, tls

    def wants_number(self, number: int) -> bool:
        return number >= self.first and (self.last is None or number <= self.last)

    def wants(self, row: "Row") -> bool:
        if not self.wants_number(row.number):
            return False
        if self.session is not None:
            conn = row.conn
            if conn is None or self.session not in (str(conn.number), conn.session):
                return False
        if self.proto is not None:
            if self.proto == "tls":
                if not row.records and not (row.conn is not None and row.conn.tls):
                    return False
            elif row.conn is None or row.conn.proto != self.proto:
                return False
        return True


_RANGE = re.compile(r"(\d*)\.\.(\d*)|(\d+)")


def parse_range(text: str) -> tuple[int, int | None]:
    """``N``, ``N..M``, ``N..`` or ``..M`` → (first, last); ValueError for anything else."""
    m = _RANGE.fullmatch(text.strip())
    if m is None or m.group(0) == "..":
        raise ValueError(text)
    if m.group(3):
        first = last = int(m.group(3))
    else:
        first = int(m.group(1)) if m.group(1) else 1
        last = int(m.group(2)) if m.group(2) else None
    if first < 1 or (last is not None and last < first):
        raise ValueError(text)
    return first, last


@dataclass
class Row:
    number: int
    time: float
    rel_time: float
    linktype: int
    summary: str = ""
    tcp: bool = False
    ip: int = 0
    src: str = ""
    sport: int = 0
    dst: str = ""
    dport: int = 0
    flags: int = 0
    seq: int = 0
    ack: int = 0
    seq_raw: int = 0
    ack_raw: int = 0
    length: int = 0
    window: int = 0
    scaled: int = 0
    scale: int = -1
    options: list = field(default_factory=list)
    stream: int = -1
    client: bool = False
    conn: object = None                                   # ConnInfo of a mail connection
    records: list[Record] = field(default_factory=list)
    steps: list = field(default_factory=list)             # (Step, part, total)
    notes: list = field(default_factory=list)             # (key, values)
    frame: bytes = b""                                    # the frame as captured
    _pkt: object = None

    @property
    def pkt(self):
        """Scapy's dissection of the frame (made when first asked for)."""
        if self._pkt is None:
            self._pkt = dissect.dissect(self.linktype, self.frame)
        return self._pkt

    @property
    def endpoints(self) -> str:
        def ep(ip, port):
            return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        return f"{ep(self.src, self.sport)} → {ep(self.dst, self.dport)}"


def rows(path: str | Path, facts: Facts | None = None, *, select: Selection | None = None,
         keylog: str | Path | None = None) -> Iterator[Row]:
    """The selected packets of ``path`` as :class:`Row`, in capture order.

    The headers of a plain TCP packet are read by :mod:`.headers`; Scapy dissects the
    others (and any packet whose ``pkt`` is asked for, as the layer view does)."""
    facts = facts if facts is not None else collect(path, keylog)
    select = select or Selection()
    flows = Flows()
    first_t = None
    steps = facts.steps
    for number, t, link, frame in read_packets(path):
        if select.last is not None and number > select.last:
            break
        if first_t is None:
            first_t = t
        row = Row(number, t, t - first_t, link, frame=frame)
        head = headers.read(link, frame)
        if head is None:
            found = dissect.tcp_of(row.pkt)
            if found is None:
                row.summary = row.pkt.summary()
                if select.session is None and select.proto is None and select.wants_number(number):
                    yield row
                continue
            head = headers.from_scapy(*found)
        row.tcp = True
        row.ip = head.ip
        row.src, row.dst, row.sport, row.dport = head.src, head.dst, head.sport, head.dport
        row.flags = head.flags
        row.seq_raw, row.ack_raw = head.seq, head.ack
        row.length = head.length
        row.window = head.window
        row.options = [o for o in head.options if o[0] not in ("NOP", "EOL")]
        seg = flows.segment(t, (row.src, row.sport), (row.dst, row.dport), head.seq, head.ack,
                            row.flags, head.window, row.length, head.options)
        row.seq, row.ack, row.scaled, row.scale = seg.seq, seg.ack, seg.scaled, seg.scale
        row.stream, row.client = seg.stream, seg.client
        row.conn = facts.connection((row.src, row.sport), (row.dst, row.dport), number)
        if not select.wants(row):
            continue
        row.notes = list(seg.notes)
        row.records = facts.records.get(number, [])
        for i in facts.by_packet.get(number, ()):
            step = steps[i]
            packets = step.packets
            row.steps.append((step, packets.index(number) + 1, len(packets)))
        _notes(row)
        yield row


def _notes(row: Row) -> None:
    """What the Steps and TLS records of a packet add to the flow's notes."""
    notes = row.notes
    for key, values in notes:
        if key in ("syn", "synack", "syn_retransmission"):
            values["who"] = "client" if row.client else "server"
    whole = [s for s, part, total in row.steps if part == total]
    commands = [s for s in whole if s.kind == "command" and s.dir == "c2s" and s.proto != "tls"]
    if len(commands) >= 2:
        notes.append(("pipelining", {"count": len(commands)}))
    for step, part, total in row.steps:
        if step.kind == "event" or step.proto == "tls":
            continue
        if step.kind == "reply" and step.verb == "CONNECT" and total == 1 and len(row.steps) == 1:
            notes.append(("banner", {}))
        if total > 1:
            if step.kind == "data" and step.verb in ("DATA", "BDAT", "FETCH", "RETR", "APPEND"):
                notes.append(("message", {"part": part, "total": total,
                                          "size": (step.meta or {}).get("size", "?")}))
            elif step.kind in ("command", "reply", "data"):
                notes.append(("split", {"part": part, "total": total}))
        if step.secret is not None and part == total:
            if step.tls:
                length = sum(r.length for r in row.records if r.type == 23) or row.length
                notes.append(("secret_tls", {"length": length}))
            else:
                notes.append(("secret_clear", {}))
    for record in row.records:
        if record.type == 20:
            notes.append(("tls_ccs", {}))
        elif record.handshake is not None:
            notes.append(("tls_clear", {"message": record.message}))
        elif record.type in (22, 23, 21):
            notes.append(("tls_encrypted", {"name": record.name, "length": record.length}))


def options_text(options, lang: str) -> str:
    parts = []
    for name, value in options:
        if name == "MSS":
            parts.append(word("mss", lang, mss=value))
        elif name == "WScale":
            parts.append(word("wscale", lang, wscale=value, factor=1 << min(int(value), 14)))
        elif name == "SAckOK":
            parts.append(word("sack", lang))
        elif name == "Timestamp":
            parts.append(word("timestamps", lang))
    return ", ".join(parts) or word("options_none", lang)


def _options_short(options) -> str:
    out = []
    for name, value in options:
        if name == "MSS":
            out.append(f"MSS={value}")
        elif name == "WScale":
            out.append(f"WS={1 << min(int(value), 14)}")
        elif name == "SAckOK":
            out.append("SACK_PERM")
        elif name == "Timestamp" and isinstance(value, tuple):
            out.append(f"TSval={value[0]} TSecr={value[1]}")
        elif name == "SAck" and value:
            out.append("SACK=" + ",".join(str(v) for v in value))
    return " ".join(out)


# ---------------------------------------------------------------- text

class Renderer:
    """Rows as text: the header, each row, what it carries, its notes (explained once)."""

    def __init__(self, write, lang: str = "en", *, explain: str = "first", reveal: bool = False,
                 color: bool = False, width: int = 100, compact: bool = False) -> None:
        """``compact``: rows for a narrow panel (a lesson's): who sent it instead of the
        endpoints, no header."""
        self.write = write
        self.lang = lang
        self.explain = explain
        self.reveal = reveal
        self.color = color
        self.width = max(30, width)
        self.explained: set[str] = set()
        self.count = 0
        self.compact = compact

    def _c(self, text: str, style: str) -> str:
        if not self.color:
            return text
        import click

        return click.style(text, **style_of(style))

    def header(self) -> None:
        if not self.compact:
            self.write(self._c(word("header", self.lang), "head"))

    def row(self, row: Row) -> None:
        self.count += 1
        lang = self.lang
        num = f"{row.number:<7} {row.rel_time:<11.6f} "
        if not row.tcp:
            self.write(self._c(num + row.summary, "dim"))
            return
        if self.compact:
            who = word("client" if row.client else "server", lang).split()[-1]
            line = (f"#{row.number:<4} {row.rel_time:8.4f}  {who:>8} {'→' if row.client else '←'} "
                    f"[{flag_text(row.flags)}] seq={row.seq} ack={row.ack} len={row.length} "
                    f"win={row.scaled}")
        else:
            line = (f"{num}{row.endpoints:<50} {flag_text(row.flags):<13} {row.seq:>10} {row.ack:>10} "
                    f"{row.length:>6} {row.scaled:>7}")
        if row.scaled != row.window and not self.compact:
            line += f" ({row.window}×{row.scale})"
        opts = _options_short(row.options) if row.flags & SYN else ""
        if opts:
            line += "  " + opts
        style = "rst" if row.flags & RST else "syn" if row.flags & (SYN | FIN) else \
            "data" if row.length else "plain"
        self._line(line, style, " " * 6)
        pad = " " * (4 if self.compact else 8)
        for step, part, total in row.steps:
            # (gponsim's own words in a line, as the narrator gives them: in its language)
            text = visible(localize(step.shown_line(self.reveal), self.lang)).split("\n")
            first = text[0] if len(text[0]) <= 110 else text[0][:107] + "..."
            more = f" (+{len(text) - 1})" if len(text) > 1 else ""
            # (gponsim's own notes about the decryption are no one's words: no arrow)
            arrow = "·" if step.verb in ("DECRYPTED", "UNDECRYPTABLE") else \
                "→" if step.dir == "c2s" else "←" if step.dir == "s2c" else "·"
            lock = "🔒 " if step.tls else ""
            where = "" if total == 1 else f"  [{word('part', lang, part=part, total=total)}]"
            self._line(f"{pad}{arrow} {lock}{first}{more}{where}", "step", pad + "  ")
        for record in row.records:
            detail = f" · {record.message}" if record.message else ""
            self.write(self._c(f"{pad}▪ TLS {record.name}{detail} · {record.length} "
                               f"{word('byte' if record.length == 1 else 'bytes', lang)}", "tls"))
        seen_tags = set()
        for key, values in row.notes:
            values = dict(values)
            if key in ("syn", "synack", "syn_retransmission"):
                values["who"] = word(values.get("who", "client"), lang)
                values["options"] = options_text(row.options, lang)
            if key == "fin":
                values["who"] = word("client" if row.client else "server", lang)
            tag = note_text(key, lang, values, tag=True)
            if tag in seen_tags:
                continue
            seen_tags.add(tag)
            self._line(f"{pad}• {tag}", "note", pad + "  ")
            if self.explain == "all" or (self.explain != "none" and key not in self.explained):
                self.explained.add(key)
                # (wrapped once, to the width given: no line of it is longer)
                for text_line in _wrap(note_text(key, lang, values, tag=False), self.width - len(pad) - 2):
                    self.write(self._c(f"{pad}  {text_line}", "explain"))


    def _line(self, text: str, style: str, indent: str) -> None:
        """One line of a row; in a narrow (compact) panel wrapped to its width, the rest indented."""
        if not self.compact or len(text) <= self.width:
            self.write(self._c(text, style))
            return
        import textwrap

        for part in textwrap.wrap(text, self.width, subsequent_indent=indent, drop_whitespace=True):
            self.write(self._c(part, style))


def style_of(name: str) -> dict:
    return {"head": {"bold": True}, "dim": {"dim": True}, "rst": {"fg": "red"},
            "syn": {"fg": "green"}, "data": {"bold": True}, "plain": {},
            "step": {"fg": "cyan"}, "tls": {"fg": "blue"}, "note": {"fg": "yellow"},
            "explain": {"dim": True}}[name]


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


# ---------------------------------------------------------------- JSON

def row_dict(row: Row, reveal: bool = False) -> dict:
    out = {"number": row.number, "time": row.time, "rel_time": round(row.rel_time, 9),
           "linktype": row.linktype}
    if not row.tcp:
        out["summary"] = row.summary
        return out
    out.update({
        "ip": row.ip, "src": row.src, "sport": row.sport, "dst": row.dst, "dport": row.dport,
        "flags": flag_text(row.flags), "flags_value": row.flags,
        "seq": row.seq, "ack": row.ack, "seq_raw": row.seq_raw, "ack_raw": row.ack_raw,
        "len": row.length, "window": row.window, "window_scaled": row.scaled,
        "window_scale": row.scale, "stream": row.stream,
        "from": "client" if row.client else "server",
    })
    if row.options:
        out["options"] = {name: (list(value) if isinstance(value, tuple) else
                                 value.hex() if isinstance(value, bytes) else value)
                          for name, value in row.options}
    if row.conn is not None:
        out["session"] = row.conn.session
        out["connection"] = row.conn.number
        out["proto"] = row.conn.proto
    out["tls_records"] = [{"type": r.type, "name": r.name, "length": r.length, "dir": r.direction,
                           **({"handshake": r.message} if r.message else {})} for r in row.records]
    out["steps"] = [{**step.to_dict(reveal), "part": part, "parts": total}
                    for step, part, total in row.steps]
    out["notes"] = [{"key": key, **({"values": values} if values else {})} for key, values in row.notes]
    return out
