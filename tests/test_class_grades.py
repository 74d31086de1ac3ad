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
