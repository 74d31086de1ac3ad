"""A deck built from a lesson and a recorded run of it (the run folder).

The model is format-free: slides with a title, bullets, a transcript excerpt
(with the lines the checkpoints point at highlighted), a diagram and speaker
notes. :mod:`gponsim.slides.html` and :mod:`gponsim.slides.pptx` draw it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gponsim.commentary import catalog
from gponsim.diagrams import draw_architecture, draw_sequence
from gponsim.lessons.checks import _matches
from gponsim.lessons.model import Lesson, text
from gponsim.lessons.runner import reflow
from gponsim.steps import Step, read_jsonl

MAX_TRANSCRIPT = 16         # lines on one slide, so a projector shows them without scrolling
MAX_WIDTH = 92              # characters per transcript line

WORDS = {
    "objectives": {"es": "Objetivos", "en": "Objectives"},
    "architecture": {"es": "Arquitectura: lo que pasó en esta lección",
                     "en": "Architecture: what happened in this lesson"},
    "results": {"es": "Comprobaciones", "en": "Checkpoints"},
    "quiz": {"es": "Pregunta {n}", "en": "Question {n}"},
    "summary": {"es": "Resumen", "en": "Summary"},
    "rfcs": {"es": "Normas y documentación", "en": "Standards and documentation"},
    "section": {"es": "Sección del documento del laboratorio: {s}", "en": "Lab document section: {s}"},
    "more": {"es": "… {n} líneas más …", "en": "… {n} more lines …"},
    "answer": {"es": "Respuesta: {a}", "en": "Answer: {a}"},
    "passed": {"es": "{ok} de {total} superadas", "en": "{ok} of {total} passed"},
    "subtitle": {"es": "gponsim — laboratorio GPON de correo (Postfix + Dovecot)",
                 "en": "gponsim — the GPON lab's mail service (Postfix + Dovecot)"},
}


def word(key: str, lang: str, **values) -> str:
    return WORDS[key][lang].format(**values)


@dataclass
class Line:
    text: str
    speaker: str            # client | server | internal
    highlight: bool = False
    failed: bool = False


@dataclass
class Slide:
    kind: str                               # title | bullets | step | diagram | results | quiz | summary
    title: str
    bullets: list[str] = field(default_factory=list)
    body: str = ""
    transcript: list[Line] = field(default_factory=list)
    diagram: Path | None = None             # an SVG; the PPTX uses a PNG beside it
    notes: str = ""
    marks: list[tuple[str, bool]] = field(default_factory=list)   # checkpoint text, passed


@dataclass
class Deck:
    lesson: Lesson
    lang: str
    slides: list[Slide]


def _speaker(step: Step) -> str:
    if step.dir == "internal" or step.kind == "event":
        return "internal"
    return "client" if step.dir == "c2s" else "server"


def _transcript(steps: list[Step], highlight: set[int], lang: str) -> list[Line]:
    lines = []
    for i, step in enumerate(steps):
        head = f"{step.src} → {step.dst}{' [TLS]' if step.tls else ''}: "
        first = step.shown_line().replace("\t", " ").split("\n")[0]
        extra = step.line.count("\n")
        content = head + first + (f"  (+{extra})" if extra else "")
        if len(content) > MAX_WIDTH:
            content = content[:MAX_WIDTH - 1] + "…"
        lines.append(Line(content, _speaker(step), i in highlight,
                          step.failed or step.meta.get("status") in ("bounced", "deferred")))
    if len(lines) <= MAX_TRANSCRIPT:
        return lines
    # Keep the highlighted lines and the start; say how much was left out.
    keep = sorted(set(range(6)) | {i for i, line in enumerate(lines) if line.highlight or line.failed})
    keep = keep[:MAX_TRANSCRIPT - 1]
    out, last = [], -1
    for i in keep:
        if i != last + 1:
            out.append(Line(word("more", lang, n=i - last - 1), "internal"))
        out.append(lines[i])
        last = i
    if last < len(lines) - 1:
        out.append(Line(word("more", lang, n=len(lines) - 1 - last), "internal"))
    return out


def _headline(paragraph: str, width: int = 64) -> str:
    """The first sentence, shortened to fit a slide title."""
    first = paragraph.split(". ")[0].split(": ")[0].rstrip(".")
    return first if len(first) <= width else first[:width - 1].rsplit(" ", 1)[0] + "…"


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


def build_deck(lesson: Lesson, run_dir: Path, lang: str, work: Path | None = None) -> Deck:
    """Slides for ``lesson`` from its recorded run; diagrams are drawn into ``work``."""
    run_dir = Path(run_dir)
    work = Path(work or run_dir / "slides-work")
    work.mkdir(parents=True, exist_ok=True)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    steps = list(read_jsonl(run_dir / "steps.jsonl"))
    ranges = summary.get("ranges", {})
    slides = [Slide("title", text(lesson.title, lang), body=word("subtitle", lang),
                    notes=word("section", lang, s=lesson.section)),
              Slide("bullets", word("objectives", lang), bullets=list(lesson.objectives[lang]))]
    arch = draw_architecture(steps, work / "architecture.svg", lang=lang)
    draw_architecture(steps, arch.with_suffix(".dot"), lang=lang, fmt="dot")   # for the PPTX's PNG
    slides.append(Slide("diagram", word("architecture", lang), diagram=arch))
    checks_by_step = {s.id: s.checks for s in lesson.steps}
    results = summary.get("checkpoints", [])
    for n, lstep in enumerate(lesson.steps, 1):
        first, end = ranges.get(lstep.id, [0, 0])
        part = steps[first:end]
        highlight = {i for i, st in enumerate(part)
                     for c in checks_by_step[lstep.id] if c.what == "step" and _matches(st, c)}
        marks = [(r["says"], r["passed"]) for r in results if r["step"] == lstep.id]
        slides.append(Slide("step", f"{n}. {_headline(reflow(text(lstep.say, lang)))}",
                            body=reflow(text(lstep.say, lang)),
                            transcript=_transcript(part, highlight, lang), marks=marks,
                            notes=_notes(part, lang)))
        if part:
            # This step's part of the sequence: the whole history would not fit a projector.
            [seq, *_] = draw_sequence(part, work / f"sequence-{n}.svg", lang=lang, page_rows=10_000,
                                      label_width=40)
            draw_sequence(part, seq.with_suffix(".dot"), lang=lang, page_rows=10_000, fmt="dot",
                          label_width=40)
            slides.append(Slide("diagram", f"{n}. " + ("Diagrama de secuencia de este paso" if lang == "es"
                                                       else "Sequence diagram of this step"), diagram=seq))
    ok = sum(1 for r in results if r["passed"])
    slides.append(Slide("results", word("results", lang) + " — " + word("passed", lang, ok=ok, total=len(results)),
                        marks=[(r["says"], r["passed"]) for r in results]))
    for n, q in enumerate(lesson.quiz, 1):
        slides.append(Slide("quiz", word("quiz", lang, n=n), body=text(q.question, lang),
                            bullets=list(q.choices[lang]),
                            notes=word("answer", lang, a=q.choices[lang][q.answer - 1]) + "\n\n"
                            + text(q.explain, lang)))
    rfcs = sorted({e.rfc for s in steps if (e := catalog().resolve(s)) and e.rfc})
    slides.append(Slide("summary", word("summary", lang),
                        bullets=[word("section", lang, s=lesson.section)] + rfcs[:14],
                        notes=word("rfcs", lang) + ":\n" + "\n".join(rfcs)))
    return Deck(lesson=lesson, lang=lang, slides=slides)
