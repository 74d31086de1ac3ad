"""Sequence diagrams from observed Steps: lifelines, one arrow per Step.

The model (:func:`build_sequence`) is independent of the drawing: a list of
pages, each with its participants and its rows. Repeated runs (49 ``TOP``
commands and their ``+OK``, a FETCH storm) collapse into one row with a
count, and long sessions are cut into pages. :mod:`gponsim.diagrams.dot` and
:mod:`gponsim.diagrams.mermaid` draw the pages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from gponsim.commentary import catalog
from gponsim.diagrams.labels import participant_name
from gponsim.steps import Step

#: Left-to-right order of the lifelines, as in the lab document's diagrams.
ORDER = ("client", "internet", "smtpd", "auth", "cleanup", "qmgr", "local", "mailbox",
         "smtp", "relay", "imap", "pop3")

FLOWS = ("all", "send", "receive", "sasl")
MAX_LABEL = 80


@dataclass
class Row:
    src: str
    dst: str
    label: str
    tls: bool = False
    failed: bool = False
    kind: str = "command"
    note: str = ""
    repeat: int = 1             # >1: this row stands for a collapsed run


@dataclass
class Page:
    participants: list[str]
    rows: list[Row] = field(default_factory=list)
    number: int = 1
    total: int = 1


#: master.cf service of an SMTP server port, for Steps from captures (no service name there).
SERVICE_OF_PORT = {25: "smtp", 587: "submission", 465: "smtps"}


def service_of(connect: Step) -> str:
    """The smtpd service a CONNECT Step reached: the lab says it, a capture gives the port."""
    if "service" in connect.meta:
        return connect.meta["service"]
    server = connect.meta.get("server") or [None, None]
    return SERVICE_OF_PORT.get(server[1], "smtp")


def select(steps: Iterable[Step], flow: str = "all", session: str | None = None) -> list[Step]:
    """The Steps a flow of the lab document shows (see ``--flow``)."""
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}: choose one of {', '.join(FLOWS)}")
    chosen = []
    sessions_of_service: dict[str, str] = {}
    steps = list(steps)
    for s in steps:
        if s.kind == "event" and s.verb == "CONNECT" and s.proto == "smtp":
            sessions_of_service[s.session] = service_of(s)
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
            # The submission sessions (their SASL, queue and delivery Steps carry the
            # same session id) and the relay leg to Gmail.
            if sessions_of_service.get(s.session) == "submission" or {s.src, s.dst} & {"smtp", "relay"}:
                chosen.append(s)
        elif flow == "receive":
            if sessions_of_service.get(s.session) == "smtp" or s.proto in ("imap", "pop3"):
                chosen.append(s)
    return chosen


_LOG_NOISE = re.compile(r"(?:, )?(?:relay|delay|delays|dsn)=[^,]*(?=,|$)")


def _label(step: Step, width: int = MAX_LABEL) -> str:
    text = step.shown_line().split("\n")[0]
    if step.proto in ("queue", "delivery"):
        # A log line: keep what a student follows (who, what status), not the timings.
        text = _LOG_NOISE.sub("", text).replace(", ,", ",").strip(", ")
    if "\n" in step.line:
        text += " …"
    text = text.replace("\t", " ")
    if len(text) > width:
        text = text[:width - 1] + "…"
    return text


def _signature(step: Step) -> tuple:
    return (step.src, step.dst, step.kind, step.verb, step.code, step.status, step.proto)


def collapse(steps: list[Step], min_repeats: int = 3, max_period: int = 4) -> list[tuple[Step, int]]:
    """Runs of the same block of Steps repeated ``min_repeats`` times or more
    become one block with a count: ``[(step, repeat), ...]``."""
    sigs = [_signature(s) for s in steps]
    out: list[tuple[Step, int]] = []
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
            for step in steps[i:i + best_period]:
                out.append((step, best_reps))
            i += best_period * best_reps
        else:
            out.append((steps[i], 1))
            i += 1
    return out


def build_sequence(steps: Iterable[Step], *, flow: str = "all", session: str | None = None,
                   lang: str = "en", notes: bool = False, collapse_runs: bool = True,
                   page_rows: int = 120, label_width: int = MAX_LABEL) -> list[Page]:
    chosen = select(steps, flow, session)
    pairs = collapse(chosen) if collapse_runs else [(s, 1) for s in chosen]
    rows = []
    cat = catalog()
    for step, repeat in pairs:
        note = ""
        if notes:
            entry = cat.resolve(step)
            note = entry.render(lang, step) if entry else ""
        rows.append(Row(src=step.src, dst=step.dst, label=_label(step, label_width), tls=step.tls,
                        failed=step.failed or step.meta.get("status") in ("bounced", "deferred"),
                        kind=step.kind, note=note, repeat=repeat))
    pages: list[Page] = []
    for start in range(0, max(len(rows), 1), page_rows):
        chunk = rows[start:start + page_rows]
        used = {r.src for r in chunk} | {r.dst for r in chunk}
        participants = [a for a in ORDER if a in used]
        pages.append(Page(participants=participants, rows=chunk, number=len(pages) + 1))
    for page in pages:
        page.total = len(pages)
    return pages


def participant_labels(page: Page, lang: str) -> dict[str, str]:
    return {p: participant_name(p, lang) for p in page.participants}
