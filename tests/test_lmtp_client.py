"""Postfix's lmtp(8) client as a protocol unit: an in-memory reactor and
transport play Dovecot's side with the replies real Dovecot 2.3.19 gives
(docs/lmtp.md); the bytes the client writes, its verdicts, its log lines and
its Steps are checked."""

from __future__ import annotations

import re

import pytest
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gponsim.server.maillog import MailLog
from gponsim.server.postfix.lmtp import LmtpClient, LmtpSettings, MailboxTransport
from gponsim.wire.smtp import dot_stuffed
from gponsim.server.postfix.queuefile import Envelope
from gponsim.server.postfix.transport import DeliveryRequest
from gponsim.sinks.memory import ListSink

MESSAGE = (b"Received: from pc1 (unknown [127.0.0.1])\n\tby mail.gponlab.local (Postfix) with ESMTP"
           b" id 4F1A2C0D9E\n\tfor <user2@gponlab.local>; Mon,  1 Jan 2024 12:00:00 +0000 (UTC)\n"
           b"Subject: hola\nMessage-ID: <abc@pc1>\n\n.leading dot\nbody\n")
SAVED = "250 2.0.0 <user2@gponlab.local> KFJXOFk8FmvRdgAAg+zDdQ Saved"
PITFALL = "550 5.1.1 <user2@gponlab.local> User doesn't exist: user2@gponlab.local"
LHLO_REPLY = ("250-mail.gponlab.local\r\n250-8BITMIME\r\n250-CHUNKING\r\n"
              "250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n")


class Harness:
    def __init__(self, tmp_path, rcpts=("user2@gponlab.local",), sender="user1@gponlab.local",
                 content=MESSAGE, delegate=False, spool=True):
        self.reactor = MemoryReactorClock()
        if spool:
            (tmp_path / "lab/var/spool/postfix/private").mkdir(parents=True)
        self.sink = ListSink()
        self.log_path = tmp_path / "mail.log"
        self.client = LmtpClient(LmtpSettings(lab_root=tmp_path / "lab"), emit=self.sink.step,
                                 log=MailLog(self.log_path), reactor=self.reactor,
                                 clock=self.reactor.seconds)
        env = Envelope(sender=sender, recipients=list(rcpts), session="smtp-test-1",
                       arrival=self.reactor.seconds())
        request = DeliveryRequest("4F1A2C0D9E", env, [(i, r, r) for i, r in enumerate(rcpts)],
                                  content, self.reactor.seconds(),
                                  nexthop="unix:private/dovecot-lmtp")
        agent = MailboxTransport(self.client, log=self.client.log, emit=self.sink.step) \
            if delegate else self.client
        self.result = []
        agent.deliver(request).addCallback(self.result.extend)
        self.transport = None

    def connect(self):
        address, factory, _timeout, _pid = self.reactor.unixClients[-1]
        assert address.endswith("/dovecot-lmtp")
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def fail_connect(self, exc):
        _address, factory, _timeout, _pid = self.reactor.unixClients[-1]
        factory.clientConnectionFailed(None, Failure(exc))

    def server(self, text: str) -> str:
        """Dovecot says ``text``; returns what the client wrote back."""
        self.proto.dataReceived(text.encode())
        out = self.transport.value().decode()
        self.transport.clear()
        return out

    def log(self) -> list[str]:
        return [line.split("]: ", 1)[1] for line in self.log_path.read_text().splitlines()]

    def lmtp_steps(self):
        return [s for s in self.sink.steps if s.proto == "lmtp" and s.kind != "event"]


def test_one_recipient_as_postfix_does_it(tmp_path):
    h = Harness(tmp_path)
    h.connect()
    assert h.server("220 mail.gponlab.local Dovecot (Debian) ready.\r\n") == \
        "LHLO mail.gponlab.local\r\n"
    # PIPELINING: MAIL, RCPT and DATA in one write, no SIZE (not announced)
    assert h.server(LHLO_REPLY) == ("MAIL FROM:<user1@gponlab.local>\r\n"
                                    "RCPT TO:<user2@gponlab.local>\r\nDATA\r\n")
    # the message, dot-stuffed, then the dot and QUIT in the same write
    assert h.server("250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 OK\r\n") == \
        dot_stuffed(MESSAGE).decode() + ".\r\nQUIT\r\n"
    assert "\r\n..leading dot\r\n" in dot_stuffed(MESSAGE).decode()
    assert h.server(SAVED + "\r\n221 2.0.0 Bye\r\n") == ""
    [status] = h.result
    assert (status.index, status.status, status.dsn, status.reason) == (0, "sent", "2.0.0", SAVED)
    [line] = h.log()
    assert re.fullmatch(
        r"4F1A2C0D9E: to=<user2@gponlab\.local>, relay=mail\.gponlab\.local\[private/dovecot-lmtp\], "
        r"delay=\S+, delays=\S+/\S+/\S+/\S+, dsn=2\.0\.0, status=sent \(" + re.escape(SAVED) + r"\)",
        line), line
    assert h.log_path.read_text().split()[4].startswith("postfix/lmtp[")
    steps = h.lmtp_steps()
    assert [(s.src, s.dst, s.kind, s.verb) for s in steps] == [
        ("dovecot-lmtp", "lmtp", "reply", "CONNECT"),
        ("lmtp", "dovecot-lmtp", "command", "LHLO"), ("dovecot-lmtp", "lmtp", "reply", "LHLO"),
        ("lmtp", "dovecot-lmtp", "command", "MAIL"), ("lmtp", "dovecot-lmtp", "command", "RCPT"),
        ("lmtp", "dovecot-lmtp", "command", "DATA"),
        ("dovecot-lmtp", "lmtp", "reply", "MAIL"), ("dovecot-lmtp", "lmtp", "reply", "RCPT"),
        ("dovecot-lmtp", "lmtp", "reply", "DATA"),
        ("lmtp", "dovecot-lmtp", "data", "DATA"), ("lmtp", "dovecot-lmtp", "command", "QUIT"),
        ("dovecot-lmtp", "lmtp", "reply", "DATA"), ("dovecot-lmtp", "lmtp", "reply", "QUIT")]
    assert {s.session for s in steps} == {steps[0].session}
    assert steps[0].session.startswith("lmtp-")
    assert [s.dir for s in steps[:2]] == ["s2c", "c2s"]
    assert steps[1].key == "lmtp.cmd.LHLO" and steps[2].key == "lmtp.reply.LHLO.250"
    assert steps[-2].key == "lmtp.reply.DATA.250-2.0.0"
    sent = [s for s in h.sink.steps if s.verb == "SENT"]
    assert len(sent) == 1 and sent[0].key == "lmtp.event.SENT" and sent[0].meta["qid"] == "4F1A2C0D9E"


def test_one_reply_per_accepted_recipient(tmp_path):
    h = Harness(tmp_path, rcpts=("user2@gponlab.local", "nosuch@gponlab.local", "user1@gponlab.local"))
    h.connect()
    h.server("220 mail.gponlab.local Dovecot (Debian) ready.\r\n")
    assert h.server(LHLO_REPLY).count("RCPT TO:") == 3
    out = h.server("250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 <nosuch@gponlab.local> User doesn't "
                   "exist: nosuch@gponlab.local\r\n250 2.1.5 OK\r\n354 OK\r\n")
    assert out.endswith(".\r\nQUIT\r\n")
    h.server(SAVED + "\r\n452 4.2.2 <user1@gponlab.local> Quota exceeded (mailbox for user is full)"
             "\r\n221 2.0.0 Bye\r\n")
    assert [(r.index, r.status, r.dsn) for r in sorted(h.result, key=lambda r: r.index)] == [
        (0, "sent", "2.0.0"), (1, "bounced", "5.1.1"), (2, "deferred", "4.2.2")]
    log = h.log()
    assert log[0].endswith("dsn=5.1.1, status=bounced (host mail.gponlab.local[private/dovecot-lmtp] "
                           "said: 550 5.1.1 <nosuch@gponlab.local> User doesn't exist: "
                           "nosuch@gponlab.local (in reply to RCPT TO command))")
    assert log[2].endswith("status=deferred (host mail.gponlab.local[private/dovecot-lmtp] said: "
                           "452 4.2.2 <user1@gponlab.local> Quota exceeded (mailbox for user is full) "
                           "(in reply to end of DATA command))")


def test_every_recipient_refused_rset_and_quit(tmp_path):
    h = Harness(tmp_path, sender="")
    h.connect()
    h.server("220 mail.gponlab.local Dovecot (Debian) ready.\r\n")
    assert h.server(LHLO_REPLY).startswith("MAIL FROM:<>\r\n")
    assert h.server(f"250 2.1.0 OK\r\n{PITFALL}\r\n503 5.5.0 No valid recipients\r\n") == \
        "RSET\r\nQUIT\r\n"
    h.server("250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")
    [status] = h.result
    assert (status.status, status.dsn) == ("bounced", "5.1.1")
    bounced = [s for s in h.sink.steps if s.verb == "BOUNCED"]
    assert bounced[0].key == "lmtp.event.BOUNCED" and "User doesn't exist" in bounced[0].line
    pitfall = next(s for s in h.lmtp_steps() if s.code == 550)
    assert pitfall.key == "lmtp.reply.550-5.1.1"


def test_8bit_messages_say_so(tmp_path):
    h = Harness(tmp_path, content=b"Subject: x\nContent-Transfer-Encoding: 8bit\n\nhola\n")
    h.connect()
    h.server("220 mail.gponlab.local Dovecot (Debian) ready.\r\n")
    assert h.server(LHLO_REPLY).startswith("MAIL FROM:<user1@gponlab.local> BODY=8BITMIME\r\n")


@pytest.mark.parametrize("exc, why", [
    (error.ConnectError(osError=2), "No such file or directory"),
    (error.ConnectionRefusedError(111), "Connection refused"),
])
def test_socket_missing_or_refused_defers(tmp_path, exc, why):
    h = Harness(tmp_path)
    h.fail_connect(exc)
    [status] = h.result
    assert (status.status, status.dsn) == ("deferred", "4.4.1")
    [line] = h.log()
    assert line == ("4F1A2C0D9E: to=<user2@gponlab.local>, relay=none, delay=0, delays=0/0/0/0, "
                    f"dsn=4.4.1, status=deferred (connect to mail.gponlab.local"
                    f"[private/dovecot-lmtp]: {why})")
    assert [s.verb for s in h.sink.steps] == ["CONNECT", "CONNECT_FAILED", "DEFERRED"]


def test_no_spool_folder_at_all(tmp_path):
    long_root = tmp_path / ("x" * 80)        # past a socket address's length: /proc/self/fd
    h = Harness(long_root, spool=False)
    [status] = h.result
    assert status.status == "deferred"
    assert h.log()[0].endswith("(connect to mail.gponlab.local[private/dovecot-lmtp]: "
                               "No such file or directory)")


def test_connection_lost_after_the_dot(tmp_path):
    h = Harness(tmp_path)
    h.connect()
    h.server("220 mail.gponlab.local Dovecot (Debian) ready.\r\n")
    h.server(LHLO_REPLY)
    h.server("250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 OK\r\n")
    h.proto.connectionLost(Failure(error.ConnectionDone()))
    [status] = h.result
    assert (status.status, status.dsn) == ("deferred", "4.4.2")
    assert h.log()[0].endswith("status=deferred (lost connection with mail.gponlab.local"
                               "[private/dovecot-lmtp] while sending end of data -- message may "
                               "be sent more than once)")


def test_greeting_timeout(tmp_path):
    h = Harness(tmp_path)
    h.connect()
    h.transport.abortConnection = lambda: h.proto.connectionLost(Failure(error.ConnectionAborted()))
    h.reactor.advance(300)
    [status] = h.result
    assert status.status == "deferred"
    assert h.log()[0].endswith("(lost connection with mail.gponlab.local[private/dovecot-lmtp] "
                               "while receiving the initial server greeting)")


def test_local_passes_each_recipient_alone(tmp_path):
    h = Harness(tmp_path, rcpts=("user2@gponlab.local", "user1@gponlab.local"), delegate=True)
    for rcpt in ("user2@gponlab.local", "user1@gponlab.local"):
        h.connect()
        h.server("220 mail.gponlab.local Dovecot (Debian) ready.\r\n")
        assert h.server(LHLO_REPLY) == ("MAIL FROM:<user1@gponlab.local>\r\n"
                                        f"RCPT TO:<{rcpt}>\r\nDATA\r\n")
        h.server("250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 OK\r\n")
        h.server(f"250 2.0.0 <{rcpt}> KFJXOFk8FmvRdgAAg+zDdQ Saved\r\n221 2.0.0 Bye\r\n")
    assert len(h.reactor.unixClients) == 2
    assert [r.status for r in h.result] == ["sent", "sent"]
    log = h.log()
    assert log[0] == "4F1A2C0D9E: passing <user2@gponlab.local> to transport=lmtp"
    assert log[2] == "4F1A2C0D9E: passing <user1@gponlab.local> to transport=lmtp"
    assert "postfix/local[" in h.log_path.read_text().splitlines()[0]
    passed = [s for s in h.sink.steps if s.verb == "PASS"]
    assert [(s.src, s.dst, s.key) for s in passed] == [("local", "lmtp", "delivery.event.PASS")] * 2
