"""Seeded random garbage at the lab's SMTP, IMAP and POP3 ports: every session gets
answers or a clean close, nothing is logged as an unhandled error, and the lab
keeps serving."""

from __future__ import annotations

import random
import socket

import pytest

from labproc import LabProcess

pytestmark = pytest.mark.slow          # end to end: `gponsim serve`

WORDS = {
    "smtp": [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"BDAT", b"AUTH", b"STARTTLS",
             b"RSET", b"VRFY", b"QUIT", b"NOOP", b"XCLIENT", b"ETRN"],
    "imap": [b"a LOGIN", b"a AUTHENTICATE", b"a SELECT", b"a FETCH", b"a UID", b"a SEARCH",
             b"a STORE", b"a IDLE", b"a APPEND", b"a LIST", b"a STATUS", b"a SORT", b"a THREAD",
             b"a ID", b"a ENABLE", b"a STARTTLS", b"* ", b"a", b"DONE", b"a LOGIN user2 pass",
             b"a SELECT INBOX", b"a UID FETCH", b"a UID STORE", b"a UID EXPUNGE", b"a MOVE",
             b"a COPY", b"a CREATE", b"a RENAME"],
    "pop3": [b"USER", b"PASS", b"AUTH", b"STAT", b"LIST", b"RETR", b"TOP", b"UIDL", b"DELE",
             b"CAPA", b"STLS", b"APOP", b"RSET", b"USER user2", b"PASS pass"],
}
PIECES = [b"", b" ", b"<>", b"<a@b>", b"(", b")", b'"', b"1:*", b"*", b"\x00", b"{3+}", b"BODY[",
          b"=?utf-8?", b"\xff\xfe", b"user2", b"pass", b"1", b"2:4", b"(FLAGS)", b"BODY[]<0.10>",
          b"(\\Seen)", b"+FLAGS", b"INBOX", b'"x"', b"ALL", b"CHARSET", b"(REFERENCES)", b"PLAIN",
          b"AHVzZXIyAHBhc3M="]


def junk(rnd: random.Random) -> bytes:
    k = rnd.random()
    if k < 0.2:
        return bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 60)))
    if k < 0.25:
        return b"A" * rnd.choice([1000, 5000, 70000])
    if k < 0.35:
        return b"{" + str(rnd.choice([0, 5, 99999999999, -1])).encode() + b"}"
    return rnd.choice(PIECES)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    proc = LabProcess(tmp_path_factory.mktemp("garbage") / "gponlab").start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("proto", ["smtp", "imap", "pop3"])
def test_random_garbage_never_breaks_the_lab(lab, proto):
    rnd = random.Random(f"gponsim-{proto}")
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", lab.ports[proto]), timeout=5) as s:
            s.settimeout(0.02)
            for _ in range(rnd.randrange(1, 30)):
                line = rnd.choice(WORDS[proto]) + b" " + b" ".join(
                    junk(rnd) for _ in range(rnd.randrange(0, 4)))
                try:
                    s.sendall(line + rnd.choice([b"\r\n", b"\n", b"\r\n", b""]))
                    s.recv(65536)
                except (socket.timeout, ConnectionResetError, BrokenPipeError):
                    pass
    # The lab still greets, and nothing went unhandled.
    with socket.create_connection(("127.0.0.1", lab.ports[proto]), timeout=5) as s:
        assert s.recv(200).split(b" ")[0] in (b"220", b"*", b"+OK")
    errors = lab.stderr()
    assert "Unhandled" not in errors and "Traceback" not in errors, errors[-3000:]
