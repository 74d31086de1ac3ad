"""The class as a whole: every Step attributed, every student's progress kept.

:class:`ClassState` is what both the live class (:mod:`hub`) and the grading
of a recorded run (:mod:`grading`) feed with Steps, in the order they
happened; it answers which students changed, so a live view updates only them.
"""

from __future__ import annotations

from gponsim.classroom.attribution import Attributor, Event, MessageBook
from gponsim.classroom.plan import ClassPlan
from gponsim.classroom.progress import StudentProgress, parse_autoconfig
from gponsim.classroom.roster import Roster
from gponsim.steps import Step


class ClassState:
    def __init__(self, roster: Roster, plan: ClassPlan, ports: dict | None = None,
                 credentials: dict | None = None) -> None:
        self.roster = roster
        self.plan = plan
        self.attributor = Attributor(roster, ports, credentials)
        self.book = MessageBook()
        self.progress: dict[str, StudentProgress] = {
            s.login: StudentProgress(s, plan, roster, self.book, dict(ports or {}))
            for s in roster.students}

    def feed(self, step: Step) -> tuple[Event | None, list[Event], set[str]]:
        """``(event, released, changed)``: the Step's Event, earlier Events whose student
        is known now, and the students whose progress changed."""
        event, released = self.attributor.feed(step)
        changed: set[str] = set()
        for e in released:
            if self.progress[e.student].feed(e):
                changed.add(e.student)
        if event is not None and event.student is not None:
            if self.progress[event.student].feed(event):
                changed.add(event.student)
        info = self.attributor.sessions.get(step.session)
        msg = self.book.feed(step, info)
        if msg is not None:
            concerned = {msg.sender, *msg.recipients, *msg.delivered, *(d[0] for d in msg.downloads)}
            for account in concerned:
                student = self.roster.student_of(account)
                if student is None:
                    continue
                # the sender's "delivered", the reader's "fetched"; a partner's too
                for login in {student.login, student.partner} - {""}:
                    if login in self.progress and self.progress[login].refresh_messages():
                        changed.add(login)
        return event, released, changed

    def log_line(self, text: str, t: float) -> set[str]:
        """A line of the lab's mail.log (the autoconfig service's requests)."""
        found = parse_autoconfig(text)
        if not found:
            return set()
        address, _ip = found
        student = self.roster.student_of(address.split("@", 1)[0].lower())
        if student is None or not address.lower().endswith("@" + self.roster.domain):
            return set()
        return {student.login} if self.progress[student.login].autoconfig(address, text, t) else set()
