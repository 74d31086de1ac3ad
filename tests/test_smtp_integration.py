"""`gponsim serve` against clients nobody here wrote: Python's smtplib and swaks."""

from __future__ import annotations

import base64
import shutil
import smtplib
import socket
import ssl
import subprocess

import pytest

from labproc import wait_until

pytestmark = pytest.mark.slow          # end to end: `gponsim serve`, smtplib and swaks

BANNER = "mail.gponlab.local ESMTP Postfix (Debian/GNU)"
PRE_TLS = ["mail.gponlab.local", "PIPELINING", "SIZE 10240000", "VRFY", "ETRN", "STARTTLS",
           "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]
POST_TLS_587 = ["mail.gponlab.local", "PIPELINING", "SIZE 10240000", "VRFY", "ETRN",
                "AUTH PLAIN LOGIN", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]


def insecure():
    return ssl._create_unverified_context()


class Raw:
    """A byte-exact SMTP conversation (for replies smtplib would hide)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.sock.makefile("rb")

    def reply(self):
        lines = []
        while True:
            line = self.f.readline().decode().rstrip("\r\n")
            if not line:
                raise AssertionError(f"connection closed after {lines}")
            lines.append(line)
            if line[3:4] != "-":
                return lines

    def send(self, data: str):
        self.sock.sendall(data.encode())

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def starttls(self):
        assert self.cmd("STARTTLS") == ["220 2.0.0 Ready to start TLS"]
        self.sock = insecure().wrap_socket(self.sock, server_hostname="mail.gponlab.local")
        self.f = self.sock.makefile("rb")

    def close(self):
        self.sock.close()


def ehlo_words(lines):
    return [line[4:] for line in lines]


def test_banner_and_ehlo_before_and_after_tls(lab):
    s = Raw(lab.ports["submission"])
    assert s.reply() == [f"220 {BANNER}"]
    assert ehlo_words(s.cmd("EHLO [127.0.0.1]")) == PRE_TLS
    s.starttls()
    assert ehlo_words(s.cmd("EHLO [127.0.0.1]")) == POST_TLS_587
    assert s.cmd("STARTTLS") == ["554 5.5.1 Error: TLS already active"]
    assert s.cmd("QUIT") == ["221 2.0.0 Bye"]
    s.close()
    # Port 25: STARTTLS offered, never AUTH.
    s = Raw(lab.ports["smtp"])
    s.reply()
    assert ehlo_words(s.cmd("EHLO pc1")) == PRE_TLS
    s.starttls()
    words = ehlo_words(s.cmd("EHLO pc1"))
    assert not any(w.startswith("AUTH") for w in words) and "STARTTLS" not in words
    assert s.cmd("AUTH PLAIN AHVzZXIxAHBhc3M=") == ["503 5.5.1 Error: authentication not enabled"]
    s.close()


def test_submission_requires_starttls(lab):
    s = Raw(lab.ports["submission"])
    s.reply()
    s.cmd("EHLO pc1")
    for line in ("MAIL FROM:<user1@gponlab.local>", "AUTH PLAIN AHVzZXIxAHBhc3M=",
                 "RCPT TO:<user2@gponlab.local>", "DATA", "RSET", "VRFY user2"):
        assert s.cmd(line) == ["530 5.7.0 Must issue a STARTTLS command first"], line
    assert s.cmd("NOOP") == ["250 2.0.0 Ok"]
    assert s.cmd("STARTTLS extra") == ["501 5.5.4 Syntax: STARTTLS"]
    s.close()


def test_full_submission_with_smtplib_lands_in_mbox(lab):
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
        c.ehlo("[127.0.0.1]")
        c.starttls(context=insecure())
        c.ehlo("[127.0.0.1]")
        assert c.esmtp_features["auth"].strip() == "PLAIN LOGIN"
        code, _ = c.login("user1", "pass")
        assert code == 235
        msg = b"From: user1@gponlab.local\r\nTo: user2@gponlab.local\r\nSubject: Hola\r\n\r\nFrom here\r\n.dot\r\nbye\r\n"
        c.sendmail("user1@gponlab.local", ["user2@gponlab.local"], msg)
    [m] = lab.wait_for_mail("user2")
    assert m.get_from().startswith("user1@gponlab.local ")
    assert m["Return-Path"] == "<user1@gponlab.local>"
    assert m["X-Original-To"] == "user2@gponlab.local"
    assert m["Delivered-To"] == "user2@gponlab.local"
    assert m["Subject"] == "Hola"
    received = m.get_all("Received")[0]
    assert "by mail.gponlab.local (Postfix) with ESMTPSA id" in received
    assert "from [127.0.0.1] (localhost [127.0.0.1])" in received
    assert "for <user2@gponlab.local>" in received
    payload = m.get_payload()
    assert ">From here" in payload and "\n.dot\n" in payload
    raw = lab.mbox_path("user2").read_bytes()
    assert raw.startswith(b"From user1@gponlab.local  ")
    assert raw.endswith(b"bye\n\n")
    log = wait_until(lambda: "status=sent" in (t := lab.log_text()) and "commands=" in t and t,
                     what="delivery and disconnect log lines")
    assert "postfix/submission/smtpd[" in log
    assert "sasl_method=PLAIN, sasl_username=user1" in log
    assert "status=sent (delivered to mailbox)" in log
    assert "ehlo=2 starttls=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=8" in log


def test_auth_variants_and_failures(lab):
    s = Raw(lab.ports["submission"])
    s.reply()
    s.cmd("EHLO pc1")
    s.starttls()
    s.cmd("EHLO pc1")
    assert s.cmd("AUTH") == ["501 5.5.4 Syntax: AUTH mechanism"]
    assert s.cmd("AUTH PLAIN") == ["334 "]
    assert s.cmd("*") == ["501 5.7.0 Authentication aborted"]
    assert s.cmd("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
    assert s.cmd(base64.b64encode(b"user1").decode()) == ["334 UGFzc3dvcmQ6"]
    assert s.cmd(base64.b64encode(b"wrong").decode()) == \
        ["535 5.7.8 Error: authentication failed: (reason unavailable)"]
    assert s.cmd("AUTH CRAM-MD5") == \
        ["535 5.7.8 Error: authentication failed: Invalid authentication mechanism"]
    assert s.cmd("AUTH PLAIN !!!") == \
        ["535 5.7.8 Error: authentication failed: Invalid base64 data in initial response"]
    assert s.cmd("AUTH PLAIN " + base64.b64encode(b"\0user1\0pass").decode()) == \
        ["235 2.7.0 Authentication successful"]
    assert s.cmd("AUTH PLAIN " + base64.b64encode(b"\0user1\0pass").decode()) == \
        ["503 5.5.1 Error: already authenticated"]
    s.cmd("MAIL FROM:<user1@gponlab.local>")
    s.close()
    assert "SASL LOGIN authentication failed: (reason unavailable), sasl_username=user1" in \
        wait_until(lambda: "SASL LOGIN" in lab.log_text() and lab.log_text(), what="log line")


def test_restrictions_at_rcpt(lab):
    # Port 25 from 127.0.0.1 (in mynetworks): relaying allowed, unknown users refused.
    s = Raw(lab.ports["smtp"])
    s.reply()
    s.cmd("EHLO pc1")
    assert s.cmd("RCPT TO:<user2@gponlab.local>") == ["503 5.5.1 Error: need MAIL command"]
    assert s.cmd("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]
    assert s.cmd("MAIL FROM:<a@example.org>") == ["503 5.5.1 Error: nested MAIL command"]
    assert s.cmd("RCPT TO:<nosuchuser@gponlab.local>") == [
        "550 5.1.1 <nosuchuser@gponlab.local>: Recipient address rejected: "
        "User unknown in local recipient table"]
    assert s.cmd("RCPT TO:<bob@gmail.com>") == ["250 2.1.5 Ok"]
    assert s.cmd("RSET") == ["250 2.0.0 Ok"]
    assert s.cmd("DATA") == ["503 5.5.1 Error: need RCPT command"]
    s.cmd("MAIL FROM:<a@example.org>")
    s.cmd("RCPT TO:<nosuchuser@gponlab.local>")
    assert s.cmd("DATA") == ["554 5.5.1 Error: no valid recipients"]
    s.close()
    # Submission after TLS without AUTH: smtpd_client_restrictions = permit_sasl_authenticated,reject
    s = Raw(lab.ports["submission"])
    s.reply()
    s.cmd("EHLO pc1")
    s.starttls()
    s.cmd("EHLO pc1")
    assert s.cmd("MAIL FROM:<user1@gponlab.local>") == ["250 2.1.0 Ok"]
    assert s.cmd("RCPT TO:<user2@gponlab.local>") == [
        "554 5.7.1 <localhost[127.0.0.1]>: Client host rejected: Access denied"]
    s.close()
    assert "NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 554 5.7.1 <localhost[127.0.0.1]>: " \
           "Client host rejected: Access denied; from=<user1@gponlab.local> " \
           "to=<user2@gponlab.local> proto=ESMTP helo=<pc1>" in \
        wait_until(lambda: "NOQUEUE" in lab.log_text() and lab.log_text(), what="reject log")


def test_relay_denied_for_outsiders(lab_factory, tmp_path):
    """A client outside mynetworks: defer_unauth_destination answers 454."""
    from gponsim.config import init_config

    conf = tmp_path / "conf"
    init_config(conf)
    main_cf = conf / "postfix" / "main.cf"
    text = main_cf.read_text()
    main_cf.write_text(text.replace("mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 192.168.0.0/16",
                                    "mynetworks = 192.168.0.0/16"))
    lab = lab_factory(config_dir=conf).start()
    s = Raw(lab.ports["smtp"])
    s.reply()
    s.cmd("EHLO outsider.example.org")
    s.cmd("MAIL FROM:<spam@example.org>")
    assert s.cmd("RCPT TO:<bob@gmail.com>") == ["454 4.7.1 <bob@gmail.com>: Relay access denied"]
    assert s.cmd("RCPT TO:<user2@gponlab.local>") == ["250 2.1.5 Ok"]
    s.close()


def test_pipelining_replies_in_order_and_size_limits(lab):
    s = Raw(lab.ports["smtp"])
    s.reply()
    s.cmd("EHLO pc1")
    s.send("MAIL FROM:<a@example.org> SIZE=99999999\r\nMAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\n"
           "RCPT TO:<user2@gponlab.local>\r\nRCPT TO:<nosuch@gponlab.local>\r\nDATA\r\n")
    assert s.reply() == ["552 5.3.4 Message size exceeds fixed limit"]
    assert s.reply() == ["250 2.1.0 Ok"]
    assert s.reply() == ["250 2.1.5 Ok"]
    assert s.reply()[0].startswith("550 5.1.1")
    assert s.reply() == ["354 End data with <CR><LF>.<CR><LF>"]
    s.send("Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n")
    queued = s.reply()
    assert queued[0].startswith("250 2.0.0 Ok: queued as ")
    assert s.reply() == ["250 2.1.0 Ok"]
    assert s.reply() == ["221 2.0.0 Bye"]
    s.close()
    lab.wait_for_mail("user2")


def test_bdat(lab):
    s = Raw(lab.ports["smtp"])
    s.reply()
    s.cmd("EHLO pc1")
    s.cmd("MAIL FROM:<a@example.org>")
    s.cmd("RCPT TO:<user2@gponlab.local>")
    part1 = "Subject: chunks\r\n\r\n"
    part2 = "first line\r\nsecond line\r\n"
    s.send(f"BDAT {len(part1)}\r\n{part1}")
    assert s.reply() == [f"250 2.0.0 Ok: {len(part1)} bytes"]
    s.send(f"BDAT {len(part2)} LAST\r\n{part2}")
    assert s.reply()[0].startswith(f"250 2.0.0 Ok: {len(part1) + len(part2)} bytes queued as ")
    s.cmd("MAIL FROM:<a@example.org>")
    s.cmd("RCPT TO:<user2@gponlab.local>")
    s.send("BDAT 3\r\nabc")
    assert s.reply() == ["250 2.0.0 Ok: 3 bytes"]
    assert s.cmd("DATA") == ["503 5.5.1 Error: DATA after BDAT"]
    assert s.cmd("BDAT x") == ["521 5.5.4 Syntax: BDAT count [LAST]"]
    assert s.f.readline() == b""  # Postfix hangs up: it cannot know where the chunk ends
    s.close()
    [m] = lab.wait_for_mail("user2")
    assert m["Subject"] == "chunks"
    assert m.get_payload() == "first line\nsecond line\n"


def test_malformed_input_never_breaks_the_server(lab):
    s = Raw(lab.ports["smtp"])
    s.reply()
    assert s.cmd("FOO bar") == ["500 5.5.2 Error: command not recognized"]
    assert s.cmd("EHLO") == ["501 Syntax: EHLO hostname"]
    assert s.cmd("HELO") == ["501 Syntax: HELO hostname"]
    s.cmd("HELO pc1")
    assert s.cmd("MAIL TO:<x>") == ["501 5.5.4 Syntax: MAIL FROM:<address>"]
    assert s.cmd("MAIL FROM:<a@b> FOO=1") == ["555 5.5.4 Unsupported option: FOO=1"]
    assert s.cmd("VRFY user2") == ["252 2.0.0 user2"]
    s.sock.sendall(b"\xff\xfe garbage\r\n")
    assert s.reply() == ["500 5.5.2 Error: bad UTF-8 syntax"]
    assert s.cmd("NOOP " + "x" * 5000) == ["250 2.0.0 Ok"]   # truncated to 2048, still a NOOP
    assert s.cmd("") == ["500 5.5.2 Error: bad syntax"]
    assert s.cmd("Subject: hello") == ["221 2.7.0 Error: I can break rules, too. Goodbye."]
    s.close()
    log = wait_until(lambda: "non-SMTP command" in (t := lab.log_text()) and t, what="log")
    assert "warning: localhost[127.0.0.1]: request longer than 2048: NOOP xxxx" in log
    assert "warning: non-SMTP command from localhost[127.0.0.1]: Subject: hello" in log
    # The server is still fine for the next client.
    with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=10) as c:
        assert c.noop()[0] == 250


def test_too_many_errors_disconnects(lab):
    s = Raw(lab.ports["smtp"])
    s.reply()
    for _ in range(19):
        assert s.cmd("BOGUS")[0].startswith("500")
    assert s.cmd("BOGUS") == ["500 5.5.2 Error: command not recognized"]
    assert s.reply() == ["421 4.7.0 mail.gponlab.local Error: too many errors"]
    assert s.f.readline() == b""  # and the server hung up
    s.close()


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks (Debian package swaks) is not installed")
def test_swaks_submission_with_starttls_and_login(lab):
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(lab.ports["submission"]),
         "--from", "user1@gponlab.local", "--to", "user2@gponlab.local", "--tls",
         "--auth", "LOGIN", "--auth-user", "user1", "--auth-password", "pass",
         "--header", "Subject: swaks test", "--body", "hello from swaks"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "235 2.7.0 Authentication successful" in out.stdout
    assert "250 2.0.0 Ok: queued as" in out.stdout
    [m] = lab.wait_for_mail("user2")
    assert m["Subject"] == "swaks test"


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks (Debian package swaks) is not installed")
def test_swaks_wrong_password_gets_535(lab):
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(lab.ports["submission"]),
         "--from", "user1@gponlab.local", "--to", "user2@gponlab.local", "--tls",
         "--auth", "PLAIN", "--auth-user", "user1", "--auth-password", "nope"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "535 5.7.8 Error: authentication failed: (reason unavailable)" in out.stdout


def test_steps_record_the_conversation(lab):
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
        c.starttls(context=insecure())
        c.login("user1", "pass")
        c.sendmail("user1@gponlab.local", ["user2@gponlab.local"], b"Subject: s\r\n\r\nx\r\n")
    lab.wait_for_mail("user2")
    steps = wait_until(lambda: (st := lab.steps()) and any(s.src == "local" for s in st) and st,
                       what="delivery steps")
    auth = [s for s in steps if s.proto == "smtp" and s.verb == "AUTH" and s.kind == "command"]
    assert auth and auth[0].tls and auth[0].line == "AUTH PLAIN ********"
    assert all("dXNlcjE" not in s.line for s in steps)  # base64 of user1's credentials is masked
    sasl = [s for s in steps if s.proto == "sasl"]
    assert any(s.line.startswith("AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1\tsecured")
               for s in sasl)
    assert any(s.status == "OK" and "user=user1" in s.line for s in sasl)
    actors = [(s.src, s.dst) for s in steps]
    for pair in [("client", "smtpd"), ("smtpd", "client"), ("smtpd", "auth"), ("auth", "smtpd"),
                 ("local", "mailbox")]:
        assert pair in actors, pair
    assert all(s.key for s in steps if s.proto == "smtp" and s.kind in ("command", "reply")), \
        [s.line for s in steps if s.proto == "smtp" and not s.key]
