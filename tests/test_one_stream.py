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


def test_reading_mail_over_imap_and_pop3_is_narrated_once_and_in_order(tmp_path):
    """The mailbox side: Dovecot's IMAP and POP3 run mailbox commands in worker
    threads and hand their answers back; the narration still shows each line once,
    each command's data before its tagged reply, in time order."""
    import imaplib
    import poplib

    narration = tmp_path / "narration.txt"
    lab = LabProcess(tmp_path / "gponlab", narration=narration).start()
    try:
        with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=15) as c:
            for n in (1, 2):
                c.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                           f"Subject: read me {n}\r\n\r\nbody {n}\r\n".encode())
        lab.wait_for_mail("user2", 2)
        imap = imaplib.IMAP4("127.0.0.1", lab.ports["imap"], timeout=15)
        imap.starttls(ssl_context=ssl._create_unverified_context())
        imap.login("user2", "pass")
        imap.select("INBOX")
        typ, found = imap.search(None, "ALL")
        assert typ == "OK" and found[0].split() == [b"1", b"2"]
        typ, data = imap.fetch("1:2", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and b"read me 2" in data[2][1]
        imap.logout()
        pop = poplib.POP3("127.0.0.1", lab.ports["pop3"], timeout=15)
        pop.stls(context=ssl._create_unverified_context())
        pop.user("user2")
        pop.pass_("pass")
        assert pop.stat()[0] == 2
        assert b"body 1" in b"\n".join(pop.retr(1)[1])
        pop.quit()
        steps = wait_until(lambda: (s := lab.steps()) and sum(
            x.verb == "DISCONNECT" for x in s if x.proto in ("imap", "pop3")) >= 2 and s,
            what="the Steps of the IMAP and POP3 sessions")
    finally:
        lab.stop()

    for proto in ("imap", "pop3"):
        mine = [s for s in steps if s.proto == proto]
        assert mine, proto
        # every client line once (IMAP tags make each distinct; POP3's are distinct here)
        lines = Counter((s.session, s.line, s.tls) for s in mine if s.dir == "c2s")
        assert max(lines.values()) == 1, [k for k, v in lines.items() if v > 1]
        # and each command answered once, its data before its tagged (or final) reply
        for session in {s.session for s in mine}:
            flow = [s for s in mine if s.session == session and s.dir in ("c2s", "s2c")]
            assert [s.t for s in flow] == sorted(s.t for s in flow)
    imap_flow = [s for s in steps if s.proto == "imap" and s.dir in ("c2s", "s2c")]
    fetch = next(i for i, s in enumerate(imap_flow) if s.dir == "c2s" and " FETCH " in s.line)
    tag = imap_flow[fetch].line.split(" ", 1)[0]
    after = [s.line for s in imap_flow[fetch + 1:]]
    done = next(i for i, line in enumerate(after) if line.startswith(f"{tag} OK"))
    assert sum(line.startswith("* 1 FETCH") or line.startswith("* 2 FETCH")
               for line in after[:done]) == 2, after[:done + 1]
    assert not any("FETCH" in line and line.startswith("* ") for line in after[done + 1:])
    # Time order in the whole file, and the narrator printed the same Steps in that order.
    times = [s.t for s in steps]
    assert times == sorted(times)
    narrated = [m.groups() for line in narration.read_text().splitlines()
                if (m := HEAD.match(line))]
    assert narrated == [(s.session, s.src, s.dst) for s in steps]
