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
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gponsim.lessons.actions import Context, run_action
from gponsim.lessons.checks import Outcome, evaluate
from gponsim.lessons.model import Action, Lesson, in_lang, text
from gponsim.lessons.quiz import QuizResult, ask_quiz
from gponsim.lessons.words import word
from gponsim.sinks.jsonl import JsonlRecorder
from gponsim.sinks.lesson import LessonView
from gponsim.sinks.memory import ListSink
from gponsim.steps import Step, StepBus


class OutputFolderError(Exception):
    """The lesson's results folder cannot be made or written (a bad ``--out``)."""


class LessonInterrupted(Exception):
    """The student stopped the lesson (Ctrl-C, or SIGTERM): nothing after it was graded."""

    def __init__(self, summary: "Summary", signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.summary, self.signum = summary, signum


class _Stopped(Exception):
    """Raised in the lesson's thread once the lesson is interrupted."""


def lab_error_text(exc: Exception, lang: str, port_offset: int | None) -> str:
    """A lab that could not start (:class:`gponsim.server.lab.LabError`), said in ``lang``:
    a port in use or privileged gets a remedy that fits the options given."""
    from gponsim.server.lab import PortError

    if not isinstance(exc, PortError):
        return str(exc)
    if exc.why == "in use":
        remedy = word("port_offset_other" if port_offset is not None else "port_offset_add", lang,
                      offset=(port_offset or 0) + 1000)
        return word("port_in_use", lang, port=exc.port, name=exc.name, address=exc.address,
                    remedy=remedy)
    return word("port_privileged", lang, port=exc.port, name=exc.name)


def reflow(paragraphs: str) -> str:
    """Lesson texts are wrapped in the TOML file; let the terminal wrap them instead."""
    return "\n\n".join(" ".join(p.split()) for p in paragraphs.strip().split("\n\n"))


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
    narrate: bool = True            # narrate the lab's Steps (--quiet: the lesson's texts only)
    explain: str = "first"          # the narrator's explanations: first | session | all | none
    show_startup: bool = False      # narrate the lab's start-up Steps instead of one line
    student: str | None = None      # the student's name, for summary.json
    min_score: float | None = None  # the quiz must reach this percentage (implies the quiz)
    network: bool = False           # on the lab network: clients on pc1, server at 192.168.40.50


@dataclass
class Summary:
    lesson: str
    out: Path
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    quiz: QuizResult | None = None
    seconds: float = 0.0
    #: Which Steps (indices in steps.jsonl) each lesson step produced: id -> [first, end).
    ranges: dict[str, list[int]] = field(default_factory=dict)
    student: str | None = None
    #: What the student did (interactive lessons): each try, with how it ended.
    attempts: list[dict] = field(default_factory=list)
    #: Every hint the lesson gave, in order.
    hints: list[dict] = field(default_factory=list)
    #: Files each lesson step made or showed (diagrams, shown/*.txt), by step id.
    artifacts: dict[str, list[str]] = field(default_factory=dict)
    #: What each lesson step showed on the terminal (``show``): [{"title", "file"}], by step id.
    shown: dict[str, list[dict]] = field(default_factory=dict)
    #: The lesson was stopped (Ctrl-C) at this step: the checkpoints after it were not graded.
    interrupted: str | None = None

    @property
    def checks_passed(self) -> bool:
        return not self.errors and all(o.passed is not False for _, o in self.outcomes)

    @property
    def quiz_passed(self) -> bool:
        return self.quiz is None or self.quiz.passed

    @property
    def passed(self) -> bool:
        """Every checkpoint passed (or could not be checked) and the quiz reached --min-score."""
        return self.interrupted is None and self.checks_passed and self.quiz_passed


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


#: The protocols of a message's way through the queue to its mailbox or relay.
DELIVERY_PROTOS = ("queue", "delivery", "lmtp", "relay")


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
    from gponsim.lessons import network as lesson_net
    from gponsim.lessons.capturing import CapturePlan, prepare

    lang = options.lang
    out = Path(options.out or default_out(lesson.id)).resolve()
    # First, while this process has no threads: it may move into a namespace of its own.
    network = None
    if lesson_net.wanted(lesson, options.network):
        if options.interactive:
            raise lesson_net.NetworkUnavailable("--network runs the lesson's own clients on pc1; "
                                                "with --interactive use `gponsim net up` instead")
        network = lesson_net.LessonNetwork.build(out)
        capture_plan = CapturePlan("here") if lesson_net_captures(lesson) else None
    else:
        capture_plan = prepare(lesson, options.capture, lang=lang, interactive=options.interactive,
                               listen=options.listen)
    try:
        return _run(lesson, options, bus, out, capture_plan, network)
    finally:
        if network is not None:
            network.close()


def lesson_net_captures(lesson: Lesson) -> bool:
    from gponsim.lessons.capturing import captures

    return captures(lesson)


def _run(lesson: Lesson, options: RunOptions, bus: StepBus, out: Path, capture_plan, network) -> Summary:
    from twisted.internet import defer, reactor, threads
    from twisted.python import failure

    from gponsim.server.lab import Lab, LabOptions

    lang = options.lang
    console = options.console or Console(highlight=False)
    try:
        if (out / "gponlab").exists():
            shutil.rmtree(out / "gponlab")          # each run starts from a fresh lab
        if (out / "shown").exists():
            shutil.rmtree(out / "shown")
        out.mkdir(parents=True, exist_ok=True)
        recorder = JsonlRecorder(out / "steps.jsonl", append=False)
    except OSError as exc:
        raise OutputFolderError(word("out_unwritable", lang, out=out, why=exc.strerror or exc)) from exc
    summary = Summary(lesson=lesson.id, out=out, student=options.student)
    view = LessonView(console, lang=lang, explain=options.explain, narrate=options.narrate,
                      show_startup=options.show_startup)
    bus.add(view)       # first: a Step is on the terminal before a checkpoint can find it in the record
    record = bus.add(ListSink())
    bus.add(recorder)
    transcript = bus.add(Transcript(out / "transcript.txt"))
    profile = _profile_for(lesson, out)
    lab_options = LabOptions(lab_root=out / "gponlab", config_dir=profile,
                             keylog=out / "gponlab" / "keys.log",
                             free_ports=options.port_offset is None,
                             port_offset=options.port_offset or 0, listen=options.listen)
    if network is not None:
        from gponsim.lessons.network import write_server_view
        from gponsim.net.services import NetworkServices, enter_mail

        enter_mail(network.hosts)           # the reactor's thread serves from the server's namespace
        lab = NetworkServices(network.topology, network.hosts, out / "gponlab", emit=bus.emit,
                              reactor=reactor, config_dir=profile, keylog=out / "gponlab" / "keys.log")
        write_server_view(network.topology, lab.root)
    else:
        lab = Lab(lab_options, emit=bus.emit, reactor=reactor)
    started = time.monotonic()
    current = {"step": ""}
    interrupted: dict = {}          # {"signum": n} once the student pressed Ctrl-C

    def go_on() -> None:
        """In the lesson's thread: stop here if the lesson was interrupted."""
        if interrupted:
            raise _Stopped()

    def show_text(title: str, body: str) -> None:
        view.print(Panel(Text(body or word("empty", lang)), title=title, title_align="left",
                         border_style="dim"))
        # Kept for the slides: what the student saw in this step.
        shown = summary.shown.setdefault(current["step"], [])
        name = f"shown/{current['step'] or 'lesson'}-{len(shown) + 1}.txt"
        (out / "shown").mkdir(exist_ok=True)
        (out / name).write_text(body, encoding="utf-8", errors="backslashreplace")
        shown.append({"title": title, "file": name})

    def hinted(key: str, said: str) -> None:
        summary.hints.append({"step": current["step"], "hint": key, "text": said, "t": round(time.time(), 3)})

    # The lesson's title and objectives come first, before anything the lab says.
    view.print(Text(text(lesson.title, lang), style="bold"), justify="center")
    view.console.rule(style="dim")
    if options.student:
        view.print(Text(word("student", lang, name=options.student), style="dim"))
    view.print(Text(word("objectives", lang) + ":", style="bold"))
    goals = Table.grid(padding=(0, 1))
    goals.add_column(no_wrap=True)
    goals.add_column()
    for goal in lesson.objectives[lang]:
        goals.add_row(" •", goal)
    view.print(goals)

    def teach(ports: dict) -> None:
        ctx = Context(ports=ports, lab_root=lab.root, out=out, record=record, lang=lang,
                      say=lambda s: view.print(s), show_text=show_text,
                      interactive=options.interactive, timeout=options.timeout,
                      host=network.server if network is not None else options.listen,
                      profile=profile, network=network,
                      reload=lambda: threads.blockingCallFromThread(reactor, lab.reload),
                      replay_startup=view.replay_startup, hinted=hinted,
                      text_width=view.console.width - 4)     # a panel's borders and padding
        ctx.results["capture_plan"] = capture_plan
        # Where the lab listens, for a student's client (and for tests playing one).
        (out / "lab.json").write_text(json.dumps({"ports": ports, "listen": options.listen}) + "\n")
        if capture_plan is not None and capture_plan.mode == "namespace":
            # The whole lesson, its lab too, runs in the namespace: say so before the lab is ready.
            view.print(Text(capture_plan.note))
            capture_plan.told = True
        view.started()
        if network is not None:
            view.print(Text(network.note(lang), style="dim"))
        shows_delivery = [any(a.do == "wait_delivery" for a in s.actions) for s in lesson.steps]
        for n, step in enumerate(lesson.steps, 1):
            go_on()
            current["step"] = step.id
            # The step's explanation first, then what the lab did meanwhile and does now;
            # the queue's events wait for the step that explains the delivery.
            later = not shows_delivery[n - 1] and any(shows_delivery[n:])
            view.defer(DELIVERY_PROTOS if later else ())
            view.print(Panel(Text(reflow(text(step.say, lang))),
                             title=word("step", lang, n=n, total=len(lesson.steps)),
                             title_align="left", border_style="cyan"))
            view.release()
            mark = ctx.mark = len(record.steps)
            made = len(ctx.artifacts)
            try:
                for action in step.actions:
                    go_on()
                    # (the lesson's own words in a mail, say its subject, in the lesson's language)
                    action = Action(action.do, {k: in_lang(v, lang) for k, v in action.options.items()})
                    if network is not None:
                        with network.acting(ctx, action.do, action.options):
                            run_action(ctx, action)
                    else:
                        run_action(ctx, action)
            except Exception as exc:  # noqa: BLE001 - told to the student, run goes on
                go_on()         # (an action cut short by the interruption is no failure)
                msg = word("action_failed", lang, do=action.do, error=exc)
                summary.errors.append(f"{step.id}: {msg}")
                view.print(Text(msg, style="bold red"))
            for check in step.checks:
                go_on()
                scope = record.steps if check.scope == "lesson" else record.steps[mark:]
                outcome = evaluate(check, list(scope), lab.root, ctx.results, every=list(record.steps),
                                   lang=lang)
                summary.outcomes.append((step.id, outcome))
                key = {True: "passed", False: "failed", None: "skipped"}[outcome.passed]
                view.print(Text(word(key, lang, says=text(check.says, lang), detail=outcome.detail),
                                style={True: "green", False: "bold red", None: "yellow"}[outcome.passed]))
            # What happens from here on waits for the next step's explanation.
            view.hold()
            summary.ranges[step.id] = [mark, len(record.steps)]
            files = [str(p.relative_to(out)) if p.is_relative_to(out) else str(p)
                     for p in ctx.artifacts[made:]]
            files += [s["file"] for s in summary.shown.get(step.id, [])]
            if files:
                summary.artifacts[step.id] = files
            if options.pace == "step" and sys.stdin.isatty() and n < len(lesson.steps):
                view.ask(word("enter", lang))
        current["step"] = ""
        view.release()
        summary.attempts = list(ctx.results.get("attempts", []))
        if options.quiz or options.min_score is not None:
            current["step"] = "quiz"
            summary.quiz = ask_quiz(lesson, lang, view, min_score=options.min_score)
            current["step"] = ""
        if options.interactive and sys.stdin.isatty():
            view.ask(word("stop", lang))      # the student's Thunderbird is still connected

    outcome: dict = {}
    finished: list = []
    lesson_thread: list[threading.Thread] = []

    def in_thread(ports):
        # A daemon thread, not the reactor's pool: an interrupted run must not wait
        # for a step that blocks (the quiz's input(), a client's timeout).
        done = defer.Deferred()

        def work():
            try:
                teach(ports)
            except BaseException as exc:  # noqa: BLE001 - handed to the reactor's thread
                reactor.callFromThread(done.errback, failure.Failure(exc))
            else:
                reactor.callFromThread(done.callback, None)
        lesson_thread.append(threading.Thread(target=work, name="lesson", daemon=True))
        lesson_thread[0].start()
        return done

    def finish(_=None):
        if finished:
            return None
        finished.append(True)
        d = defer.maybeDeferred(lab.stop)
        d.addBoth(lambda _: reactor.stop())
        return d

    def on_signal(signum, _frame):
        # Ctrl-C: stop at once, and grade nothing the stopped lab could not do.
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
        interrupted.setdefault("signum", signum)
        interrupted.setdefault("at", current["step"] or "start")
        view.mute()
        record.stop_waiting()
        reactor.callFromThread(finish)

    def go():
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, on_signal)
        d = lab.start()
        d.addCallback(lambda ports: None if interrupted else in_thread(ports))
        d.addErrback(lambda f: None if interrupted or f.check(_Stopped)
                     else outcome.setdefault("error", f.value))
        d.addBoth(finish)

    reactor.callWhenRunning(go)
    try:
        reactor.run()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted and lesson_thread:
        lesson_thread[0].join(timeout=2)      # its client, refused by the stopped lab, gives up
    for sink in (record, recorder, transcript, view):
        bus.remove(sink)
    recorder.close()
    transcript.close()
    view.close()
    if "error" in outcome:
        raise outcome["error"]
    summary.seconds = time.monotonic() - started
    log = lab.root / "var" / "log" / "mail.log"
    if log.exists():
        shutil.copyfile(log, out / "mail.log")
    if interrupted:
        summary.interrupted = interrupted["at"]
        write_summary(summary, lang)
        console.print()
        console.print(Text(word("interrupted", lang, out=out), style="bold yellow"))
        raise LessonInterrupted(summary, interrupted["signum"])
    write_summary(summary, lang)
    ok = sum(1 for _, o in summary.outcomes if o.passed)
    unchecked = sum(1 for _, o in summary.outcomes if o.passed is None)
    console.rule(style="dim")
    said = word("summary", lang, ok=ok, total=len(summary.outcomes), out=out)
    if unchecked:
        said = word("summary_unchecked", lang, ok=ok, total=len(summary.outcomes), out=out, n=unchecked)
    console.print(Text(said, style="bold green" if summary.checks_passed else "bold red"))
    if summary.quiz is not None and summary.quiz.graded:
        console.print(Text(summary.quiz.score_text(lang), style="bold green" if summary.quiz.passed else "bold red"))
    if summary.quiz is not None and not summary.quiz.passed:
        console.print(Text(summary.quiz.failed_text(lang), style="bold red"))
    return summary


def write_summary(summary: Summary, lang: str) -> None:
    data = {
        "lesson": summary.lesson,
        "student": summary.student,
        "passed": summary.passed,
        "interrupted": summary.interrupted,
        "checkpoints_passed": summary.checks_passed,
        "seconds": round(summary.seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoints": [{"step": sid, **o.to_dict(lang)} for sid, o in summary.outcomes],
        "errors": summary.errors,
        "attempts": summary.attempts,
        "hints": summary.hints,
        "quiz": summary.quiz.to_dict() if summary.quiz is not None else None,
        "ranges": summary.ranges,
        "artifacts": summary.artifacts,
        "shown": summary.shown,
        "lang": lang,
        "files": sorted(p.name for p in summary.out.iterdir() if p.is_file()),
    }
    (summary.out / "summary.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
