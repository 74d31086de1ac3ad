"""smtpd as a protocol unit: lines in, Postfix's replies out, over an in-memory transport."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from gponsim.server.postfix.mta import Mta, QueueSettings
from gponsim.server.postfix.restrictions import parse_networks
from gponsim.server.postfix.smtpd import Smtpd, SmtpdContext, SmtpdSettings
from gponsim.sinks.memory import ListSink

from dovecot_memory import TLSStringTransport


class Session:
    def __init__(self, tmp_path, tls_options=None, implicit_tls=False, **settings):
        self.logged: list[tuple[str, str]] = []
        self.steps = ListSink()
        mta = Mta(tmp_path / "lab", QueueSettings(mydestination=frozenset({"gponlab.local"})),
                  user_exists=lambda u: u in {"user1", "user2"}, emit=self.steps.step)
        # No reactor runs here: cleanup's file work runs inline.
        mta.cleanup.in_thread = lambda fn, *a, **kw: defer.maybeDeferred(fn, *a, **kw)
        context = SmtpdContext(emit=self.steps.step, log=lambda prog, text: self.logged.append((prog, text)),
                               auth=None, queue=mta.cleanup, mechanisms=["PLAIN", "LOGIN"],
                               local_user_exists=lambda u: u in {"user1", "user2"})
        base = dict(mynetworks=parse_networks(["127.0.0.0/8"]))
        base.update(settings)
        self.proto = Smtpd(context, SmtpdSettings(**base), tls_options=tls_options,
                           implicit_tls=implicit_tls)
        self.transport = TLSStringTransport(peerAddress=_addr("192.168.1.50"),
                                            hostAddress=_addr("192.168.40.50"))
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


def _addr(host):
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", host, 12345)


@pytest.fixture
def s(tmp_path):
    session = Session(tmp_path)
    assert session.out() == ["220 mail.gponlab.local ESMTP Postfix (Debian/GNU)"]
    return session


def test_ehlo_without_tls_transport_offers_no_starttls(s):
    # StringTransport cannot start TLS, so the extension is not offered, as Postfix
    # does when TLS is unavailable.
    assert s.cmd("EHLO pc1") == ["250-mail.gponlab.local", "250-PIPELINING", "250-SIZE 10240000",
                                "250-VRFY", "250-ETRN", "250-ENHANCEDSTATUSCODES", "250-8BITMIME",
                                "250-DSN", "250-SMTPUTF8", "250 CHUNKING"]
    assert s.cmd("STARTTLS") == ["454 4.7.0 TLS not available due to local problem"]


def test_wrappermode_banner_follows_the_tls_handshake(tmp_path):
    """smtps (465, smtpd_tls_wrappermode = yes): smtpd_proto turns TLS on
    before anything else, so the 220 banner comes after the handshake."""
    s = Session(tmp_path, tls_options=object(), implicit_tls=True)
    assert s.out() == []
    assert [(st.verb, st.line) for st in s.steps.steps] == [
        ("CONNECT", "connect from unknown[192.168.1.50]")]
    s.transport.tls_on = True
    s.proto.handshakeCompleted()
    assert s.out() == ["220 mail.gponlab.local ESMTP Postfix (Debian/GNU)"]
    assert [(st.proto, st.verb) for st in s.steps.steps] == [
        ("smtp", "CONNECT"), ("tls", "IMPLICIT"), ("smtp", "CONNECT")]
    assert s.steps.steps[2].code == 220


def test_wrappermode_client_refusing_the_certificate_gets_no_banner(tmp_path):
    from OpenSSL import SSL
    from twisted.python.failure import Failure

    s = Session(tmp_path, tls_options=object(), implicit_tls=True)
    s.proto.connectionLost(Failure(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")])))
    assert s.out() == []
    assert [st.verb for st in s.steps.steps] == ["CONNECT", "TLSFAIL", "DISCONNECT"]
    assert ("postfix/smtpd", "SSL_accept error from unknown[192.168.1.50]: -1") in s.logged


def test_size_zero_and_vrfy_disabled(tmp_path):
    s = Session(tmp_path, message_size_limit=0, disable_vrfy=True)
    s.out()
    words = [line[4:] for line in s.cmd("EHLO pc1")]
    assert "SIZE" in words and "VRFY" not in words
    assert s.cmd("VRFY user2") == ["502 5.5.1 VRFY command is disabled"]


def test_lines_with_bare_lf_and_pipelined_in_one_segment(s):
    out = s.send("HELO pc1\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user2@gponlab.local>\r\nRSET\r\n")
    assert out == ["250 mail.gponlab.local", "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok"]


def test_outsider_relay_denied_and_logged(s):
    s.cmd("EHLO pc1")
    s.cmd("MAIL FROM:<a@example.org>")
    assert s.cmd("RCPT TO:<bob@gmail.com>") == ["454 4.7.1 <bob@gmail.com>: Relay access denied"]
    assert ("postfix/smtpd", "NOQUEUE: reject: RCPT from unknown[192.168.1.50]: 454 4.7.1 "
            "<bob@gmail.com>: Relay access denied; from=<a@example.org> to=<bob@gmail.com> "
            "proto=ESMTP helo=<pc1>") in s.logged


def test_bare_local_part_is_qualified_with_myorigin(s):
    s.cmd("HELO pc1")
    s.cmd("MAIL FROM:<a@example.org>")
    assert s.cmd("RCPT TO:<user2>") == ["250 2.1.5 Ok"]
    assert s.proto.recipients == ["user2@gponlab.local"]
    qf = s.proto.queue_file
    assert qf.envelope.orig_recipients == ["user2"] and qf.state == "open"
    s.cmd("QUIT")
    assert s.proto.queue_file is None and qf.state == "aborted"  # thrown away on QUIT


def test_auth_on_port_25_and_counts_in_disconnect_line(s):
    s.cmd("EHLO pc1")
    assert s.cmd("AUTH PLAIN AHVzZXIxAHBhc3M=") == ["503 5.5.1 Error: authentication not enabled"]
    s.cmd("NOOP")
    s.cmd("QUIT")
    s.proto.connectionLost()
    assert s.logged[-1] == ("postfix/smtpd",
                            "disconnect from unknown[192.168.1.50] ehlo=1 auth=0/1 noop=1 quit=1 commands=3/4")


def test_lost_connection_is_logged_with_last_command(s):
    s.cmd("EHLO pc1")
    s.cmd("MAIL FROM:<a@example.org>")
    s.proto.connectionLost()
    assert ("postfix/smtpd", "lost connection after MAIL from unknown[192.168.1.50]") in s.logged


def test_hanging_up_in_the_message_logs_what_cleanup_had(s, tmp_path):
    """cleanup logs the Message-ID of the partial message once its header is
    whole (here the blank line came); a chunk not read whole never reached it."""
    s.cmd("EHLO pc1")
    s.cmd("MAIL FROM:<a@example.org>")
    s.cmd("RCPT TO:<user2@gponlab.local>")
    assert s.send("BDAT 25\r\nMessage-ID: <one@pc1>\r\n\r\n") == ["250 2.0.0 Ok: 25 bytes"]
    s.send("BDAT 30\r\nMessage-ID: <two@pc1>\r\n")
    s.proto.connectionLost()
    assert s.logged[-2:] == [
        ("postfix/smtpd", "lost connection after BDAT (48 bytes) from unknown[192.168.1.50]"),
        ("postfix/smtpd", "disconnect from unknown[192.168.1.50] ehlo=1 mail=1 rcpt=1 bdat=1/2 "
                          "commands=4/5")]
    cleanup = [line.split(": ", 1)[1] for line in
               (tmp_path / "lab/var/log/mail.log").read_text().splitlines() if "cleanup[" in line]
    assert len(cleanup) == 1 and cleanup[0].endswith(": message-id=<one@pc1>")


def test_submission_gates_everything_before_tls(tmp_path):
    s = Session(tmp_path, service="submission", syslog_name="postfix/submission", tls_level="encrypt",
                sasl_enabled=True, client_restrictions=["permit_sasl_authenticated", "reject"],
                reject_unlisted_recipient=False)
    s.out()
    words = [line[4:] for line in s.cmd("EHLO pc1")]
    assert not any(w.startswith("AUTH") for w in words)
    assert s.cmd("AUTH PLAIN") == ["530 5.7.0 Must issue a STARTTLS command first"]
    assert s.cmd("HELP") == ["500 5.5.2 Error: command not recognized"]


def test_message_too_big_in_data(tmp_path):
    s = Session(tmp_path, message_size_limit=100)
    s.out()
    s.cmd("HELO pc1")
    s.cmd("MAIL FROM:<a@example.org>")
    s.cmd("RCPT TO:<user2@gponlab.local>")
    assert s.cmd("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
    assert s.send("Subject: big\r\n\r\n" + "x" * 200 + "\r\n.\r\n") == ["552 5.3.4 Error: message file too big"]
    assert s.cmd("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]  # the session goes on


def test_every_step_has_commentary(s):
    s.cmd("EHLO pc1")
    s.cmd("FOO")
    s.cmd("MAIL FROM:<a@example.org>")
    s.cmd("RCPT TO:<nobody@gponlab.local>")
    s.cmd("QUIT")
    for step in s.steps.steps:
        assert step.key, step.line


def test_data_in_any_segmentation_gives_the_same_message(tmp_path):
    # On the wire a client doubles a leading dot (RFC 5321 §4.5.2): "..leading dot"
    # arrives as "...leading dot" and a line holding one dot as "..". A bare LF ends
    # a line too. The message must come out the same however TCP splits it.
    wire_text = "Subject: dots\r\n\r\n...leading dot\r\n..\r\nnot the end\r\nlast\n.\r\n"
    results = []
    for size in (1, 2, 3, 7, len(wire_text)):
        s = Session(tmp_path / str(size))
        s.out()
        s.cmd("HELO pc1")
        s.cmd("MAIL FROM:<a@example.org>")
        s.cmd("RCPT TO:<user2@gponlab.local>")
        assert s.cmd("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
        captured = []
        # Catch the message where smtpd hands it to cleanup (the queue itself is
        # tested in test_queue.py and end to end in test_smtp_integration.py).
        s.proto._finish_message = lambda message, verb, **kw: captured.append(message)
        for i in range(0, len(wire_text), size):
            s.proto.dataReceived(wire_text[i:i + size].encode())
        assert s.proto.mode == "COMMAND"
        results.append(captured[0])
    assert all(r == results[0] for r in results)
    assert results[0] == b"Subject: dots\n\n..leading dot\n.\nnot the end\nlast\n"


# -- anvil: smtpd_client_connection_count_limit / _rate_limit (checked against
#    Debian's Postfix 3.7.11, docs/hostile.md)

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _anvil_sessions(tmp_path, clock, client="192.168.1.50", **settings):
    from gponsim.server.postfix.anvil import Anvil

    anvil = Anvil(clock)
    logged: list[tuple[str, str]] = []
    mta = Mta(tmp_path / "lab", QueueSettings(mydestination=frozenset({"gponlab.local"})),
              user_exists=lambda u: False)
    context = SmtpdContext(log=lambda prog, text: logged.append((prog, text)), queue=mta.cleanup,
                           local_user_exists=lambda u: False, anvil=anvil)
    base = dict(mynetworks=parse_networks(["127.0.0.0/8"]),
                event_limit_exceptions=parse_networks(["127.0.0.0/8"]))
    base.update(settings)

    def connect(ip=client):
        proto = Smtpd(context, SmtpdSettings(**base))
        transport = StringTransport(peerAddress=_addr(ip), hostAddress=_addr("192.168.40.50"))
        proto.makeConnection(transport)
        return proto, transport
    return anvil, logged, connect


def test_the_51st_connection_from_one_client_gets_421(tmp_path):
    clock = Clock()
    anvil, logged, connect = _anvil_sessions(tmp_path, clock)
    open_ = [connect() for _ in range(50)]
    assert all(t.value().startswith(b"220 ") for _p, t in open_)
    proto, transport = connect()
    assert transport.value() == (b"421 4.7.0 mail.gponlab.local Error: too many connections "
                                 b"from 192.168.1.50\r\n")
    assert transport.disconnecting
    proto.connectionLost(None)
    assert [text for _prog, text in logged[-3:]] == [
        "connect from unknown[192.168.1.50]",
        "warning: Connection concurrency limit exceeded: 51 from unknown[192.168.1.50] "
        "for service smtp",
        "disconnect from unknown[192.168.1.50] commands=0/0"]
    # another client is not affected; one closing makes room again
    assert connect("192.168.1.51")[1].value().startswith(b"220 ")
    open_[0][0].connectionLost(None)
    assert connect()[1].value().startswith(b"220 ")


def test_mynetworks_clients_are_exempt_by_default(tmp_path):
    anvil, logged, connect = _anvil_sessions(tmp_path, Clock(), client="127.0.0.5",
                                             connection_count_limit=2)
    assert all(connect()[1].value().startswith(b"220 ") for _ in range(5))
    assert len(anvil) == 0


def test_the_connection_rate_limit_and_its_time_unit(tmp_path):
    clock = Clock()
    anvil, logged, connect = _anvil_sessions(tmp_path, clock, connection_rate_limit=6)
    for _ in range(6):
        proto, transport = connect()
        assert transport.value().startswith(b"220 ")
        proto.connectionLost(None)
    proto, transport = connect()
    assert transport.value().startswith(b"421 4.7.0 mail.gponlab.local Error: too many connections")
    assert logged[-1][1] == ("warning: Connection rate limit exceeded: 7 from "
                             "unknown[192.168.1.50] for service smtp")
    proto.connectionLost(None)
    clock.now += 61                     # a new anvil_rate_time_unit
    assert connect()[1].value().startswith(b"220 ")


def test_anvil_forgets_clients_a_time_unit_after_their_last_connection(tmp_path):
    clock = Clock()
    anvil, _logged, connect = _anvil_sessions(tmp_path, clock)
    for i in range(200):
        proto, _t = connect(f"10.0.0.{i}")
        proto.connectionLost(None)
    assert len(anvil) == 200
    clock.now += 60
    assert len(anvil) == 0


def test_a_message_summary_shows_encoded_words_as_text():
    """Subject and From as a mail client shows them (RFC 2047), not as they were encoded."""
    from gponsim.wire.smtp import message_step, message_summary

    step = message_step(b"From: =?utf-8?q?=C3=81lvaro?= <alvaro@x>\nSubject: Hola desde la "
                        b"=?utf-8?q?lecci=C3=B3n?= send-mail\n\nHola\n", session="submission-1")
    assert step.line.endswith(", Subject: Hola desde la lección send-mail]"), step.line
    assert step.meta["from"] == "Álvaro <alvaro@x>"
    # What cannot be decoded stays as it came; a hidden line break does not reach the line.
    assert message_summary(b"Subject: =?nosuchcharset?q?x?=\n\n")["subject"] == "=?nosuchcharset?q?x?="
    assert message_summary(b"Subject: =?utf-8?q?a=0Ab?=\n\n")["subject"] == "a b"


@pytest.mark.parametrize("message, end", [
    (b"Subject: x\n\nbody\n", 10),                      # LF, as the lab stores it
    (b"Subject: x\r\n\r\nbody\r\n\r\nmore\r\n", 11),   # CRLF, as on the wire: the first blank line
    (b"A: 1\n\nB: 2\r\n\r\n", 4),                       # a bare LF blank line before a CRLF one
    (b"A: 1\r\n\r\nB\n\n", 5),                          # and the other way round
    (b"A: 1\r\nB: 2\r\n", -1),                          # no body at all
    (b"", -1),
])
def test_the_header_section_ends_at_the_first_blank_line(message, end):
    from gponsim.wire.smtp import header_end

    assert header_end(message) == end
# ------------------------------------------- unusual clients (tests/test_differential_smtp_edges.py)

def test_mail_parameters_as_postfix_reads_them(s):
    s.cmd("EHLO pc1")
    assert s.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME") == [
        "555 5.5.4 Unsupported option: BODY=BINARYMIME"]
    assert s.cmd("MAIL FROM:<a@example.org> SMTPUTF8=yes") == [
        "555 5.5.4 Unsupported option: SMTPUTF8=yes"]
    assert s.cmd("MAIL FROM:<a@example.org> RET=FULL RET=HDRS") == [
        "501 5.5.4 Bad RET parameter syntax"]
    assert s.cmd("MAIL FROM:<a@example.org> ENVID=a+ZZ") == ["501 5.5.4 Bad ENVID parameter syntax"]
    assert s.cmd("MAIL FROM:<a@example.org> SIZE=99999999999999999999999") == [
        "552 5.3.4 Message size exceeds file system imposed limit"]


def test_a_refused_size_stays_until_rset(s):
    s.cmd("EHLO pc1")
    too_big = ["552 5.3.4 Message size exceeds fixed limit"]
    assert s.cmd("MAIL FROM:<a@example.org> SIZE=10240001") == too_big
    assert s.cmd("MAIL FROM:<a@example.org>") == too_big
    assert s.logged.count(("postfix/smtpd", "NOQUEUE: reject: MAIL from unknown[192.168.1.50]: "
                           "552 5.3.4 Message size exceeds fixed limit; from=<a@example.org> "
                           "proto=ESMTP helo=<pc1>")) == 2
    s.cmd("RSET")
    assert s.cmd("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]


def test_rcpt_dsn_parameters(s):
    s.cmd("EHLO pc1")
    s.cmd("MAIL FROM:<a@example.org>")
    to = "RCPT TO:<user2@gponlab.local>"
    assert s.cmd(f"{to} NOTIFY=FOO") == ["501 5.5.4 Error: Bad NOTIFY parameter syntax"]
    assert ("postfix/smtpd", 'warning: unknown DSN NOTIFY command value "FOO" in "FOO"') in s.logged
    assert s.cmd(f"{to} NOTIFY=NEVER,DELAY") == ["501 5.5.4 Error: Bad NOTIFY parameter syntax"]
    assert s.cmd(f"{to} ORCPT=rfc822;a+4") == ["501 5.5.4 Error: Bad ORCPT parameter syntax"]
    assert s.cmd(f"{to} FOO=bar") == ["555 5.5.4 Unsupported option: FOO=bar"]
    assert s.cmd(f"{to} NOTIFY=success,delay ORCPT=rfc822;user2+40x") == ["250 2.1.5 Ok"]


def test_data_argument_after_the_recipient_check(s):
    s.cmd("EHLO pc1")
    assert s.cmd("DATA x") == ["503 5.5.1 Error: need RCPT command"]
    s.cmd("MAIL FROM:<a@example.org>")
    assert s.cmd("DATA x") == ["554 5.5.1 Error: no valid recipients"]


def test_illegal_addresses_are_logged(s):
    s.cmd("EHLO pc1")
    assert s.cmd("MAIL FROM:<a@x..org>") == ["501 5.1.7 Bad sender address syntax"]
    assert ("postfix/smtpd", "warning: Illegal address syntax from unknown[192.168.1.50] in MAIL "
            "command: <a@x..org>") in s.logged
    before = len(s.logged)
    assert s.cmd("MAIL FROM:<a@x.org") == ["501 5.1.7 Bad sender address syntax"]
    assert len(s.logged) == before                  # a tokenizer error is not logged
    assert s.cmd("MAIL FROM:<a(comment)@example.org>") == ["250 2.1.0 Ok"]
    assert s.proto.sender == "a@example.org"
    assert s.cmd("RCPT TO:<>") == ["501 5.1.3 Bad recipient address syntax"]
    assert s.cmd('RCPT TO:<"user2"@gponlab.local>') == ["250 2.1.5 Ok"]


def test_vrfy_etrn_xclient_and_empty_lines(s):
    s.cmd("EHLO pc1")
    assert s.cmd("VRFY") == ["501 5.5.4 Syntax: VRFY address [SMTPUTF8]"]
    assert s.cmd("VRFY user2 SMTPUTF8") == ["252 2.0.0 user2"]
    assert s.cmd("VRFY nadie") == [
        "550 5.1.1 <nadie>: Recipient address rejected: User unknown in local recipient table"]
    assert ("postfix/smtpd", "NOQUEUE: reject: VRFY from unknown[192.168.1.50]: 550 5.1.1 <nadie>: "
            "Recipient address rejected: User unknown in local recipient table; to=<nadie> "
            "proto=ESMTP helo=<pc1>") in s.logged
    assert s.cmd("ETRN a b") == ["500 Syntax: ETRN domain"]
    assert s.cmd("ETRN -x") == ["501 Error: invalid parameter syntax"]
    assert s.cmd("ETRN @gponlab.local") == ["459 <gponlab.local>: service unavailable"]
    assert ("postfix/smtpd", "warning: reject: ETRN gponlab.local... from "
            "unknown[192.168.1.50]") in s.logged
    assert s.cmd("XCLIENT NAME=pc") == ["550 5.7.0 Error: insufficient authorization"]
    assert s.cmd("XFORWARD") == ["501 5.5.4 Syntax: XFORWARD attribute=value..."]
    assert s.cmd("") == ["500 5.5.2 Error: bad syntax"]
    s.cmd("QUIT")
    s.proto.connectionLost()
    assert s.logged[-1] == ("postfix/smtpd", "disconnect from unknown[192.168.1.50] ehlo=1 "
                            "xclient=0/1 xforward=0/1 vrfy=1/3 etrn=0/3 quit=1 commands=3/10")


def test_malformed_bdat_warning(s):
    s.cmd("EHLO pc1")
    s.cmd("MAIL FROM:<a@example.org>")
    assert s.cmd("bdat 1 x") == ["521 5.5.4 Syntax: BDAT count [LAST]"]
    assert ("postfix/smtpd", "warning: NOQUEUE: malformed BDAT command syntax from "
            "unknown[192.168.1.50]: bdat 1 x") in s.logged


def test_bdat_error_state_until_last(s):
    """A refused chunk (no recipient yet) puts smtpd in its BDAT error state:
    MAIL and DATA are refused after BDAT, chunks are discarded up to LAST."""
    s.cmd("EHLO pc1")
    assert s.send("BDAT 3\r\nabc") == ["503 5.5.1 Error: need RCPT command"]
    assert s.cmd("MAIL FROM:<a@example.org>") == ["503 5.5.1 Error: MAIL after BDAT"]
    assert s.cmd("RCPT TO:<user2@gponlab.local>") == ["503 5.5.1 Error: need MAIL command"]
    assert s.cmd("DATA") == ["503 5.5.1 Error: DATA after BDAT"]
    assert s.send("BDAT 2\r\nab") == ["551 5.0.0 Discarded 2 bytes after earlier error"]
    assert s.send("BDAT 3 LAST\r\nabc") == ["551 5.0.0 Discarded 3 bytes after earlier error"]
    assert s.cmd("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]


def test_nested_mail_is_told_before_mail_after_bdat(s):
    s.cmd("EHLO pc1")
    s.cmd("MAIL FROM:<a@example.org>")
    s.cmd("RCPT TO:<user2@gponlab.local>")
    assert s.send("BDAT 3\r\nabc") == ["250 2.0.0 Ok: 3 bytes"]
    assert s.cmd("MAIL FROM:<b@example.org>") == ["503 5.5.1 Error: nested MAIL command"]
    assert s.cmd("RCPT TO:<user1@gponlab.local>") == ["503 5.5.1 Error: RCPT after BDAT"]


@pytest.mark.parametrize("message, total", [
    (b"Hola\n", 6), (b"abc", 5), (b"a\nb\nc\n\nd", 14), (b"x\n", 3), (b"", 0),
])
def test_bdat_total_counts_lines_as_crlf(message, total):
    """The size in 'Ok: N bytes queued as' is the message (LF line ends, as
    chunked_message() gives it) as CRLF lines, the last one ended."""
    from gponsim.server.postfix.smtpd import _bdat_size

    assert _bdat_size(message) == total


def test_user_names_from_dovecot_are_made_printable():
    from gponsim.server.postfix.smtpd import _printable

    assert _printable("E!\x13") == "E!?"
    assert _printable("usuario1") == "usuario1"


def test_resolve_cache_lives_as_long_as_the_smtpd_process():
    """smtpd asks trivial-rewrite once per (sender, address) while the
    process lives: its warnings about a bad literal are not repeated."""
    from gponsim.server.postfix.smtpd import ResolveCache

    now = [0.0]
    cache = ResolveCache(size=2, clock=lambda: now[0])
    cache.opened()
    assert not cache.seen(None, "a@[foo]")
    assert cache.seen(None, "a@[foo]")
    assert not cache.seen("alice@example.org", "a@[foo]")     # another sender: another key
    assert not cache.seen(None, "b@[foo]")                    # the oldest one leaves
    assert not cache.seen(None, "a@[foo]")
    cache.closed()
    now[0] = 50.0
    cache.opened()                                            # the same process
    assert cache.seen(None, "a@[foo]")
    cache.closed()
    now[0] = 150.0
    cache.opened()                                            # idle 100 s: a new process
    assert not cache.seen(None, "a@[foo]")


def test_a_bad_literal_is_logged_by_trivial_rewrite_first(s):
    """trivial-rewrite's warning, then smtpd's; no factory here (no cache):
    asked every time. A literal of the server's own address is local."""
    assert s.cmd("EHLO pc")[-1] == "250 CHUNKING"
    assert s.cmd("MAIL FROM:<a@[foo]>") == ["501 5.1.7 Bad sender address syntax"]
    assert s.logged[1:] == [
        ("postfix/trivial-rewrite",
         "warning: valid_ipv4_hostaddr: invalid character 102(decimal): foo"),
        ("postfix/smtpd", "warning: Illegal address syntax from unknown[192.168.1.50] in MAIL "
                          "command: <a@[foo]>")]
    assert s.cmd("MAIL FROM:<alice@example.org>") == ["250 2.1.0 Ok"]
    assert s.cmd("RCPT TO:<nadie@[127.0.0.1]>") == [
        "550 5.1.1 <nadie@[127.0.0.1]>: Recipient address rejected: User unknown in local "
        "recipient table"]
