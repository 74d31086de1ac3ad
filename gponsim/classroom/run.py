"""``gponsim class start``: one lab for a class, the live web view, and grades at the end.

In one process: the lab (:class:`gponsim.server.lab.Lab`) with every
student's accounts in its passwd-file, the Step bus feeding the class's hub
(each student's own lesson) and ``steps.jsonl``, and the web view. The class
folder holds everything::

    accounts.csv         every account and its password (0600: the teacher's)
    handouts/            a printable sheet per student (es, en; 0600)
    class.json           the roster (no passwords), the lesson, the ports
    steps.jsonl          every Step, passwords masked (gponsim grade, replay)
    gponlab/             the lab's root (mail, queue, mail.log, certificate)
    grades/              written when the class ends (gponsim grade does it again)

Run it again on the same folder and the class goes on with the same accounts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from gponsim.classroom.hub import ClassHub, PasswordMask
from gponsim.classroom.plan import ClassPlan, load_plan
from gponsim.classroom.roster import Roster
from gponsim.classroom.state import ClassState
from gponsim.server.lab import Lab, LabOptions
from gponsim.steps import MASK, StepBus

#: The web view's standard port (plus --port-offset, like the lab's).
WEB_PORT = 8080


@dataclass
class ClassOptions:
    out: Path
    lesson: str = "thunderbird"
    students: int | None = None
    roster: Path | None = None
    listen: str = "127.0.0.1"
    web_listen: str = "127.0.0.1"
    port_offset: int = 0
    ports: dict = field(default_factory=dict)
    web_port: int | None = None
    free_ports: bool = False
    lang: str = "en"
    config_dir: Path | None = None
    relay: str = "sim"
    server_name: str | None = None        # what students type as the server
    handouts_pdf: bool = False
    keylog: bool = True


class ClassLab(Lab):
    """The lab, telling the class what it writes to mail.log (autoconfig requests)."""

    def __init__(self, options: LabOptions, emit, reactor, on_log) -> None:
        super().__init__(options, emit=emit, reactor=reactor)
        self.on_log = on_log

    def _prepare(self):
        tls_options = super()._prepare()
        write = self.log.write

        def tapped(program: str, pid: int, text: str) -> str:
            line = write(program, pid, text)
            self.on_log(program, text)
            return line
        self.log.write = tapped
        return tls_options


class MaskedSink:
    """Hands a sink Steps whose text holds none of the class's passwords."""

    def __init__(self, inner, mask: PasswordMask) -> None:
        self.inner = inner
        self.mask = mask

    def step(self, step) -> None:
        shown = step.shown_line()                 # the credential span masked first
        line = self.mask(shown)
        if line != shown:
            args = step.args
            if args and step.secret is not None:
                secret = step.line[step.secret[0]:step.secret[1]]
                args = args.replace(secret, MASK) if secret else args
            step = dataclasses.replace(step, line=line, args=self.mask(args) if args else args, secret=None,
                                       meta=json.loads(self.mask(json.dumps(step.meta))))
        self.inner.step(step)

    def close(self) -> None:
        self.inner.close()


class ClassRun:
    def __init__(self, options: ClassOptions, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.options = options
        self.out = Path(options.out).resolve()
        self.token = secrets.token_urlsafe(24)
        self.lab: ClassLab | None = None
        self.hub: ClassHub | None = None
        self.web = None
        self.web_port = 0
        self.bus = StepBus()
        self.roster: Roster | None = None
        self.plan: ClassPlan | None = None
        self._listener = None
        self.lab_info: dict = {}

    # ------------------------------------------------------------------ before the reactor

    def prepare(self) -> None:
        """Folder, roster, accounts in the lab's passwd-file (nothing listens yet)."""
        from gponsim.lessons.model import find_lesson
        from gponsim.server.dovecot.passwd import Users

        o = self.options
        self.plan = load_plan(find_lesson(o.lesson))
        #: this start made the class's folder: a start that fails takes it away again
        self.made_out = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        lab_options = LabOptions(lab_root=self.out / "gponlab", config_dir=o.config_dir, listen=o.listen,
                                 port_offset=o.port_offset, ports=dict(o.ports), free_ports=o.free_ports,
                                 relay=o.relay,
                                 keylog=(self.out / "gponlab" / "keys.log") if o.keylog else None)
        self.lab = ClassLab(lab_options, emit=self.bus.emit, reactor=self.reactor, on_log=self._log_line)
        domain = self.lab.profile.myorigin()
        accounts = self.out / "accounts.csv"
        if accounts.exists():
            self.roster = Roster.read_accounts(accounts, domain)
            self.resumed = True
        else:
            if o.roster is not None:
                self.roster = Roster.from_csv(o.roster, domain, lab_accounts=True)
            else:
                self.roster = Roster.numbered(o.students or 1, domain)
            self.resumed = False
        # A class that goes on: what its earlier runs recorded counts too (read back at start).
        recorded = self.out / "steps.jsonl"
        from gponsim.sinks.jsonl import drop_cut_line

        #: bytes of a line an earlier run left cut short (killed while writing): dropped
        self.dropped_bytes = drop_cut_line(recorded) if self.resumed else 0
        self._recorded_bytes = recorded.stat().st_size if self.resumed and recorded.exists() else 0
        users = Users.ensure_default(self.lab.path(self.lab.profile.passwd_file()))
        self.roster.create_accounts(users)
        self.roster.write_accounts(accounts)

    # ------------------------------------------------------------------ in the reactor

    def start(self):
        """Start the lab, then the class's hub and web view; fires with the web port."""
        from twisted.internet import defer

        from gponsim.sinks.jsonl import JsonlRecorder

        # Every Step from the lab's first one is recorded (passwords masked).
        self.recorder = JsonlRecorder(self.out / "steps.jsonl", append=True)
        self.bus.add(MaskedSink(self.recorder, PasswordMask(self.roster.passwords.values())))
        d = defer.maybeDeferred(self.lab.start)
        d.addCallback(self._started)
        return d

    def _started(self, ports: dict) -> int:
        from gponsim.classroom import web as webmod
        from gponsim.classroom.handout import certificate_fingerprint, write_handouts
        from gponsim.classroom.replay import Replays

        o = self.options
        state = ClassState(self.roster, self.plan, ports=ports)
        self.hub = ClassHub(state, reactor=self.reactor)
        self._read_earlier_runs()
        self.bus.add(self.hub)
        host = self.student_host()
        web_port = o.web_port if o.web_port is not None else (0 if o.free_ports else WEB_PORT + o.port_offset)
        self.web = webmod.ClassWeb(self.hub, self.token, verify=self._verify, lang=o.lang,
                                   replays=Replays(self), diagrams=self._diagrams(),
                                   reactor=self.reactor)
        try:
            self._listener = self.reactor.listenTCP(web_port, webmod.site(self.web), interface=o.web_listen)
        except Exception as exc:  # noqa: BLE001 - told as a LabError below
            from gponsim.server.lab import LabError

            raise LabError(f"cannot open the class's web view on {o.web_listen} port {web_port}: "
                           f"{getattr(exc, 'socketError', exc)} (choose another with --web-port)") from exc
        self.web_port = self._listener.getHost().port
        web_host = o.web_listen if o.web_listen not in ("0.0.0.0", "::") else host
        cert = self.lab.path(self.lab.profile.main("smtpd_tls_cert_file"))
        self.lab_info = {"host": host, "ports": dict(ports), "domain": self.roster.domain,
                         "student_url": f"http://{webmod._host(web_host)}:{self.web_port}/login",
                         "fingerprint": certificate_fingerprint(cert) if cert.exists() else ""}
        self.web.lab_info = self.lab_info
        self.web.start()
        self.handouts = write_handouts(self.out / "handouts", self.roster, self.plan, self.lab_info,
                                       pdf=o.handouts_pdf)
        self._write_class_json(ports)
        return self.web_port

    def _read_earlier_runs(self) -> None:
        """Feed the hub what the class's earlier runs recorded (steps.jsonl as it was
        before this run, the autoconfig requests in mail.log), so grades cover the class."""
        if not self._recorded_bytes:
            return
        import io

        from gponsim.classroom.grading import _log_lines
        from gponsim.steps import Step

        with open(self.out / "steps.jsonl", "rb") as fh:
            data = fh.read(self._recorded_bytes).decode("utf-8", "replace")
        for raw in io.StringIO(data):
            raw = raw.strip()
            if raw:
                try:
                    self.hub.step(Step.from_dict(json.loads(raw)))
                except (ValueError, TypeError):
                    continue        # a line cut by a crash: the rest still counts
        for t, text in _log_lines(self.lab.root / "var" / "log" / "mail.log"):
            self.hub.log_line("gponsim/autoconfig", text)

    def student_host(self) -> str:
        o = self.options
        if o.server_name:
            return o.server_name
        if o.listen in ("0.0.0.0", "::", ""):
            return self.lab.profile.main("myhostname") or socket.gethostname()
        return o.listen

    def teacher_url(self) -> str:
        from gponsim.classroom.web import teacher_url

        o = self.options
        host = "127.0.0.1" if o.web_listen in ("0.0.0.0", "", "127.0.0.1") else o.web_listen
        if o.web_listen == "::":
            host = "::1"
        return teacher_url(host, self.web_port, self.token)

    def _write_class_json(self, ports: dict) -> None:
        o = self.options
        data = {"lesson": self.plan.lesson.id, "domain": self.roster.domain, "ports": ports,
                "listen": o.listen, "connect": "127.0.0.1" if o.listen in ("0.0.0.0", "::") else o.listen,
                "host": self.lab_info["host"], "web_port": self.web_port, "web_listen": o.web_listen,
                "students": [s.public() | {"email": s.email, "idnumber": s.idnumber}
                             for s in self.roster.students],
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (self.out / "class.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    def write_ready_file(self, path: Path) -> None:
        """For scripts and tests: the ports, the web view and its token (0600)."""
        data = {"ports": self.lab.ports, "web_port": self.web_port, "token": self.token,
                "teacher_url": self.teacher_url(), "out": str(self.out), "pid": os.getpid()}
        tmp = Path(str(path) + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data))
        tmp.replace(path)

    def _verify(self, user: str, password: str) -> bool:
        return self.lab.users.verify(user, password)

    def _log_line(self, program: str, text: str) -> None:
        if self.hub is not None:
            self.hub.log_line(program, text)

    def _diagrams(self) -> dict[str, str]:
        """The architecture diagram (SVG) in each language; none without Graphviz."""
        from gponsim.diagrams import draw_architecture
        from gponsim.diagrams.render import DotMissing

        out = {}
        for lang in ("es", "en"):
            path = self.out / f"architecture.{lang}.svg"
            try:
                draw_architecture(None, path, lang=lang)
            except DotMissing:
                return {}
            text = path.read_text(encoding="utf-8")
            out[lang] = text[text.find("<svg"):]
        return out

    # ------------------------------------------------------------------ the end

    def discard(self) -> None:
        """A start that failed (a roster mistake, a port in use, an address not here):
        remove the class's folder if this start made it, so the same --out is a new
        class next time, not a class that never ran "resumed"."""
        if getattr(self, "recorder", None) is not None:
            self.recorder.close()
        if getattr(self, "made_out", False):
            import shutil

            shutil.rmtree(self.out, ignore_errors=True)

    def stop(self):
        from twisted.internet import defer

        if self.web is not None:
            self.web.stop()
        for sub in list(self.hub.subscribers if self.hub else []):
            self.hub.unsubscribe(sub)
        d = defer.succeed(None)
        if self._listener is not None:
            d.addCallback(lambda _: self._listener.stopListening())
        if self.lab is not None:
            d.addCallback(lambda _: self.lab.stop())
        return d

    def finish(self) -> dict:
        """After the reactor stopped: close the recording and write the grades."""
        from gponsim.classroom.grading import Grades, write_all

        self.bus.remove(self.hub) if self.hub else None
        if getattr(self, "recorder", None) is not None:
            self.recorder.close()
        if self.hub is None:
            return {}
        grades = Grades(self.plan, self.roster, self.hub.state, str(self.out))
        return write_all(grades, self.out / "grades", self.options.lang)
