"""A deck built from a lesson and a recorded run of it (the run folder).

The model is format-free: slides with a title, bullets, a text excerpt (a
transcript, with the lines the checkpoints point at highlighted, or a file the
student was shown), a diagram and speaker notes. :mod:`gponsim.slides.html` and
:mod:`gponsim.slides.pptx` draw it, sized for a 1920×1080 projector: a slide
holds no more than fits in large type (excerpts keep the lines that matter and
say where lines were left out), and every slide has something to show.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from gponsim.commentary import catalog
from gponsim.diagrams import draw_architecture, draw_sequence
from gponsim.lessons.checks import _matches
from gponsim.lessons.model import Lesson, is_text, text
from gponsim.lessons.runner import reflow
from gponsim.sinks.phrases import localize
from gponsim.slides.words import word
from gponsim.steps import Step, read_jsonl

MAX_LINES = 24              # excerpt lines on one slide (23 px monospace at 1920x1080)
MAX_WIDTH = 104             # characters per excerpt line
MAX_BULLETS = 10            # bullets (or checkpoints) on one slide
TITLE_CHARS = 84            # a step's headline (two lines of a slide title at most)


@dataclass
class Line:
    text: str
    speaker: str            # client | server | internal | file | gap
    highlight: bool = False
    failed: bool = False


@dataclass
class Slide:
    kind: str                               # title | bullets | step | excerpt | diagram | results | quiz | summary
    title: str
    bullets: list[str] = field(default_factory=list)
    body: str = ""
    transcript: list[Line] = field(default_factory=list)
    diagram: Path | None = None             # an SVG; the PPTX uses a PNG beside it
    notes: str = ""
    marks: list[tuple[str, bool | None]] = field(default_factory=list)   # checkpoint text, passed
    figures: list[tuple[str, str]] = field(default_factory=list)        # (value, what) on the summary


@dataclass
class Deck:
    lesson: Lesson
    lang: str
    slides: list[Slide]


def _speaker(step: Step) -> str:
    if step.dir == "internal" or step.kind == "event":
        return "internal"
    return "client" if step.dir == "c2s" else "server"


def _fit(line: str) -> str:
    return line if len(line) <= MAX_WIDTH else line[:MAX_WIDTH - 1] + "…"


def excerpt(lines: list[Line], priority: list[int], lang: str, limit: int = MAX_LINES) -> list[Line]:
    """At most ``limit`` lines of ``lines`` (markers included), keeping those with the
    lowest ``priority`` first, in their order, a marker where lines were left out."""
    if len(lines) <= limit:
        return lines
    chosen: set[int] = set()

    def cost(keep: set[int]) -> int:
        marks, last = 0, -1
        for i in sorted(keep):
            if i != last + 1:
                marks += 1
            last = i
        if last < len(lines) - 1:
            marks += 1
        return len(keep) + marks
    for i in sorted(range(len(lines)), key=lambda i: (priority[i], i)):
        if cost(chosen | {i}) <= limit:
            chosen.add(i)
    out, last = [], -1
    for i in sorted(chosen):
        if i != last + 1:
            out.append(Line(word("more", lang, n=i - last - 1), "gap"))
        out.append(lines[i])
        last = i
    if last < len(lines) - 1:
        out.append(Line(word("more", lang, n=len(lines) - 1 - last), "gap"))
    return out


def actor(name: str, lang: str) -> str:
    """An actor's short name in the deck's language (``client`` -> ``cliente``), as the
    class's web ladder shows it; a program's own name (smtpd, qmgr) stays as it is."""
    try:
        return word(f"actor_{name}", lang)
    except KeyError:
        return name


def _transcript(steps: list[Step], highlight: set[int], lang: str) -> list[Line]:
    lines, priority = [], []
    kept_command = False
    for i, step in enumerate(steps):
        head = f"{actor(step.src, lang)} → {actor(step.dst, lang)}{' [TLS]' if step.tls else ''}: "
        # (gponsim's own words in a line, a message's summary: in the deck's language)
        first = localize(step.shown_line(), lang).replace("\t", " ").split("\n")[0]
        extra = step.line.count("\n")
        failed = step.failed or step.meta.get("status") in ("bounced", "deferred")
        lines.append(Line(_fit(head + first + (f"  (+{extra})" if extra else "")), _speaker(step),
                          i in highlight, failed))
        # What the step is about first: the checkpoints' lines and failures, then what the
        # client said (MAIL, RCPT, DATA...), the replies to it, and last the log lines.
        if i in highlight or failed:
            priority.append(0)
        elif step.kind in ("command", "data") and step.dir == "c2s":
            priority.append(1)
        elif step.kind in ("reply", "handshake") and kept_command:
            priority.append(2)
        elif step.kind == "reply":
            priority.append(3)
        else:
            priority.append(4)
        kept_command = step.kind in ("command", "data")
    return excerpt(lines, priority, lang)


_MBOX_HEADERS = re.compile(r"^(From |Return-Path:|X-Original-To:|Delivered-To:|Received:|\s+by |\s+for |"
                           r"Subject:|Status:|X-UID:|X-IMAPbase:|X-Status:|X-Keywords:)")


def _file_excerpt(body: str, wanted: list[str], lang: str) -> list[Line]:
    """A file the student was shown: the lines the step's checks look for first, then
    the lines that structure an mbox (From_ line, the headers the server added)."""
    lines, priority = [], []
    for raw in body.splitlines():
        lines.append(Line(_fit(raw.replace("\t", "    ")), "file", any(w and w in raw for w in wanted)))
        priority.append(0 if lines[-1].highlight else (1 if _MBOX_HEADERS.match(raw) else 2))
    return excerpt(lines, priority, lang)


def headline(paragraph: str, width: int = TITLE_CHARS) -> str:
    """A slide title from a step's text: its first sentence, or that sentence's first
    clause when the sentence is too long (a lesson step's own ``title`` is better)."""
    first = re.split(r"(?<=[.!?])\s|:\s", paragraph, maxsplit=1)[0].rstrip(".")
    if len(first) <= width:
        return first
    for mark in (" — ", "; ", ", ", " ("):
        clause = first.split(mark)[0]
        if 16 <= len(clause) <= width:
            return clause
    return first[:width - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def _notes(steps: list[Step], lang: str) -> str:
    """The full commentary of the step, once per explanation, for the speaker."""
    cat = catalog()
    seen, notes = set(), []
    for step in steps:
        entry = cat.resolve(step)
        if entry and entry.key not in seen:
            seen.add(entry.key)
            notes.append(f"{step.shown_line().splitlines()[0][:80]}\n  {entry.render(lang, step)}"
                         + (f" ({entry.rfc})" if entry.rfc else ""))
    return "\n\n".join(notes)


def figures(steps: list[Step], summary: dict, lang: str) -> list[tuple[str, str]]:
    """What happened in the run, counted from its Steps: the summary slide's figures."""
    sessions: dict[str, int] = {}
    for s in steps:
        if s.kind == "event" and s.verb == "CONNECT" and s.proto in ("smtp", "imap", "pop3"):
            sessions[s.proto] = sessions.get(s.proto, 0) + 1
    relayed = sum(1 for s in steps if s.proto == "relay" and s.verb == "SENT")
    deferred = sum(1 for s in steps if s.proto == "relay" and s.verb == "DEFERRED")
    out = [
        (str(sum(sessions.values())), word("fig_sessions", lang, detail=", ".join(
            f"{n} {p.upper()}" for p, n in sorted(sessions.items())) or "—")),
        (str(sum(1 for s in steps if s.proto == "smtp" and s.code == 250 and "queued as" in s.line
                 and s.src == "smtpd")), word("fig_accepted", lang)),
        (str(sum(1 for s in steps if s.proto == "delivery" and s.verb == "DELIVERED")), word("fig_delivered", lang)),
    ]
    if relayed or deferred:
        out.append((f"{relayed} / {deferred}", word("fig_relayed", lang)))
    auth_ok = sum(1 for s in steps if s.proto == "sasl" and s.status == "OK")
    auth_fail = sum(1 for s in steps if s.proto == "sasl" and s.status == "FAIL")
    if auth_ok or auth_fail:
        out.append((f"{auth_ok} / {auth_fail}", word("fig_auth", lang)))
    out.append((str(sum(1 for s in steps if s.proto == "tls")), word("fig_tls", lang)))
    refusals = sum(1 for s in steps if s.kind == "reply" and s.failed)
    out.append((str(refusals), word("fig_refused", lang)))
    results = summary.get("checkpoints", [])
    out.append((f"{sum(1 for r in results if r['passed'])} / {len(results)}", word("fig_checks", lang)))
    out.append((f"{len(steps)}", word("fig_steps", lang, seconds=f"{summary.get('seconds', 0):.1f}")))
    return out


def _checkpoints_in(results: list[dict], lesson: Lesson, lang: str) -> list[dict]:
    """The run's checkpoint results with their texts in the deck's language: the run
    wrote them in its own, and each is the text of one of the lesson's checks (es, en)."""
    by_step = {s.id: s.checks for s in lesson.steps}
    every = [c for checks in by_step.values() for c in checks]
    out = []
    for r in results:
        for check in by_step.get(r.get("step"), []) + every:
            if r.get("says") in (check.says.get("es"), check.says.get("en")):
                r = dict(r, says=text(check.says, lang))
                break
        out.append(r)
    return out


def build_deck(lesson: Lesson, run_dir: Path, lang: str, work: Path | None = None) -> Deck:
    """Slides for ``lesson`` from its recorded run; diagrams are drawn into ``work``."""
    from gponsim.slides import SlidesError

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    ran = summary.get("lesson")
    if ran and ran != lesson.id:
        raise SlidesError(word("other_lesson", lang, run=run_dir, ran=ran, lesson=lesson.id))
    work = Path(work or run_dir / "slides-work")
    work.mkdir(parents=True, exist_ok=True)
    steps = list(read_jsonl(run_dir / "steps.jsonl"))
    ranges = summary.get("ranges", {})
    results = _checkpoints_in(summary.get("checkpoints", []), lesson, lang)
    ok = sum(1 for r in results if r["passed"])
    slides = [Slide("title", text(lesson.title, lang), body=word("subtitle", lang),
                    bullets=[word("section", lang, s=lesson.section)],
                    notes=word("section", lang, s=lesson.section))]
    goals = list(lesson.objectives[lang])
    for start in range(0, len(goals), MAX_BULLETS):
        slides.append(Slide("bullets", word("objectives", lang), bullets=goals[start:start + MAX_BULLETS]))
    arch = draw_architecture(steps, work / "architecture.svg", lang=lang)
    draw_architecture(steps, arch.with_suffix(".dot"), lang=lang, fmt="dot")   # for the PPTX's PNG
    slides.append(Slide("diagram", word("architecture", lang), diagram=arch))
    checks_by_step = {s.id: s.checks for s in lesson.steps}
    for n, lstep in enumerate(lesson.steps, 1):
        first, end = ranges.get(lstep.id, [0, 0])
        part = steps[first:end]
        say = reflow(text(lstep.say, lang))
        title = f"{n}. {text(lstep.title, lang) or headline(say)}"
        highlight = {i for i, st in enumerate(part)
                     for c in checks_by_step[lstep.id] if c.what == "step" and _matches(st, c)}
        marks = [(r["says"], r["passed"]) for r in results if r["step"] == lstep.id]
        step_slide = Slide("step", title, body=say, marks=marks[:MAX_BULLETS], notes=_notes(part, lang))
        slides.append(step_slide)
        if part:
            slides.append(Slide("excerpt", f"{n}. " + word("transcript", lang),
                                transcript=_transcript(part, highlight, lang), notes=_notes(part, lang)))
        # (a text given in both languages: the run may have been made in either)
        wanted = [w for c in checks_by_step[lstep.id] if c.what in ("file", "mailbox")
                  for w in (c.contains.values() if is_text(c.contains) else [c.contains or c.pattern])]
        for shown in summary.get("shown", {}).get(lstep.id, []):
            path = run_dir / shown["file"]
            if path.exists():
                name = shown["title"].split("/gponlab/", 1)[-1]
                slides.append(Slide("excerpt", f"{n}. {name}",
                                    transcript=_file_excerpt(path.read_text(encoding="utf-8", errors="replace"),
                                                             wanted, lang)))
        # The diagrams this step drew (the documented architecture, say)...
        for name in summary.get("artifacts", {}).get(lstep.id, []):
            path = run_dir / name
            if path.suffix == ".svg" and path.exists() and "sequence" not in path.stem:
                if not step_slide.marks and step_slide.diagram is None:
                    step_slide.diagram = path      # a step that only draws: its text and its picture
                else:
                    slides.append(Slide("diagram", f"{n}. " + word("drawn", lang, name=path.stem), diagram=path))
        # ... and this step's part of the sequence, a page per phase.
        if part:
            pages = draw_sequence(part, work / f"sequence-{n}.svg", lang=lang)
            draw_sequence(part, work / f"sequence-{n}.dot", lang=lang, fmt="dot")
            for page in pages:
                slides.append(Slide("diagram", f"{n}. " + word("sequence", lang), diagram=page))
    marks = [(r["says"], r["passed"]) for r in results]
    for start in range(0, max(len(marks), 1), MAX_BULLETS):
        slides.append(Slide("results", word("results", lang) + " — " + word("passed", lang, ok=ok, total=len(results)),
                            marks=marks[start:start + MAX_BULLETS]))
    for n, q in enumerate(lesson.quiz, 1):
        slides.append(Slide("quiz", word("quiz", lang, n=n), body=text(q.question, lang),
                            bullets=list(q.choices[lang]),
                            notes=word("answer", lang, a=q.choices[lang][q.answer - 1]) + "\n\n"
                            + text(q.explain, lang)))
    cited: dict[str, int] = {}
    for s in steps:
        entry = catalog().resolve(s)
        if entry and entry.rfc:
            cited[entry.rfc] = cited.get(entry.rfc, 0) + 1
    rfcs = sorted(cited)
    slides.append(Slide("summary", word("summary", lang), figures=figures(steps, summary, lang),
                        notes=word("rfcs", lang) + ":\n" + "\n".join(rfcs)))
    # The references this run cited most, on one slide; all of them in its notes.
    top = sorted(sorted(cited, key=lambda r: -cited[r])[:MAX_BULLETS - 1])
    slides.append(Slide("bullets", word("rfcs", lang), bullets=[word("section", lang, s=lesson.section)] + top,
                        notes="\n".join(rfcs)))
    return Deck(lesson=lesson, lang=lang, slides=slides)
