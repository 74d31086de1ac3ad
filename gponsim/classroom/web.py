"""The class's web view (twisted.web): the teacher's dashboard, the projector, each
student's page and the replay, with server-sent events. Every asset is served
from the package (``web/``): no CDN, it works with no internet.

Who may see what:

- ``/teacher``, ``/projector``, ``/replay`` and their data need the teacher's
  token (``?token=…`` once; the page then keeps it in a cookie): without one
  the answer is 401, with a wrong one 403;
- ``/me`` is a student's own page after logging in at ``/login`` with their
  lab user name and password (either of their two accounts); its data
  (``/me/state.json``, ``/me/events``, ``/me/session.json``) holds only their
  own sessions — another student's session answers 403;
- nothing shows a password: Steps are masked, and so is any of the class's
  passwords wherever it turns up.
"""

from __future__ import annotations

import hmac
import html
import json
import secrets
import time
from importlib import resources
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from twisted.internet import task, threads
from twisted.web import resource, server

from gponsim.classroom.hub import ClassHub, Subscriber
from gponsim.classroom.words import LANGS, table, word

TEACHER_COOKIE = b"gponsim_teacher"
STUDENT_COOKIE = b"gponsim_student"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png", ".woff2": "font/woff2"}
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'")
#: A failed student login waits like Dovecot's auth_failure_delay.
LOGIN_FAILURE_DELAY = 2.0
#: Failed logins from one address within a minute before it must wait a minute.
LOGIN_FAILURES_ALLOWED = 10
KEEPALIVE_SECONDS = 15.0
COUNTERS_SECONDS = 0.5


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("web", name).read_bytes()


class ClassWeb(resource.Resource):
    """The whole site: one resource routing by path (see the module's text)."""

    isLeaf = True

    def __init__(self, hub: ClassHub | None, token: str, *, verify: Callable[[str, str], bool] | None = None,
                 lang: str = "en", replays=None, diagrams: dict[str, str] | None = None,
                 reactor=None, lab_info: dict | None = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.hub = hub
        self.token = token
        self.verify = verify
        self.lang = lang
        self.replays = replays
        self.diagrams = diagrams or {}
        self.lab_info = lab_info or {}
        self.students: dict[str, str] = {}          # cookie value -> student login
        self._failures: dict[str, list[float]] = {}
        self._loops = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.hub is not None:
            for fn, every in ((self.hub.flush_counters, COUNTERS_SECONDS),
                              (self.hub.keepalive, KEEPALIVE_SECONDS)):
                loop = task.LoopingCall(fn)
                loop.clock = self.reactor
                loop.start(every, now=False)
                self._loops.append(loop)

    def stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []

    # ------------------------------------------------------------------ helpers

    def _lang(self, request) -> str:
        asked = request.args.get(b"lang", [b""])[0].decode("ascii", "replace")
        if asked in LANGS:
            request.addCookie(b"gponsim_lang", asked.encode(), path=b"/", sameSite="strict")
            return asked
        cookie = (request.getCookie(b"gponsim_lang") or b"").decode("ascii", "replace")
        return cookie if cookie in LANGS else self.lang

    @staticmethod
    def _arg(request, name: str) -> str:
        return request.args.get(name.encode(), [b""])[0].decode("utf-8", "replace")

    def _headers(self, request, ctype: str) -> None:
        request.setHeader(b"content-type", ctype.encode())
        request.setHeader(b"content-security-policy", CSP.encode())
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-store")

    def _json(self, request, data, code: int = 200) -> bytes:
        request.setResponseCode(code)
        self._headers(request, "application/json; charset=utf-8")
        return json.dumps(data, ensure_ascii=False).encode("utf-8")

    def _refuse(self, request, code: int, key: str) -> bytes:
        lang = self._lang(request)
        if code == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="gponsim class"')
        return self._json(request, {"error": word(key, lang)}, code)

    def _page(self, request, name: str, title: str, boot: dict, lang: str) -> bytes:
        self._headers(request, "text/html; charset=utf-8")
        body = _asset(name).decode("utf-8")
        boot = dict(boot, lang=lang, words=table("ui_", lang))
        # JSON inside a <script type="application/json">: only "</" needs care.
        data = json.dumps(boot, ensure_ascii=False).replace("</", "<\\/")
        return (body.replace("{{lang}}", lang).replace("{{title}}", html.escape(title))
                .replace("{{boot}}", data)).encode("utf-8")

    # ------------------------------------------------------------------ who asks

    def _teacher(self, request) -> bool | bytes:
        """True, or the refusal to send (401 without a token, 403 with a wrong one)."""
        given = self._arg(request, "token")
        from_query = bool(given)
        if not given:
            auth = (request.getHeader(b"authorization") or b"").decode("latin-1")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
        if not given:
            given = (request.getCookie(TEACHER_COOKIE) or b"").decode("ascii", "replace")
        if not given:
            return self._refuse(request, 401, "ui_need_token")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
            return self._refuse(request, 403, "ui_bad_token")
        if from_query:
            request.addCookie(TEACHER_COOKIE, self.token.encode(), path=b"/", httpOnly=True,
                              sameSite="strict")
        return True

    def _student(self, request) -> str | None:
        cookie = (request.getCookie(STUDENT_COOKIE) or b"").decode("ascii", "replace")
        return self.students.get(cookie) if cookie else None

    # ------------------------------------------------------------------ routing

    def render_GET(self, request) -> bytes | int:
        path = request.path.decode("utf-8", "replace").rstrip("/") or "/"
        if path.startswith("/static/"):
            return self._static(request, path[len("/static/"):])
        if path in ("/", "/login"):
            return self._login_page(request, "")
        if path == "/logout":
            cookie = (request.getCookie(STUDENT_COOKIE) or b"").decode("ascii", "replace")
            self.students.pop(cookie, None)
            request.addCookie(STUDENT_COOKIE, b"", path=b"/", max_age=0)
            return self._redirect(request, b"/login")
        if path.startswith("/me"):
            return self._student_route(request, path)
        if path.split("/")[1] in ("teacher", "projector", "replay", "explain.json"):
            allowed = self._teacher(request)
            if allowed is not True:
                return allowed
            return self._teacher_route(request, path)
        request.setResponseCode(404)
        self._headers(request, "text/plain; charset=utf-8")
        return b"not found\n"

    def render_POST(self, request) -> bytes | int:
        path = request.path.decode("utf-8", "replace").rstrip("/")
        if path == "/login":
            return self._login(request)
        request.setResponseCode(405)
        return b""

    def _redirect(self, request, where: bytes) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"location", where)
        return b""

    def _static(self, request, name: str) -> bytes:
        suffix = Path(name).suffix
        if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            request.setResponseCode(404)
            return b"not found\n"
        try:
            data = _asset(name)
        except (FileNotFoundError, OSError):
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", STATIC_TYPES[suffix].encode())
        request.setHeader(b"cache-control", b"max-age=300")
        return data

    # ------------------------------------------------------------------ the teacher

    def _teacher_route(self, request, path: str) -> bytes | int:
        lang = self._lang(request)
        hub = self.hub
        if path == "/explain.json":
            found = hub.explanation(self._arg(request, "id")) if hub else None
            return self._json(request, found or {}, 200 if found else 404)
        if path.startswith("/replay"):
            return self._replay_route(request, path, lang)
        if hub is None:
            request.setResponseCode(404)
            return b"no class is running here: only the replay\n"
        if path == "/teacher":
            return self._page(request, "teacher.html", word("ui_teacher_title", lang),
                              {"diagram": self.diagrams.get(lang, ""), "lab": self.lab_info}, lang)
        if path == "/teacher/state.json":
            return self._json(request, hub.class_data())
        if path == "/teacher/sessions.json":
            student = self._arg(request, "student") or None
            return self._json(request, hub.session_list(student))
        if path == "/teacher/session.json":
            return self._json(request, hub.session_lines(self._arg(request, "id")))
        if path == "/teacher/lines.json":
            return self._json(request, hub.recent_lines())
        if path == "/teacher/events":
            return self._stream(request, Subscriber("teacher", write=request.write))
        if path == "/projector":
            return self._page(request, "projector.html", word("ui_projector_title", lang),
                              {"session": self._arg(request, "session"),
                               "follow": self._arg(request, "follow") or (
                                   "" if self._arg(request, "session") else "latest"),
                               "students": [s.public() for s in hub.state.roster.students]}, lang)
        if path == "/projector/events":
            session = self._arg(request, "session") or None
            follow = None if session else (self._arg(request, "follow") or "latest")
            return self._stream(request, Subscriber("projector", write=request.write,
                                                    session=session, follow=follow))
        request.setResponseCode(404)
        return b"not found\n"

    def _stream(self, request, sub: Subscriber) -> int:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        transport = getattr(request.channel, "transport", None)
        if transport is not None and hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)      # each event leaves at once
        request.write(b"retry: 2000\n\n")
        self.hub.subscribe(sub)
        request.notifyFinish().addBoth(lambda _: self.hub.unsubscribe(sub))
        return server.NOT_DONE_YET

    # ------------------------------------------------------------------ students

    def _login_page(self, request, error: str, code: int = 200) -> bytes:
        lang = self._lang(request)
        if self._student(request) and not error:
            return self._redirect(request, b"/me")
        request.setResponseCode(code)
        return self._page(request, "login.html", word("ui_login_title", lang), {"error": error}, lang)

    def _login(self, request):
        lang = self._lang(request)
        ip = request.getClientAddress().host
        now = time.monotonic()
        recent = [t for t in self._failures.get(ip, []) if now - t < 60]
        self._failures[ip] = recent
        if len(recent) >= LOGIN_FAILURES_ALLOWED:
            return self._login_page(request, word("ui_login_wait", lang), 429)
        user = self._arg(request, "user").strip().lower()
        password = self._arg(request, "password")
        roster = self.hub.state.roster if self.hub else None
        student = roster.student_of(user) if roster else None

        def checked(ok: bool):
            if ok and student is not None:
                cookie = secrets.token_urlsafe(24)
                self.students[cookie] = student.login
                request.addCookie(STUDENT_COOKIE, cookie.encode(), path=b"/", httpOnly=True,
                                  sameSite="strict")
                request.setResponseCode(303)
                request.setHeader(b"location", b"/me")
                request.finish()
                return
            self._failures.setdefault(ip, []).append(time.monotonic())
            d = task.deferLater(self.reactor, LOGIN_FAILURE_DELAY, lambda: None)
            d.addCallback(lambda _: self._finish(request, self._login_page(
                request, word("ui_login_failed", lang), 401)))

        if self.verify is None or not user or not password:
            checked(False)
        else:
            # bcrypt is slow on purpose: not in the reactor's thread (unknown users cost the same)
            d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                          self.verify, user if student else "\x00nobody", password)
            d.addCallback(checked)
            d.addErrback(lambda f: checked(False))
        return server.NOT_DONE_YET

    @staticmethod
    def _finish(request, body: bytes) -> None:
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(body)
            request.finish()

    def _student_route(self, request, path: str) -> bytes | int:
        login = self._student(request)
        lang = self._lang(request)
        if login is None:
            if path == "/me":
                return self._redirect(request, b"/login")
            return self._refuse(request, 401, "ui_need_login")
        hub = self.hub
        if path == "/me":
            progress = hub.state.progress[login]
            return self._page(request, "student.html", word("ui_student_title", lang, login=login),
                              {"me": progress.student.public(), "plan": hub.state.plan.public(),
                               "tasks": self.tasks_for(login, lang)}, lang)
        if path == "/me/state.json":
            return self._json(request, {"student": hub.student_data(login),
                                        "sessions": hub.session_list(login)})
        if path == "/me/session.json":
            session = self._arg(request, "id")
            info = hub.state.attributor.sessions.get(session)
            if info is None or info.student != login:
                return self._refuse(request, 403, "ui_not_yours")
            return self._json(request, hub.session_lines(session))
        if path == "/me/events":
            return self._stream(request, Subscriber("student", write=request.write, student=login))
        request.setResponseCode(404)
        return b"not found\n"

    def tasks_for(self, login: str, lang: str) -> list[dict]:
        from gponsim.classroom.handout import task_values
        from gponsim.classroom.plan import fill

        student = self.hub.state.roster.student(login)
        values = task_values(student, self.hub.state.roster, self.lab_info)
        return [{"step": t.step, "title": t.title[lang], "do": reflow(fill(t.do[lang], values))}
                for t in self.hub.state.plan.tasks]

    # ------------------------------------------------------------------ replay

    def _replay_route(self, request, path: str, lang: str) -> bytes:
        runs = self.replays
        if runs is None:
            request.setResponseCode(404)
            return b"no runs to replay\n"
        if path == "/replay":
            return self._page(request, "replay.html", word("ui_replay_title", lang),
                              {"runs": runs.names(), "run": self._arg(request, "run")}, lang)
        if path == "/replay/runs.json":
            return self._json(request, runs.names())
        name = self._arg(request, "run")
        if path == "/replay/run.json":
            found = runs.load(name)
            if found is None:
                return self._json(request, {"error": word("ui_no_run", lang, run=name)}, 404)
            return self._json(request, found)
        if path == "/replay/packet.json":
            number = self._arg(request, "n")
            if not number.isdigit():
                return self._json(request, {"error": "n: a packet number"}, 400)
            found, code = runs.packet(name, int(number), lang)
            return self._json(request, found, code)
        request.setResponseCode(404)
        return b"not found\n"


def reflow(text: str) -> str:
    """A task's text as the page wraps it: paragraphs kept, the file's line breaks not."""
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


def site(web: ClassWeb) -> server.Site:
    factory = server.Site(web)
    factory.noisy = False
    factory.log = lambda request: None
    return factory


def teacher_url(host: str, port: int, token: str) -> str:
    return f"http://{_host(host)}:{port}/teacher?token={quote(token)}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
