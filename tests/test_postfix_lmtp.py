"""Real Postfix (Debian's package) delivers through the lab's Dovecot LMTP socket.

A throwaway Postfix instance (its own config, queue and data directories in a
temporary folder; see test_postfix_local_mbox.py) has the lab's
``mailbox_transport = lmtp:unix:private/dovecot-lmtp``; its
``private/dovecot-lmtp`` is a link to the socket of a running ``gponsim
serve`` started with the LMTP switch (``config init --lmtp``). Mail sent to
real Postfix's smtpd goes through real local(8) and lmtp(8) to gponsim's
Dovecot LMTP service, which writes the mbox; gponsim's IMAP serves it. The
same with the profile lacking ``auth_username_format = %Ln``: real Postfix
bounces with gponsim's 550, and its bounce fails the same way.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import re
import smtplib
from pathlib import Path

import pytest
from test_postfix_local_mbox import Postfix

from gponsim.config import apply_switch, init_config
from gponsim.config.profile import LMTP_SWITCH
from labproc import LabProcess, wait_until

POSTFIX = "/usr/sbin/postfix"
LMTP = "/usr/lib/postfix/sbin/lmtp"
SID = r"[A-Za-z0-9+/]{22}"

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(POSTFIX) and os.path.exists(LMTP)),
                       reason="real Postfix not installed (apt-get install postfix)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a throwaway Postfix instance needs root"),
]


def start(where: Path, fixed: bool) -> tuple[LabProcess, Postfix]:
    profile = where / "profile"
    init_config(profile)
    apply_switch(profile, LMTP_SWITCH if fixed else
                 [e for e in LMTP_SWITCH if "auth_username_format" not in e[1]])
    lab = LabProcess(where / "gponlab", config_dir=profile).start()
    socket = lab.root / "var/spool/postfix/private/dovecot-lmtp"
    assert socket.is_socket()
    # 10-master.conf: mode = 0600, user = postfix (gponsim runs as root: it chowns, as Dovecot)
    st = socket.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, pwd.getpwnam("postfix").pw_uid)
    postfix = Postfix(where / "postfix", lab.root / "var/mail")
    with open(postfix.etc / "main.cf", "a") as fh:
        fh.write("mailbox_transport = lmtp:unix:private/dovecot-lmtp\n")
    postfix.start()
    link = postfix.d / "spool/private/dovecot-lmtp"
    link.symlink_to(socket)
    return lab, postfix


def send(postfix: Postfix, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="pc1", timeout=30) as s:
        s.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                   f"From: user1@gponlab.local\r\nTo: user2@gponlab.local\r\n"
                   f"Subject: {subject}\r\nMessage-ID: <{subject}@pc1>\r\n\r\nHola\r\n"
                   f".punto\r\n".encode())


def test_real_postfix_delivers_through_the_labs_lmtp(reachable_dir):
    lab, postfix = None, None
    try:
        lab, postfix = start(reachable_dir, fixed=True)
        send(postfix, "real-postfix-lmtp")
        sent = re.compile(r"postfix/lmtp\[\d+\]: \w+: to=<user2@gponlab\.local>, "
                          r"relay=mail\.gponlab\.local\[private/dovecot-lmtp\], delay=\S+, "
                          rf"delays=\S+, dsn=2\.0\.0, status=sent \(250 2\.0\.0 "
                          rf"<user2@gponlab\.local> ({SID}) Saved\)")
        match = wait_until(lambda: sent.search(postfix.log()), 30,
                           f"real lmtp(8) to log the delivery\n{postfix.log()}\n{lab.log_text()}")
        sid = match.group(1)
        assert re.search(r"postfix/local\[\d+\]: \w+: passing <user2@gponlab\.local> to "
                         r"transport=lmtp", postfix.log())
        log = lab.log_text()
        assert re.search(rf"dovecot\[\d+\]: lmtp\(user2\)<\d+><{re.escape(sid)}>: "
                         r"msgid=<real-postfix-lmtp@pc1>: saved mail to INBOX", log), log
        # what real Postfix said, narrated by gponsim's Dovecot side (the wire, once)
        wait_until(lambda: "Disconnect from local: Logged out" in lab.log_text(), 10,
                   "the LMTP session to end")
        steps = [s for s in lab.steps() if s.proto == "lmtp"]
        assert len({s.session for s in steps}) == 1
        commands = [s.line for s in steps if s.kind == "command"]
        assert commands == ["LHLO mail.gponlab.local", "MAIL FROM:<user1@gponlab.local>",
                            "RCPT TO:<user2@gponlab.local>", "DATA", "QUIT"], commands
        assert all((s.src, s.dst) == ("lmtp", "dovecot-lmtp") for s in steps
                   if s.kind == "command")
        # gponsim's IMAP serves what gponsim's LMTP wrote
        imap = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
        imap.login("user2", "pass")
        assert imap.select("INBOX") == ("OK", [b"1"])
        _typ, data = imap.fetch("1", "(BODY.PEEK[])")
        imap.logout()
        message = data[0][1]
        assert message.startswith(b"Return-Path: <user1@gponlab.local>\r\nDelivered-To: "
                                  b"user2@gponlab.local\r\nReceived: from mail.gponlab.local\r\n"
                                  b"\tby mail.gponlab.local with LMTP\r\n\tid " + sid.encode())
        assert b"(Postfix) with ESMTP id" in message           # real Postfix's Received:
        assert message.endswith(b"\r\n\r\nHola\r\n.punto\r\n")
    finally:
        if postfix is not None:
            postfix.stop()
        if lab is not None:
            lab.stop()


def test_real_postfix_meets_the_pitfall(reachable_dir):
    lab, postfix = None, None
    try:
        lab, postfix = start(reachable_dir, fixed=False)
        send(postfix, "real-postfix-pitfall")
        bounced = re.compile(r"postfix/lmtp\[\d+\]: (\w+): to=<(user\d)@gponlab\.local>, "
                             r"relay=mail\.gponlab\.local\[private/dovecot-lmtp\], .*dsn=5\.1\.1, "
                             r"status=bounced \(host mail\.gponlab\.local\[private/dovecot-lmtp\] "
                             r"said: 550 5\.1\.1 <(user\d)@gponlab\.local> User doesn't exist: "
                             r"(user\d)@gponlab\.local \(in reply to RCPT TO command\)\)")
        found = wait_until(lambda: len(m := bounced.findall(postfix.log())) >= 2 and m, 30,
                           f"the mail and its bounce to bounce\n{postfix.log()}")
        assert [f[1:] for f in found] == [("user2",) * 3, ("user1",) * 3]
        assert re.search(rf"postfix/bounce\[\d+\]: {found[0][0]}: sender non-delivery "
                         rf"notification: {found[1][0]}", postfix.log())
        assert not (lab.root / "var/mail/user2").exists()
    finally:
        if postfix is not None:
            postfix.stop()
        if lab is not None:
            lab.stop()
