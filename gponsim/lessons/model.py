"""Lessons as data: the TOML schema (docs/lessons.md), loading and validation.

A lesson file is read once, checked completely, and turned into plain
dataclasses; a mistake is reported as ``file:line: what is wrong`` so an
instructor writing their own lesson finds it at once.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gponsim.commentary import LANGS



def _lessons_dir() -> Path:
    """Where the course's lessons are: inside the installed package (a wheel maps the
    top-level lessons/ folder to gponsim/lessons/course/, see setup.py), or the
    top-level lessons/ folder of a source checkout (an editable install)."""
    packaged = Path(__file__).resolve().parent / "course"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "lessons"


#: The course's lesson files.
LESSONS_DIR = _lessons_dir()

ACTIONS = {"dns", "net", "send", "show", "diagram", "wait_delivery", "wait_step", "edit", "reload",
           "flush", "gmail", "read_imap", "read_pop3", "capture", "autoconfig", "certificate",
           "startup", "packets"}
CHECKS = {"step", "no_step", "mailbox", "log", "file", "capture", "autoconfig", "packets"}
STEP_FIELDS = {"proto", "kind", "verb", "code", "enhanced", "status", "src", "dst", "tls", "dir"}

#: The type each action option must have (docs/lessons.md), where there is one.
OPTION_TYPES = {
    **dict.fromkeys(("as", "user", "password", "from", "domain", "port", "mech", "expect", "file",
                     "replace", "with", "grep", "action", "address", "host", "hostname", "name",
                     "flag", "flow", "kind", "proto", "type", "show", "explain", "line_contains",
                     "fault", "idle_subject"), (str, "a text")),
    **dict.fromkeys(("count", "size", "tail", "rows", "family"), (int, "a whole number")),
    **dict.fromkeys(("timeout", "delay"), ((int, float), "a number")),
    **dict.fromkeys(("remote", "idle", "fetch", "delete", "auth", "notes"), (bool, "true or false")),
    "where": (dict, "a table of Step fields"),
}


class LessonError(Exception):
    """A lesson file that cannot be used; ``str()`` is ``file:line: message``."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


Text = dict  # {"es": str, "en": str}


def text(value: Text | None, lang: str) -> str:
    if not value:
        return ""
    return value.get(lang) or value.get("en") or ""


def is_text(value) -> bool:
    """A value given in both languages (``{ es = "…", en = "…" }``)."""
    return isinstance(value, dict) and set(value) == set(LANGS)


def in_lang(value, lang: str):
    """``value`` in ``lang`` when given in both languages; else as it is."""
    return text(value, lang) if is_text(value) else value


@dataclass
class Check:
    what: str
    says: Text
    where: dict = field(default_factory=dict)
    line_contains: str = ""
    count: int = 1
    user: str = ""
    contains: str | Text = ""     # a text, or {es, en}: the lesson's own words in each language
    pattern: str = ""
    file: str = ""                 # a path inside the lab root (check "file")
    keys: bool = False             # check "capture": read with the TLS key log
    in_clear: int | None = None    # check "capture": credentials readable without TLS
    inside_tls: int | None = None  # check "capture": credentials found inside TLS
    scope: str = "step"            # step | lesson
    address: str = ""              # check "autoconfig": the address Thunderbird asked for
    fact: str = ""                 # check "packets": what the capture must show (packets/lesson.py)
    at_least: int = 0              # check "packets": a count it must reach
    mac: str = ""                  # check "capture" (--network): a source MAC seen on enp0s3


@dataclass
class Action:
    do: str
    options: dict = field(default_factory=dict)


@dataclass
class LessonStep:
    id: str
    say: Text
    title: Text | None = None      # a short title (slides); default: the first sentence of say
    actions: list[Action] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


@dataclass
class Question:
    question: Text
    choices: dict                  # lang -> list[str]
    answer: int
    explain: Text


@dataclass
class Lesson:
    id: str
    title: Text
    section: str
    objectives: dict               # lang -> list[str]
    steps: list[LessonStep]
    quiz: list[Question] = field(default_factory=list)
    lab: dict = field(default_factory=dict)    # main_cf overrides, ...
    diagrams: list[dict] = field(default_factory=list)
    path: Path | None = None
    order: int | None = None       # place in the course; None: after the numbered ones


class _Locator:
    """Finds the line of the n-th ``[[steps]]`` (etc.) in the raw text, for messages."""

    def __init__(self, raw: str) -> None:
        self.lines = raw.splitlines()

    def table(self, header: str, index: int) -> int | None:
        seen = -1
        for n, line in enumerate(self.lines, 1):
            if line.strip() == f"[[{header}]]":
                seen += 1
                if seen == index:
                    return n
        return None

    def key(self, key: str, after: int | None = None) -> int | None:
        """The line of the first ``key = …`` (from line ``after`` on)."""
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for n, line in enumerate(self.lines, 1):
            if n >= (after or 0) and pattern.match(line):
                return n
        return None


def _need_text(value, path: Path, line: int | None, what: str) -> Text:
    if not isinstance(value, dict) or not all(isinstance(value.get(lang), str) and value[lang].strip()
                                              for lang in LANGS):
        raise LessonError(path, line, f"{what} needs both an 'es' and an 'en' text")
    return value


def _need_str_or_text(value, path: Path, line: int | None, what: str) -> None:
    if isinstance(value, dict):
        _need_text(value, path, line, what)
        if not is_text(value):
            raise LessonError(path, line, f"{what}: a table in both languages has only 'es' and 'en'")
    elif not isinstance(value, str):
        raise LessonError(path, line, f"{what} must be a text, or {{ es = \"…\", en = \"…\" }}")


def load_lesson(path: str | Path) -> Lesson:
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LessonError(path, None, f"cannot read the lesson: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise LessonError(path, int(m.group(1)) if m else None, f"not valid TOML: {exc}") from exc
    loc = _Locator(raw)
    for key in ("id", "title", "section", "objectives", "steps"):
        if key not in data:
            raise LessonError(path, None, f"missing '{key}'")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", str(data["id"])):
        raise LessonError(path, loc.key("id"), "id must be lower-case letters, digits and '-'")
    title = _need_text(data["title"], path, loc.key("title"), "title")
    order = data.get("order")
    if order is not None and (not isinstance(order, int) or isinstance(order, bool) or order < 1):
        raise LessonError(path, loc.key("order"), "order must be a whole number from 1 (the lesson's place in the course)")
    objectives = data["objectives"]
    if not all(isinstance(objectives.get(lang), list) and objectives[lang] for lang in LANGS):
        raise LessonError(path, loc.key("objectives"), "objectives needs es and en lists")
    steps = []
    for i, raw_step in enumerate(data["steps"]):
        line = loc.table("steps", i)
        sid = raw_step.get("id") or f"step-{i + 1}"
        say = _need_text(raw_step.get("say"), path, line, f"step '{sid}': say")
        step_title = raw_step.get("title")
        if step_title is not None:
            step_title = _need_text(step_title, path, line, f"step '{sid}': title")
        actions = []
        for a in raw_step.get("actions", []):
            do = a.get("do")
            if do not in ACTIONS:
                raise LessonError(path, line, f"step '{sid}': unknown action {do!r} "
                                              f"(known: {', '.join(sorted(ACTIONS))})")
            options = {k: v for k, v in a.items() if k != "do"}
            for name, value in options.items():
                what, at = f"step '{sid}': {do}'s '{name}'", loc.key(name, after=line) or line
                if name in ("subject", "body"):
                    _need_str_or_text(value, path, at, what)
                elif name == "to" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise LessonError(path, at, f"{what} must be a list of addresses")
                elif name in OPTION_TYPES:
                    kind, said = OPTION_TYPES[name]
                    # (true and false are no numbers here, though Python counts them as ints)
                    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                        raise LessonError(path, at, f"{what} must be {said}, not {value!r}")
            actions.append(Action(do=do, options=options))
        checks = []
        for c in raw_step.get("checks", []):
            what = c.get("what")
            if what not in CHECKS:
                raise LessonError(path, line, f"step '{sid}': unknown check {what!r} "
                                              f"(known: {', '.join(sorted(CHECKS))})")
            says = _need_text(c.get("says"), path, line, f"step '{sid}': a check's 'says'")
            if "contains" in c:
                _need_str_or_text(c["contains"], path, line, f"step '{sid}': a {what} check's 'contains'")
            where = c.get("where", {})
            unknown = {k for k in where if not k.startswith("meta.")} - STEP_FIELDS   # meta.host ...
            if unknown:
                raise LessonError(path, line, f"step '{sid}': a check looks at unknown Step fields "
                                              f"{sorted(unknown)} (known: {sorted(STEP_FIELDS)})")
            if what == "mailbox" and not c.get("user"):
                raise LessonError(path, line, f"step '{sid}': a mailbox check needs 'user'")
            if what == "file" and not (c.get("file") and c.get("contains")):
                raise LessonError(path, line, f"step '{sid}': a file check needs 'file' and 'contains'")
            if what == "autoconfig" and "@" not in str(c.get("address", "")):
                raise LessonError(path, line, f"step '{sid}': an autoconfig check needs an e-mail 'address'")
            if what == "packets":
                from gponsim.packets.lesson import FACTS

                if c.get("fact") not in FACTS:
                    raise LessonError(path, line, f"step '{sid}': a packets check needs a 'fact' "
                                                  f"(one of {', '.join(FACTS)})")
            if what == "log":
                try:
                    re.compile(c.get("pattern", ""))
                except re.error as exc:
                    raise LessonError(path, line, f"step '{sid}': bad log pattern: {exc}") from exc
            checks.append(Check(what=what, says=says, where=where,
                                line_contains=c.get("line_contains", ""), count=int(c.get("count", 1)),
                                user=c.get("user", ""), contains=c.get("contains", ""),
                                pattern=c.get("pattern", ""), file=c.get("file", ""),
                                keys=bool(c.get("keys", False)), in_clear=c.get("in_clear"),
                                inside_tls=c.get("inside_tls"),
                                scope=c.get("scope", "step"), address=c.get("address", ""),
                                fact=c.get("fact", ""), at_least=int(c.get("at_least", 0)),
                                mac=c.get("mac", "")))
        steps.append(LessonStep(id=sid, say=say, title=step_title, actions=actions, checks=checks))
    quiz = []
    for i, q in enumerate(data.get("quiz", [])):
        line = loc.table("quiz", i)
        question = _need_text(q.get("question"), path, line, "quiz question")
        choices = q.get("choices", {})
        if not all(isinstance(choices.get(lang), list) and len(choices[lang]) >= 2 for lang in LANGS):
            raise LessonError(path, line, "quiz choices need es and en lists of 2 or more")
        if len(choices["es"]) != len(choices["en"]):
            raise LessonError(path, line, "quiz choices: es and en must have as many choices")
        answer = q.get("answer")
        if not isinstance(answer, int) or not 1 <= answer <= len(choices["en"]):
            raise LessonError(path, line, f"quiz answer must be a choice number from 1 to {len(choices['en'])}")
        quiz.append(Question(question=question, choices=choices, answer=answer,
                             explain=_need_text(q.get("explain"), path, line, "quiz explain")))
    return Lesson(id=data["id"], title=title, section=str(data["section"]), objectives=objectives,
                  steps=steps, quiz=quiz, lab=data.get("lab", {}), diagrams=data.get("diagrams", []),
                  path=path, order=order)


def _order_of(path: Path) -> tuple:
    """A lesson file's place in the course: its ``order``, then its name (a file that
    cannot be read goes last; loading it reports what is wrong)."""
    try:
        order = tomllib.loads(path.read_text(encoding="utf-8")).get("order")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        order = None
    numbered = isinstance(order, int) and not isinstance(order, bool)
    return (0, order, path.stem) if numbered else (1, 0, path.stem)


def lesson_files(folder: Path = LESSONS_DIR) -> list[Path]:
    """The lesson files of ``folder`` in the course's order (each lesson's ``order``)."""
    return sorted(folder.glob("*.toml"), key=_order_of) if folder.is_dir() else []


def find_lesson(lesson_id: str, folder: Path = LESSONS_DIR) -> Lesson:
    for path in lesson_files(folder):
        if path.stem == lesson_id:
            return load_lesson(path)
    known = ", ".join(p.stem for p in lesson_files(folder)) or "none"
    raise LessonError(folder, None, f"no lesson '{lesson_id}' in this folder (lessons: {known})")
