"""One student's own lesson: their evidence, their sessions, their mistakes and hints.

Fed only with the Events of that student's sessions (see :mod:`attribution`),
plus what the class's :class:`MessageBook` says of the messages they sent and
read, so nothing another student does moves this student's lesson. The same
object serves the live class (the dashboard, the student's page, the hints)
and the grading of a recorded run.

Hints come from the interactive lesson's own watcher
(:class:`gponsim.lessons.student.Watch`: 530, 535, a refused certificate,
port 25, giving up before STARTTLS…), with the classroom's texts, which name
the student's own accounts.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from gponsim.classroom.attribution import Event, MessageBook
from gponsim.classroom.plan import ClassPlan, Evidence
from gponsim.classroom.roster import Roster, Student
from gponsim.classroom.words import both
from gponsim.lessons.student import Watch
from gponsim.steps import Step

#: Default ports named by hints when a run has no lab (a capture of the real server).
STANDARD_PORTS = {"smtp": 25, "submission": 587, "imap": 143, "imaps": 993, "pop3": 110,
                  "pop3s": 995, "autoconfig": 80}
#: Errors kept per student (the newest last).
MAX_ERRORS = 50
#: What the student's client sent to log in, by protocol.
AUTH_COMMANDS = {"smtp": ("AUTH",), "imap": ("LOGIN", "AUTHENTICATE"), "pop3": ("PASS", "AUTH", "APOP")}


def first_line(step: Step) -> str:
    return step.shown_line().split("\n")[0]


@dataclass
class Mark:
    """One evidence check of one student."""

    id: str
    passed: bool | None = None     # None: nothing decided yet (a fail when graded)
    line: str = ""                 # the evidence line, as on the wire (secrets masked)
    detail: str = ""
    session: str = ""
    account: str = ""
    t: float = 0.0
    sticky: bool = False           # a failure nothing later can undo (AUTH sent in clear)

    def public(self) -> dict:
        return {"id": self.id, "passed": self.passed, "line": self.line, "detail": self.detail,
                "session": self.session, "account": self.account, "t": round(self.t, 3)}


class _Hints(Watch):
    """The interactive lesson's watcher, giving its hints to one student's page."""

    def __init__(self, progress: "StudentProgress", ports: dict) -> None:
        ctx = SimpleNamespace(ports=ports, results={}, lang="en", mark=0)
        names = " / ".join(progress.student.accounts)
        super().__init__(ctx, names)
        self.live = True
        self.progress = progress

    def hint(self, key: str, **values) -> None:
        if key in self.given:
            return
        self.given.add(key)
        self.progress.add_hint(key, both(f"hint_{key}", user=self.user,
                                         submission=self.ctx.ports.get("submission"), **values))


@dataclass
class StudentProgress:
    student: Student
    plan: ClassPlan
    roster: Roster
    book: MessageBook
    ports: dict = field(default_factory=lambda: dict(STANDARD_PORTS))

    def __post_init__(self) -> None:
        self.marks: dict[str, Mark] = {e.id: Mark(e.id) for e in self.plan.evidence}
        self.sessions: dict[str, dict] = {}
        self.errors: list[dict] = []
        self.hints: list[dict] = []
        self.first_seen = 0.0
        self.last_seen = 0.0
        self.last_progress = 0.0
        self._watch = _Hints(self, {**STANDARD_PORTS, **self.ports})
        self._tls_lines: dict[str, str] = {}        # session -> its TLS handshake line
        self._step_evidence = [e for e in self.plan.evidence if e.kind in ("step", "auth_in_tls",
                                                                              "tls_accepted")]
        self._changed = False

    # ------------------------------------------------------------------ state

    @property
    def attempts(self) -> list[dict]:
        return self._watch.ctx.results.get("attempts", [])

    @property
    def current_task(self) -> str | None:
        """The first task with evidence still missing; None when all is done."""
        for task in self.plan.tasks:
            for e in self.plan.evidence:
                if e.task == task.step and e.graded and self.marks[e.id].passed is not True:
                    return task.step
        return None

    @property
    def done(self) -> bool:
        return all(self.marks[e.id].passed is True for e in self.plan.graded)

    @property
    def score(self) -> tuple[int, int]:
        graded = self.plan.graded
        return sum(1 for e in graded if self.marks[e.id].passed is True), len(graded)

    def public(self) -> dict:
        ok, total = self.score
        return {"student": self.student.public(), "marks": {k: m.public() for k, m in self.marks.items()},
                "current": self.current_task, "done": self.done, "score": [ok, total],
                "last_error": self.errors[-1] if self.errors else None,
                "errors": len(self.errors), "hints": self.hints,
                "first_seen": round(self.first_seen, 3), "last_seen": round(self.last_seen, 3),
                "last_progress": round(self.last_progress, 3),
                "sessions": list(self.sessions.values())}

    # ------------------------------------------------------------------ changes

    def _pass(self, mark: Mark, step: Step | None, *, line: str = "", detail: str = "",
              session: str = "", account: str = "", t: float = 0.0) -> None:
        if mark.passed is True or mark.sticky:
            return
        mark.passed = True
        mark.line = line or (first_line(step) if step is not None else "")
        mark.detail = detail
        mark.session = session or (step.session if step is not None else "")
        mark.account = account
        mark.t = t or (step.t if step is not None else time.time())
        self.last_progress = mark.t
        self._changed = True

    def _fail(self, mark: Mark, step: Step, detail: str, account: str) -> None:
        mark.passed, mark.sticky = False, True
        mark.line, mark.detail, mark.session = first_line(step), detail, step.session
        mark.account, mark.t = account, step.t
        self._changed = True

    def add_hint(self, key: str, texts: dict) -> None:
        self.hints.append({"key": key, "t": round(time.time(), 3), "text": texts})
        self._changed = True

    def _error(self, step: Step, event: Event, code: str, text: str) -> None:
        self.errors.append({"t": round(step.t, 3), "session": step.session, "code": code,
                            "line": text, "account": event.account, "service": event.service})
        del self.errors[:-MAX_ERRORS]
        self._changed = True

    def take_changed(self) -> bool:
        changed, self._changed = self._changed, False
        return changed

    # ------------------------------------------------------------------ feeding

    def feed(self, event: Event) -> bool:
        """One Event of this student's sessions; True when what a page shows changed."""
        step = event.step
        self.last_seen = step.t
        if not self.first_seen:
            self.first_seen = step.t
        summary = self.sessions.get(step.session)
        if summary is None:
            summary = self.sessions[step.session] = {
                "session": step.session, "service": event.service, "account": event.account,
                "ip": event.ip, "started": round(step.t, 3), "tls": False, "outcome": "",
                "ok": None, "lines": 0}
            self._changed = True
        summary["lines"] += 1
        if event.account and summary["account"] != event.account:
            summary["account"] = event.account
            self._changed = True
        if step.proto == "tls" and step.verb != "DECRYPTED":
            self._tls_lines[step.session] = first_line(step)
            summary["tls"] = True
        before = len(self.attempts)
        self._watch.follow(step)
        if len(self.attempts) > before:
            for attempt in self.attempts[before:]:
                done = self.sessions.get(attempt["session"])
                if done is not None:
                    done["outcome"], done["ok"] = attempt["outcome"], attempt["ok"]
                if "TLS handshake" in attempt["outcome"]:
                    self._error(step, event, "certificate", attempt["outcome"])
                elif "gave up after EHLO" in attempt["outcome"]:
                    self._error(step, event, "no-starttls", attempt["outcome"])
            self._changed = True
        if step.kind == "reply" and step.failed and step.proto in ("smtp", "imap", "pop3") \
                and (step.proto != "imap" or step.tag is not None):
            code = str(step.code) if step.code is not None else (step.meta or {}).get("code") or step.status
            self._error(step, event, str(code), first_line(step))
        for e in self._step_evidence:
            self._evidence(e, event)
        return self.take_changed()

    def _who(self, e: Evidence, event: Event) -> bool:
        if e.who == "sender":
            return event.account == self.student.login
        if e.who == "reader":
            return event.account == self.student.reader
        return True

    def _evidence(self, e: Evidence, event: Event) -> None:
        mark = self.marks[e.id]
        if mark.passed is True and e.kind != "auth_in_tls" or mark.sticky:
            return
        step = event.step
        if e.service and event.service != e.service:
            return
        if not self._who(e, event):
            return
        if e.kind == "step":
            if _matches(step, e):
                self._pass(mark, step, account=event.account)
        elif e.kind == "tls_accepted":
            # The client went on inside TLS: it finished the handshake, so it accepted the
            # certificate (one that refuses it hangs up after the server's Certificate).
            if step.tls and step.dir == "c2s" and step.kind in ("command", "data") \
                    and step.session in self._tls_lines:
                self._pass(mark, step, account=event.account, line=self._tls_lines[step.session],
                           detail=f"{event.service} {event.ip}: {first_line(step)}")
        elif e.kind == "auth_in_tls":
            if step.kind == "command" and step.verb in AUTH_COMMANDS.get(step.proto, ()):
                if not step.tls:
                    self._fail(mark, step, "AUTH in clear (no STARTTLS before it)", event.account)
                elif mark.passed is not True:
                    self._pass(mark, step, account=event.account,
                               detail=self._tls_lines.get(step.session, ""))

    def autoconfig(self, address: str, line: str, t: float) -> bool:
        """The lab handed out the settings of one of this student's addresses."""
        for e in self.plan.evidence:
            if e.kind == "autoconfig":
                self._pass(self.marks[e.id], None, line=line, t=t, account=address)
        self.last_seen = max(self.last_seen, t)
        return self.take_changed()

    def refresh_messages(self) -> bool:
        """Delivered, downloaded: what the class's messages say about this student."""
        s = self.student
        for e in self.plan.evidence:
            mark = self.marks[e.id]
            if mark.passed is True or e.kind not in ("delivered", "fetched", "retrieved"):
                continue
            if e.kind == "delivered":
                for msg in self.book.sent(s.login, s.send_to):
                    step = msg.delivered.get(s.send_to)
                    if step is not None:
                        self._pass(mark, step, account=s.send_to,
                                   detail=f"{msg.subject}".strip())
                        break
                    down = [d for d in msg.downloads if d[0] == s.send_to]
                    if down:
                        self._pass(mark, down[0][2], account=s.send_to,
                                   detail=f"downloaded by {s.send_to}: {msg.subject}")
                        break
            else:
                proto = "imap" if e.kind == "fetched" else "pop3"
                for msg in self.book.sent(s.reads_from, s.reader):
                    down = [d for d in msg.downloads if d[0] == s.reader and d[1] == proto]
                    if down:
                        self._pass(mark, down[0][2], account=s.reader, detail=msg.subject)
                        break
        return self.take_changed()


def _matches(step: Step, e: Evidence) -> bool:
    for name, want in e.where.items():
        value = getattr(step, name)
        if isinstance(want, list):
            if value not in want:
                return False
        elif name == "tag" and want is True:
            if value is None:
                return False
        elif value != want:
            return False
    return not e.line_contains or e.line_contains in step.line


def parse_autoconfig(text: str) -> tuple[str, str] | None:
    """``autoconfig: /mail/config-v1.1.xml for student07@gponlab.local from 10.0.0.7``
    (the lab's mail.log) → (address, client address)."""
    m = re.search(r"autoconfig: \S*config-v1\.1\.xml for (\S+) from (\S+)", text)
    return (m.group(1), m.group(2)) if m else None
