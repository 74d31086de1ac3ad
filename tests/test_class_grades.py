"""`gponsim class start` with scripted students, and `gponsim grade` on the run: the
marks, the evidence lines, the accounts and the secrets (end to end, real clients)."""

from __future__ import annotations

import csv
import json
import stat
import subprocess
import sys

import pytest
from classproc import ClassProcess, run_together

pytestmark = pytest.mark.slow

CHECKS = ["certificate", "starttls-before-auth", "auth-ok", "queued", "delivered", "imap-login", "imap-fetch"]


@pytest.fixture(scope="module")
def finished_class(tmp_path_factory):
    """Three students: one right, one with the 535 mistake (a wrong password, never
    fixed), one with a 530 and a refused certificate before doing it right."""
    folder = tmp_path_factory.mktemp("class")
    cls = ClassProcess(folder / "run", students=3).start()
    try:
        results = run_together([cls.practice("student01", 1),
                                cls.practice("student02", 2, mistakes=("535-stuck",)),
                                cls.practice("student03", 3, mistakes=("530", "certificate"))])
    finally:
        code = cls.stop()
    assert code == 0, cls.stderr()
    return cls, results


def _csv(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_grade_csv_has_the_right_marks(finished_class):
    cls, results = finished_class
    assert results[0]["queued"] and results[1]["queued"] is None and results[2]["queued"]
    rows = {r["student"]: r for r in _csv(cls.out / "grades" / "grades.csv")}
    assert list(rows) == ["student01", "student02", "student03"]
    assert list(next(iter(rows.values())))[2:-2] == CHECKS
    assert all(rows["student01"][c] == "pass" for c in CHECKS)
    assert all(rows["student03"][c] == "pass" for c in CHECKS)
    wrong_password = rows["student02"]
    # The TLS and the login attempt inside it happened; nothing after the 535 did.
    assert {c: wrong_password[c] for c in CHECKS} == {
        "certificate": "pass", "starttls-before-auth": "pass", "auth-ok": "fail", "queued": "fail",
        "delivered": "fail", "imap-login": "pass", "imap-fetch": "fail"}
    assert (rows["student01"]["passed"], rows["student02"]["passed"]) == ("7", "3")


def test_the_json_holds_the_evidence_lines_and_the_mistakes(finished_class):
    cls, results = finished_class
    data = json.loads((cls.out / "grades" / "grades.json").read_text())
    by = {s["student"]["login"]: s for s in data["students"]}
    one = by["student01"]["checks"]
    assert one["auth-ok"]["evidence"] == "235 2.7.0 Authentication successful"
    queue_id = results[0]["queued"]
    assert one["queued"]["evidence"] == f"250 2.0.0 Ok: queued as {queue_id}"
    assert one["delivered"]["evidence"].startswith(f"{queue_id}: to=<student01b@gponlab.local>")
    assert "status=sent" in one["delivered"]["evidence"]
    assert one["imap-fetch"]["evidence"].startswith("* ") and "FETCH" in one["imap-fetch"]["evidence"]
    assert one["imap-fetch"]["account"] == "student01b"
    assert one["starttls-before-auth"]["evidence"] == "AUTH PLAIN ********"
    assert one["auth-ok"]["session"] == one["queued"]["session"] != one["imap-fetch"]["session"]
    # the 535 is student02's, with the hint they were given; the 530 and the refused
    # certificate (sessions with no login at all) are student03's, by their PC's address
    two, three = by["student02"], by["student03"]
    # (smtplib tries AUTH PLAIN, then AUTH LOGIN: two 535s; one hint)
    assert [m["code"] for m in two["mistakes"]] == ["535", "535"] and two["hints"] == ["535"]
    assert two["checks"]["auth-ok"]["passed"] is False and two["checks"]["auth-ok"]["evidence"] == ""
    codes = [m["code"] for m in three["mistakes"]]
    assert "530" in codes and "certificate" in codes and "535" not in codes
    assert set(three["hints"]) == {"530", "certificate"}
    assert by["student01"]["mistakes"] == [] and by["student01"]["hints"] == []


def test_grade_again_from_the_recorded_run_gives_the_same(finished_class, tmp_path):
    cls, _ = finished_class
    out = subprocess.run([sys.executable, "-m", "gponsim", "grade", str(cls.out), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "grades.csv").read_text() == (cls.out / "grades" / "grades.csv").read_text()
    assert "student02      3/7   42.9%" in out.stdout


def test_accounts_are_private_and_passwords_appear_nowhere_else(finished_class):
    cls, _ = finished_class
    roster = cls.roster()
    assert len(roster.passwords) == 6          # student01, student01b, ...
    accounts = cls.out / "accounts.csv"
    assert stat.S_IMODE(accounts.stat().st_mode) == 0o600
    assert stat.S_IMODE((cls.out / "handouts").stat().st_mode) == 0o700
    sheet = (cls.out / "handouts" / "student02.es.html").read_text()
    assert roster.passwords["student02"] in sheet and roster.passwords["student02b"] in sheet
    assert roster.passwords["student01"] not in sheet
    for path in cls.out.rglob("*"):
        if not path.is_file() or path == accounts or path.parent.name == "handouts":
            continue
        data = path.read_bytes()
        for password in roster.passwords.values():
            assert password.encode() not in data, f"a password is in {path}"
    # the lab knows them (hashed) and the default users are still there
    users = (cls.out / "gponlab" / "etc" / "dovecot" / "users").read_text()
    assert "student03b:{BLF-CRYPT}$2y$" in users and "user1:" in users


@pytest.mark.root("capturing the loopback interface needs root or CAP_NET_RAW")
def test_grades_from_a_capture_with_its_keys(lab_factory, tmp_path):
    """What students hand in from the real server: a capture (TLS secrets embedded) and a
    roster. Sessions are named by the credentials the analyzer decrypts; a certificate
    refused (a hang-up after the server's Certificate) is no evidence of accepting it."""
    from gponsim.classroom.practice import Account, Practice
    from gponsim.server.dovecot.passwd import Users

    root = tmp_path / "lab"
    Users.ensure_default(root / "etc" / "dovecot" / "users").add("user3", "pass3")
    lab = lab_factory("lab", extra=["--capture", str(tmp_path / "lab.pcapng"),
                                    "--keylog", str(tmp_path / "keys.log")]).start()
    one = Practice(host="127.0.0.1", ports=lab.ports, sender=Account("user1", "pass"),
                   reader=Account("user1", "pass"), send_to="user2@gponlab.local", source="127.0.0.21")
    two = Practice(host="127.0.0.1", ports=lab.ports, sender=Account("user2", "pass"),
                   reader=Account("user2", "pass"), send_to="user1@gponlab.local", source="127.0.0.22")
    three = Practice(host="127.0.0.1", ports=lab.ports, sender=Account("user3", "pass3"),
                     reader=Account("user3", "pass3"), send_to="user3@gponlab.local", source="127.0.0.23")
    one.refuse_certificate()
    assert one.send("pass")
    assert two.read("pass", want=1) == 1
    three.refuse_certificate()
    lab.stop()
    capture = tmp_path / "lab.pcapng"
    assert capture.exists(), lab.stderr()
    roster = tmp_path / "roster.csv"
    roster.write_text("login,partner\nuser1,user2\nuser2,user1\nuser3,\n")
    ports = [f"--port={name}={port}" for name, port in lab.ports.items() if name != "gmail"]
    out = subprocess.run([sys.executable, "-m", "gponsim", "grade", "--capture", str(capture),
                          "--roster", str(roster), "--out", str(tmp_path / "grades"), *ports],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {r["student"]: r for r in _csv(tmp_path / "grades" / "grades.csv")}
    assert {c: rows["user1"][c] for c in CHECKS} == {
        "certificate": "pass", "starttls-before-auth": "pass", "auth-ok": "pass", "queued": "pass",
        "delivered": "pass", "imap-login": "fail", "imap-fetch": "fail"}
    assert {c: rows["user2"][c] for c in CHECKS} == {
        "certificate": "pass", "starttls-before-auth": "fail", "auth-ok": "fail", "queued": "fail",
        "delivered": "fail", "imap-login": "pass", "imap-fetch": "pass"}
    assert all(rows["user3"][c] == "fail" for c in CHECKS)
    data = json.loads((tmp_path / "grades" / "grades.json").read_text())
    user1 = next(s for s in data["students"] if s["student"]["login"] == "user1")["checks"]
    # no queue in a capture: the message is delivered when its recipient downloaded it
    assert user1["delivered"]["account"] == "user2" and "FETCH" in user1["delivered"]["evidence"]
    assert user1["certificate"]["evidence"] == "Certificate: CN=mail.gponlab.local"
    assert user1["certificate"]["detail"].startswith("submission 127.0.0.21: ehlo")


def test_partners_from_a_roster_write_to_each_other(tmp_path):
    """A roster with partners: ana writes to luis and reads what luis wrote to her, and
    the other way round; each one's marks come from both sessions, nobody else's."""
    roster = tmp_path / "class.csv"
    roster.write_text("login,name,partner,email\nana,Ana Pérez,luis,ana@uni.es\nluis,Luis Gil,,luis@uni.es\n",
                      encoding="utf-8")
    cls = ClassProcess(tmp_path / "run", students=None, roster=roster).start()
    try:
        ana, luis = cls.practice("ana", 1), cls.practice("luis", 2)
        assert (ana.send_to, ana.reader.user) == ("luis@gponlab.local", "ana")
        assert ana.send(ana.sender.password) and luis.send(luis.sender.password)
        assert ana.read(ana.reader.password, want=1) == 1
        # luis reads too early, before... no: luis's mailbox has ana's message already
        assert luis.read(luis.reader.password, want=1) == 1
    finally:
        assert cls.stop() == 0, cls.stderr()
    rows = {r["student"]: r for r in _csv(cls.out / "grades" / "grades.csv")}
    assert rows["ana"]["name"] == "Ana Pérez"
    assert all(rows[s][c] == "pass" for s in ("ana", "luis") for c in CHECKS)
    data = json.loads((cls.out / "grades" / "grades.json").read_text())
    ana_checks = next(s for s in data["students"] if s["student"]["login"] == "ana")["checks"]
    assert ana_checks["delivered"]["evidence"].split(": ", 1)[1].startswith("to=<luis@gponlab.local>")
    assert ana_checks["imap-fetch"]["account"] == "ana"
    assert ana_checks["imap-fetch"]["detail"] == "Hola, soy luis"       # luis's message, read by ana
    moodle = (cls.out / "grades" / "moodle.csv").read_text(encoding="utf-8").splitlines()
    assert moodle[1].startswith("ana,ana@uni.es,,100.0,")


@pytest.mark.skipif(__import__("shutil").which("chromium") is None or __import__("shutil").which("pdftotext") is None,
                    reason="needs chromium and pdftotext (poppler-utils)")
def test_handouts_print_to_pdf_with_the_students_own_data(finished_class, tmp_path):
    from gponsim.classroom.handout import print_pdf

    cls, _ = finished_class
    roster = cls.roster()
    pdf = print_pdf(cls.out / "handouts" / "all.es.html", tmp_path / "all.es.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    pages = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                           check=True).stdout.split("\f")
    pages = [p for p in pages if p.strip()]
    assert len(pages) == 3                                       # one sheet per student
    second = pages[1]
    assert "student02" in second and roster.passwords["student02"] in second
    assert roster.passwords["student02b"] in second and roster.passwords["student01"] not in second
    assert f"{cls.ports['submission']}" in second and "STARTTLS" in second
    assert "Huella SHA-256" in second
    fingerprint = json.loads((cls.out / "class.json").read_text())
    assert "student02b@gponlab.local" in second and fingerprint["lesson"] == "thunderbird"


def test_a_class_started_again_goes_on_with_the_same_accounts(tmp_path):
    first = ClassProcess(tmp_path / "run", students=2).start()
    passwords = first.roster().passwords
    two = first.practice("student02", 2)
    assert two.send(passwords["student02"])                  # done in the first part of the class
    assert first.stop() == 0
    again = ClassProcess(tmp_path / "run", students=5).start()
    try:
        assert again.roster().passwords == passwords
        assert "goes on with its 2 students" in again.stderr()
        one = again.practice("student01", 1)
        assert one.send(passwords["student01"])              # the old password still works
    finally:
        assert again.stop() == 0
    rows = _csv(again.out / "grades" / "grades.csv")
    assert [r["student"] for r in rows] == ["student01", "student02"]
    assert rows[0]["queued"] == "pass" and rows[1]["queued"] == "pass"     # both parts count
    assert rows[1]["delivered"] == "pass" and rows[1]["imap-fetch"] == "fail"


def test_pop3_retrieval_and_auth_in_clear_as_evidence(lab, tmp_path):
    """Evidence kinds the Thunderbird lesson does not use: ``retrieved`` (POP3 RETR of the
    message written to the reader) and ``auth_in_tls`` failing for good when a password
    went out in clear (POP3 on the server's own address, where Dovecot allows it)."""
    import poplib
    import smtplib

    from gponsim.classroom.grading import grade_steps
    from gponsim.classroom.plan import ClassPlan, Evidence, load_plan
    from gponsim.classroom.roster import Roster, Student
    from gponsim.lessons.model import find_lesson

    context = ssl_context()
    smtp = smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=20)
    smtp.starttls(context=context)
    smtp.login("user1", "pass")
    smtp.sendmail("user1@gponlab.local", ["user2@gponlab.local"], b"Subject: por POP3\r\n\r\nhola\r\n")
    smtp.quit()
    wait_for_mail(lab, "user2")
    clear = poplib.POP3("127.0.0.1", lab.ports["pop3"], timeout=20)      # no STLS: in clear
    clear.user("user2")
    clear.pass_("pass")
    clear.retr(1)
    clear.quit()
    thunderbird = load_plan(find_lesson("thunderbird"))
    plan = ClassPlan(thunderbird.lesson, thunderbird.tasks, [
        Evidence(id="pop3-retr", task="receive", kind="retrieved", title={"es": "RETR", "en": "RETR"}),
        Evidence(id="pop3-tls", task="receive", kind="auth_in_tls", service="pop3",
                 title={"es": "POP3 con TLS", "en": "POP3 with TLS"})])
    roster = Roster([Student("user1", partner="user2"), Student("user2", partner="user1")])
    grades = grade_steps(lab.steps(), roster, plan, ports=lab.ports)
    two = grades.state.progress["user2"].marks
    assert two["pop3-retr"].passed is True and two["pop3-retr"].line.startswith("+OK")
    assert two["pop3-retr"].detail == "por POP3" and two["pop3-retr"].account == "user2"
    assert two["pop3-tls"].passed is False and two["pop3-tls"].line == "PASS ********"
    assert grades.state.progress["user1"].marks["pop3-retr"].passed is None


def ssl_context():
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wait_for_mail(lab, user: str) -> None:
    from labproc import wait_until

    wait_until(lambda: lab.mbox(user), 15, f"mail for {user}")


@pytest.mark.parametrize("args, code, message", [
    (["class", "start"], 2, "who is in the class: --students N, or --roster FILE.csv"),
    (["class", "start", "--students", "2", "--lesson", "mbox"], 1, "has no [class] table"),
    (["class", "start", "--roster", "{roster}"], 1, "r.csv:3: invalid user name 'ana maria'"),
    (["class", "start", "--students", "2", "--roster", "{roster}"], 2, "--students or --roster, not both"),
    (["grade", "{tmp}"], 1, "is not a class run: accounts.csv is missing"),
    (["grade"], 2, "give a class run folder, or --capture FILE"),
    (["class", "replay", "{tmp}/nothing.jsonl"], 1, "nothing.jsonl: no such file or folder"),
    (["class", "replay", "{roster}"], 1, "r.csv: neither a run's folder, a steps.jsonl nor a capture"),
])
def test_class_mistakes_are_told_plainly(tmp_path, args, code, message):
    roster = tmp_path / "r.csv"
    roster.write_text("login\nana\nAna Maria\n")
    argv = [a.format(roster=roster, tmp=tmp_path) for a in args]
    if argv[:2] == ["class", "start"]:
        argv += ["--out", str(tmp_path / "run"), "--web-port", "0", "--port", "smtp=0", "--port", "submission=0",
                 "--port", "imap=0", "--port", "imaps=0", "--port", "pop3=0", "--port", "pop3s=0",
                 "--port", "autoconfig=0"]
    done = subprocess.run([sys.executable, "-m", "gponsim", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_class_that_could_not_start_is_not_resumed_next_time(tmp_path):
    """--listen on an address this computer does not have: the lab cannot start; the folder
    that start made is gone, so the same --out starts a new class (no "resumed")."""
    ports = ["--web-port", "0"] + [a for s in ("smtp", "submission", "imap", "imaps", "pop3", "pop3s",
                                              "autoconfig") for a in ("--port", f"{s}=0")]
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "gponsim", "class", "start", "--students", "2",
                           "--listen", "10.9.9.9", "--out", str(out), *ports],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "10.9.9.9" in done.stderr
    assert not out.exists()
    again = ClassProcess(out, students=2).start()
    try:
        assert "resumed" not in again.stderr() and "goes on with" not in again.stderr()
    finally:
        assert again.stop() == 0
