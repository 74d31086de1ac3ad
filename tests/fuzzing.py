"""Seeded fuzzing of the lab's protocol parsers and of `gponsim analyze`.

An *input* is one short conversation: a few lines drawn from the protocol's
corpus of commands that real clients send (and the pieces hostile ones
add), each mutated or not (bytes flipped, inserted, deleted, repeated;
literals and lengths at their limits; bare CR, LF, NUL, invalid UTF-8), sent
in one write or split at random. It goes to the real protocol class over an
in-memory transport (:mod:`dovecot_memory`, Twisted's StringTransport), and
the session is then closed.

What counts as a *traceback*, the only thing a run must never produce: an
exception out of the protocol, an error Twisted logs (``log.err``: an
exception a handler did not expect), an ``Unhandled error in Deferred``, or
a reply that says ``Server error``. For ``analyze``: any exception but
CaptureError (a file that is not a capture), or a packet reported as "could
not decode (SomeError...)" (an exception a decoder did not expect).

Everything is driven by ``random.Random(seed)``: a failure names the seed
and the input number, and replays.
"""

from __future__ import annotations

import gc
import os
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

PIECES = [b"", b" ", b"  ", b"<>", b"<a@b>", b"<@x,@y:a@b>", b"(", b")", b"((", b'"', b'"\\"',
          b"1:*", b"*", b"\x00", b"\t", b"\r", b"\n", b"{3}", b"{3+}", b"{0}", b"{999999999}",
          b"{4294967296+}", b"~{2}", b"BODY[", b"BODY[]<0.10>", b"BODY[1.2.HEADER.FIELDS (A B)]",
          b"=?utf-8?b?w6k=?=", b"\xff\xfe", b"\xc3\x28", b"\xe2\x82", b"user2", b"pass", b"1",
          b"0", b"-1", b"4294967296", b"2:4", b"(FLAGS)", b"(\\Seen)", b"+FLAGS", b"INBOX",
          b'"x"', b"ALL", b"CHARSET", b"(REFERENCES)", b"PLAIN", b"LOGIN", b"AHVzZXIyAHBhc3M=",
          b"=", b"==", b"%", b"*%", b"NIL", b"\\", b"..", b".", b"SIZE=99999999999",
          b"BODY=8BITMIME", b"SMTPUTF8", b"\xe3\x81\x82@\xe3\x81\x82", b"[127.0.0.1]",
          b"[IPv6:::1]", b"RET=HDRS", b"ENVID=x", b"NOTIFY=NEVER", b"LAST", b"service=smtp",
          b"resp=", b"rip=10.0.0.1", b"no-penalty", b"nologin", b"secured"]


def mutate(rnd: random.Random, data: bytes) -> bytes:
    """One to three mutations of ``data``."""
    data = bytearray(data)
    for _ in range(rnd.randrange(1, 4)):
        op = rnd.randrange(10)
        pos = rnd.randrange(len(data) + 1)
        if op == 0 and data:                                  # flip a byte
            data[min(pos, len(data) - 1)] = rnd.randrange(256)
        elif op == 1:                                         # insert random bytes
            data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 8)))
        elif op == 2 and data:                                # delete a range
            del data[pos:pos + rnd.randrange(1, 16)]
        elif op == 3 and data:                                # repeat a range
            end = min(len(data), pos + rnd.randrange(1, 8))
            data[pos:pos] = data[pos:end] * rnd.choice([2, 3, 50, 1000])
        elif op == 4:                                         # a piece that means something
            data[pos:pos] = rnd.choice(PIECES)
        elif op == 5:                                         # nesting
            depth = rnd.choice([10, 100, 2000])
            data[pos:pos] = b"(" * depth + rnd.choice([b"", b"ALL", b"x"]) + \
                b")" * rnd.choice([0, depth, depth - 1])
        elif op == 6:                                         # case
            data = bytearray(bytes(data).swapcase())
        elif op == 7:                                         # cut
            del data[pos:]
        elif op == 8:                                         # a number at a limit
            data[pos:pos] = rnd.choice([b"0", b"-1", b"2147483648", b"18446744073709551616",
                                        b"99999999999999999999"])
        else:                                                 # a separator
            data[pos:pos] = rnd.choice([b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b"\x01"])
    return bytes(data)


def conversation(rnd: random.Random, corpus: list[bytes], lines: int = 8,
                 opening: tuple = (), eol: bytes = b"\r\n") -> list[bytes]:
    """The chunks of one input: lines of the corpus, some mutated, split at
    random; usually after the ``opening`` lines that get a session going
    (a login, a handshake), so that what follows them is reached too."""
    out = bytearray()
    for line in opening:
        if rnd.random() < 0.75:
            out += line + eol
    for _ in range(rnd.randrange(1, lines + 1)):
        line = rnd.choice(corpus)
        if rnd.random() < 0.6:
            line = mutate(rnd, line)
        out += line + rnd.choice([eol, eol, eol, b"\n", b"\r", b""])
    data = bytes(out)
    if rnd.random() < 0.3 and len(data) > 2:
        cuts = sorted(rnd.sample(range(1, len(data)), min(3, len(data) - 1)))
        return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    return [data]


@dataclass
class Result:
    inputs: int = 0
    tracebacks: list = field(default_factory=list)      # (input number, what)
    replies: int = 0


class Errors:
    """Errors Twisted logs while a fuzz run goes on."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __call__(self, event) -> None:
        failure = event.get("log_failure")
        text = event.get("log_format") or ""
        if failure is not None or "Unhandled" in text or event.get("isError"):
            what = failure.getTraceback() if failure is not None else str(event)
            self.events.append(what)

    def __enter__(self) -> "Errors":
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.collect()                     # Deferreds that failed unhandled say so when collected
        globalLogPublisher.removeObserver(self)


def _feed(proto, transport, chunks, drive, settle=None) -> int:
    """Send ``chunks`` (stopping if the server hangs up), drive the lab after
    each and ``settle`` it at the end; bytes answered."""
    for chunk in chunks:
        if transport.disconnecting:
            break
        proto.dataReceived(chunk)
        drive()
    if settle is not None:
        settle()
    answered = len(transport.value())
    at = transport.value().find(b"Server error")
    line = transport.value()[at:].split(b"\r\n", 1)[0][:300]
    transport.clear()
    if at >= 0:
        raise AssertionError("a reply says " + line.decode("utf-8", "replace"))
    return answered


def run(target, seed: str, count: int) -> Result:
    """``count`` inputs of ``target`` (one of the ``Target`` classes below)."""
    import logging

    rnd = random.Random(seed)
    result = Result()
    reset = getattr(target, "reset", None)
    quiet = logging.getLogger("gponsim")
    level, quiet.level = quiet.level, logging.CRITICAL   # the auth server's "BUG:" warnings
    with Errors() as errors:
        for number in range(count):
            if reset is not None and number % 500 == 499:
                reset()                  # the mailboxes do not grow for ever
            seen = len(errors.events)
            try:
                result.replies += target.one(rnd)
            except Exception:  # noqa: BLE001 - that is what we are looking for
                result.tracebacks.append((number, Failure().getTraceback()))
            if len(errors.events) > seen:
                result.tracebacks += [(number, e) for e in errors.events[seen:]]
            result.inputs += 1
        target.close()
    quiet.setLevel(level)
    return result


# -- the targets ------------------------------------------------------------

SMTP_CORPUS = [b"EHLO pc1", b"HELO pc1", b"EHLO [192.168.1.50]", b"MAIL FROM:<user1@gponlab.local>",
               b"MAIL FROM:<> SIZE=100 BODY=8BITMIME", b"RCPT TO:<user2@gponlab.local>",
               b"RCPT TO:<bob@gmail.com> NOTIFY=SUCCESS", b"DATA", b"Subject: x", b"", b".",
               b"..dot", b"BDAT 10", b"BDAT 0 LAST", b"BDAT 5 LAST", b"0123456789",
               b"AUTH PLAIN AHVzZXIxAHBhc3M=", b"AUTH PLAIN", b"AUTH LOGIN", b"dXNlcjE=",
               b"cGFzcw==", b"*", b"STARTTLS", b"RSET", b"VRFY user2", b"ETRN gponlab.local",
               b"NOOP", b"QUIT", b"XCLIENT ADDR=1.2.3.4", b"GET / HTTP/1.0", b"From: a@b",
               b"AUTH CRAM-MD5", b"MAIL FROM:<a@b> SMTPUTF8"]

IMAP_CORPUS = [b"a LOGIN user2 pass", b"a LOGIN user2 pass", b'a LOGIN "user2" {4}', b"pass",
               b"a AUTHENTICATE PLAIN AHVzZXIyAHBhc3M=", b"a AUTHENTICATE PLAIN", b"AHVzZXIyAHBhc3M=",
               b"a AUTHENTICATE LOGIN", b"dXNlcjI=", b"cGFzcw==", b"*", b"a CAPABILITY",
               b"a NOOP", b"a ID (\"name\" \"x\")", b"a ENABLE UTF8=ACCEPT", b"a STARTTLS",
               b"a SELECT INBOX", b"a EXAMINE INBOX", b"a SELECT Sent", b"a STATUS INBOX (MESSAGES UIDNEXT SIZE)",
               b'a LIST "" "*"', b'a LIST "" "%"', b'a LSUB "" "*"',
               b'a LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES))',
               b"a FETCH 1:* (FLAGS UID RFC822.SIZE)", b"a FETCH 1 BODY[]",
               b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From Subject)] BODYSTRUCTURE ENVELOPE)",
               b"a FETCH 1 BODY[]<0.10>", b"a FETCH 1 BINARY[1]", b"a FETCH 1 BINARY.SIZE[1]",
               b"a UID FETCH 1:* (UID FLAGS)", b"a STORE 1 +FLAGS (\\Seen)",
               b"a UID STORE 1:* -FLAGS.SILENT (\\Deleted)", b"a SEARCH ALL",
               b"a SEARCH OR SEEN NOT FLAGGED", b"a SEARCH SINCE 1-Jan-2024 SUBJECT x",
               b"a UID SEARCH RETURN (MIN MAX COUNT) UID 1:*", b"a SORT (DATE) UTF-8 ALL",
               b"a THREAD REFERENCES UTF-8 ALL", b"a COPY 1 Sent", b"a MOVE 1 Trash",
               b"a UID EXPUNGE 1", b"a EXPUNGE", b"a CLOSE", b"a UNSELECT", b"a CHECK",
               b"a IDLE", b"DONE", b"a APPEND INBOX (\\Seen) {5}", b"hello",
               b"a APPEND INBOX {3+}", b"a CREATE x/y", b"a RENAME x/y z", b"a DELETE z",
               b"a SUBSCRIBE INBOX", b"a UNSUBSCRIBE INBOX", b"a NAMESPACE", b"a LOGOUT",
               b"a UID THREAD ORDEREDSUBJECT UTF-8 ALL", b"a SEARCH CHARSET X ALL"]

POP3_CORPUS = [b"USER user2", b"PASS pass", b"USER user2", b"PASS pass", b"AUTH PLAIN AHVzZXIyAHBhc3M=",
               b"AUTH PLAIN", b"AHVzZXIyAHBhc3M=", b"AUTH LOGIN", b"dXNlcjI=", b"cGFzcw==", b"*",
               b"AUTH", b"CAPA", b"STLS", b"STAT", b"LIST", b"LIST 1", b"UIDL", b"UIDL 1",
               b"RETR 1", b"TOP 1 0", b"TOP 1 5", b"DELE 1", b"RSET", b"NOOP", b"QUIT", b"APOP a b"]

LMTP_CORPUS = [b"LHLO mail.gponlab.local", b"MAIL FROM:<user1@gponlab.local>",
               b"MAIL FROM:<> BODY=8BITMIME", b"RCPT TO:<user2@gponlab.local>",
               b"RCPT TO:<user2+box@gponlab.local>", b"RCPT TO:<nobody@gponlab.local>", b"DATA",
               b"Subject: x", b"", b".", b"..dot", b"BDAT 5 LAST", b"hello", b"RSET", b"NOOP",
               b"QUIT", b"VRFY user2", b"XCLIENT ADDR=1.2.3.4", b"STARTTLS", b"HELO x"]

AUTH_CORPUS = [b"VERSION\t1\t0", b"CPID\t4242", b"VERSION\t1\t0", b"CPID\t4242",
               b"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1\tresp=AHVzZXIxAHBhc3M=",
               b"AUTH\t2\tLOGIN\tservice=imap\tlip=127.0.0.1\trip=10.0.0.1\tsecured",
               b"AUTH\t3\tPLAIN\tservice=pop3\trip=10.0.0.2", b"CONT\t2\tdXNlcjE=", b"CONT\t2\tcGFzcw==",
               b"CONT\t3\tAHVzZXIxAHdyb25n", b"CANCEL\t1", b"AUTH\t4\tPLAIN\tservice=smtp\tresp=!!!",
               b"AUTH\t5\tPLAIN\tservice=smtp\tresp=AA==\tx=y", b"CONT\t9\tAA==",
               b"AUTH\t6\tPLAIN\tservice=smtp\tno-penalty\trip=::1\tresp=AHUAcA=="]


class _Memory:
    """A MemoryLab (auth server and client, mbox store) shared by a target's inputs."""

    def __init__(self, root: Path) -> None:
        from dovecot_memory import MemoryLab

        self.mem = MemoryLab(root, failure_delay=0.0)
        self.mem.ctx.emit = lambda step: None        # the Steps are made, nobody keeps them
        for i in range(3):
            self.mem.deliver("user2", b"Subject: m%d\nFrom: a@b\n\nbody %d\nFrom x\n" % (i, i))

    def drive(self) -> None:
        self.mem.reactor.drive()

    def reset(self) -> None:
        import shutil

        for folder in (self.mem.root / "var/mail", self.mem.root / "home"):
            shutil.rmtree(folder, ignore_errors=True)
        (self.mem.root / "var/mail").mkdir(parents=True)

    def settle(self) -> None:
        self.mem.reactor.advance(20)                 # failure delays, penalties
        self.mem.reactor.drive()

    def close(self) -> None:
        self.mem.close()


class ImapTarget(_Memory):
    """IMAP sessions (imap-login, then imap): a session lives for several
    inputs (one login, many commands), one in ten ends after an input."""

    corpus = IMAP_CORPUS
    opening = (b"a LOGIN user2 pass", b"b SELECT INBOX")
    client = None

    def session(self):
        return self.mem.imap(local=True)

    def one(self, rnd: random.Random) -> int:
        if rnd.random() < 0.02:                      # the mailbox does not run dry
            self.mem.deliver("user2", b"Subject: again\n\nbody\n")
        fresh = self.client is None or self.client.closed
        if fresh:
            self.client = self.session()
            self.client.read()
        client = self.client
        answered = _feed(client.server, client.transport,
                         conversation(rnd, self.corpus, 4, self.opening if fresh else ()),
                         self.drive, self.settle)
        if rnd.random() < 0.1 or client.closed:
            client.drop()
            self.client = None
        self.mem.auth_server.penalty._records.clear()    # every input starts unpenalized
        return answered

    def close(self) -> None:
        if self.client is not None:
            self.client.drop()
        super().close()


class Pop3Target(ImapTarget):
    corpus = POP3_CORPUS
    opening = (b"USER user2", b"PASS pass")

    def session(self):
        return self.mem.pop3(local=True)


class SmtpTarget(_Memory):
    """Postfix's smtpd on port 587 (AUTH through the in-memory auth server);
    a session lives for several inputs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        from gponsim.server.lab import _AuthGlue
        from gponsim.server.postfix import cleanup
        from gponsim.server.postfix.mta import Mta, QueueSettings
        from gponsim.server.postfix.restrictions import parse_networks
        from gponsim.server.postfix.smtpd import SmtpdContext, SmtpdSettings

        mta = Mta(root / "lab", QueueSettings(mydestination=frozenset({"gponlab.local"})),
                  user_exists=lambda u: u in {"user1", "user2"},
                  reactor=self.mem.reactor)       # cleanup's file work inline, answered at drive()

        def received(session, qid):          # what the lab writes (Lab._received_header)
            return cleanup.received_header(
                helo=session.helo_name or session.client_ip, client_name="unknown",
                client_ip=session.client_ip, protocol=session._protocol(), qid=qid,
                recipients=session.recipients, myhostname=session.settings.myhostname)
        self.context = SmtpdContext(log=lambda prog, text: None, auth=_AuthGlue(self.mem.auth_client),
                                    queue=mta.cleanup, mechanisms=["PLAIN", "LOGIN"],
                                    local_user_exists=lambda u: u in {"user1", "user2"},
                                    received_header=received)
        self.settings = SmtpdSettings(service="submission", sasl_enabled=True,
                                      mynetworks=parse_networks(["127.0.0.0/8"]),
                                      message_size_limit=100000, line_length_limit=2048)
        self.proto = self.transport = None

    def one(self, rnd: random.Random) -> int:
        from gponsim.server.postfix.smtpd import Smtpd

        fresh = self.proto is None or self.transport.disconnecting
        if fresh:
            self.proto = Smtpd(self.context, self.settings)
            self.proto.callLater = self.mem.reactor.callLater
            self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.168.1.50", 5000),
                                             hostAddress=IPv4Address("TCP", "192.168.1.1", 587))
            self.proto.makeConnection(self.transport)
        opening = (b"EHLO pc1", b"AUTH PLAIN AHVzZXIxAHBhc3M=", b"MAIL FROM:<user1@gponlab.local>",
                   b"RCPT TO:<user2@gponlab.local>") if fresh else (b"MAIL FROM:<a@b>", b"RCPT TO:<user2@gponlab.local>")
        answered = _feed(self.proto, self.transport, conversation(rnd, SMTP_CORPUS, 4, opening),
                         self.drive, self.settle)
        if rnd.random() < 0.1 or self.transport.disconnecting:
            self.proto.connectionLost(Failure(ConnectionError("gone")))
            self.drive()
            self.proto = None
        return answered


class LmtpTarget:
    """Dovecot's LMTP service (what Postfix's lmtp(8) talks to)."""

    def __init__(self, root: Path) -> None:
        from gponsim.server.dovecot.lmtp import LmtpService, LmtpSettings

        self.root = root / "lab"
        self.service = LmtpService(self.root, LmtpSettings(),
                                   user_exists=lambda u: u in {"user1", "user2"},
                                   save_in_thread=False)
        self.path = self.root / "var/spool/postfix/private/dovecot-lmtp"

    def reset(self) -> None:
        import shutil

        for folder in (self.root / "var/mail", self.root / "home"):
            shutil.rmtree(folder, ignore_errors=True)

    def one(self, rnd: random.Random) -> int:
        from gponsim.server.dovecot.lmtp import DovecotLmtp

        proto = DovecotLmtp(self.service, self.path)
        transport = StringTransport(peerAddress=UNIXAddress(None),
                                    hostAddress=UNIXAddress(str(self.path)))
        proto.makeConnection(transport)
        opening = (b"LHLO mail.gponlab.local", b"MAIL FROM:<user1@gponlab.local>",
                   b"RCPT TO:<user2@gponlab.local>")
        answered = _feed(proto, transport, conversation(rnd, LMTP_CORPUS, opening=opening),
                         lambda: None)
        proto.connectionLost(Failure(ConnectionError("gone")))
        return answered

    def close(self) -> None:
        pass


class AuthTarget:
    """The auth server's socket protocol (what Postfix's smtpd and the login
    processes speak)."""

    def __init__(self, root: Path) -> None:
        from dovecot_memory import LabReactor
        from gponsim.server.dovecot.auth import AuthServer
        from gponsim.server.dovecot.passwd import Users

        self.reactor = LabReactor()
        self.server = AuthServer(Users.ensure_default(root / "etc/dovecot/users"),
                                 reactor=self.reactor, failure_delay=0.5)

    def one(self, rnd: random.Random) -> int:
        proto = self.server.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        transport.clear()

        def drive():
            self.reactor.drive()
            self.reactor.advance(20)
            self.reactor.drive()
        chunks = conversation(rnd, AUTH_CORPUS, opening=(b"VERSION\t1\t0", b"CPID\t4242"),
                              eol=b"\n")                     # the protocol ends lines with LF
        answered = _feed(proto, transport, chunks, drive)
        proto.connectionLost(Failure(ConnectionError("gone")))
        drive()
        self.server.penalty._records.clear()
        return answered

    def close(self) -> None:
        pass


class AnalyzeTarget:
    """``gponsim analyze`` on mutated captures: the real ones shipped in
    captures/ (swaks, curl, openssl; their TLS keys too) with bytes of their
    packets mutated, and conversations of fuzzed SMTP/IMAP/POP3 lines."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        captures = Path(__file__).resolve().parent.parent / "captures"
        self.seeds = []
        for path in sorted(captures.glob("*.pcap*")):
            keys = path.with_suffix(".keys")
            self.seeds.append((path.read_bytes(), keys if keys.exists() else None,
                               path.suffix))

    def one(self, rnd: random.Random) -> int:
        from gponsim.capture.analyze import analyze
        from gponsim.capture.pcap import CaptureError

        if rnd.random() < 0.5:
            data, keys, suffix = self._mutated_capture(rnd)
        else:
            data, keys, suffix = self._fuzzed_conversation(rnd), None, ".pcap"
        path = self.root / f"input{suffix}"
        path.write_bytes(data)
        try:
            analysis = analyze(path, keylog=keys)
        except CaptureError:
            return 0
        broken = [p for p in analysis.report.problems if "could not decode (" in p]
        if broken:
            raise AssertionError(broken[0])
        return analysis.steps

    def _mutated_capture(self, rnd: random.Random):
        data, keys, suffix = rnd.choice(self.seeds)
        data = bytearray(data)
        for _ in range(rnd.randrange(1, 20)):
            # past the file header: packet headers and payloads
            pos = rnd.randrange(24, len(data))
            op = rnd.randrange(4)
            if op == 0:
                data[pos] = rnd.randrange(256)
            elif op == 1:
                data[pos] ^= 1 << rnd.randrange(8)
            elif op == 2:
                data[pos:pos + 4] = struct.pack("<I", rnd.choice([0, 1, 0xFFFF, 0xFFFFFFFF,
                                                                   rnd.randrange(1 << 32)]))
            else:
                del data[pos:]
                break
        return bytes(data), keys, suffix

    def _fuzzed_conversation(self, rnd: random.Random) -> bytes:
        from pcapgen import Conversation, write_pcap

        port, corpus, greeting = rnd.choice([
            (25, SMTP_CORPUS, b"220 mail.gponlab.local ESMTP Postfix (Debian/GNU)\r\n"),
            (587, SMTP_CORPUS, b"220 mail.gponlab.local ESMTP Postfix (Debian/GNU)\r\n"),
            (143, IMAP_CORPUS, b"* OK [CAPABILITY IMAP4rev1] Dovecot (Debian) ready.\r\n"),
            (110, POP3_CORPUS, b"+OK Dovecot (Debian) ready.\r\n")])
        conv = Conversation(server=("10.0.0.2", port), handshake=rnd.random() < 0.9)
        conv.s(greeting)
        for _ in range(rnd.randrange(1, 6)):
            for chunk in conversation(rnd, corpus, 4):
                conv.c(chunk[:4000], mss=rnd.choice([0, 0, 0, 7, 536]) if len(chunk) > 64 else
                       rnd.choice([0, 0, 1, 7]))
            reply = mutate(rnd, rnd.choice([b"250 2.0.0 Ok\r\n", b"354 End data\r\n",
                                            b"* 1 FETCH (BODY[] {5}\r\nhello)\r\na OK done\r\n",
                                            b"+OK 5 octets\r\nhello\r\n.\r\n", b"+ \r\n",
                                            b"220 2.0.0 Ready to start TLS\r\n",
                                            b"a OK Begin TLS negotiation now.\r\n"]))
            conv.s(reply)
        if rnd.random() < 0.3:
            rnd.shuffle(conv.packets)
        if rnd.random() < 0.8:
            conv.close()
        from pcapgen import LINKTYPES

        kind = rnd.choice(["ether", "sll", "raw", "null"])
        path = self.root / "conv.pcap"
        write_pcap(path, conv.frames(kind), linktype=LINKTYPES[kind])
        return path.read_bytes()

    def close(self) -> None:
        pass


def scratch_folder(fallback: Path) -> Path:
    """Where a run keeps its files: in memory (/dev/shm) when there is one,
    since a run writes thousands of small files and mailboxes, else ``fallback``."""
    import tempfile

    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="gponsim-fuzz-", dir=shm))
    return fallback


TARGETS = {"smtp": SmtpTarget, "imap": ImapTarget, "pop3": Pop3Target, "lmtp": LmtpTarget,
           "auth": AuthTarget, "analyze": AnalyzeTarget}
