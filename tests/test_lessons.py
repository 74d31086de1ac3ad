"""Every lesson runs end to end in both languages; broken lessons and labs are reported clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gponsim.lessons.model import LESSONS_DIR, LessonError, lesson_files, load_lesson

LESSONS = [p.stem for p in lesson_files()]

from netlab import needs_network  # noqa: E402


def run(*args, cwd, timeout=180):
    return subprocess.run([sys.executable, "-m", "gponsim", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "COLUMNS": "120"})


def test_the_course_has_its_lessons():
    for wanted in ("send-mail", "receive-mail", "read-imap", "read-pop3", "sasl", "relay-denied",
                   "relay-gmail", "mbox", "troubleshooting", "tls", "thunderbird", "capture",
                   "lmtp"):
        assert wanted in LESSONS
    for path in lesson_files():
        lesson = load_lesson(path)
        assert lesson.id == path.stem
        assert lesson.steps and all(s.checks or s.actions for s in lesson.steps)


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["es", "en"])
@pytest.mark.parametrize("lesson", [pytest.param(name, marks=needs_network) if name == "network" else name
                                    for name in LESSONS])
def test_lesson_runs_and_every_checkpoint_passes(lesson, lang, lesson_runs):
    result, out = lesson_runs(lesson, lang)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and summary["checkpoints"]
    assert all(c["passed"] for c in summary["checkpoints"])
    for name in ("steps.jsonl", "transcript.txt", "mail.log", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    text = result.stdout
    assert ("comprobaciones superadas" if lang == "es" else "checkpoints passed") in text
    # Secrets never reach the artifacts.
    for name in ("steps.jsonl", "transcript.txt", "summary.json"):
        assert "AHVzZXIxAHBhc3M" not in (out / name).read_text(), name


@pytest.mark.slow
def test_tls_lesson_shows_the_greeting_before_the_certificate_panel(lesson_runs):
    """On port 993 Dovecot greets once the handshake is done: the lesson waits for that
    greeting, so it is told with its connection, before the certificate's panel."""
    result, _out = lesson_runs("tls", "en")
    text = result.stdout
    panel = text.index("The server's certificate (imaps")
    shake = text.rindex("TLS connection established: TLSv1.3", 0, panel)
    assert shake < text.rindex("Dovecot (Debian) ready.", 0, panel)


@pytest.mark.slow          # end to end: a lesson run by `gponsim`
def test_send_mail_leaves_the_promised_artifacts(tmp_path):
    result = run("lesson", "send-mail", "--lang", "es", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [out] = list((tmp_path / "captures").iterdir())       # the default output folder
    assert out.name.startswith("send-mail-")
    for name in ("architecture-observed.svg", "sequence-send.svg", "steps.jsonl", "summary.json"):
        assert (out / name).exists(), name
    assert "Subject: Hola desde la" in (out / "gponlab" / "var" / "mail" / "user2").read_text()


@pytest.mark.slow          # end to end: a lesson run by `gponsim`
def test_a_broken_lab_is_reported_as_failed_checkpoints(tmp_path):
    """Break the lab on purpose: gponlab.local is no longer a local domain."""
    text = (LESSONS_DIR / "send-mail.toml").read_text()
    text = text.replace('section = "Flujo de Envío de Correo"',
                        'section = "Flujo de Envío de Correo"\n\n[lab.main_cf]\n'
                        'mydestination = "localhost"\n', 1)
    broken = tmp_path / "broken.toml"
    broken.write_text(text)
    result = run("lesson", "run", str(broken), "--lang", "en", "--quiet", "--out", str(tmp_path / "o"),
                 cwd=tmp_path)
    assert result.returncode == 1
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert not summary["passed"]
    failed = [c["says"] for c in summary["checkpoints"] if not c["passed"]]
    assert "The message is in var/mail/user2." in failed
    assert "✘ The message is in var/mail/user2." in result.stdout
    assert any("wait_delivery" in e for e in summary["errors"])


@pytest.mark.parametrize("mutation, message", [
    (lambda t: t.replace('do = "diagram"', 'do = "teleport"', 1), "unknown action 'teleport'"),
    (lambda t: t.replace('en = "Sending a mail: from the client to the mailbox, step by step"\n', "", 1),
     "title needs both an 'es' and an 'en' text"),
    (lambda t: t.replace("[[steps]]", "[[steps]", 1), "not valid TOML"),
    (lambda t: t.replace('where = { proto = "smtp", kind = "reply", verb = "STARTTLS", code = 220 }',
                         'where = { protocol = "smtp" }', 1), "unknown Step fields"),
    (lambda t: t.replace("answer = 2", "answer = 7", 1), "quiz answer must be a choice number"),
])
@pytest.mark.slow          # end to end: a lesson run by `gponsim`
def test_malformed_lessons_name_file_and_line(tmp_path, mutation, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(mutation((LESSONS_DIR / "send-mail.toml").read_text()))
    with pytest.raises(LessonError) as err:
        load_lesson(bad)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{bad}:")
    result = run("lesson", "run", str(bad), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr


COURSE = ["send-mail", "receive-mail", "read-imap", "read-pop3", "sasl", "relay-gmail", "tls",
          "thunderbird", "capture", "relay-denied", "mbox", "troubleshooting", "lmtp", "packets",
          "network"]


@pytest.mark.slow          # end to end: `gponsim lesson list`
def test_lessons_come_in_the_course_order(tmp_path):
    """Each lesson's ``order`` places it in the course (the README's list), not the alphabet."""
    orders = [load_lesson(p).order for p in lesson_files()]
    assert all(orders) and len(set(orders)) == len(orders), orders
    assert LESSONS == COURSE
    result = run("lesson", "list", "--lang", "en", cwd=tmp_path)
    listed = [line.split()[1] for line in result.stdout.splitlines()]
    assert listed == COURSE
    assert result.stdout.splitlines()[0].startswith(" 1. send-mail ")
    # An instructor's lesson without an order comes after the numbered ones.
    (tmp_path / "b.toml").write_text((LESSONS_DIR / "mbox.toml").read_text().replace('id = "mbox"', 'id = "b"'))
    (tmp_path / "a.toml").write_text(
        (LESSONS_DIR / "mbox.toml").read_text().replace('id = "mbox"', 'id = "a"').replace("order = 11", ""))
    assert [p.stem for p in lesson_files(tmp_path)] == ["b", "a"]
    bad = (LESSONS_DIR / "mbox.toml").read_text().replace("order = 11", 'order = "first"')
    (tmp_path / "bad.toml").write_text(bad)
    with pytest.raises(LessonError, match="order must be a whole number"):
        load_lesson(tmp_path / "bad.toml")


@pytest.mark.slow          # end to end: a lesson run by `gponsim`
def test_lesson_list_and_unknown_lesson(tmp_path):
    result = run("lesson", "list", "--lang", "es", cwd=tmp_path)
    assert result.returncode == 0
    assert "send-mail" in result.stdout and "Enviar un correo" in result.stdout
    # The section is the lab document's own title (in Spanish), quoted as such in English too.
    assert "[documento del laboratorio: «Flujo de Envío de Correo»]" in result.stdout
    english = run("lesson", "list", "--lang", "en", cwd=tmp_path).stdout
    assert "[lab document: «Flujo de Envío de Correo»]" in english
    result = run("lesson", "no-such-lesson", cwd=tmp_path)
    assert result.returncode == 2 and "No such command 'no-such-lesson'" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("swaks") is None, reason="swaks (Debian package swaks) is not installed")
def test_interactive_mode_with_a_real_client_playing_the_student(tmp_path):
    from labproc import wait_until

    out = tmp_path / "run"
    lesson = subprocess.Popen([sys.executable, "-m", "gponsim", "lesson", "send-mail", "--interactive",
                               "--lang", "en", "--quiet", "--timeout", "60", "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    reader = __import__("threading").Thread(target=lambda: lines.extend(iter(lesson.stdout.readline, "")),
                                            daemon=True)
    reader.start()
    try:
        info = wait_until(lambda: (out / "lab.json").exists() and json.loads((out / "lab.json").read_text()),
                          timeout=30, what="the lesson's lab")
        port = str(info["ports"]["submission"])
        # A student acts when asked: wait for the lesson's instruction.
        wait_until(lambda: any("Now you, with your mail client" in line for line in lines), timeout=30,
                   what="the lesson to ask the student")
        swaks = ["swaks", "--server", "127.0.0.1", "--port", port, "--from", "user1@gponlab.local",
                 "--to", "user2@gponlab.local",
                 "--header", "Subject: Hello from the send-mail lesson"]
        # First the student's client gives up after EHLO: no AUTH is offered before STARTTLS.
        gave_up = subprocess.run(swaks + ["--quit-after", "EHLO"], capture_output=True, text=True, timeout=60)
        assert "250-STARTTLS" in gave_up.stdout and "AUTH" not in gave_up.stdout.split("<~")[0]
        wait_until(lambda: any("Hint: your client gave up after EHLO" in line for line in lines), timeout=30,
                   what="the hint for a client that saw no AUTH")
        # Then the student forgets STARTTLS: the server says 530 and the lesson gives a hint.
        first = subprocess.run(swaks + ["--auth-optional", "PLAIN", "--auth-user", "user1",
                                        "--auth-password", "pass"],
                               capture_output=True, text=True, timeout=60)
        assert "530 5.7.0 Must issue a STARTTLS command first" in first.stdout
        # Then a client that checks certificates refuses the lab's self-signed one.
        refused = subprocess.run(swaks + ["--tls", "--tls-verify", "--auth", "PLAIN", "--auth-user", "user1",
                                          "--auth-password", "pass"], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "220 2.0.0 Ready to start TLS" in refused.stdout, refused.stdout
        # Then the mail goes to port 25 (server to server) instead of the submission port.
        wrong_port = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(info["ports"]["smtp"]),
                                     "--from", "user1@gponlab.local", "--to", "user2@gponlab.local",
                                     "--header", "Subject: por el 25"], capture_output=True, text=True, timeout=60)
        assert wrong_port.returncode == 0, wrong_port.stdout
        wait_until(lambda: any("Hint: that message came in on port" in line for line in lines), timeout=30,
                   what="the port-25 hint")
        second = subprocess.run(swaks + ["--tls", "--auth", "PLAIN", "--auth-user", "user1",
                                         "--auth-password", "pass"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stdout
        lesson.wait(timeout=120)
        reader.join(10)
        stdout = "".join(lines)
    finally:
        if lesson.poll() is None:
            lesson.kill()
    assert lesson.returncode == 0, stdout[-4000:]
    assert "Now you, with your mail client (Thunderbird): as user1" in stdout
    assert f"Outgoing: SMTP  server 127.0.0.1  port {port}  STARTTLS" in stdout
    assert "Hint: the server wants STARTTLS (530)" in stdout
    assert "Hint: the client hung up without finishing the TLS handshake: it did not accept the certificate" in stdout
    assert f"port {info['ports']['smtp']} (smtp, server to server), not on the submission port ({port})" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"], summary
    # Every try of the student, and every hint, for the instructor.
    outcomes = [a["outcome"] for a in summary["attempts"]]
    assert outcomes[0] == "gave up after EHLO: no AUTH offered before STARTTLS", outcomes
    assert outcomes[1] == "530 5.7.0 Must issue a STARTTLS command first", outcomes
    assert outcomes[2] == "hung up in the TLS handshake (certificate not accepted)", outcomes
    assert outcomes[3].startswith("queued as ") and outcomes[-1].startswith("queued as "), outcomes
    assert [a["service"] for a in summary["attempts"]] == ["submission", "submission", "submission", "smtp",
                                                           "submission"]
    assert summary["attempts"][-1]["ok"] and not summary["attempts"][0]["ok"]
    assert [h["hint"] for h in summary["hints"]] == ["auth-after-starttls", "530", "certificate", "port25"]
    assert all(h["step"] == "submit" and h["text"].startswith("Hint:") for h in summary["hints"])


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("swaks") is None, reason="swaks (Debian package swaks) is not installed")
def test_interactive_thunderbird_lesson_with_settings_typed_by_hand(tmp_path):
    """A student whose Thunderbird cannot reach the autoconfig service types the settings by
    hand: the lesson notices the login, says so, and the autoconfig checkpoint is not checkable
    rather than failed. Played with swaks (sending) and imaplib (reading)."""
    import imaplib
    import re
    import ssl
    import threading

    from labproc import wait_until

    out = tmp_path / "run"
    lesson = subprocess.Popen([sys.executable, "-m", "gponsim", "lesson", "thunderbird", "--interactive",
                               "--lang", "en", "--quiet", "--timeout", "60", "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(lesson.stdout.readline, "")), daemon=True)
    reader.start()

    def printed(pattern: str):
        return wait_until(lambda: next((m for line in lines if (m := re.search(pattern, line))), None),
                          timeout=30, what=f"the lesson to print {pattern!r}")
    try:
        incoming = printed(r"Incoming: IMAP  server (\S+)  port (\d+)  STARTTLS")
        outgoing = printed(r"Outgoing: SMTP  server (\S+)  port (\d+)  STARTTLS")
        host, imap_port, smtp_port = incoming.group(1), int(incoming.group(2)), outgoing.group(2)
        swaks = ["swaks", "--server", host, "--port", smtp_port, "--tls", "--auth", "PLAIN",
                 "--auth-user", "user1", "--auth-password", "pass", "--from", "user1@gponlab.local"]
        # "Configure manually": the first login as user1 (here a test message to themselves).
        done = subprocess.run(swaks + ["--to", "user1@gponlab.local"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout
        printed(r"You typed the settings by hand")
        ask = printed(r"as user1, send a message to (\S+) \(subject: ([^)]+)\)")
        done = subprocess.run(swaks + ["--to", ask.group(1), "--header", f"Subject: {ask.group(2)}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout
        printed(r"Now you: in Thunderbird, as user2")
        client = imaplib.IMAP4(host, imap_port, timeout=15)
        client.starttls(ssl_context=ssl._create_unverified_context())
        client.login("user2", "pass")
        client.select("INBOX")
        client.uid("FETCH", "1:*", "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (From Subject)])")
        client.shutdown()           # the lesson (and its lab) may end as soon as it saw the FETCH
        lesson.wait(timeout=60)
        reader.join(10)
    finally:
        if lesson.poll() is None:
            lesson.kill()
    stdout = "".join(lines)
    assert lesson.returncode == 0, stdout[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    [autoconfig] = [c for c in summary["checkpoints"] if c["what"] == "autoconfig"]
    assert autoconfig["passed"] is None and autoconfig["detail"] == "the settings were typed by hand"
    assert all(c["passed"] for c in summary["checkpoints"] if c["what"] != "autoconfig"), summary


@pytest.mark.parametrize("replace, by, message, key", [
    ('as = "user1"', "as = 5", "step 'submit': send's 'as' must be a text, not 5", "as = 5"),
    ('as = "user1"', 'as = "user1"\nsize = "big"', "send's 'size' must be a whole number", 'size = "big"'),
    ('subject = { es = "Hola desde la lección send-mail", en = "Hello from the send-mail lesson" }',
     'subject = { es = "Hola" }', "send's 'subject' needs both an 'es' and an 'en' text", "subject = {"),
    ('subject = { es = "Hola desde la lección send-mail", en = "Hello from the send-mail lesson" }',
     "subject = 7", "send's 'subject' must be a text, or", "subject = 7"),
])
def test_an_action_option_of_the_wrong_type_is_named_with_its_line(tmp_path, replace, by, message, key):
    source = (LESSONS_DIR / "send-mail.toml").read_text()
    assert replace in source
    bad = tmp_path / "bad.toml"
    bad.write_text(source.replace(replace, by, 1))
    with pytest.raises(LessonError) as err:
        load_lesson(bad)
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if text.startswith(key))
    assert str(err.value).startswith(f"{bad}:{line}: ") and message in str(err.value), str(err.value)


def test_a_lessons_own_words_in_a_mail_follow_its_language():
    from gponsim.lessons.checks import evaluate
    from gponsim.lessons.model import Action, in_lang

    les = load_lesson(LESSONS_DIR / "tls.toml")
    sends = [a for s in les.steps for a in s.actions if a.do == "send"]
    assert [in_lang(a.options["subject"], "en") for a in sends] == ["Visible to everyone", "Only for user2"]
    assert [in_lang(a.options["subject"], "es") for a in sends] == ["Visible para todos", "Solo para user2"]
    assert in_lang("gponsim", "en") == "gponsim" and isinstance(Action("send", {}), Action)
    # A mailbox check wants the lesson's language; a capture check either (a recording has one).
    import mailbox as mb
    from pathlib import Path
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "var" / "mail").mkdir(parents=True)
        box = mb.mbox(str(root / "var" / "mail" / "user2"))
        box.add(b"From: a@b\nSubject: Visible para todos\n\nx\n")
        box.close()
        check = next(c for s in les.steps for c in s.checks if c.what == "capture" and not c.keys)
        mailbox_check = type(check)(what="mailbox", says=check.says, user="user2", contains=check.contains)
        assert evaluate(mailbox_check, [], root, lang="es").passed is True
        assert evaluate(mailbox_check, [], root, lang="en").passed is False


@pytest.mark.slow          # end to end: a lesson run by `gponsim`
def test_a_lessons_mails_are_in_its_language(tmp_path):
    out = tmp_path / "run"
    result = run("lesson", "mbox", "--lang", "en", "--quiet", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    box = (out / "gponlab" / "var" / "mail" / "user2").read_text()
    assert "Subject: Second" in box and "this line starts with From." in box
    assert "Segundo" not in box and "Hola" not in box and "esta línea" not in box
    assert "\n>From the lab with love" in box
