"""One process, one Step stream: `gponsim serve` with its defaults narrates each
event once, in the order it happened, in the terminal and in the --steps file."""

from __future__ import annotations

import re
import smtplib
import ssl
from collections import Counter

import pytest

from labproc import LabProcess, wait_until

pytestmark = pytest.mark.slow          # end to end: `gponsim serve`

HEAD = re.compile(r"^\d\d:\d\d:\d\d (\S+) ([\w-]+) → ([\w-]+)")


def test_one_submission_is_narrated_once_and_in_order(tmp_path):
    narration = tmp_path / "narration.txt"
    lab = LabProcess(tmp_path / "gponlab", narration=narration).start()
    try:
        with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
            c.ehlo("pc1")
            c.starttls(context=ssl._create_unverified_context())
            c.ehlo("pc1")
            c.login("user1", "pass")
            c.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                       b"Subject: once\r\n\r\nonce\r\n")
        lab.wait_for_mail("user2")
        wait_until(lambda: "removed" in lab.log_text(), what="the queue to finish")
        steps = wait_until(lambda: (s := lab.steps()) and any(x.verb == "REMOVED" for x in s)
                           and any(x.verb == "DISCONNECT" for x in s) and s,
                           what="the Steps of the whole session")
    finally:
        lab.stop()

    # Each SASL line and each SMTP line exactly once (the two EHLOs are two lines).
    sasl = Counter(s.line for s in steps if s.proto == "sasl")
    assert sasl and max(sasl.values()) == 1, sasl
    smtp = Counter((s.line, s.tls) for s in steps if s.proto == "smtp")
    assert max(smtp.values()) == 1, [k for k, v in smtp.items() if v > 1]
    assert [s.line for s in steps if s.proto == "smtp" and s.dir == "c2s"][:6] == [
        "ehlo pc1", "STARTTLS", "ehlo pc1", s_auth(steps), "mail FROM:<user1@gponlab.local> size=23",
        "rcpt TO:<user2@gponlab.local>"]
    # The SASL exchange of this login belongs to the SMTP session that asked for it.
    submission = next(s.session for s in steps if s.proto == "smtp")
    assert [s.line.split("\t")[0] for s in steps if s.proto == "sasl" and s.session == submission] \
        == ["AUTH", "OK"]
    # Time order: in the file, and within every session.
    times = [s.t for s in steps]
    assert times == sorted(times)
    # The narrator printed the same Steps in the same order.
    narrated = [m.groups() for line in narration.read_text().splitlines()
                if (m := HEAD.match(line))]
    assert narrated == [(s.session, s.src, s.dst) for s in steps]


def s_auth(steps) -> str:
    """smtplib's AUTH line as recorded (the credentials are masked in the file)."""
    return next(s.line for s in steps if s.proto == "smtp" and s.verb == "AUTH")
