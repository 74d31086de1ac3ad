"""The lab with the LMTP switch (``gponsim config init --lmtp``), end to end:
smtplib → gponsim serve → local(8) passes the recipient to lmtp(8) → Dovecot's
LMTP service writes the mbox → imaplib reads it. And the pitfall: without
``auth_username_format = %Ln`` Dovecot refuses the whole address and the
bounce to the sender fails the same way."""

from __future__ import annotations

import imaplib
import re
import smtplib
from collections import Counter

import pytest

from gponsim.config import apply_switch, init_config
from gponsim.config.profile import LMTP_SWITCH
from labproc import wait_until

pytestmark = pytest.mark.slow

SID = r"[A-Za-z0-9+/]{22}"


def lmtp_profile(tmp_path, fixed: bool = True):
    folder = tmp_path / "profile"
    init_config(folder)
    apply_switch(folder, LMTP_SWITCH if fixed else
                 [e for e in LMTP_SWITCH if "auth_username_format" not in e[1]])
    return folder


def send(lab, subject: str, to: str = "user2@gponlab.local") -> None:
    with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], local_hostname="pc1", timeout=30) as smtp:
        smtp.sendmail("user1@gponlab.local", [to],
                      f"From: user1@gponlab.local\r\nTo: {to}\r\nSubject: {subject}\r\n"
                      f"Message-ID: <{subject}@pc1>\r\n\r\nHola por LMTP\r\n")


def test_delivery_through_dovecot_lmtp(lab_factory, tmp_path):
    lab = lab_factory(config_dir=lmtp_profile(tmp_path)).start()
    assert (lab.root / "var/spool/postfix/private/dovecot-lmtp").is_socket()
    send(lab, "lmtp-e2e")
    [msg] = lab.wait_for_mail("user2")
    # Dovecot wrote the mailbox before it answered: lmtp(8) logs a moment later
    sent_line = re.compile(r"postfix/lmtp\[\d+\]: \w+: to=<user2@gponlab\.local>, relay=mail"
                           r"\.gponlab\.local\[private/dovecot-lmtp\], delay=\S+, delays=\S+, "
                           rf"dsn=2\.0\.0, status=sent \(250 2\.0\.0 <user2@gponlab\.local> ({SID}) "
                           r"Saved\)")
    sent = wait_until(lambda: sent_line.search(lab.log_text()), 10, "lmtp(8)'s status line")
    log = lab.log_text()
    assert re.search(r"postfix/local\[\d+\]: (\w+): passing <user2@gponlab\.local> to "
                     r"transport=lmtp", log), log
    sid = sent.group(1)
    assert re.search(r"dovecot\[\d+\]: lmtp\(\d+\): Connect from local", log)
    assert re.search(rf"dovecot\[\d+\]: lmtp\(user2\)<\d+><{re.escape(sid)}>: "
                     r"msgid=<lmtp-e2e@pc1>: saved mail to INBOX", log), log
    wait_until(lambda: "Disconnect from local: Logged out (state=READY)" in lab.log_text(),
               10, "Dovecot's disconnect line")
    assert "postfix/local[" in log and "delivered to mailbox" not in log
    # Dovecot's headers, as IMAP serves them
    imap = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    imap.login("user2", "pass")
    imap.select("INBOX")
    _typ, data = imap.fetch("1", "(BODY.PEEK[HEADER])")
    imap.logout()
    header = data[0][1].decode()
    assert header.startswith("Return-Path: <user1@gponlab.local>\r\n"
                             "Delivered-To: user2@gponlab.local\r\n"
                             "Received: from mail.gponlab.local\r\n"
                             "\tby mail.gponlab.local with LMTP\r\n"
                             f"\tid {sid}\r\n"
                             "\t(envelope-from <user1@gponlab.local>)\r\n"
                             "\tfor <user2@gponlab.local>; "), header
    assert "X-Original-To" not in header and "Subject: lmtp-e2e" in header
    # each line of the LMTP leg narrated once, in one session with Dovecot's events
    steps = [s for s in lab.steps() if s.proto == "lmtp"]
    sessions = {s.session for s in steps}
    assert len(sessions) == 1, sessions
    wire = Counter((s.kind, s.verb, s.line) for s in steps if s.kind != "event")
    assert max(wire.values()) == 1, wire
    verbs = [s.verb for s in steps]
    for verb in ("CONNECT", "CONNECTED", "LHLO", "MAIL", "RCPT", "SAVED", "SENT",
                 "DISCONNECTED"):
        assert verb in verbs, verbs
    assert verbs.index("SAVED") < verbs.index("SENT")
    passing = [s for s in lab.steps() if s.verb == "PASS"]
    assert [(s.src, s.dst) for s in passing] == [("local", "lmtp")]


def test_pitfall_without_ln_bounces_and_the_bounce_too(lab_factory, tmp_path):
    lab = lab_factory(config_dir=lmtp_profile(tmp_path, fixed=False)).start()
    send(lab, "lmtp-pitfall")

    def bounced_twice():
        return len(re.findall(r"postfix/lmtp\[\d+\]: .*status=bounced", lab.log_text())) >= 2
    wait_until(bounced_twice, 20, "the mail and its bounce to bounce")
    log = lab.log_text()
    first, second = re.findall(r"postfix/lmtp\[\d+\]: (\w+): (to=<[^>]+>).*dsn=5\.1\.1, "
                               r"status=bounced \((.*)\)$", log, re.M)
    assert first[1] == "to=<user2@gponlab.local>"
    assert first[2] == ("host mail.gponlab.local[private/dovecot-lmtp] said: 550 5.1.1 "
                        "<user2@gponlab.local> User doesn't exist: user2@gponlab.local "
                        "(in reply to RCPT TO command)")
    assert re.search(rf"postfix/bounce\[\d+\]: {first[0]}: sender non-delivery notification: "
                     rf"{second[0]}", log), log
    assert re.search(rf"postfix/qmgr\[\d+\]: {second[0]}: from=<>, ", log)
    assert second[1] == "to=<user1@gponlab.local>"
    assert "User doesn't exist: user1@gponlab.local" in second[2]
    assert "Disconnect from local: Logged out (state=READY)" in log      # RSET came first
    assert not lab.mbox("user2") and not lab.mbox("user1")
    assert "undeliverable bounce" not in log           # real Postfix logs nothing for it
    replies = [s for s in lab.steps() if s.proto == "lmtp" and s.code == 550]
    assert len(replies) == 2 and all(s.key == "lmtp.reply.550-5.1.1" for s in replies)


def test_sighup_reloads_into_lmtp(lab_factory, tmp_path):
    """An administrator edits the files and reloads (`postfix reload`,
    `systemctl reload dovecot`): `kill -HUP` makes gponsim serve read them again."""
    import os
    import signal

    folder = tmp_path / "profile"
    init_config(folder)
    lab = lab_factory(config_dir=folder).start()
    send(lab, "before-reload")
    lab.wait_for_mail("user2")
    wait_until(lambda: "status=sent (delivered to mailbox)" in lab.log_text(), 10, "local(8)")
    assert not (lab.root / "var/spool/postfix/private/dovecot-lmtp").exists()
    apply_switch(folder)
    os.kill(lab.proc.pid, signal.SIGHUP)
    wait_until(lambda: "dovecot-lmtp" in "".join(p.name for p in
                                                  (lab.root / "var/spool/postfix/private").iterdir()),
               10, "Dovecot's LMTP socket after the reload")
    log = lab.log_text()
    assert re.search(r"postfix/master\[\d+\]: reload -- version 3\.7\.11, configuration "
                     r"/etc/postfix", log), log
    assert "dovecot: master: Warning: SIGHUP received - reloading configuration" in \
        re.sub(r"dovecot\[\d+\]", "dovecot", log)
    send(lab, "after-reload")
    lab.wait_for_mail("user2", 2)
    wait_until(lambda: re.search(r"postfix/lmtp\[\d+\]: .*status=sent \(250 2\.0\.0 "
                                 r"<user2@gponlab\.local> \S+ Saved\)", lab.log_text()),
               10, "lmtp(8)'s status line")
    assert "configuration reloaded" in lab.stderr()


def test_half_a_switch_defers_and_is_warned(lab_factory, tmp_path):
    """main.cf delivers over LMTP, but Dovecot has no lmtp in protocols: gponsim
    serve warns at start, and the mail waits in the deferred queue as in Postfix."""
    folder = tmp_path / "profile"
    init_config(folder)
    apply_switch(folder, [e for e in LMTP_SWITCH if e[0] == "postfix/main.cf"])
    lab = lab_factory(config_dir=folder).start()
    assert "warning: " in lab.stderr() and "protocols has no lmtp" in lab.stderr()
    send(lab, "half-switch")
    line = wait_until(lambda: re.search(r"postfix/lmtp\[\d+\]: \w+: to=<user2@gponlab\.local>, "
                                        r"relay=none, .*dsn=4\.4\.1, status=deferred \(connect to "
                                        r"mail\.gponlab\.local\[private/dovecot-lmtp\]: No such file "
                                        r"or directory\)", lab.log_text()), 10, "the deferral")
    assert line
    failed = [s for s in lab.steps() if s.verb == "CONNECT_FAILED"]
    assert failed and failed[0].key == "lmtp.event.CONNECT_FAILED"
