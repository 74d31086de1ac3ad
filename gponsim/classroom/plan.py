"""A lesson in a class: each student's tasks and the protocol evidence that grades them.

A lesson file may hold a ``[class]`` table (docs/lessons.md, "In a class"):
``[[class.tasks]]`` say what each student does for a lesson step, with their
own accounts filled in, and ``[[class.evidence]]`` declare the checks that
decide, from the protocol alone, whether they did it — the same checks
advance a student's lesson live (``gponsim class start``) and grade a run
afterwards (``gponsim grade``).

Evidence kinds (``kind``):

==============  ==========================================================
``step``        a Step of the student's sessions matches ``where``
                (Step fields; a list means any of them), ``line_contains``,
                on ``service`` (submission, imap, ...), by ``who``
``auth_in_tls`` on ``service``, the client authenticated inside TLS (STARTTLS,
                or a TLS port, before AUTH) and never sent AUTH in clear
``tls_accepted`` the student's client went on inside TLS after the lab's
                self-signed certificate (the security exception accepted;
                one that refuses it hangs up after the server's Certificate)
``autoconfig``  the lab handed Thunderbird the settings of the student's
                address (the lab's mail.log)
``delivered``   the student's message reached the mailbox they write to
                (local(8)'s ``status=sent``; from captures: its recipient
                downloaded it)
``fetched``     the mailbox the student reads was opened over IMAP and the
                message written to it was downloaded (FETCH of its headers or body)
``retrieved``   the same over POP3 (RETR)
==============  ==========================================================

``who``: ``sender`` (the account the student sends from), ``reader`` (the
mailbox they read), ``any`` (either; the default).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gponsim.commentary import LANGS
from gponsim.lessons.model import STEP_FIELDS, Lesson, LessonError, Text

KINDS = ("step", "auth_in_tls", "tls_accepted", "autoconfig", "delivered", "fetched", "retrieved")
WHO = ("sender", "reader", "any")
SERVICES = ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s")
#: Step fields ``where`` may look at in class evidence (``tag`` too: a tagged IMAP reply)
EVIDENCE_FIELDS = STEP_FIELDS | {"tag"}
#: What a task's text may name, filled in for each student (handouts, the student's page).
PLACEHOLDERS = ("sender", "sender_address", "reader", "reader_address", "send_to_address",
                "host", "domain", "smtp", "submission", "imap", "imaps", "pop3", "pop3s",
                "autoconfig", "autoconfig_url")


@dataclass
class Task:
    step: str                  # the lesson step's id
    title: Text
    do: Text                   # what the student does, with placeholders


@dataclass
class Evidence:
    id: str
    task: str
    kind: str
    title: Text
    who: str = "any"
    where: dict = field(default_factory=dict)
    line_contains: str = ""
    service: str = ""
    graded: bool = True

    def public(self) -> dict:
        return {"id": self.id, "task": self.task, "kind": self.kind, "title": self.title,
                "graded": self.graded}


@dataclass
class ClassPlan:
    lesson: Lesson
    tasks: list[Task]
    evidence: list[Evidence]

    @property
    def graded(self) -> list[Evidence]:
        return [e for e in self.evidence if e.graded]

    def task_of(self, evidence_id: str) -> str:
        return next(e.task for e in self.evidence if e.id == evidence_id)

    def public(self) -> dict:
        return {"lesson": self.lesson.id, "title": self.lesson.title,
                "tasks": [{"step": t.step, "title": t.title} for t in self.tasks],
                "evidence": [e.public() for e in self.evidence]}


def _line_of(raw: str, header: str, index: int) -> int | None:
    seen = -1
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip() == f"[[{header}]]":
            seen += 1
            if seen == index:
                return n
    return None


def _text(value, path: Path, line: int | None, what: str) -> Text:
    if not isinstance(value, dict) or not all(isinstance(value.get(lang), str) and value[lang].strip()
                                              for lang in LANGS):
        raise LessonError(path, line, f"{what} needs both an 'es' and an 'en' text")
    return value


def load_plan(lesson: Lesson) -> ClassPlan:
    """The ``[class]`` table of ``lesson``'s file, checked completely."""
    path = Path(lesson.path) if lesson.path else None
    if path is None:
        raise LessonError(Path(lesson.id), None, "the lesson has no file to read its [class] table from")
    raw = path.read_text(encoding="utf-8")
    data = tomllib.loads(raw).get("class")
    if not isinstance(data, dict):
        raise LessonError(path, None, f"lesson '{lesson.id}' has no [class] table: it cannot be "
                                      f"taught to a class (see docs/lessons.md, 'In a class')")
    step_ids = [s.id for s in lesson.steps]
    tasks = []
    for i, t in enumerate(data.get("tasks", [])):
        line = _line_of(raw, "class.tasks", i)
        if t.get("step") not in step_ids:
            raise LessonError(path, line, f"class task {i + 1}: step must be one of the lesson's steps "
                                          f"({', '.join(step_ids)}), not {t.get('step')!r}")
        do = _text(t.get("do"), path, line, f"class task '{t['step']}': do")
        for lang in LANGS:
            for name in re.findall(r"\{(\w+)\}", do[lang]):
                if name not in PLACEHOLDERS:
                    raise LessonError(path, line, f"class task '{t['step']}': unknown placeholder "
                                                  f"{{{name}}} (known: {', '.join(PLACEHOLDERS)})")
        tasks.append(Task(step=t["step"], title=_text(t.get("title"), path, line,
                                                        f"class task '{t['step']}': title"), do=do))
    if not tasks:
        raise LessonError(path, None, "the [class] table needs at least one [[class.tasks]]")
    task_ids = [t.step for t in tasks]
    evidence = []
    for i, e in enumerate(data.get("evidence", [])):
        line = _line_of(raw, "class.evidence", i)
        eid = e.get("id")
        if not isinstance(eid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", eid):
            raise LessonError(path, line, "class evidence needs an id of lower-case letters, digits and '-'")
        if eid in (x.id for x in evidence):
            raise LessonError(path, line, f"class evidence '{eid}' is declared twice")
        if e.get("task") not in task_ids:
            raise LessonError(path, line, f"class evidence '{eid}': task must be one of "
                                          f"{', '.join(task_ids)}, not {e.get('task')!r}")
        kind = e.get("kind")
        if kind not in KINDS:
            raise LessonError(path, line, f"class evidence '{eid}': unknown kind {kind!r} "
                                          f"(known: {', '.join(KINDS)})")
        who = e.get("who", "any")
        if who not in WHO:
            raise LessonError(path, line, f"class evidence '{eid}': who must be one of {', '.join(WHO)}")
        where = e.get("where", {})
        unknown = set(where) - EVIDENCE_FIELDS
        if unknown:
            raise LessonError(path, line, f"class evidence '{eid}': unknown Step fields {sorted(unknown)} "
                                          f"(known: {sorted(EVIDENCE_FIELDS)})")
        if kind == "step" and not where:
            raise LessonError(path, line, f"class evidence '{eid}': a step check needs 'where'")
        service = e.get("service", "")
        if service and service not in SERVICES:
            raise LessonError(path, line, f"class evidence '{eid}': service must be one of "
                                          f"{', '.join(SERVICES)}")
        if kind == "auth_in_tls" and not service:
            raise LessonError(path, line, f"class evidence '{eid}': auth_in_tls needs a 'service'")
        graded = e.get("graded", True)
        if not isinstance(graded, bool):
            raise LessonError(path, line, f"class evidence '{eid}': graded must be true or false")
        evidence.append(Evidence(id=eid, task=e["task"], kind=kind,
                                 title=_text(e.get("title"), path, line, f"class evidence '{eid}': title"),
                                 who=who, where=where, line_contains=str(e.get("line_contains", "")),
                                 service=service, graded=graded))
    if not evidence:
        raise LessonError(path, None, "the [class] table needs at least one [[class.evidence]]")
    return ClassPlan(lesson=lesson, tasks=tasks, evidence=evidence)


def fill(template: str, values: dict) -> str:
    """A task's text for one student (unknown names stay as they are)."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), template)
