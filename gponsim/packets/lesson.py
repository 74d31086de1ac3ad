"""Packet facts a lesson checks, computed from its own capture (the ``packets`` check).

Each fact looks at the lesson's capture packet by packet (:mod:`.view`), in
the connection that sent the mail (the SMTP session with AUTH), and says what
it found with the packet numbers, so the student can open them
(``gponsim analyze capture.pcapng --packet N --layers``).
"""

from __future__ import annotations

from pathlib import Path

from gponsim.packets.flows import ACK, FIN, RST, SYN
from gponsim.packets.view import Row, Selection, rows

FACTS = ("handshake", "clienthello_in_clear", "password_inside_tls", "message_segments", "teardown",
         "packets")


class PacketRows:
    """The rows of a capture's mail-sending connection, read once."""

    def __init__(self, path: Path, keys: Path | None) -> None:
        from gponsim.packets.facts import collect

        self.facts = collect(path, keys)
        auth = [s for s in self.facts.steps if s.proto == "smtp" and s.verb == "AUTH" and s.kind == "command"]
        self.session = auth[0].session if auth else None
        self.rows: list[Row] = []
        if self.session is not None:
            self.rows = list(rows(path, self.facts, select=Selection(session=self.session)))


def check(fact: str, data: PacketRows, at_least: int = 0) -> tuple[bool, str]:
    r = data.rows
    if not r:
        return False, "no SMTP session with AUTH in the capture"
    if fact == "handshake":
        want = [SYN, SYN | ACK, ACK]
        first = r[:3]
        ok = len(first) == 3 and [x.flags & (SYN | ACK | FIN) for x in first] == want \
            and first[2].ack == 1 and first[1].ack == 1
        mss = next((v for n, v in first[0].options if n == "MSS"), None) if first else None
        return ok, (f"SYN #{first[0].number}, SYN/ACK #{first[1].number}, ACK #{first[2].number} "
                    f"(port {first[0].dport}; MSS {mss})" if ok else "no three-way handshake at the start")
    if fact == "clienthello_in_clear":
        hello = [(x, rec) for x in r for rec in x.records if rec.message == "ClientHello"]
        if not hello:
            return False, "no ClientHello record"
        x, rec = hello[0]
        sni = next((s.meta.get("sni") for s, _p, _t in x.steps if s.verb == "ClientHello"), None)
        return True, (f"ClientHello in packet #{x.number} ({rec.length} bytes, in clear)"
                      + (f", SNI {sni}" if sni else ", no SNI"))
    if fact == "password_inside_tls":
        carriers = [(x, s) for x in r for s, part, total in x.steps
                    if s.verb == "AUTH" and s.kind in ("command", "data") and s.secret is not None]
        if not carriers:
            return False, "no AUTH with a password in the capture"
        x, step = carriers[-1]
        records = [rec for rec in x.records if rec.type == 23]
        ok = bool(step.tls and records and all(rec.type == 23 for rec in x.records))
        return ok, (f"AUTH in packet #{x.number}: TLS {', '.join(f'{rec.name} {rec.length} bytes' for rec in x.records)}"
                    if x.records else f"AUTH in packet #{x.number}, in clear")
    if fact == "message_segments":
        msgs = [s for x in r for s, part, total in x.steps if s.kind == "data" and s.verb == "DATA" and part == total]
        if not msgs:
            return False, "no message"
        n = len(msgs[0].packets or ())
        return n >= max(1, at_least), (f"the message ({msgs[0].meta.get('size', '?')} bytes) travelled in "
                                       f"{n} TLS-carrying segment(s): " + ", ".join(f"#{p}" for p in msgs[0].packets or ()))
    if fact == "teardown":
        # An orderly close is a FIN each way; a side that closes its socket with data still
        # unread (the peer's last TLS record) cuts the connection with RST instead.
        ends = [x for x in r if x.flags & (FIN | RST)]
        fins = {x.client for x in ends if x.flags & FIN}
        ok = len(fins) == 2 or any(x.flags & RST for x in ends)
        return ok, (", ".join(f"{'RST' if x.flags & RST else 'FIN'} #{x.number} "
                              f"({'client' if x.client else 'server'})" for x in ends)
                    if ends else "no FIN or RST")
    if fact == "packets":
        data_rows = [x for x in r if x.length]
        acks = [x for x in r if not x.length and not x.flags & (SYN | FIN)]
        return len(r) >= at_least, (f"{len(r)} packets in the session: {len(data_rows)} with data, "
                                    f"{len(acks)} pure ACKs, the rest SYN/FIN")
    raise ValueError(f"unknown packet fact {fact}")
