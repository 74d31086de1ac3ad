"""The live class: a Step sink that keeps the class's state and feeds the web view.

Every Step becomes a compact *line* (what a page draws: who spoke to whom,
the text as on the wire with secrets — and any of the class's passwords —
masked, TLS, failed); the :class:`ClassState` attributes it and moves the
student's lesson on. Pages subscribe with a filter (:class:`Subscriber`):

- the teacher: every line, every student's progress, the class's counters on
  the architecture diagram (sent in batches, twice a second);
- the projector: the lines of one session (or of the newest, or of one
  student's newest), with their explanations;
- a student: the lines of their own sessions only (earlier lines of a
  session arrive when it becomes theirs), their progress and hints.

Everything runs in the reactor's thread (a Step emitted from another thread
is handed over to it), so pages are written to in the order things happened.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from gponsim.classroom.attribution import Event
from gponsim.classroom.state import ClassState
from gponsim.commentary import catalog
from gponsim.steps import MASK, Step

#: Lines kept for pages that connect later (and for the replay of the class so far).
MAX_LINES = 200_000
#: Steps' actors on the lab document's architecture diagram.
NODE_OF = {"client": "Client", "smtpd": "Postfix", "cleanup": "Postfix", "local": "Postfix",
           "smtp": "Postfix", "lmtp": "Postfix", "qmgr": "Queue", "auth": "SASL",
           "imap": "Dovecot", "pop3": "Dovecot", "dovecot-lmtp": "Dovecot", "mailbox": "Mailbox",
           "relay": "Gmail", "internet": "Internet"}
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def line_record(step: Step, n: int, info, mask, explanations: dict) -> dict:
    """What a page draws of one Step (``info``: its session's SessionInfo, or None);
    its explanation goes into ``explanations`` once, by id."""
    entry, _fixed = catalog().explain(step)
    explain_id = None
    if entry is not None:
        explain_id = f"{entry.key}#{entry.match}" if entry.match else entry.key
        texts = {"es": entry.es, "en": entry.en}
        if "{{" in entry.es or "{{" in entry.en:
            # The template speaks of this Step (its queue id, address, client...): filled
            # from it, secrets masked; the same filled text is still sent once.
            shown = Step.from_dict(step.to_dict()) if step.secret is not None else step
            texts = {lang: mask(entry.render(lang, shown)) for lang in texts}
            digest = hashlib.sha1(f"{texts['es']}\0{texts['en']}".encode("utf-8", "replace"))
            explain_id = f"{explain_id}~{digest.hexdigest()[:12]}"
        if explain_id not in explanations:
            explanations[explain_id] = {"id": explain_id, **texts, "rfc": entry.rfc}
    record = {
        "n": n, "t": round(step.t, 4), "s": step.session, "p": step.proto,
        "src": step.src, "dst": step.dst, "d": step.dir, "k": step.kind,
        "line": mask(step.shown_line()), "tls": step.tls, "fail": step.failed,
        "v": step.verb, "c": step.code, "st": step.status, "x": explain_id,
        "who": info.student if info is not None else None,
        "acct": mask(info.account) if info is not None else "",
        "svc": info.service if info is not None else "",
    }
    # From a capture: the packets the Step was read from (Step.packets where the packets
    # view is there; a CONNECT's meta names its first packet), for the replay's layer view.
    packets = getattr(step, "packets", None) or (
        [step.meta["packet"]] if step.meta and step.meta.get("packet") else None)
    if packets:
        record["pkt"] = packets[0]
        record["pkts"] = list(packets)
    return record


class PasswordMask:
    """Masks any of the class's passwords wherever it appears in a shown text (a student
    who typed the password in the user-name field, a password in a Subject)."""

    def __init__(self, passwords) -> None:
        words = sorted({p for p in passwords if p}, key=len, reverse=True)
        self._re = re.compile("|".join(re.escape(p) for p in words)) if words else None

    def __call__(self, text: str) -> str:
        if self._re is None or not text:
            return text
        return self._re.sub(MASK, text)


@dataclass(eq=False)          # each page's stream is itself (two alike are still two)
class Subscriber:
    """One page's event stream."""

    kind: str                               # teacher | projector | student
    write: Callable[[bytes], None]
    student: str | None = None              # a student's own stream
    session: str | None = None              # projector: this session…
    follow: str | None = None               # …or the newest (``latest``) or a student's newest
    explained: set = field(default_factory=set)
    alive: bool = True

    current: str | None = None              # projector: the session on its ladder now
    #: events waiting for the hub's next flush (None: written at once)
    pending: list | None = None

    def send(self, name: str, data: str) -> None:
        if not self.alive:
            return
        chunk = f"event: {name}\ndata: {data}\n\n"
        if self.pending is not None:
            self.pending.append(chunk)
            return
        self._write(chunk)

    def flush(self) -> None:
        if self.pending:
            chunks, self.pending = self.pending, []
            self._write("".join(chunks))

    def _write(self, text: str) -> None:
        try:
            self.write(text.encode("utf-8"))
        except Exception:  # noqa: BLE001 - a page that went away: it gets nothing more
            self.alive = False


#: How long events wait to go out together (each write to a page's socket is a system
#: call that wakes the reader: one per batch, not one per line).
BATCH_SECONDS = 0.02


class ClassHub:
    def __init__(self, state: ClassState, reactor=None, now: Callable[[], float] = time.time) -> None:
        self.state = state
        self.reactor = reactor
        self.now = now
        self.mask = PasswordMask(state.roster.passwords.values())
        self.lines: deque = deque(maxlen=MAX_LINES)       # (n, record dict, json text)
        self.by_session: dict[str, list[int]] = {}
        self.session_meta: dict[str, dict] = {}
        self.counters: dict[str, list[int]] = {}          # node -> [steps, failures]
        self.explanations: dict[str, dict] = {}
        self.subscribers: list[Subscriber] = []
        self.seq = 0
        self._counters_dirty = False
        self._latest_client_session: str | None = None
        self._latest_of: dict[str, str] = {}               # student -> their newest session
        self.started = now()
        self._flush_call = None
        #: the reactor's thread (the hub is made in it): Steps from any other are handed over
        self._io_thread = threading.get_ident()

    # ------------------------------------------------------------------ the sink

    def step(self, step: Step) -> None:
        if self.reactor is not None and threading.get_ident() != self._io_thread:
            self.reactor.callFromThread(self._step, step)
            return
        self._step(step)

    def log_line(self, program: str, text: str) -> None:
        """A line the lab wrote to mail.log (the autoconfig service's requests)."""
        if program != "gponsim/autoconfig":
            return
        if self.reactor is not None and threading.get_ident() != self._io_thread:
            self.reactor.callFromThread(self.log_line, program, text)
            return
        for login in self.state.log_line(self.mask(text), self.now()):
            self._progress(login)
        self._batch()

    def _step(self, step: Step) -> None:
        try:
            self._take(step)
        except Exception:  # noqa: BLE001 - the lab must go on; say it once
            if not getattr(self, "_failed", False):
                import sys
                import traceback

                self._failed = True
                print("gponsim: the class view failed on a Step (the lab goes on):", file=sys.stderr)
                traceback.print_exc()

    def _take(self, step: Step) -> None:
        event, released, changed = self.state.feed(step)
        record = self._record(step, event)
        self._count(step)
        if event is not None and event.step.kind == "event" and event.step.verb == "CONNECT":
            self._latest_client_session = step.session
        if event is not None and event.student is not None:
            self._latest_of[event.student] = step.session
        self._publish_line(record, released)
        # sessions whose student is known now (or changed): once each
        for session in dict.fromkeys([e.step.session for e in released]
                                     + ([step.session] if released else [])):
            self._session_changed(session)
        for login in changed:
            self._progress(login)
        if any(not sub.alive for sub in self.subscribers):
            self.subscribers = [sub for sub in self.subscribers if sub.alive]
        self._batch()

    def _batch(self) -> None:
        """What was queued for the pages goes out in BATCH_SECONDS, together."""
        if self.reactor is None or self._flush_call is not None:
            return
        if any(sub.pending for sub in self.subscribers):
            self._flush_call = self.reactor.callLater(BATCH_SECONDS, self.flush)

    def flush(self) -> None:
        self._flush_call = None
        for sub in list(self.subscribers):
            sub.flush()

    # ------------------------------------------------------------------ records

    def _record(self, step: Step, event: Event | None) -> dict:
        self.seq += 1
        info = self.state.attributor.sessions.get(step.session)
        record = line_record(step, self.seq, info, self.mask, self.explanations)
        text = _ENCODE(record)
        self.lines.append((self.seq, record, text))
        self.by_session.setdefault(step.session, []).append(self.seq)
        return record

    def _line(self, n: int) -> tuple[int, dict, str] | None:
        first = self.lines[0][0] if self.lines else 0
        index = n - first
        if 0 <= index < len(self.lines):
            return self.lines[index]
        return None

    def _count(self, step: Step) -> None:
        for actor in {step.src, step.dst}:
            node = NODE_OF.get(actor)
            if node is None:
                continue
            counts = self.counters.setdefault(node, [0, 0])
            counts[0] += 1
            if step.failed:
                counts[1] += 1
        self._counters_dirty = True

    # ------------------------------------------------------------------ publishing

    def _explain(self, sub: Subscriber, record: dict) -> None:
        x = record.get("x")
        if x and x not in sub.explained:
            sub.explained.add(x)
            sub.send("explain", _ENCODE(self.explanations[x]))

    def _target(self, sub: Subscriber) -> str | None:
        """The session a projector shows: its own, the newest, or a student's newest."""
        if sub.session is not None:
            return sub.session
        if sub.follow == "latest":
            return self._latest_client_session
        return self._latest_of.get(sub.follow or "")

    def _project(self, sub: Subscriber, record: dict | None) -> None:
        """A projector's ladder: when the session it follows changes, that session so
        far (a student's session is known to be theirs only at its login); then each line."""
        target = self._target(sub)
        if target is None:
            return
        if target != sub.current:
            sub.current = target
            for earlier in self.session_lines(target):
                self._explain(sub, earlier)
                sub.send("line", self._text_of(earlier))
            return
        if record is not None and record["s"] == target:
            self._explain(sub, record)
            sub.send("line", self._text_of(record))

    def _publish_line(self, record: dict, released: list[Event]) -> None:
        text = None
        for sub in list(self.subscribers):
            if sub.kind == "teacher":
                text = text or self._text_of(record)
                sub.send("line", text)
            elif sub.kind == "projector":
                self._project(sub, record)
            elif sub.kind == "student":
                # lines of sessions that just became theirs, then this one if it is theirs
                for e in released:
                    if e.student == sub.student:
                        self._send_own(sub, e.step.session, before=record["n"])
                if record["who"] == sub.student and sub.student is not None:
                    self._explain(sub, record)
                    sub.send("line", self._text_of(record))

    def _text_of(self, record: dict) -> str:
        got = self._line(record["n"])
        return got[2] if got is not None else _ENCODE(record)

    def _send_own(self, sub: Subscriber, session: str, before: int) -> None:
        """A student's session, now known to be theirs: its earlier lines, once."""
        sent = sub.__dict__.setdefault("_sessions_sent", set())
        if session in sent:
            return
        sent.add(session)
        for n in self.by_session.get(session, []):
            if n >= before:
                break
            got = self._line(n)
            if got is None:
                continue
            _n, record, _text = got
            record = dict(record, who=sub.student)
            self._explain(sub, record)
            sub.send("line", _ENCODE(record))

    def _session_changed(self, session: str) -> None:
        info = self.state.attributor.sessions.get(session)
        if info is None:
            return
        data = info.public()
        data["account"] = self.mask(data["account"])
        text = _ENCODE(data)
        for sub in self.subscribers:
            if sub.kind in ("teacher", "projector"):
                sub.send("session", text)
            elif sub.kind == "student" and info.student == sub.student:
                self._send_own(sub, session, before=self.seq + 1)
                sub.send("session", text)

    def _progress(self, login: str) -> None:
        full = brief = None
        for sub in self.subscribers:
            if sub.kind == "teacher":
                brief = brief or _ENCODE(self.student_data(login, brief=True))
                sub.send("student", brief)
            elif sub.kind == "student" and sub.student == login:
                full = full or _ENCODE(self.student_data(login))
                sub.send("student", full)

    def flush_counters(self) -> None:
        """The architecture diagram's counters, in one event (called twice a second)."""
        if not self._counters_dirty:
            return
        self._counters_dirty = False
        text = _ENCODE(self.counters)
        for sub in self.subscribers:
            if sub.kind == "teacher":
                sub.send("counters", text)
        self._batch()

    def keepalive(self) -> None:
        for sub in self.subscribers:
            if sub.alive:
                sub.flush()
                sub._write(": keepalive\n\n")

    # ------------------------------------------------------------------ pages

    def student_data(self, login: str, brief: bool = False) -> dict:
        """A student's progress; ``brief`` (the dashboard's row): without their sessions
        and hints' texts (the row shows neither; it asks for sessions when clicked)."""
        data = self.state.progress[login].public()
        if brief:
            data["sessions"] = len(data["sessions"])
            data["hints"] = [h["key"] for h in data["hints"]]
            for mark in data["marks"].values():       # a tooltip's worth
                mark["line"], mark["detail"] = mark["line"][:120], ""
        for mark in data["marks"].values():
            mark["line"] = self.mask(mark["line"])
        if data["last_error"]:
            data["last_error"] = dict(data["last_error"], line=self.mask(data["last_error"]["line"]))
        return data

    def class_data(self) -> dict:
        return {"now": self.now(), "started": self.started, "plan": self.state.plan.public(),
                "students": [self.student_data(s.login, brief=True) for s in self.state.roster.students],
                "counters": self.counters, "recent": self.recent_lines(300),
                "unattributed": [dict(i.public(), account=self.mask(i.account))
                                 for i in self.state.attributor.unattributed()][-100:]}

    def session_list(self, student: str | None = None) -> list[dict]:
        out = []
        for info in self.state.attributor.sessions.values():
            if student is not None and info.student != student:
                continue
            data = info.public()
            data["account"] = self.mask(data["account"])
            data["lines"] = len(self.by_session.get(info.session, ()))
            out.append(data)
        return out

    def session_lines(self, session: str) -> list[dict]:
        out = []
        for n in self.by_session.get(session, []):
            got = self._line(n)
            if got is not None:
                out.append(got[1])
        return out

    def recent_lines(self, count: int = 300) -> list[dict]:
        """The latest lines, each named with its session's student as known now."""
        sessions = self.state.attributor.sessions
        out = []
        for _n, record, _t in list(self.lines)[-count:]:
            info = sessions.get(record["s"])
            if info is not None and info.student != record["who"]:
                record = dict(record, who=info.student)
            out.append(record)
        return out

    def subscribe(self, sub: Subscriber) -> Subscriber:
        """Add a page's stream and send it what it missed."""
        self.subscribers.append(sub)
        if self.reactor is not None:
            sub.pending = []
        hello = {"now": self.now(), "kind": sub.kind}
        sub.send("hello", _ENCODE(hello))
        if sub.kind == "teacher":
            sub.send("class", _ENCODE(self.class_data()))
        elif sub.kind == "student":
            sub.send("student", _ENCODE(self.student_data(sub.student)))
            for info in self.state.attributor.sessions.values():
                if info.student == sub.student:
                    self._send_own(sub, info.session, before=self.seq + 1)
        elif sub.kind == "projector":
            self._project(sub, None)
        sub.flush()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.alive = False
        if sub in self.subscribers:
            self.subscribers.remove(sub)

    def explanation(self, explain_id: str) -> dict | None:
        return self.explanations.get(explain_id)
