"""bounce(8)'s DSN and the queue commands (`gponsim queue`) without a running lab."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys

import pytest

from gponsim.server.postfix.bounce import build_dsn, diagnostic
from gponsim.server.postfix.qmgr import BounceNotice
from gponsim.server.postfix.queuefile import Envelope

ORIGINAL = (b"Received: from [127.0.0.1] (unknown [127.0.0.1])\n\tby mail.gponlab.local\n"
            b"From: user1@gponlab.local\nTo: a@example.org, b@example.org\n"
            b"Subject: Informe\n\nCuerpo\n")


def notice(rcpt: str, dsn: str, reason: str) -> BounceNotice:
    env = Envelope(sender="user1@gponlab.local", recipients=[rcpt], arrival=1_700_000_000.0)
    return BounceNotice("4F1A2C0D9E", env, rcpt, rcpt, dsn, reason, ORIGINAL)


def test_diagnostic_code_from_postfix_reasons():
    assert diagnostic("host smtp.gmail.com[127.0.0.1] said: 550-5.1.1 No?550 5.1.1 such "
                      "(in reply to RCPT TO command)") == (
        "smtp.gmail.com", "smtp; 550-5.1.1 No?550 5.1.1 such")
    assert diagnostic("message expired: connect to smtp.gmail.com[127.0.0.1]:587: "
                      "Connection refused") == (
        None, "X-Postfix; connect to smtp.gmail.com[127.0.0.1]:587: Connection refused")


def test_dsn_is_a_multipart_report_with_one_block_per_recipient():
    data = build_dsn(qid="4F1A2C0D9E", sender="user1@gponlab.local",
                     notices=[notice("a@example.org", "5.1.1",
                                     "host smtp.gmail.com[127.0.0.1] said: 550 5.1.1 no "
                                     "(in reply to RCPT TO command)"),
                              notice("b@example.org", "5.4.1",
                                     "message expired: connect to smtp.gmail.com[127.0.0.1]:587:"
                                     " Connection refused")],
                     myhostname="mail.gponlab.local", arrival=1_700_000_000.0,
                     content=ORIGINAL, now=1_700_000_100.0)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg["Auto-Submitted"] == "auto-replied"
    text, report, original = msg.iter_parts()
    body = text.get_content()
    assert "<a@example.org>: host smtp.gmail.com[127.0.0.1] said: 550 5.1.1 no" in body
    assert "<b@example.org>: connect to smtp.gmail.com[127.0.0.1]:587: Connection refused" in body
    per_message, first, second = report.get_payload()
    assert per_message["X-Postfix-Sender"] == "rfc822; user1@gponlab.local"
    assert (first["Status"], first["Remote-MTA"]) == ("5.1.1", "dns; smtp.gmail.com")
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 no"
    assert second["Status"] == "5.4.1" and second["Remote-MTA"] is None
    assert second["Diagnostic-Code"] == ("X-Postfix; connect to smtp.gmail.com[127.0.0.1]:587: "
                                         "Connection refused")
    assert original.get_payload()[0]["Subject"] == "Informe"


def gponsim(*args):
    return subprocess.run([sys.executable, "-m", "gponsim", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.slow          # end to end: a `gponsim` process
def test_queue_commands_without_a_running_lab(tmp_path):
    root = tmp_path / "gponlab"
    r = gponsim("queue", "--lab-root", str(root))      # no lab there (yet): as mailq says it
    assert r.returncode == 2 and not root.exists()
    assert f"postqueue: fatal: chdir {root}/var/spool/postfix: No such file or directory" in r.stderr
    # a deferred message left by a stopped lab: listed, then deleted
    spool = root / "var/spool/postfix/deferred/A"
    spool.mkdir(parents=True, exist_ok=True)
    assert gponsim("queue", "--lab-root", str(root)).stdout == "Mail queue is empty\n"
    r = gponsim("queue", "--flush", "--lab-root", str(root))
    assert r.returncode == 69
    assert "postqueue: fatal: Cannot flush mail queue - mail system is down" in r.stderr
    header = {"qid": "ABCDEF12345", "created": 1.0, "length": 6, "size": 6,
              "envelope": Envelope(sender="user1@gponlab.local",
                                   recipients=["x@example.org"]).to_dict()}
    (spool / "ABCDEF12345").write_bytes(b"GPONSIM-QUEUE 1 " + json.dumps(header).encode()
                                        + b"\nHello\n" + b'R {"r":0,"dsn":"4.4.1","reason":'
                                        b'"connect to smtp.gmail.com[127.0.0.1]:587: '
                                        b'Connection refused"}\n')
    out = gponsim("queue", "--lab-root", str(root)).stdout
    assert out.splitlines()[0].startswith("-Queue ID-  --Size--")
    assert "ABCDEF12345" in out and "user1@gponlab.local" in out and "x@example.org" in out
    assert "\n(connect to smtp.gmail.com[127.0.0.1]:587: Connection refused)\n" in out
    assert out.rstrip().endswith("-- 1 Kbytes in 1 Request.")
    r = gponsim("queue", "--delete", "ABCDEF12345", "--lab-root", str(root))
    assert r.returncode == 0
    assert r.stdout == "postsuper: ABCDEF12345: removed\npostsuper: Deleted: 1 message\n"
    assert gponsim("queue", "--lab-root", str(root)).stdout == "Mail queue is empty\n"
    r = gponsim("queue", "--delete", "ABCDEF12345", "--lab-root", str(root))
    assert r.returncode == 1 and "no such message" in r.stderr

