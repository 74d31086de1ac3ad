"""Dovecot's LMTP service as a protocol unit, over an in-memory transport:
every reply is the text real Dovecot 2.3.19 gave to the same line
(docs/lmtp.md); the mailbox is written as Dovecot's LMTP writes it."""

from __future__ import annotations

import re

import pytest
from twisted.internet.address import UNIXAddress
from twisted.internet.testing import StringTransport

from gponsim.server import inprocess
from gponsim.server.dovecot.lmtp import (DovecotLmtp, LmtpService, LmtpSettings, format_username,
                                         parse_path, received_date, session_guid, strip_detail)
from gponsim.server.maillog import MailLog
from gponsim.server.mailstore.location import open_store
from gponsim.sinks.memory import ListSink

USERS = {"user1", "user2"}
MESSAGE = ("Received: from pc1 (unknown [127.0.0.1])\r\n\tby mail.gponlab.local (Postfix) with "
           "ESMTP id 4F1A2C0D9E\r\n\tfor <user2@gponlab.local>; Mon,  1 Jan 2024 12:00:00 +0000 "
           "(UTC)\r\nSubject: hola\r\nMessage-ID: <abc@pc1>\r\n\r\n..punto\r\nFrom here\r\n.\r\n")
LHLO = ["250-mail.gponlab.local", "250-8BITMIME", "250-CHUNKING", "250-ENHANCEDSTATUSCODES",
        "250 PIPELINING"]
SID = r"[A-Za-z0-9+/]{22}"


class Session:
    def __init__(self, tmp_path, username_format="%Ln", path=None):
        self.root = tmp_path / "lab"
        self.sink = ListSink()
        self.log_path = tmp_path / "mail.log"
        self.service = LmtpService(self.root, LmtpSettings(username_format=username_format),
                                   user_exists=lambda u: u in USERS, log=MailLog(self.log_path),
                                   emit=self.sink.step, save_in_thread=False)
        self.path = path or (self.root / "var/spool/postfix/private/dovecot-lmtp")
        self.proto = DovecotLmtp(self.service, self.path)
        self.transport = StringTransport(peerAddress=UNIXAddress(None),
                                         hostAddress=UNIXAddress(str(self.path)))
        self.proto.makeConnection(self.transport)

    def out(self) -> list[str]:
        data = self.transport.value().decode()
        self.transport.clear()
        return [line for line in data.split("\r\n") if line]

    def send(self, data: str) -> list[str]:
        self.proto.dataReceived(data.encode())
        return self.out()

    def cmd(self, line: str) -> list[str]:
        return self.send(line + "\r\n")

    def log(self) -> list[str]:
        return [line.split("]: ", 1)[1] for line in self.log_path.read_text().splitlines()]

    def mbox(self, user: str) -> str:
        return (self.root / "var/mail" / user).read_text()


@pytest.fixture
def s(tmp_path):
    session = Session(tmp_path)
    assert session.out() == ["220 mail.gponlab.local Dovecot (Debian) ready."]
    assert session.cmd("LHLO mail.gponlab.local") == LHLO
    return session


def test_the_delivery_postfix_makes(s):
    # what Postfix's lmtp(8) writes: MAIL, RCPT, DATA pipelined; the dot and QUIT together
    assert s.send("MAIL FROM:<user1@gponlab.local>\r\nRCPT TO:<user2@gponlab.local>\r\nDATA\r\n") \
        == ["250 2.1.0 OK", "250 2.1.5 OK", "354 OK"]
    [saved, bye] = s.send(MESSAGE + "QUIT\r\n")
    assert re.fullmatch(rf"250 2\.0\.0 <user2@gponlab\.local> {SID} Saved", saved), saved
    assert bye == "221 2.0.0 Bye"
    sid = saved.split()[3]
    s.proto.connectionLost(None)
    pid = s.service.pid
    assert s.log() == [f"lmtp({pid}): Connect from local",
                       f"lmtp(user2)<{pid}><{sid}>: msgid=<abc@pc1>: saved mail to INBOX",
                       f"lmtp({pid}): Disconnect from local: Logged out (state=READY)"]
    assert "dovecot[" in s.log_path.read_text().splitlines()[0]
    mbox = s.mbox("user2")
    head, _, rest = mbox.partition("\n")
    assert re.fullmatch(r"From user1@gponlab\.local  \w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}", head)
    assert rest.startswith(
        "Return-Path: <user1@gponlab.local>\nDelivered-To: user2@gponlab.local\n"
        "Received: from mail.gponlab.local\n\tby mail.gponlab.local with LMTP\n"
        f"\tid {sid}\n\t(envelope-from <user1@gponlab.local>)\n\tfor <user2@gponlab.local>; ")
    assert "\nReceived: from pc1 (unknown [127.0.0.1])\n" in rest
    [msg] = open_store(s.root, "user2").folder("INBOX").sync().messages
    assert msg.uid == 1 and msg.body.startswith(b".punto\n")
    steps = [st for st in s.sink.steps if st.proto == "lmtp"]
    assert {st.session for st in steps} == {s.proto.session}
    kinds = [(st.src, st.dst, st.kind, st.verb) for st in steps]
    assert kinds[:3] == [("dovecot-lmtp", "dovecot-lmtp", "event", "CONNECTED"),
                         ("dovecot-lmtp", "lmtp", "reply", "CONNECT"),
                         ("lmtp", "dovecot-lmtp", "command", "LHLO")]
    assert ("lmtp", "dovecot-lmtp", "data", "DATA") in kinds
    saved_step = next(st for st in steps if st.verb == "SAVED")
    assert (saved_step.src, saved_step.dst, saved_step.key) == \
        ("dovecot-lmtp", "mailbox", "lmtp.event.SAVED")
    assert saved_step.meta["recipient"] == "user2@gponlab.local"
    reply = next(st for st in steps if st.kind == "reply" and st.line == saved)
    assert reply.key == "lmtp.reply.DATA.250-2.0.0" and reply.dir == "s2c"


def test_pitfall_without_ln(tmp_path):
    s = Session(tmp_path, username_format="%Lu")     # Dovecot's default
    s.out()
    s.cmd("LHLO mail.gponlab.local")
    assert s.send("MAIL FROM:<user1@gponlab.local>\r\nRCPT TO:<user2@gponlab.local>\r\nDATA\r\n") \
        == ["250 2.1.0 OK",
            "550 5.1.1 <user2@gponlab.local> User doesn't exist: user2@gponlab.local",
            "503 5.5.0 No valid recipients"]
    assert s.cmd("RCPT TO:<User2@GPONLAB.local>") == [
        "550 5.1.1 <User2@GPONLAB.local> User doesn't exist: User2@GPONLAB.local"]
    assert s.cmd("RCPT TO:<user2+lab@gponlab.local>") == [
        "550 5.1.1 <user2+lab@gponlab.local> User doesn't exist: user2@gponlab.local"]
    assert s.cmd("RCPT TO:<USER2>") == ["250 2.1.5 OK"]        # no domain: found
    assert s.send("RSET\r\nQUIT\r\n") == ["250 2.0.0 OK", "221 2.0.0 Bye"]
    s.proto.connectionLost(None)
    assert s.log()[-1].endswith("Disconnect from local: Logged out (state=READY)")
    assert not (s.root / "var/mail/user2").exists()
    pitfall = next(st for st in s.sink.steps if st.code == 550)
    assert pitfall.key == "lmtp.reply.550-5.1.1"


def test_several_recipients_one_reply_each(s):
    s.cmd("MAIL FROM:<>")
    assert s.send("RCPT TO:<user2@gponlab.local>\r\nRCPT TO:<User1@GPONLAB.local>\r\n"
                  "RCPT TO:<nosuch@gponlab.local>\r\nRCPT TO:<user2+lab@gponlab.local>\r\n") == [
        "250 2.1.5 OK", "250 2.1.5 OK",
        "550 5.1.1 <nosuch@gponlab.local> User doesn't exist: nosuch@gponlab.local",
        "250 2.1.5 OK"]
    assert s.cmd("DATA") == ["354 OK"]
    replies = s.send("Subject: x\r\n\r\nFrom here\r\n.\r\n")
    sid = replies[0].split()[3]
    assert replies == [f"250 2.0.0 <user2@gponlab.local> {sid} Saved",
                       f"250 2.0.0 <User1@GPONLAB.local> {sid}:R2 Saved",
                       f"250 2.0.0 <user2+lab@gponlab.local> {sid}:R4 Saved"]
    # a second transaction on the same connection
    s.send("MAIL FROM:<a@b>\r\nRCPT TO:<user2@gponlab.local>\r\nRCPT TO:<user1@gponlab.local>\r\n")
    s.cmd("DATA")
    assert s.send("Subject: y\r\n\r\nbody\r\n.\r\n") == [
        f"250 2.0.0 <user2@gponlab.local> {sid}:T2 Saved",
        f"250 2.0.0 <user1@gponlab.local> {sid}:T2:R2 Saved"]
    log = s.log()
    pid = s.service.pid
    assert log[1:] == [
        f"lmtp(user2)<{pid}><{sid}>: msgid=unspecified: saved mail to INBOX",
        f"lmtp(user1)<{pid}><{sid}:R2>: msgid=unspecified: saved mail to INBOX",
        f"lmtp(user2)<{pid}><{sid}:R4>: msgid=unspecified: saved mail to INBOX",
        f"lmtp(user2)<{pid}><{sid}:T2>: msgid=unspecified: saved mail to INBOX",
        f"lmtp(user1)<{pid}><{sid}:T2:R2>: msgid=unspecified: saved mail to INBOX"]
    mbox = s.mbox("user2")
    # null sender; several recipients: no Delivered-To, no "for"
    assert mbox.startswith("From MAILER-DAEMON  ")
    assert ("Return-Path: <>\nReceived: from mail.gponlab.local\n\tby mail.gponlab.local with "
            f"LMTP\n\tid {sid}\n\t(envelope-from <>); ") in mbox
    assert "Delivered-To" not in mbox
    assert f"\tid {sid}:T2\n\t(envelope-from <a@b>); " in mbox
    assert len(open_store(s.root, "user2").folder("INBOX").sync().messages) == 3


@pytest.mark.parametrize("line, reply", [
    ("LHLO", "501 Missing hostname"),
    ("HELO x", "500 5.5.1 Unknown command"),
    ("EHLO x", "500 5.5.1 Unknown command"),
    ("FOO", "500 5.5.1 Unknown command"),
    ("", "500 5.5.1 Unknown command"),
    ("NO0P", "500 5.5.2 Invalid command syntax"),
    ("Y" * 33, "500 5.5.2 Invalid command syntax"),
    ("NOOP  x", "500 5.5.2 Invalid command syntax"),
    ("VRFY " + "y" * 4097, "500 5.5.2 Line too long"),
    ("NOOP x", "250 2.0.0 OK"),
    ("noop", "250 2.0.0 OK"),
    ("VRFY user2", "252 2.3.3 Try RCPT instead"),
    ("VRFY", "501 5.5.4 Invalid parameters"),
    ("VRFY a b", "501 5.5.4 Invalid string parameter: Invalid character in string"),
    ("STARTTLS", "500 5.5.1 Unknown command"),           # (no certificate: ssl = no)
    ("RSET x", "501 5.5.4 Invalid parameters"),
    ("QUIT x", "501 5.5.4 Invalid parameters"),
    ("DATA", "503 5.5.0 MAIL needed first"),
    ("RCPT TO:<user2@gponlab.local>", "503 5.5.0 MAIL needed first"),
    ("MAIL", "501 5.5.4 Invalid parameters"),
    ("MAIL TO:<a@b>", "501 5.5.4 Invalid parameters"),
    ("MAIL FROM:user1@x", "501 5.5.4 Invalid FROM: Missing '<' at beginning of path"),
    ("MAIL FROM: <a@b>", "501 5.5.4 Invalid FROM: Unexpected whitespace before path"),
    ("MAIL FROM:<a@b", "501 5.5.4 Invalid FROM: Missing '>' at end of path"),
    ("MAIL FROM:<a b@c>", "501 5.5.4 Invalid FROM: Invalid character in localpart"),
    ("MAIL FROM:<a@b> SIZE=400", "555 5.5.4 Unsupported parameters"),
    ("MAIL FROM:<a@b> FOO=bar", "555 5.5.4 Unsupported parameters"),
    ("MAIL FROM:<a@b> BODY=BINARYMIME", "555 5.5.4 Unsupported mail BODY type"),
    ("MAIL FROM:<a@b> BODY=7BIT", "250 2.1.0 OK"),
    ("mail from:<a@b> body=8bitmime", "250 2.1.0 OK"),
])
def test_replies_as_dovecot_gives_them(s, line, reply):
    assert s.cmd(line) == [reply]


@pytest.mark.parametrize("line, reply", [
    ("RCPT TO:", "501 5.5.4 Invalid TO: Path is empty string"),
    ("RCPT TO:<>", "501 5.5.4 Invalid TO: Null path not allowed"),
    ("RCPT TO:user2@gponlab.local", "501 5.5.4 Invalid TO: Missing '<' at beginning of path"),
    ("RCPT TO: <user2@gponlab.local>", "501 5.5.4 Invalid TO: Unexpected whitespace before path"),
    ("RCPT TO:<a@>", "501 5.5.4 Invalid TO: Missing domain after '@'"),
    ("RCPT TO:<user2@gponlab.local> NOTIFY=NEVER", "555 5.5.4 Unsupported parameters"),
    ("RCPT TO:<user2@gponlab.local> ORCPT=rfc822;user2@gponlab.local", "250 2.1.5 OK"),
    ("RCPT TO:<@x:user2@gponlab.local>", "250 2.1.5 OK"),
    ("rcpt to:<user2@other.org>", "250 2.1.5 OK"),
    ("RCPT TO:<postmaster>", "550 5.1.1 <postmaster> User doesn't exist: postmaster"),
    ("RCPT TO:<user2@[127.0.0.1]>",
     "550 5.1.1 <user2@[127.0.0.1]> User doesn't exist: user2@[127.0.0.1]"),
    ("RCPT TO:<nosuch+x@GPONLAB.local>",
     "550 5.1.1 <nosuch+x@GPONLAB.local> User doesn't exist: nosuch@GPONLAB.local"),
    ("MAIL FROM:<c@d>", "503 5.5.0 MAIL already given"),
    ("DATA x", "501 5.5.4 Invalid parameters"),
])
def test_rcpt_replies_as_dovecot_gives_them(s, line, reply):
    assert s.cmd("MAIL FROM:<a@b>") == ["250 2.1.0 OK"]
    assert s.cmd(line) == [reply]


def test_bdat(s):
    s.send("MAIL FROM:<a@b>\r\nRCPT TO:<user2@gponlab.local>\r\n")
    assert s.send("BDAT 12\r\nSubject: x\r\n") == ["250 2.0.0 Added 12 octets"]
    [saved] = s.send("BDAT 8 LAST\r\n\r\nhola\r\n")
    assert re.fullmatch(rf"250 2\.0\.0 <user2@gponlab\.local> {SID} Saved", saved)
    [msg] = open_store(s.root, "user2").folder("INBOX").sync().messages
    assert msg.body == b"hola\n" and b"Subject: x\n" in msg.headers
    bdat = [st for st in s.sink.steps if st.kind == "reply" and st.verb == "BDAT"]
    assert [st.key for st in bdat] == ["lmtp.reply.BDAT.250-2.0.0"] * 2


def test_client_hangs_up(s):
    s.cmd("MAIL FROM:<a@b>")
    s.proto.connectionLost(None)
    assert s.log()[-1] == (f"lmtp({s.service.pid}): Disconnect from local: Connection closed "
                           "(state=MAIL FROM)")


def test_save_failure(s):
    (s.root / "var/mail").mkdir(parents=True)
    (s.root / "var/mail/user2").mkdir()                 # not a file: cannot be opened
    s.send("MAIL FROM:<a@b>\r\nRCPT TO:<user2@gponlab.local>\r\nDATA\r\n")
    [failed] = s.send("Subject: x\r\n\r\nhola\r\n.\r\n")
    assert re.fullmatch(r"451 4\.2\.0 <user2@gponlab\.local> Internal error occurred\. Refer to "
                        r"server log for more information\. \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]",
                        failed), failed
    assert "msgid=unspecified: save failed to INBOX: " in s.log()[-1]


def test_the_labs_own_client_narrates_the_wire(tmp_path):
    path = tmp_path / "lab/var/spool/postfix/private/dovecot-lmtp"
    handle = inprocess.announce(path, "lmtp-test-7")
    s = Session(tmp_path, path=path)
    inprocess.withdraw(handle)
    assert s.out() == ["220 mail.gponlab.local Dovecot (Debian) ready."]
    s.send("LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<user2@gponlab.local>\r\nDATA\r\n")
    s.send("Subject: x\r\n\r\nhola\r\n.\r\nQUIT\r\n")
    s.proto.connectionLost(None)
    assert [(st.session, st.kind, st.verb) for st in s.sink.steps] == [
        ("lmtp-test-7", "event", "CONNECTED"), ("lmtp-test-7", "event", "SAVED"),
        ("lmtp-test-7", "event", "DISCONNECTED")]
    assert inprocess.claim(path) is None


def test_names_and_ids():
    assert format_username("%Lu", "User2@GPONLAB.local") == "user2@gponlab.local"
    assert format_username("%Ln", "User2@GPONLAB.local") == "user2"
    assert format_username("%n@%Ld", "User2@GPONLAB.local") == "User2@gponlab.local"
    assert format_username("%u%%", "user2") == "user2%"
    assert strip_detail("user2+lab+x@gponlab.local", "+") == "user2@gponlab.local"
    assert strip_detail("user2", "+") == "user2"
    assert parse_path("FROM:<>", "FROM", null_ok=True) == ("", "", "")
    assert len(session_guid(1234, "mail.gponlab.local", 1796619353.5)) == 22
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}",
                        received_date(1796619353))


def test_idle_timeout(s):
    s.proto.timeoutConnection()
    assert s.out() == ["421 4.4.2 mail.gponlab.local Disconnected for inactivity"]
    s.proto.connectionLost(None)
    assert s.log()[-1] == (f"lmtp({s.service.pid}): Disconnect from local: Disconnected for "
                           "inactivity (state=READY)")


def test_a_client_that_never_greets_leaves_in_state_greeting(tmp_path):
    session = Session(tmp_path)
    session.out()
    assert session.cmd("VRFY user2") == ["252 2.3.3 Try RCPT instead"]
    assert session.cmd("QUIT") == ["221 2.0.0 Bye"]
    session.proto.connectionLost(None)
    assert session.log()[-1] == (f"lmtp({session.service.pid}): Disconnect from local: "
                                 "Logged out (state=GREETING)")


def test_client_hangs_up_in_data(s):
    assert s.send("MAIL FROM:<a@b>\r\nRCPT TO:<user2@gponlab.local>\r\nDATA\r\n"
                  "Subject: x\r\n") == ["250 2.1.0 OK", "250 2.1.5 OK", "354 OK"]
    s.proto.connectionLost(None)
    assert s.log()[-1] == (f"lmtp({s.service.pid}): Disconnect from local: Connection closed "
                           "(unfinished DATA command) (state=DATA)")


class _TLSTransport(StringTransport):
    """A transport that can start TLS (what a Unix socket of Twisted's can)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.tls_started = None

    def startTLS(self, ctx):
        self.tls_started = ctx


def test_starttls_when_dovecot_has_a_certificate(tmp_path):
    from zope.interface import directlyProvides
    from twisted.internet.interfaces import ITLSTransport

    session = Session(tmp_path)
    session.service.tls_options = options = object()
    session.proto = DovecotLmtp(session.service, session.path)
    session.transport = _TLSTransport(peerAddress=UNIXAddress(None),
                                      hostAddress=UNIXAddress(str(session.path)))
    directlyProvides(session.transport, ITLSTransport)
    session.proto.makeConnection(session.transport)
    session.out()
    assert session.cmd("LHLO pc1") == LHLO[:-1] + ["250-PIPELINING", "250 STARTTLS"]
    assert session.cmd("STARTTLS") == ["220 2.0.0 Begin TLS negotiation now."]
    assert session.transport.tls_started is options
    assert session.cmd("LHLO pc1") == LHLO
    assert session.cmd("STARTTLS") == ["502 5.5.1 TLS is already active."]
