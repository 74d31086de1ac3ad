"""What a lesson shows on a terminal: wrapped to its width, title first, the lab's
start-up folded, each explanation once, step mode that holds the lab's events, a quiz
that re-asks and grades (driven through a pseudo-terminal, as a student types)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from rich.cells import cell_len
from rich.console import Console

from gponsim.commentary import catalog
from gponsim.sinks.narrator import Narrator
from gponsim.steps import Step, read_jsonl

ANSI = __import__("re").compile(r"\x1b\[[0-9;]*m")


def run(*args, cwd, columns=100, timeout=180):
    return subprocess.run([sys.executable, "-m", "gponsim", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "COLUMNS": str(columns)})


def _step(line, **kw) -> Step:
    base = dict(t=1_700_000_000.0, session="submission-1", proto="smtp", src="client", dst="smtpd",
                dir="c2s", kind="command", line=line, verb=line.split()[0])
    base.update(kw)
    return Step(**base)


# ---------------------------------------------------------------- the narrator alone

@pytest.mark.parametrize("compact", [False, True])
def test_narrator_wraps_every_line_to_the_width(compact):
    out = io.StringIO()
    narrator = Narrator(Console(file=out, width=60), lang="en", compact=compact)
    long = "MAIL FROM:<" + "a" * 30 + "@example.org> " + " ".join(f"X{i}=value{i}" for i in range(20))
    narrator.step(_step(long))
    narrator.step(_step("EHLO " + "ñandú." * 30, session="submission-2"))
    narrator.step(_step("250-mail\n250-" + "PIPELINING " * 12 + "\n250 CHUNKING", dir="s2c", kind="reply",
                        src="smtpd", dst="client", verb="EHLO", code=250))
    narrator.flush()
    text = out.getvalue()
    lines = text.splitlines()
    assert all(cell_len(line) <= 60 for line in lines), [(cell_len(x), x) for x in lines if cell_len(x) > 60]
    # Nothing lost: the words come back in order.
    flat = " ".join(text.split())
    assert "X19=value19" in flat and "250 CHUNKING" in flat
    assert ANSI.search(text) is None               # not a terminal: no colour codes
    assert sum(1 for line in lines if "↳" in line) == 3   # MAIL, EHLO and the EHLO reply explained


def test_narrator_explains_once_per_run_or_per_session():
    steps = [_step("EHLO a", session=f"submission-{n}") for n in range(3)]
    for mode, shown in (("first", 1), ("session", 3), ("all", 3), ("none", 0)):
        out = io.StringIO()
        narrator = Narrator(Console(file=out, width=100), explain=mode)
        for s in steps:
            narrator.step(s)
        narrator.flush()
        assert out.getvalue().count("↳") == shown, mode


def test_explanations_chosen_by_the_line_come_once_each():
    """EHLO replies get different explanations by their text (before TLS: STARTTLS offered;
    after: AUTH offered): each is given once, however many sessions show it."""
    def reply(session, keywords):
        return _step("250-mail.gponlab.local\n" + "\n".join(f"250-{k}" for k in keywords) + "\n250 CHUNKING",
                     session=session, dir="s2c", kind="reply", src="smtpd", dst="client", verb="EHLO", code=250)
    steps = [reply(f"submission-{n}", ["PIPELINING", "STARTTLS"]) for n in range(3)]
    steps += [reply(f"submission-{n}", ["PIPELINING", "AUTH PLAIN LOGIN"]) for n in range(3)]
    out = io.StringIO()
    narrator = Narrator(Console(file=out, width=100))
    for s in steps:
        narrator.step(s)
    narrator.flush()
    arrows = [line.split("↳")[1] for line in out.getvalue().splitlines() if "↳" in line]
    assert len(arrows) == 2 and arrows[0] != arrows[1], arrows
    # Offline (batches, as `gponsim analyze` does) it says the same.
    batch = io.StringIO()
    narrator = Narrator(Console(file=batch, width=100), stream=batch, flush_each=False)
    for s in steps:
        narrator.step(s)
    narrator.flush()
    assert batch.getvalue() == out.getvalue()


def test_narrator_keeps_rich_colours_on_a_terminal():
    out = io.StringIO()
    narrator = Narrator(Console(file=out, width=100, force_terminal=True, color_system="standard"))
    narrator.step(_step("EHLO a"))
    narrator.flush()
    assert "\x1b[1;36mclient → smtpd\x1b[0m" in out.getvalue()     # rich's bold cyan
    assert "\x1b[36mEHLO a\x1b[0m" in out.getvalue()


# ---------------------------------------------------------------- a whole lesson

@pytest.mark.slow
@pytest.mark.parametrize("lesson, lang", [("sasl", "en"), ("send-mail", "es")])
def test_a_lesson_reads_like_a_tutorial(lesson, lang, tmp_path):
    out = tmp_path / "run"
    result = run("lesson", lesson, "--lang", lang, "--out", str(out), cwd=tmp_path, columns=100)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    too_wide = [(cell_len(x), x) for x in lines if cell_len(x) > 100]
    assert not too_wide, too_wide
    from gponsim.lessons.model import find_lesson

    les = find_lesson(lesson)
    assert lines[0].strip() == les.title[lang]                       # the title comes first
    step1 = next(i for i, x in enumerate(lines) if ("Paso 1 de" if lang == "es" else "Step 1 of") in x)
    before = "\n".join(lines[:step1])
    assert ("El laboratorio está listo" if lang == "es" else "The lab is ready") in before
    assert "␉" not in before and "relayhost" in before                # folded into one line
    # Each explanation once in the whole lesson, though several sessions meet it.
    arrows = [x.split("↳", 1)[1].strip() for x in lines if "↳" in x]
    assert arrows and len(arrows) == len(set(arrows)), [a for a in arrows if arrows.count(a) > 1]
    # (an explanation is an entry: some keys have several, chosen by the line's text)
    entries = {(e.key, e.match) for s in read_jsonl(out / "steps.jsonl") if (e := catalog().resolve(s))}
    assert len(arrows) <= len(entries)


@pytest.mark.slow
def test_sasl_lesson_replays_the_startup_handshake_in_its_step(tmp_path):
    result = run("lesson", "sasl", "--lang", "en", "--out", str(tmp_path / "run"), cwd=tmp_path)
    text = result.stdout
    step1 = text.index("Step 1 of")
    assert text.index("VERSION ␉ 1 ␉ 0") > step1 and "MECH ␉ PLAIN" in text[step1:]


# ---------------------------------------------------------------- a pseudo-terminal

class Terminal:
    """A command on a pseudo-terminal: what it printed so far, and keys to type."""

    def __init__(self, argv, cwd, columns=100):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:                       # the child: the lesson, as on a student's terminal
            os.chdir(cwd)
            os.environ.update(COLUMNS=str(columns), LINES="50", TERM="xterm")
            os.execv(sys.executable, [sys.executable, "-m", "gponsim", *argv])
        self.seen = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.seen.decode("utf-8", "replace")).replace("\r", "")

    def read(self, wait: float) -> None:
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.seen += chunk

    def wait_for(self, words: str, count: int = 1, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while self.text.count(words) < count:
            if time.monotonic() > end:
                raise AssertionError(f"{words!r} not printed ({count}); so far:\n{self.text[-3000:]}")
            self.read(0.2)

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def exit_code(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.read(0.1)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        raise AssertionError("the lesson did not end:\n" + self.text[-3000:])


@pytest.mark.slow
def test_step_mode_holds_the_labs_events_until_the_next_step(tmp_path):
    out = tmp_path / "run"
    term = Terminal(["lesson", "send-mail", "--pace", "step", "--lang", "en", "--out", str(out)], tmp_path)
    term.wait_for("Press Enter")                     # after step 1
    term.type("\n")
    term.wait_for("Press Enter", 2)                  # after step 2: the mail was sent
    log = out / "gponlab" / "var" / "log" / "mail.log"
    deadline = time.monotonic() + 15
    while "status=sent" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the lab did not deliver"
        time.sleep(0.1)
    term.read(1.0)                                   # the lab delivered while the student reads...
    assert "status=sent" not in term.text            # ...and the terminal has not shown it
    assert term.text.rstrip().endswith("Press Enter to go on…")
    term.type("\n")
    term.wait_for("status=sent")
    assert term.text.index("Step 3 of 5") < term.text.index("status=sent")   # explanation first
    for n in (3, 4):
        term.wait_for("Press Enter", n)
        term.type("\n")
    assert term.exit_code() == 0, term.text[-3000:]


QUIZ_LESSON = '''
id = "tiny-quiz"
section = "Práctica"
[title]
es = "Un cuestionario"
en = "A quiz"
[objectives]
es = ["Contestar"]
en = ["Answer"]
[[steps]]
id = "look"
[steps.say]
es = "Mira el registro."
en = "Look at the log."
[[steps.actions]]
do = "show"
file = "var/log/mail.log"
tail = 1
[[quiz]]
answer = 2
question = { es = "¿Puerto de submission?", en = "The submission port?" }
choices = { es = ["25", "587", "110"], en = ["25", "587", "110"] }
explain = { es = "587 (RFC 6409).", en = "587 (RFC 6409)." }
[[quiz]]
answer = 1
question = { es = "¿Quién comprueba las contraseñas?", en = "Who checks passwords?" }
choices = { es = ["Dovecot", "Postfix"], en = ["Dovecot", "Postfix"] }
explain = { es = "Dovecot, por el socket.", en = "Dovecot, over the socket." }
'''


@pytest.mark.slow
@pytest.mark.parametrize("answers, code, right", [(["abc", "9", "2", "1"], 0, 2), (["2", "2"], 1, 1)])
def test_quiz_reasks_grades_and_records(tmp_path, answers, code, right):
    lesson = tmp_path / "tiny.toml"
    lesson.write_text(QUIZ_LESSON, encoding="utf-8")
    out = tmp_path / "run"
    term = Terminal(["lesson", "run", str(lesson), "--lang", "en", "--out", str(out), "--student", "Ana Pérez",
                     "--min-score", "75"], tmp_path)
    for n, answer in enumerate(answers, 1):
        term.wait_for("Your answer (1-", n)
        term.type(answer + "\n")
    assert term.exit_code() == code, term.text[-3000:]
    text = term.text
    if "abc" in answers:
        assert "'abc' is not one of the choices: type a number from 1 to 3." in text
        assert "'9' is not one of the choices" in text
    assert f"Quiz score: {right} of 2" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["student"] == "Ana Pérez"
    quiz = summary["quiz"]
    assert quiz["graded"] and quiz["right"] == right and quiz["total"] == 2 and quiz["min_score"] == 75
    assert quiz["percent"] == right * 50 and quiz["passed"] is (code == 0) and summary["passed"] is (code == 0)
    assert summary["checkpoints_passed"] is True
    typed = [a["typed"] for a in quiz["answers"]]
    assert typed[0] == answers[:len(answers) - 1] and typed[1] == answers[-1:]
    assert [a["given"] for a in quiz["answers"]] == [int(answers[-2]), int(answers[-1])]
    assert summary["shown"]["look"][0]["file"].startswith("shown/")


@pytest.mark.slow          # runs `gponsim` as a process
def test_min_score_without_a_terminal_cannot_pass(tmp_path):
    lesson = tmp_path / "tiny.toml"
    lesson.write_text(QUIZ_LESSON, encoding="utf-8")
    result = run("lesson", "run", str(lesson), "--lang", "es", "--quiet", "--out", str(tmp_path / "o"),
                 "--min-score", "10", cwd=tmp_path)
    assert result.returncode == 1
    assert "Sin terminal no se pueden hacer las preguntas" in result.stdout
    quiz = json.loads((tmp_path / "o" / "summary.json").read_text())["quiz"]
    assert quiz["graded"] is False and quiz["passed"] is False and quiz["answers"][0]["given"] is None


# ---------------------------------------------------------------- Ctrl-C

@pytest.mark.slow
def test_ctrl_c_stops_the_lesson_without_grading_what_is_left(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gponsim", "lesson", "troubleshooting", "--lang", "en",
                             "--out", str(out)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "100", "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in proc.stdout:                         # Ctrl-C as soon as step 2 begins
        seen.append(line)
        if "Step 2 of 5" in line:
            proc.send_signal(__import__("signal").SIGINT)
            break
    rest, _ = proc.communicate(timeout=30)
    text = "".join(seen) + rest
    assert proc.returncode == 130, text[-3000:]
    assert "Lesson interrupted" in text
    # Nothing after it ran against the stopped lab, and nothing was graded as if it had.
    assert "Connection refused" not in text and "Step 3 of 5" not in text
    assert "checkpoints passed" not in text and "✘" not in text, text[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] == "bad-password" and summary["passed"] is False
    assert {c["step"] for c in summary["checkpoints"]} <= {"no-tls", "bad-password"}


@pytest.mark.slow
def test_ctrl_c_during_the_quiz_ends_at_once(tmp_path):
    lesson = tmp_path / "tiny.toml"
    lesson.write_text(QUIZ_LESSON, encoding="utf-8")
    out = tmp_path / "run"
    term = Terminal(["lesson", "run", str(lesson), "--lang", "es", "--out", str(out), "--quiz"], tmp_path)
    term.wait_for("Tu respuesta (1-")
    started = time.monotonic()
    os.kill(term.pid, __import__("signal").SIGINT)   # the lesson's thread is blocked in input()
    assert term.exit_code(timeout=20) == 130, term.text[-3000:]
    assert time.monotonic() - started < 5
    assert "Lección interrumpida" in term.text
    assert json.loads((out / "summary.json").read_text())["interrupted"] == "quiz"


# ---------------------------------------------------------------- order within a step

def test_a_waiting_delivery_does_not_hold_back_the_clients_session():
    from gponsim.lessons.runner import DELIVERY_PROTOS
    from gponsim.sinks.lesson import LessonView

    out = io.StringIO()
    view = LessonView(Console(file=out, width=100), lang="en", explain="none")
    view.started()
    view.defer(DELIVERY_PROTOS)                      # the step that sends; a later one delivers
    view.print("STEP 2")
    reply = dict(dir="s2c", kind="reply", src="smtpd", dst="client")
    view.step(_step("RCPT TO:<user2@gponlab.local>"))
    view.step(_step("4F17E: client=localhost[127.0.0.1]", proto="queue", src="smtpd", dst="cleanup",
                    kind="event", verb="client"))
    view.step(_step("250 2.1.5 Ok", verb="RCPT", code=250, **reply))
    view.step(_step("DATA"))
    view.step(_step("250 2.0.0 Ok: queued as 4F17E", verb="DATA", code=250, **reply))
    view.print("CHECKPOINT queued as")
    view.hold()
    view.step(_step("QUIT"))                         # while the student reads
    view.defer(())
    view.print("STEP 3")
    view.release()
    view.close()
    text = out.getvalue()
    order = ["STEP 2", "RCPT TO", "250 2.1.5 Ok", "DATA", "queued as 4F17E", "CHECKPOINT", "STEP 3",
             "client=localhost", "QUIT"]
    at = [text.find(x) for x in order]
    assert -1 not in at and at == sorted(at), list(zip(order, at))


@pytest.mark.slow
def test_send_mail_shows_the_clients_session_whole_inside_its_step(tmp_path):
    result = run("lesson", "send-mail", "--lang", "en", "--explain", "none", "--out", str(tmp_path / "r"),
                 cwd=tmp_path, columns=140)
    assert result.returncode == 0, result.stdout[-3000:]
    text = result.stdout
    step2, step3 = text.index("Step 2 of 5"), text.index("Step 3 of 5")
    session = ["RCPT TO:<user2@gponlab.local>", "250 2.1.5 Ok", "DATA", "354 End data",
               "250 2.0.0 Ok: queued as", "QUIT", "221 2.0.0 Bye"]
    at = [text.index(session[0], step2)]
    for line in session[1:]:                        # one after another, all before step 3
        at.append(text.index(line, at[-1]))
    assert at[-1] < step3, list(zip(session, at))
    # each checkpoint after the lines it checks
    assert at[4] < text.index("✔ The server answered '250 2.0.0 Ok: queued as") < step3
    # the queue's lines wait for the step that explains them
    assert text.index("client=localhost", step2) > step3
