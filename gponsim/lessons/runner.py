"""The lesson runner: its own lab, the steps narrated, checkpoints, artifacts.

The lab runs in this process (Twisted's reactor in the main thread); the
lesson's steps run one after another in a worker thread, acting only as real
clients do. Everything observed goes through the Step bus to the narrator,
``steps.jsonl``, a plain transcript and the checkpoints; at the end the run
folder holds the diagrams, the mail.log excerpt and ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from gponsim.lessons.actions import Context, run_action
from gponsim.lessons.checks import Outcome, evaluate
from gponsim.lessons.model import Lesson, text
from gponsim.steps import Step, StepBus
from gponsim.sinks.jsonl import JsonlRecorder
from gponsim.sinks.memory import ListSink


class OutputFolderError(Exception):
    """The lesson's results folder cannot be made or written (a bad ``--out``)."""

WORDS = {
    "objectives": {"es": "Objetivos", "en": "Objectives"},
    "step": {"es": "Paso {n} de {total}", "en": "Step {n} of {total}"},
    "passed": {"es": "✔ {says}", "en": "✔ {says}"},
    "failed": {"es": "✘ {says} — {detail}", "en": "✘ {says} — {detail}"},
    "skipped": {"es": "– {says} (no se pudo comprobar: {detail})", "en": "– {says} (could not be checked: {detail})"},
    "enter": {"es": "Pulsa Intro para seguir…", "en": "Press Enter to go on…"},
    "summary": {"es": "{ok} de {total} comprobaciones superadas. Todo está en {out}",
                "en": "{ok} of {total} checkpoints passed. Everything is in {out}"},
    "quiz": {"es": "Pregunta {n}", "en": "Question {n}"},
    "answer": {"es": "Respuesta: {choice}", "en": "Answer: {choice}"},
    "your_answer": {"es": "Tu respuesta (número): ", "en": "Your answer (number): "},
    "right": {"es": "¡Correcto!", "en": "Right!"},
    "wrong": {"es": "No exactamente.", "en": "Not quite."},
    "stop": {"es": "Pulsa Intro para parar el laboratorio (tu cliente de correo perderá la conexión)…",
             "en": "Press Enter to stop the lab (your mail client will lose its connection)…"},
    "action_failed": {"es": "La acción «{do}» falló: {error}", "en": "The action '{do}' failed: {error}"},
}


def reflow(paragraphs: str) -> str:
    """Lesson texts are wrapped in the TOML file; let the terminal wrap them instead."""
    return "\n\n".join(" ".join(p.split()) for p in paragraphs.strip().split("\n\n"))


def word(key: str, lang: str, **values) -> str:
    return WORDS[key][lang].format(**values)


@dataclass
class RunOptions:
    lang: str = "en"
    pace: str = "none"              # step | none
    quiz: bool = False
    out: Path | None = None
    port_offset: int | None = None  # None: free ports (no root needed)
    console: Console | None = None
    interactive: bool = False       # the student acts with a real client
    timeout: float = 300.0          # how long to wait for the student, per action
    listen: str = "127.0.0.1"
    capture: str = "auto"           # auto | here | namespace | recorded (gponsim.lessons.capturing)


@dataclass
class Summary:
    lesson: str
    out: Path
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    quiz: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    #: Which Steps (indices in steps.jsonl) each lesson step produced: id -> [first, end).
    ranges: dict[str, list[int]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.errors and all(o.passed is not False for _, o in self.outcomes)


class Transcript:
    """A readable, plain-text sink: ``client → smtpd  EHLO [127.0.0.1]``."""

    def __init__(self, path: Path) -> None:
        # bytes that were not UTF-8 on the wire (lone surrogates) are shown as \udcXX
        self._fh = open(path, "w", encoding="utf-8", errors="backslashreplace")

    def step(self, step: Step) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(step.t))
        lock = " [TLS]" if step.tls else ""
        lines = step.shown_line().replace("\t", " ␉ ").split("\n")
        self._fh.write(f"{stamp} {step.session} {step.src} → {step.dst}{lock}  {lines[0]}\n")
        for more in lines[1:]:
            self._fh.write(f"{'':>40}{more}\n")

    def close(self) -> None:
        self._fh.close()


def default_out(lesson_id: str) -> Path:
    return Path("captures") / f"{lesson_id}-{time.strftime('%Y%m%d-%H%M%S')}"


def _profile_for(lesson: Lesson, out: Path) -> Path:
    """This run's copy of the lab profile, with the lesson's main.cf settings.

    A copy, so a lesson (or the student) may edit it while the lab runs, as on
    the real server's /etc, without touching the shipped profile.
    """
    from gponsim.config import init_config

    folder = out / "profile"
    init_config(folder, force=True)
    main_cf = lesson.lab.get("main_cf", {})
    if main_cf:
        path = folder / "postfix" / "main.cf"
        extra = "".join(f"{name} = {value}\n" for name, value in main_cf.items())
        path.write_text(path.read_text() + f"\n# Set by the lesson {lesson.id}\n" + extra)
    return folder


def run_lesson(lesson: Lesson, options: RunOptions, bus: StepBus) -> Summary:
    from gponsim.lessons.capturing import prepare

    lang = options.lang
    # First, while this process has no threads: it may move into a namespace of its own.
    capture_plan = prepare(lesson, options.capture, lang=lang, interactive=options.interactive,
                           listen=options.listen)

    from twisted.internet import reactor, threads

    from gponsim.server.lab import Lab, LabOptions

    console = options.console or Console(highlight=False)
    out = Path(options.out or default_out(lesson.id)).resolve()
    try:
        if (out / "gponlab").exists():
            shutil.rmtree(out / "gponlab")          # each run starts from a fresh lab
        out.mkdir(parents=True, exist_ok=True)
        recorder = JsonlRecorder(out / "steps.jsonl", append=False)
    except OSError as exc:
        raise OutputFolderError(f"cannot write the lesson's results in {out}: "
                                f"{exc.strerror or exc} (choose another folder with --out)") from exc
    summary = Summary(lesson=lesson.id, out=out)
    record = bus.add(ListSink())
    bus.add(recorder)
    transcript = bus.add(Transcript(out / "transcript.txt"))
    profile = _profile_for(lesson, out)
    lab_options = LabOptions(lab_root=out / "gponlab", config_dir=profile,
                             keylog=out / "gponlab" / "keys.log",
                             free_ports=options.port_offset is None,
                             port_offset=options.port_offset or 0, listen=options.listen)
    lab = Lab(lab_options, emit=bus.emit, reactor=reactor)
    started = time.monotonic()

    def show_text(title: str, body: str) -> None:
        console.print(Panel(Text(body or ("(vacío)" if lang == "es" else "(empty)")),
                        title=title, title_align="left", border_style="dim"))

    def teach(ports: dict) -> None:
        ctx = Context(ports=ports, lab_root=lab.root, out=out, record=record, lang=lang,
                      say=lambda s: console.print(s, markup=False), show_text=show_text,
                      interactive=options.interactive, timeout=options.timeout, host=options.listen,
                      profile=profile,
                      reload=lambda: threads.blockingCallFromThread(reactor, lab.reload))
        ctx.results["capture_plan"] = capture_plan
        # Where the lab listens, for a student's client (and for tests playing one).
        (out / "lab.json").write_text(json.dumps({"ports": ports, "listen": options.listen}) + "\n")
        console.rule(text(lesson.title, lang))
        console.print(Text(word("objectives", lang) + ":", style="bold"))
        for goal in lesson.objectives[lang]:
            console.print(f"  • {goal}", markup=False)
        for n, step in enumerate(lesson.steps, 1):
            console.print(Panel(Text(reflow(text(step.say, lang))),
                                title=word("step", lang, n=n, total=len(lesson.steps)),
                                title_align="left", border_style="cyan"))
            mark = ctx.mark = len(record.steps)
            try:
                for action in step.actions:
                    run_action(ctx, action)
            except Exception as exc:  # noqa: BLE001 - told to the student, run goes on
                msg = word("action_failed", lang, do=action.do, error=exc)
                summary.errors.append(f"{step.id}: {msg}")
                console.print(Text(msg, style="bold red"))
            for check in step.checks:
                scope = record.steps if check.scope == "lesson" else record.steps[mark:]
                outcome = evaluate(check, list(scope), lab.root, ctx.results, every=list(record.steps))
                summary.outcomes.append((step.id, outcome))
                key = {True: "passed", False: "failed", None: "skipped"}[outcome.passed]
                console.print(Text(word(key, lang, says=text(check.says, lang), detail=outcome.detail),
                                   style={True: "green", False: "bold red", None: "yellow"}[outcome.passed]))
            summary.ranges[step.id] = [mark, len(record.steps)]
            if options.pace == "step" and sys.stdin.isatty() and n < len(lesson.steps):
                input(word("enter", lang))
        if options.quiz:
            summary.quiz = ask_quiz(lesson, lang, console)
        if options.interactive and sys.stdin.isatty():
            input(word("stop", lang))      # the student's Thunderbird is still connected

    outcome: dict = {}

    def go():
        d = lab.start()
        d.addCallback(lambda ports: threads.deferToThread(teach, ports))
        d.addErrback(lambda f: outcome.setdefault("error", f.value))
        d.addBoth(lambda _: lab.stop())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    for sink in (record, recorder, transcript):
        bus.remove(sink)
    recorder.close()
    transcript.close()
    if "error" in outcome:
        raise outcome["error"]
    summary.seconds = time.monotonic() - started
    log = lab.root / "var" / "log" / "mail.log"
    if log.exists():
        shutil.copyfile(log, out / "mail.log")
    write_summary(summary, lang)
    ok = sum(1 for _, o in summary.outcomes if o.passed)
    console.rule()
    console.print(Text(word("summary", lang, ok=ok, total=len(summary.outcomes), out=out),
                       style="bold green" if summary.passed else "bold red"))
    return summary


def ask_quiz(lesson: Lesson, lang: str, console: Console) -> list[dict]:
    """Ask on a terminal; elsewhere print the questions with their answers."""
    results = []
    interactive = sys.stdin.isatty()
    for n, q in enumerate(lesson.quiz, 1):
        console.print(Text(f"{word('quiz', lang, n=n)}: {text(q.question, lang)}", style="bold"))
        for i, choice in enumerate(q.choices[lang], 1):
            console.print(f"   {i}. {choice}", markup=False)
        right = q.choices[lang][q.answer - 1]
        given = None
        if interactive:
            raw = input(word("your_answer", lang)).strip()
            given = int(raw) if raw.isdigit() else None
            console.print(word("right" if given == q.answer else "wrong", lang))
        console.print(Text(word("answer", lang, choice=right), style="green"))
        console.print(Text(text(q.explain, lang), style="italic"))
        results.append({"question": text(q.question, lang), "answer": q.answer, "given": given})
    return results


def write_summary(summary: Summary, lang: str) -> None:
    data = {
        "lesson": summary.lesson,
        "passed": summary.passed,
        "seconds": round(summary.seconds, 2),
        "checkpoints": [{"step": sid, **o.to_dict(lang)} for sid, o in summary.outcomes],
        "errors": summary.errors,
        "quiz": summary.quiz,
        "ranges": summary.ranges,
        "lang": lang,
        "files": sorted(p.name for p in summary.out.iterdir() if p.is_file()),
    }
    (summary.out / "summary.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
