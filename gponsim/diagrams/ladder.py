"""The TCP ladder of one connection: every packet an arrow (``diagram sequence --packets``).

Where the other sequence diagrams draw Steps (one arrow per command or reply),
this one draws what carried them: one arrow per TCP packet of one connection,
in capture order, from the side that sent it — the handshake (SYN, SYN/ACK,
ACK), each data segment labelled with what it carries (the lines of the mail
protocol, a part of the message, TLS records), the ACKs, the teardown (FIN,
RST). The packets come from the packets view (:func:`gponsim.packets.view.rows`),
so a label's numbers are the ones ``analyze --packets`` prints and Wireshark
shows (relative seq/ack, payload length).

Pages follow the connection's phases — the handshake, the protocol's phases as
in the other sequence diagrams (connection and TLS, authentication, envelope,
data; reading for IMAP/POP3), the teardown (QUIT and the FINs) — each cut to
fit a 1920×1080 projector; :mod:`gponsim.diagrams.dot` draws them. Pure ACKs
are dashed, packets inside TLS blue, resets and retransmissions red.
"""

from __future__ import annotations

from pathlib import Path

from gponsim.diagrams.sequence import MAX_ROWS, Page, Row, _chunks, phase_of, weight

#: Characters a label's line may take (two lifelines leave the width for them).
LABEL_CHARS = 64

#: What a packet without Steps or TLS records says, by the first of these notes it has.
_TELLING = ("rst", "syn", "syn_retransmission", "synack", "handshake_ack", "fin", "fin_second",
            "last_ack", "retransmission", "partial_retransmission", "hole_before", "keep_alive",
            "dup_ack", "zero_window", "window_update", "delayed_ack")
_TROUBLE = {"rst", "retransmission", "partial_retransmission", "syn_retransmission", "hole_before"}
_HANDSHAKE = {"syn", "synack", "handshake_ack", "syn_retransmission"}
_TEARDOWN = {"fin", "fin_second", "last_ack", "rst"}
#: TLS Steps that are the analyzer's remarks, not something on the wire.
_NOT_SAID = {"DECRYPTED", "UNDECRYPTABLE", "ENCRYPTED"}


class NoConnection(ValueError):
    """The capture has no mail connection (or not the one asked for)."""


def packet_phase(row, current: str) -> str:
    """The phase a packet belongs to: the handshake, the teardown, or the phase of the
    first Step it carries; a packet that carries none stays in the phase before it."""
    keys = {key for key, _ in row.notes}
    if keys & _HANDSHAKE:
        return "handshake"
    if keys & _TEARDOWN or current == "teardown":
        return "teardown"
    for step, _part, _total in row.steps:
        phase = phase_of(step)
        return "teardown" if phase == "closing" else phase
    return current


def packet_label(row, lang: str) -> str:
    """Two lines: the TCP header as Wireshark's Info column says it, then what the
    packet carries (or, when it carries nothing, what to notice about it)."""
    from gponsim.packets.flows import ACK, SYN
    from gponsim.packets.view import _options_short, flag_text, note_text, word

    head = f"#{row.number} [{flag_text(row.flags)}] seq={row.seq}"
    if row.flags & ACK:
        head += f" ack={row.ack}"
    head += f" len={row.length}"
    offered = ""
    if row.flags & SYN:          # what each side offers: on the second line, after its note
        opts = _options_short([o for o in row.options if o[0] != "Timestamp"])
        offered = f"win={row.window}" + (f" {opts}" if opts else "")
    notes = dict(row.notes)
    said = [note_text(key, lang, notes[key], tag=True)
            for key in ("retransmission", "partial_retransmission", "hole_before") if key in notes]
    carried = []
    for step, part, total in row.steps:
        if step.kind == "event" or step.verb in _NOT_SAID:
            continue                  # the analyzer's own remarks (connection opened, keys used)
        lines = step.shown_line().split("\n")
        text = lines[0] + (" …" if len(lines) > 1 else "")
        carried.append(text if total == 1 else f"{text} ({word('part', lang, part=part, total=total)})")
    if not carried:
        for record in row.records:
            detail = f" {record.message}" if record.message else ""
            carried.append(f"TLS {record.name}{detail}, {record.length} {word('bytes', lang)}")
    said += carried
    if not said:
        for key in _TELLING:
            if key in notes:
                values = dict(notes[key])
                if key in ("syn", "synack", "syn_retransmission", "fin"):
                    values["who"] = word("client" if row.client else "server", lang)
                said.append(note_text(key, lang, values, tag=True))
                break
    if offered:
        said.append(offered)
    return head + ("\n" + " · ".join(said) if said else "")


def build_ladder(path: str | Path, *, session: str | None = None, keylog: str | Path | None = None,
                 lang: str = "en", notes: bool = False, page_rows: int = MAX_ROWS,
                 facts=None) -> tuple[list[Page], object]:
    """The ladder of one connection of a capture: ``(pages, connection)``.

    ``session``: the connection's number (as in ``analyze``'s summary) or its session
    id; the first mail connection without it. Raises :class:`NoConnection`.
    """
    from gponsim.packets.facts import collect
    from gponsim.packets.view import Selection, note_text, rows

    facts = facts if facts is not None else collect(path, keylog)
    conns = facts.analysis.connections
    if not conns:
        raise NoConnection(f"{path}: no SMTP, IMAP or POP3 connection in this capture")
    if session is None:
        conn = conns[0]
    else:
        conn = facts.analysis.connection(session)
        if conn is None:
            raise NoConnection(f"{path}: no connection {session!r} "
                               f"(connections: {facts.analysis.connections_text()})")
    from gponsim.diagrams.parties import parties

    server = {"smtp": "smtpd", "imap": "imap", "pop3": "pop3"}.get(conn.proto, "smtpd")
    party = parties(facts.steps).get(conn.session)
    names: dict[str, str] = {}
    # Port 25's client is another mail server, unless it is a mail client (parties.py),
    # as in the other sequence diagrams.
    client = "internet" if conn.proto == "smtp" and conn.server_port == 25 \
        and not (party and party.mail_client) else "client"
    if party is not None and party.foreign:     # not the lab's software: named as the capture shows
        client, server = "peer-c001", "peer-s001"
        names = {client: party.client_label(lang), server: party.server_label(lang)}
    groups: list[tuple[str, list[Row]]] = []
    phase = "connection"
    for row in rows(path, facts, select=Selection(session=str(conn.number))):
        if not row.tcp:
            continue
        phase = packet_phase(row, phase)
        keys = [key for key, _ in row.notes]
        pure_ack = not row.length and not row.flags & 0x07
        note = ""
        if notes:
            shown = next((k for k in keys if k in _TELLING), None)
            if shown is not None:
                values = dict(dict(row.notes)[shown])
                note = note_text(shown, lang, values, tag=False)
        tls = bool(row.records) or any(step.tls for step, _, _ in row.steps)
        item = Row(src=client if row.client else server, dst=server if row.client else client,
                   label=packet_label(row, lang), tls=tls, failed=bool(_TROUBLE & set(keys)),
                   kind="ack" if pure_ack else "segment", note=note)
        if groups and groups[-1][0] == phase:
            groups[-1][1].append(item)
        else:
            groups.append((phase, [item]))
    # A phase of one or two packets shares the page before it, when it fits there.
    merged: list[tuple[list[str], list[Row]]] = []
    for phase, items in groups:
        if merged and len(items) <= 2 and sum(map(weight, merged[-1][1] + items)) <= page_rows:
            merged[-1][0].append(phase)
            merged[-1][1].extend(items)
        else:
            merged.append(([phase], list(items)))
    where = f"{conn.proto.upper()} {conn.endpoints}"
    pages: list[Page] = []
    for phases, items in merged:
        for chunk in _chunks(items, page_rows):
            pages.append(Page(participants=[client, server], rows=chunk, number=len(pages) + 1,
                              phases=phases, service=where, label_chars=LABEL_CHARS, names=names))
    for page in pages:
        page.total = len(pages)
    return pages, conn
