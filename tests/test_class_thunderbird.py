"""The Thunderbird practice in a class, with a real Thunderbird as one of the students:
its accounts from the class lab's autoconfig (its own addresses), the certificate
accepted, a message to its receiver account, read in Thunderbird; the student's own
lesson moves on, the grades say so, with Thunderbird's own lines as evidence."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request

from classproc import ClassProcess
from labproc import wait_until
from thunderbird_driver import Profile, Thunderbird, remote_loopback, thunderbird_marks

pytestmark = thunderbird_marks()


def test_a_class_with_a_real_thunderbird_as_a_student(tmp_path):
    host = remote_loopback()              # the lab on 127.0.0.2, Thunderbird from 127.0.0.1
    cls = ClassProcess(tmp_path / "run", students=2, extra=["--listen", host]).start()
    tb = Thunderbird(Profile(tmp_path / "tb-profile"), tmp_path / "tb", prompts="ignore")
    started = time.monotonic()

    def phase(what: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {what}")

    def state() -> dict:
        request = urllib.request.Request(f"{cls.base}/teacher/state.json",
                                         headers={"Authorization": f"Bearer {cls.token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return {s["student"]["login"]: s for s in json.loads(reply.read())["students"]}
    try:
        roster = cls.roster()
        me = roster.student("student02")
        tb.start(timeout=90)
        phase("Thunderbird up")
        ports = cls.ports
        url = f"http://{host}:{ports['autoconfig']}/mail/config-v1.1.xml"
        pem = ssl.get_server_certificate((host, ports["imaps"]))
        # the student checked the fingerprint on their handout and accepted the exception
        tb.trust(host, [ports["imap"], ports["imaps"], ports["submission"]], pem, [])
        sender = tb.create_account(url, "student02@gponlab.local", "Estudiante Dos",
                                   roster.passwords["student02"])
        reader = tb.create_account(url, "student02b@gponlab.local", "Estudiante Dos (b)",
                                   roster.passwords["student02b"])
        assert sender["incoming"]["username"] == "student02" and reader["incoming"]["username"] == "student02b"
        assert sender["outgoing"]["port"] == ports["submission"]
        phase("both accounts from the class lab's autoconfig")
        assert state()["student02"]["marks"]["autoconfig"]["passed"] is True
        assert tb.send("student02@gponlab.local", "student02b@gponlab.local", "Hola desde Thunderbird",
                       "Práctica de student02.\r\n")
        phase("Thunderbird sent the message")
        wait_until(lambda: state()["student02"]["marks"]["delivered"]["passed"], 30, "the delivery")
        tb.check_inbox("student02b@gponlab.local")
        wait_until(lambda: "Hola desde Thunderbird" in (tb.inbox_subjects("student02b@gponlab.local") or []),
                   60, "the message in Thunderbird's INBOX")
        wait_until(lambda: state()["student02"]["done"], 30, "student02's lesson to be done")
        phase("student02 is done on the dashboard")
        assert state()["student01"]["first_seen"] == 0      # nothing moved the other student
    finally:
        tb.stop()
        code = cls.stop()
    assert code == 0, cls.stderr()
    data = json.loads((cls.out / "grades" / "grades.json").read_text())
    two = next(s for s in data["students"] if s["student"]["login"] == "student02")
    assert two["score"] == [7, 7], two["checks"]
    assert two["checks"]["imap-fetch"]["account"] == "student02b"
    assert "Hola desde Thunderbird" in two["checks"]["imap-fetch"]["detail"]
    mbox = (cls.out / "gponlab" / "var" / "mail" / me.reader).read_text()
    assert "User-Agent: Mozilla Thunderbird" in mbox
    one = next(s for s in data["students"] if s["student"]["login"] == "student01")
    assert one["score"][0] == 0
