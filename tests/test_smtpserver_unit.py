"""The SMTP engine and its policies in memory (Twisted's StringTransport and
MemoryReactor): the Gmail simulator's replies, the relay client's conversation,
and what the engine holds of a hostile client's bytes. Milliseconds each."""

from __future__ import annotations

import base64
import random

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gponsim.server.postfix.queuefile import Envelope
from gponsim.server.postfix.smtp import RelaySettings, SmtpRelayClient
from gponsim.server.postfix.smtpd import Smtpd, SmtpdContext, SmtpdSettings
from gponsim.server.postfix.transport import DeliveryRequest
from gponsim.server.sims import gmail as gm
from gponsim.sinks.memory import ListSink


def connect(proto, peer="192.168.1.50"):
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000),
                                hostAddress=IPv4Address("TCP", "127.0.0.1", 25))
    proto.makeConnection(transport)
    return transport


def lines(transport) -> list[str]:
    data = transport.value().decode()
    transport.clear()
    return [line for line in data.split("\r\n") if line]


# -- the engine, through Postfix's smtpd (its policy is tested in test_smtpd_unit.py)

class Queue:
    """Where smtpd would open a queue file: a transaction that never commits."""

    def open(self, envelope, **kw):
        class File:
            qid = "4F1A2C0D9E"
            state = "open"

            def add_recipient(self, *a, **k):
                pass

            def abort(self):
                self.state = "aborted"

            def commit(self, data):
                self.state = "committed"
                return defer.succeed(self.qid)
        return defer.succeed(File())


@pytest.fixture
def smtpd():
    sink = ListSink()
    context = SmtpdContext(emit=sink.step, log=lambda prog, text: None, queue=Queue(),
                           local_user_exists=lambda u: u == "user2",
                           received_header=lambda session, qid: "")
    proto = Smtpd(context, SmtpdSettings(message_size_limit=1000))
    transport = connect(proto)
    lines(transport)
    return proto, transport, sink


def test_bdat_bytes_past_the_limit_are_counted_not_kept(smtpd):
    """BDAT 1000000000 LAST before any MAIL: the bytes are read and dropped as
    they come; the session holds no more than the size limit."""
    proto, transport, _sink = smtpd
    proto.dataReceived(b"EHLO pc1\r\nBDAT 1000000000 LAST\r\n")
    lines(transport)
    block = b"x" * 65536
    for _ in range(160):                                  # 10 MB
        proto.dataReceived(block)
        assert sum(map(len, proto.message_parts)) <= 1000
        assert len(proto._inbuf) <= len(block)
    assert proto.message_size == 160 * 65536 and proto.too_big


def test_a_data_line_without_end_is_not_held(smtpd):
    proto, transport, _sink = smtpd
    proto.dataReceived(b"EHLO pc1\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user2@gponlab.local>\r\n"
                       b"DATA\r\n")
    assert lines(transport)[-1] == "354 End data with <CR><LF>.<CR><LF>"
    for _ in range(100):                                  # 6.5 MB, no line end
        proto.dataReceived(b"y" * 65536)
        assert len(proto._inbuf) <= 65536 and sum(map(len, proto.message_parts)) <= 1000
    proto.dataReceived(b"\r\n.\r\n")
    assert lines(transport) == ["552 5.3.4 Error: message file too big"]
    proto.dataReceived(b"NOOP\r\n")
    assert lines(transport) == ["250 2.0.0 Ok"]           # the session goes on


def test_replies_keep_command_order_while_one_waits(smtpd):
    proto, transport, _sink = smtpd
    held = defer.Deferred()
    proto.dataReceived(b"EHLO pc1\r\n")
    lines(transport)
    proto.wait_for(held)                   # as while the auth server thinks
    proto.dataReceived(b"NOOP\r\nRSET\r\n")
    assert lines(transport) == []
    held.callback(None)
    assert lines(transport) == ["250 2.0.0 Ok", "250 2.0.0 Ok"]


# -- the Gmail simulator's policy

@pytest.fixture
def gmail(tmp_path):
    sink = ListSink()
    sim = gm.GmailSimulator(tmp_path / "lab", emit=sink.step, reactor=MemoryReactorClock(),
                            rng=random.Random(7))
    proto = gm.GmailSmtp(sim)
    transport = connect(proto, peer="203.0.113.5")
    return proto, transport, sink, sim


def test_gmail_greets_and_wants_tls_before_auth(gmail):
    proto, transport, sink, _sim = gmail
    [greeting] = lines(transport)
    assert greeting.startswith("220 smtp.gmail.com ESMTP ") and greeting.endswith(" - gsmtp")
    proto.dataReceived(b"EHLO mail.gponlab.local\r\n")
    assert lines(transport) == [
        "250-smtp.gmail.com at your service, [203.0.113.5]", "250-SIZE 35882577",
        "250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250-PIPELINING", "250-CHUNKING",
        "250 SMTPUTF8"]                  # no STARTTLS: this transport cannot start TLS
    proto.dataReceived(b"AUTH PLAIN " + base64.b64encode(b"\0a\0b") + b"\r\n")
    [reply] = lines(transport)
    assert reply.startswith("530 5.7.0 Must issue a STARTTLS command first. ")
    proto.dataReceived(b"HELP\r\n")
    assert lines(transport)[0].startswith("502 5.5.1 Unrecognized command. ")
    assert [(s.src, s.dst) for s in sink.steps if s.kind == "reply"][:2] == \
        [("relay", "client"), ("relay", "client")]


def test_gmail_checks_the_app_password(gmail):
    proto, transport, _sink, sim = gmail
    proto.tls = True                      # as after STARTTLS
    lines(transport)
    conf = sim.config()

    def auth(user, password):
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        proto.dataReceived(b"AUTH PLAIN " + token + b"\r\n")
        return lines(transport)
    assert auth(conf.account, conf.app_password) == ["235 2.7.0 Accepted"]
    proto.authenticated = None
    bad = auth(conf.account, "wrong")
    assert bad[0] == ("535-5.7.8 Username and Password not accepted. For more information, "
                      "go to")
    assert bad[1].startswith("535 5.7.8  https://support.google.com/mail/?p=BadCredentials ")
    normal = auth(conf.account, conf.normal_password)
    assert normal[0].startswith("534-5.7.9 Application-specific password required.")


def test_gmail_refuses_a_message_over_its_size_limit(gmail):
    proto, transport, _sink, _sim = gmail
    proto.tls = True
    proto.authenticated = "gponlab.relay@gmail.com"
    proto.size_limit = 100
    proto.dataReceived(b"MAIL FROM:<a@gponlab.local>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    lines(transport)
    proto.dataReceived(b"Subject: big\r\n\r\n" + b"z" * 300 + b"\r\n.\r\n")
    [first, last] = lines(transport)
    assert first.startswith("552-5.3.4 Your message exceeded Google's message size limits.")
    assert last.startswith("552 5.3.4  https://support.google.com/mail/?p=MaxSizeError ")


# -- the relay client (smtp(8)) against a scripted server, in memory

def relay(tmp_path, content: bytes):
    """smtp(8) delivering ``content`` to bob@example.com through smtp.gmail.com, in memory:
    the delivery's Deferred, its Steps, and the transport of its connection."""
    reactor = MemoryReactorClock()
    sink = ListSink()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 smtp.gmail.com\n")
    settings = RelaySettings(host="smtp.gmail.com", port=587, nexthop="[smtp.gmail.com]:587",
                             hosts_file=hosts, tls_level="none", sasl_enabled=False)
    client = SmtpRelayClient(settings, emit=sink.step, reactor=reactor)
    env = Envelope(sender="user1@gponlab.local", recipients=["bob@example.com"], arrival=0.0)
    d = client.deliver(DeliveryRequest("4F1A2C0D9E", env, [(0, "bob@example.com", "")], content, 0.0))
    [(host, port, factory, _timeout, _bind)] = reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 587)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return d, sink, proto, transport


def test_relay_client_conversation_and_verdict(tmp_path):
    d, sink, proto, transport = relay(tmp_path, b"Subject: hi\n\nhello\n")

    def server(*replies: str) -> list[str]:
        for reply in replies:
            proto.dataReceived(reply.encode() + b"\r\n")
        return lines(transport)
    assert server("220 smtp.gmail.com ESMTP x - gsmtp") == ["EHLO mail.gponlab.local"]
    sent = server("250-smtp.gmail.com at your service", "250 PIPELINING")
    assert sent == ["MAIL FROM:<user1@gponlab.local>", "RCPT TO:<bob@example.com>", "DATA"]
    for reply in ("250 2.1.0 OK", "250 2.1.5 OK", "354  Go ahead"):
        proto.dataReceived(reply.encode() + b"\r\n")
    assert transport.value() == b"Subject: hi\r\n\r\nhello\r\n.\r\n"
    transport.clear()
    assert server("250 2.0.0 OK  1 x - gsmtp") == ["QUIT"]
    server("221 2.0.0 closing connection x - gsmtp")
    [status] = d.result
    assert (status.status, status.dsn) == ("sent", "2.0.0")
    assert status.reason == "250 2.0.0 OK  1 x - gsmtp"
    assert [s.verb for s in sink.steps if s.proto == "relay"][-1] == "SENT"


def test_a_message_has_one_size_on_both_ends_of_the_wire(tmp_path, smtpd):
    """The relay client's message Step and smtpd's for the same bytes say the same size:
    the wire's (CRLF line ends, dot-stuffing undone), though the lab keeps LF."""
    _d, sink, proto, transport = relay(tmp_path, b"Subject: hi\n\n.leading dot\nno end of line")
    for reply in ("220 smtp.gmail.com ESMTP", "250 smtp.gmail.com", "250 2.1.0 OK",
                  "250 2.1.5 OK", "354 Go ahead"):
        proto.dataReceived(reply.encode() + b"\r\n")
    sent = transport.value().split(b"DATA\r\n", 1)[1]
    assert sent == b"Subject: hi\r\n\r\n..leading dot\r\nno end of line\r\n.\r\n"
    [relayed] = [s for s in sink.steps if s.line.startswith("[message:")]
    server, server_transport, server_sink = smtpd
    server.dataReceived(b"EHLO pc1\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user2@gponlab.local>\r\n"
                        b"DATA\r\n" + sent)
    [received] = [s for s in server_sink.steps if s.line.startswith("[message:")]
    assert lines(server_transport)[-1] == "250 2.0.0 Ok: queued as 4F1A2C0D9E"
    # what went, less the final ".\r\n" and the one dot doubled
    assert relayed.meta["size"] == received.meta["size"] == len(sent) - len(b".\r\n") - 1
    assert relayed.line.startswith(f"[message: {received.meta['size']} bytes,")
