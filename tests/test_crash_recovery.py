"""A message acknowledged with 250 survives kill -9 and is delivered exactly once."""

from __future__ import annotations

import smtplib

import pytest

from labproc import LabProcess, wait_until

pytestmark = pytest.mark.slow          # end to end: `gponsim serve` killed and restarted


def test_kill9_after_250_then_restart_delivers_once(tmp_path):
    lab = LabProcess(tmp_path / "gponlab").start()
    spool = lab.root / "var" / "mail"
    # Hold user2's mailbox dotlock, as another delivery agent would: local
    # delivery must wait, so the message is only in the queue when we kill.
    spool.mkdir(parents=True, exist_ok=True)
    lock = spool / "user2.lock"
    lock.write_text("held by the test\n")
    with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=15) as c:
        c.ehlo("pc1")
        _, reply = c.docmd("MAIL FROM:<alice@example.org>")
        c.rcpt("user2@gponlab.local")
        code, reply = c.data(b"Subject: survive\r\n\r\nplease survive kill -9\r\n")
        assert code == 250
        qid = reply.decode().rsplit(" ", 1)[1]
        lab.kill9()
    assert not lab.mbox_path("user2").exists() or b"survive" not in lab.mbox_path("user2").read_bytes()
    queued = [p for p in (lab.root / "var/spool/postfix").rglob("*") if p.is_file() and qid in p.name]
    assert queued, "the acknowledged message must be in the queue on disk"

    lock.unlink()
    lab2 = LabProcess(tmp_path / "gponlab").start()
    try:
        msgs = lab2.wait_for_mail("user2")
        # Let the restarted queue finish, then check there is exactly one copy.
        wait_until(lambda: f"{qid}: removed" in lab2.log_text(), what=f"{qid} removed from the queue")
        msgs = lab2.mbox("user2")
        assert [m["Subject"] for m in msgs] == ["survive"]
        assert f"id {qid}" in msgs[0]["Received"]
    finally:
        lab2.stop()
