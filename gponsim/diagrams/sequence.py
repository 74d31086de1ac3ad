"""Sequence diagrams from observed Steps, cut into projector-sized pages by phase.

The model (:func:`build_sequence`) is independent of the drawing: a list of
pages, each with its participants, its phase and its rows. A conversation is
cut where it changes phase (connection and TLS, authentication, envelope,
data, delivery; reading for IMAP/POP3), so a page holds few enough rows for
large type on a projector; a phase too long for one page is cut evenly.

Only protocol messages are arrows (commands, replies, the TLS handshake, the
hand-offs between Postfix's programs); log lines (``connect from``,
``disconnect``, ``removed``, the relay's ``status=``) are notes on the
lifeline of the program that logged them. Participants are in the lab
document's order for the flow (the receive flow puts the external server
first and the mail client last). Repeated runs of identical lines collapse into
one row with a count; in IMAP and POP3 lines that differ only in their numbers
too (49 ``TOP n 0`` and their ``+OK``: the row shows the first and the last).
Steps of a capture whose server is not the lab's software are drawn on lifelines
named as the capture shows them (:mod:`gponsim.diagrams.parties`), not the lab's.
:mod:`gponsim.diagrams.dot` and :mod:`gponsim.diagrams.mermaid` draw the pages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from gponsim.commentary import catalog
from gponsim.diagrams.labels import caption, participant_name
from gponsim.diagrams.parties import parties
from gponsim.steps import Step

#: Left-to-right order of the lifelines, as in the lab document's diagrams.
ORDER = ("resolver", "dns", "client", "internet", "smtpd", "auth", "cleanup", "qmgr", "local", "lmtp",
         "dovecot-lmtp", "mailbox", "smtp", "relay", "imap", "pop3")
ORDERS = {
    # "Flujo de Envío": Email Client, Postfix SMTPD, Dovecot SASL, Mail Queue, SMTP Client, Gmail, Destination
    "send": ("client", "smtpd", "auth", "cleanup", "qmgr", "local", "lmtp", "dovecot-lmtp",
             "mailbox", "smtp", "relay", "internet"),
    # "Flujo de Recepción": External Server, SMTPD, Cleanup, Queue, Local, Mailbox, Dovecot IMAP, Email Client
    "receive": ("internet", "smtpd", "cleanup", "qmgr", "local", "lmtp", "dovecot-lmtp", "mailbox",
                "imap", "pop3", "auth", "client"),
    # "Integración Postfix-Dovecot": Postfix SMTP, the socket, Dovecot Auth
    "sasl": ("client", "smtpd", "auth"),
    "all": ORDER,
}

FLOWS = ("all", "send", "receive", "sasl")
PHASES = ("lookup", "connection", "authentication", "envelope", "data", "delivery", "reading")
MAX_LABEL = 80
MAX_ROWS = 14          # rows on a page: enough room for >= 18 px text on a 1920x1080 projector


@dataclass
class Row:
    src: str
    dst: str
    label: str
    tls: bool = False
    failed: bool = False
    kind: str = "command"       # command | reply | data | tls | event | note; a packet: segment | ack
    note: str = ""              # the commentary (--notes)
    repeat: int = 1             # >1: this row stands for a collapsed run

    @property
    def is_note(self) -> bool:
        """A log line, drawn on the lifeline of ``src`` (who logged it)."""
        return self.kind == "note"


@dataclass
class Page:
    participants: list[str]
    rows: list[Row] = field(default_factory=list)
    number: int = 1
    total: int = 1
    phases: list[str] = field(default_factory=list)   # of PHASES, what the page shows
    service: str = ""           # whose conversation: submission, smtp, relay, imap, ...
    names: dict[str, str] = field(default_factory=dict)   # lifelines named by a capture
    label_chars: int = 44       # a label's line, at most (the layout narrows it to fit)

    @property
    def phase(self) -> str:
        return self.phases[0] if self.phases else ""


#: master.cf service of an SMTP server port, for Steps from captures (no service name there).
SERVICE_OF_PORT = {25: "smtp", 587: "submission", 465: "smtps"}


def service_of(connect: Step) -> str:
    """The smtpd service a CONNECT Step reached: the lab says it, a capture gives the port."""
    if "service" in connect.meta:
        return connect.meta["service"]
    server = connect.meta.get("server") or [None, None]
    return SERVICE_OF_PORT.get(server[1], "smtp")


#: The services whose client is a mail client (the send flow); "client-smtp": a capture's
#: mail client on port 25 (see :mod:`gponsim.diagrams.parties`).
CLIENT_SERVICES = ("submission", "smtps", "submissions", "client-smtp")


def services(steps: Iterable[Step]) -> dict[str, str]:
    """The smtpd service of each SMTP session (:func:`service_of`); a capture's client
    on port 25 that is a mail client, not a mail server, is ``client-smtp``."""
    steps = list(steps)
    found = {s.session: service_of(s) for s in steps
             if s.kind == "event" and s.verb == "CONNECT" and s.proto == "smtp" and s.dst == "smtpd"}
    for session, party in parties(steps).items():
        if found.get(session) == "smtp" and party.mail_client:
            found[session] = "client-smtp"
    return found


def flows_with_steps(steps: Iterable[Step], session: str | None = None) -> list[str]:
    """The flows (of :data:`FLOWS`) that have something to draw."""
    steps = [s for s in steps if s.session != "lab"]
    return [flow for flow in FLOWS if select(steps, flow, session)]


def select(steps: Iterable[Step], flow: str = "all", session: str | None = None) -> list[Step]:
    """The Steps a flow of the lab document shows (see ``--flow``)."""
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}: choose one of {', '.join(FLOWS)}")
    chosen = []
    steps = list(steps)
    sessions_of_service = services(steps)
    origin_of_qid: dict[str, str] = {}         # queue id -> session that brought the message
    lmtp_qid: dict[str, str] = {}              # LMTP session -> the queue id it delivers
    for s in steps:
        if s.kind == "event" and s.proto == "queue" and "qid" in s.meta:
            origin_of_qid.setdefault(s.meta["qid"], s.session)
        elif s.kind == "event" and s.proto == "lmtp" and s.verb == "CONNECT" and "qid" in s.meta:
            lmtp_qid[s.session] = s.meta["qid"]
    # The LMTP leg to Dovecot belongs to the flow of the message it delivers.
    for lmtp_session, qid in lmtp_qid.items():
        origin = origin_of_qid.get(qid)
        if origin in sessions_of_service:
            sessions_of_service[lmtp_session] = sessions_of_service[origin]
    for s in steps:
        if session and s.session != session:
            continue
        if flow == "all":
            chosen.append(s)
        elif flow == "sasl":
            if s.proto == "sasl" or (s.proto == "smtp" and s.verb == "AUTH") or s.src == "auth" \
                    or s.dst == "auth":
                chosen.append(s)
        elif flow == "send":
            # The sessions of mail clients (their SASL, queue and delivery Steps carry
            # the same session id) and the relay leg to Gmail.
            if sessions_of_service.get(s.session) in CLIENT_SERVICES or {s.src, s.dst} & {"smtp", "relay"}:
                chosen.append(s)
        elif flow == "receive":
            if sessions_of_service.get(s.session) == "smtp" or s.proto in ("imap", "pop3"):
                chosen.append(s)
    return chosen


_LOG_NOISE = re.compile(r"(?:, )?(?:relay|delay|delays|dsn)=[^,]*(?=,|$)")
_QUEUE_ID = re.compile(r"^[0-9A-F]{6,}: ")
_TLS = re.compile(r"(TLSv[\d.]+|SSLv\d) with cipher (\S+)")
#: Events that are log lines of one program, not messages between two.
_LOGGED = {"CONNECT", "DISCONNECT", "SENT", "DEFERRED", "BOUNCED", "EXPIRED", "REMOVED", "RETRY",
           "SIMULATOR", "TIMEOUT", "REJECT", "LOST"}
_SERVERS = {"smtpd", "imap", "pop3"}

_CONNECTION = {"CONNECT", "EHLO", "HELO", "LHLO", "STARTTLS", "STLS", "CAPABILITY", "CAPA", "ID",
               "NOOP", "ENABLE", "GREETING", "RSET", "XCLIENT", "VRFY"}
_CLOSING = {"QUIT", "LOGOUT", "DISCONNECT", "SENT", "DEFERRED", "BOUNCED", "EXPIRED", "TIMEOUT"}
_AUTH = {"AUTH", "AUTHENTICATE", "LOGIN", "USER", "PASS", "APOP"}
_ENVELOPE = {"MAIL", "RCPT", "CLIENT"}
_DATA = {"DATA", "BDAT", "RECEIVED", "QUEUED", "."}


def _label(step: Step, width: int = MAX_LABEL, lang: str = "en") -> str:
    text = step.shown_line().split("\n")[0]
    if step.proto in ("queue", "delivery", "relay"):
        # A log line: keep what a student follows (who, what status), not the ids and timings.
        text = _QUEUE_ID.sub("", text)
        text = _LOG_NOISE.sub("", text).replace(", ,", ",").strip(", ")
    if step.proto == "tls":
        m = _TLS.search(step.line)
        text = caption("tls_handshake", lang) + (f": {m.group(1)} · {m.group(2)}" if m else "")
    elif "\n" in step.line:
        text += " …"
    text = text.replace("\t", " ")
    if len(text) > width:
        text = text[:width - 1] + "…"
    return text


_NUMBER = re.compile(r"\d+")


def _signature(step: Step) -> tuple:
    """What must be equal for two Steps to collapse into one row: the whole line as
    shown. In IMAP and POP3 the numbers may differ (tags, message numbers: ``TOP 1 0``,
    ``TOP 2 0``...); the row then shows the first and the last line of the run."""
    line = step.shown_line()
    if step.proto in ("imap", "pop3"):
        line = _NUMBER.sub("#", line)
    return (step.src, step.dst, step.kind, step.verb, step.code, step.status, step.proto, line)


def collapse(steps: list[Step], min_repeats: int = 3,
             max_period: int = 4) -> list[tuple[Step, int, Step]]:
    """Runs of the same block of Steps (:func:`_signature`) repeated ``min_repeats``
    times or more become one block with a count: ``[(step, repeat, last), ...]``, where
    ``last`` is the run's last Step in that place of the block (``step`` itself when the
    Step stands alone). Different lines never collapse: three RCPTs to three recipients
    stay three rows."""
    sigs = [_signature(s) for s in steps]
    out: list[tuple[Step, int, Step]] = []
    i = 0
    while i < len(steps):
        best_period, best_reps = 0, 1
        for period in range(1, max_period + 1):
            block = sigs[i:i + period]
            if len(block) < period:
                break
            reps = 1
            while sigs[i + reps * period:i + (reps + 1) * period] == block:
                reps += 1
            if reps >= min_repeats and reps * period > best_reps * max(best_period, 1):
                best_period, best_reps = period, reps
        if best_period:
            last = i + best_period * (best_reps - 1)
            for k in range(best_period):
                out.append((steps[i + k], best_reps, steps[last + k]))
            i += best_period * best_reps
        else:
            out.append((steps[i], 1, steps[i]))
            i += 1
    return out


def phase_of(step: Step) -> str:
    """The phase a Step belongs to; ``closing`` (QUIT, disconnect, the relay's verdict)
    stays with whatever phase its session is in."""
    verb = (step.verb or "").upper()
    if step.proto == "dns":
        return "lookup"
    if step.proto == "tls":
        return "connection"
    if step.proto == "sasl":
        return "authentication"
    if verb in _CLOSING:
        return "closing"
    if verb == "CONNECT":
        return "connection"
    if step.proto in ("queue", "delivery") or (step.proto == "relay" and step.kind == "event"):
        if verb == "CLIENT":
            return "envelope"
        if verb in ("RECEIVED", "QUEUED"):
            return "data"
        return "delivery"
    if verb in _CONNECTION:
        return "connection"
    if verb in _AUTH:
        return "authentication"
    if step.proto in ("imap", "pop3"):
        return "reading"
    if verb in _ENVELOPE:
        return "envelope"
    if verb in _DATA or step.kind == "data":
        return "data"
    return "connection"


def _service(step: Step, services: dict[str, str]) -> str:
    if step.session in services:
        return services[step.session]
    if "relay" in (step.src, step.dst) and "smtp" in (step.src, step.dst):
        return "relay"
    if step.src == "relay" and step.dst == "internet":
        return "gmail"
    if step.proto == "sasl" or "auth" in (step.src, step.dst):
        return "sasl"
    if step.proto in ("imap", "pop3", "dns"):
        return step.proto
    return ""


def _row(step: Step, repeat: int, flow: str, service: str, notes: bool, lang: str,
         width: int, last: Step | None = None) -> Row | None:
    """The row a Step becomes, or None for what a sequence diagram does not show."""
    if step.session == "lab":            # the lab announcing itself at start-up (not a message)
        return None
    src, dst = step.src, step.dst
    if service == "smtp":                # port 25: the client is another mail server
        src = "internet" if src == "client" else src
        dst = "internet" if dst == "client" else dst
    note = ""
    if notes:
        entry = catalog().resolve(step)
        note = entry.render(lang, step) if entry else ""
    failed = step.failed or step.meta.get("status") in ("bounced", "deferred")
    kind = step.kind
    if step.proto == "tls":
        kind = "tls"                     # the TLS handshake: both ways, one double arrow
    elif kind == "handshake":
        kind = "reply" if step.dir == "s2c" else "command"   # e.g. Dovecot's auth handshake lines
    if step.kind == "event" and (src == dst or (step.verb or "").upper() in _LOGGED):
        # A log line: a note on the lifeline of the program that wrote it.
        logger = dst if dst in _SERVERS and src in ("client", "internet") else src
        src = dst = logger
        kind = "note"
    label = _label(step, width, lang)
    if last is not None and last is not step and last.shown_line() != step.shown_line():
        # A run whose numbers differ: its first and its last line.
        label = _label(step, width // 2, lang) + " … " + _label(last, width // 2, lang)
    return Row(src=src, dst=dst, label=label, tls=step.tls, failed=failed,
               kind=kind, note=note, repeat=repeat)


def weight(row: Row) -> float:
    """How much of a page a row takes: a long text is drawn on two lines."""
    return 1.0 if len(row.label) <= 40 else 1.6


def _chunks(rows: list[Row], size: int) -> list[list[Row]]:
    """``rows`` cut into pages of at most ``size`` (in :func:`weight` units), as even as
    possible (no page left with a lone row)."""
    total = sum(weight(r) for r in rows)
    if total <= size:
        return [rows]
    count = int(-(-total // size))
    while True:
        target = total / count
        out, page, load = [], [], 0.0
        for row in rows:
            if page and load + weight(row) > target + 0.5:
                out.append(page)
                page, load = [], 0.0
            page.append(row)
            load += weight(row)
        out.append(page)
        if all(sum(weight(r) for r in p) <= size for p in out):
            if len(out) > 1 and len(out[-1]) == 1 and sum(map(weight, out[-2] + out[-1])) <= size:
                out[-2:] = [out[-2] + out[-1]]       # the greedy cut left one row over
            return out
        count += 1


def _cast(row: Row, party, actors: dict[str, str], lang: str) -> None:
    """Put a foreign server's conversation on lifelines named as the capture shows
    them (``peer-c…`` its client, ``peer-s…`` its server), not on the lab's."""
    def actor(label: str, side: str) -> str:
        if label not in actors:
            actors[label] = f"peer-{side}{sum(a.startswith(f'peer-{side}') for a in actors.values()) + 1:03d}"
        return actors[label]

    client = actor(party.client_label(lang), "c")
    server = actor(party.server_label(lang), "s")
    row.src, row.dst = ({"client": client, "internet": client}.get(a, server) for a in (row.src, row.dst))


def build_sequence(steps: Iterable[Step], *, flow: str = "all", session: str | None = None,
                   lang: str = "en", notes: bool = False, collapse_runs: bool = True,
                   page_rows: int = MAX_ROWS, label_width: int = MAX_LABEL,
                   by_phase: bool = True) -> list[Page]:
    """Pages of a sequence diagram: one per phase of each conversation (``by_phase``),
    at most ``page_rows`` rows each; consecutive short pages of the same phase (the
    sessions of a lesson, say) share a page."""
    steps = list(steps)
    chosen = select(steps, flow, session)
    by_session = services(steps)
    who = {session: party for session, party in parties(steps).items() if party.foreign}
    actors: dict[str, str] = {}             # a foreign party's label -> its lifeline's id
    runs = collapse(chosen) if collapse_runs else [(s, 1, s) for s in chosen]
    groups: dict[tuple, list[Row]] = {}
    current: dict[str, tuple] = {}          # session -> its group now
    for step, repeat, last in runs:
        service = _service(step, by_session)
        row = _row(step, repeat, flow, service, notes, lang, label_width, last)
        if row is None:
            continue
        if step.session in who:
            _cast(row, who[step.session], actors, lang)
        phase = phase_of(step) if by_phase else ""
        if phase == "closing":
            key = current.get(step.session) or (step.session, "connection", service)
        else:
            key = (step.session, phase, service)
        if step.proto not in ("queue", "delivery"):
            current[step.session] = key     # the Postfix programs' hand-offs do not end a phase
        groups.setdefault(key, []).append(row)
    # Consecutive groups of one phase share a page when they fit on it together, and so
    # does a group of one or two rows with the page before it.
    merged: list[tuple[list[str], str, list[Row]]] = []
    for (_session, phase, service), rows in groups.items():
        last = merged[-1] if merged else None
        if last and sum(map(weight, last[2] + rows)) <= page_rows and (last[0][-1] == phase or len(rows) <= 2):
            phases = last[0] + ([phase] if phase not in last[0] else [])
            merged[-1] = (phases, last[1] if last[1] == service else "", last[2] + rows)
        else:
            merged.append(([phase], service, rows))
    if len(merged) > 1 and sum(map(weight, merged[0][2])) <= 2 \
            and sum(map(weight, merged[0][2] + merged[1][2])) <= page_rows:
        # A lone row or two at the start go with the page after them.
        first, second = merged[0], merged[1]
        merged[:2] = [(first[0] + [p for p in second[0] if p not in first[0]],
                       first[1] if first[1] == second[1] else "", first[2] + second[2])]
    order = ORDERS.get(flow, ORDER)
    pages: list[Page] = []
    for phases, service, rows in merged or [([""], "", [])]:
        for chunk in _chunks(rows, page_rows):
            used = {r.src for r in chunk} | {r.dst for r in chunk}
            participants = [a for a in order if a in used] + sorted(used - set(order))
            names = {actor: label for label, actor in actors.items() if actor in used}
            pages.append(Page(participants=participants, rows=chunk, number=len(pages) + 1,
                              phases=phases, service=service, names=names))
    for page in pages:
        page.total = len(pages)
    return pages


def participant_labels(page: Page, lang: str) -> dict[str, str]:
    return {p: page.names.get(p) or participant_name(p, lang) for p in page.participants}
