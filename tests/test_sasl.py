"""The Dovecot auth protocol: wire grammar, our auth server, our Postfix-like
client, over real UNIX sockets with Twisted's reactor in a background thread.
The raw-socket tests speak the exact bytes of lab-facts.md §1."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from reactor_thread import call

from gponsim.server.dovecot.auth import AuthServer, AuthSocketError, parse_mechanisms, socket_path
from gponsim.server.postfix.xsasl import (
    CONNECTION_LOST, AuthClient, AuthReply, AuthUnavailable, filter_mechanisms, valid_base64,
)
from gponsim.server.dovecot.passwd import Users
from gponsim.steps import MASK, new_session
from gponsim.sinks.memory import ListSink
from gponsim.wire.sasl import escape, parse, sasl_step, unescape

DELAY = 0.2
WAIT = 10.0


# --------------------------------------------------------------------------
# The session-wide reactor thread (tests/reactor_thread.py)



def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


PLAIN_OK = b64(b"\0user1\0pass")
PLAIN_BAD = b64(b"\0user1\0wrong")


# --------------------------------------------------------------------------
# Fixtures

@pytest.fixture
def labroot():
    # short path: AF_UNIX paths are limited to 108 bytes
    root = tempfile.mkdtemp(prefix="gs-", dir="/tmp")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def users(labroot):
    return Users.ensure_default(os.path.join(labroot, "etc/dovecot/users"))


@pytest.fixture
def sink():
    return ListSink()


@pytest.fixture
def server(reactor, labroot, users, sink):
    srv = AuthServer(users, emit=sink.step, failure_delay=DELAY, reactor=reactor)
    call(reactor, srv.listen, socket_path(labroot))
    yield srv
    call(reactor, srv.stop)


class Raw:
    """A byte-exact client on a plain socket."""

    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8"))

    def line(self) -> str:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8")

    def handshake(self, cpid: int = 4242) -> list[str]:
        self.send(f"VERSION\t1\t0\nCPID\t{cpid}\n")
        lines = []
        while not lines or lines[-1] != "DONE":
            lines.append(self.line())
        return lines

    def eof(self) -> bool:
        """True when the server closed the connection (bounded wait)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server, labroot):
    clients = []

    def connect():
        c = Raw(socket_path(labroot))
        clients.append(c)
        return c
    yield connect
    for c in clients:
        c.close()


AUTH = "AUTH\t{id}\t{mech}\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1"


# --------------------------------------------------------------------------
# Wire grammar

def test_escape_roundtrip_and_both_lf_codes():
    text = "a\tb\nc\rd\x01e\0f"
    assert escape(text) == "a\x01tb\x01nc\x01rd\x011e\x010f"
    assert unescape(escape(text)) == text
    assert unescape("x\x01ly\x01ny") == "x\ny\ny"
    assert unescape("\x01q") == "q" and unescape("end\x01") == "end"


def test_parse_splits_args_params_flags():
    line = "AUTH\t7\tPLAIN\tservice=smtp\tnologin\tlip=10.0.0.1\trip=10.0.0.2\tsecured\tresp=AGEAYg=="
    assert parse(line) == ("AUTH", ["7", "PLAIN"],
                           {"service": "smtp", "lip": "10.0.0.1", "rip": "10.0.0.2",
                            "resp": "AGEAYg=="}, ["nologin", "secured"])
    assert parse("CONT\t3\tdXNlcg==") == ("CONT", ["3", "dXNlcg=="], {}, [])
    assert parse("MECH\tPLAIN\tplaintext") == ("MECH", ["PLAIN"], {}, ["plaintext"])
    assert parse("FAIL\t1\treason=a\x01tb") == ("FAIL", ["1"], {"reason": "a\tb"}, [])
    assert parse("DONE") == ("DONE", [], {}, [])


@pytest.mark.parametrize("line, direction, kind, key, status", [
    ("VERSION\t1\t0", "c2s", "handshake", "sasl.handshake.VERSION", None),
    ("CPID\t77", "c2s", "handshake", "sasl.handshake.CPID", None),
    ("VERSION\t1\t2", "s2c", "handshake", "sasl.handshake.VERSION", None),
    ("MECH\tLOGIN\tplaintext", "s2c", "handshake", "sasl.handshake.MECH", None),
    ("SPID\t9", "s2c", "handshake", "sasl.handshake.SPID", None),
    ("CUID\t1", "s2c", "handshake", "sasl.handshake.CUID", None),
    ("COOKIE\t" + "ab" * 16, "s2c", "handshake", "sasl.handshake.COOKIE", None),
    ("DONE", "s2c", "handshake", "sasl.handshake.DONE", None),
    ("AUTH\t1\tPLAIN\tservice=smtp", "c2s", "command", "sasl.cmd.AUTH", None),
    ("CONT\t1\tdXNlcjE=", "c2s", "command", "sasl.cmd.CONT", None),
    ("CANCEL\t1", "c2s", "command", "sasl.cmd.CANCEL", None),
    ("CONT\t1\tVXNlcm5hbWU6", "s2c", "reply", "sasl.reply.CONT", "CONT"),
    ("OK\t1\tuser=user1", "s2c", "reply", "sasl.reply.OK", "OK"),
    ("FAIL\t1\tuser=user1", "s2c", "reply", "sasl.reply.FAIL", "FAIL"),
])
def test_sasl_step_kinds_and_keys(line, direction, kind, key, status):
    src, dst = ("smtpd", "auth") if direction == "c2s" else ("auth", "smtpd")
    step = sasl_step(line, direction=direction, session="s-1", src=src, dst=dst, t=1.0)
    assert (step.proto, step.kind, step.key, step.status, step.dir) == ("sasl", kind, key, status, direction)
    assert step.verb == line.split("\t")[0] and step.line == line
    assert step.failed == (status == "FAIL")


def test_match_variants_are_chosen():
    from gponsim.commentary import catalog
    cat = catalog()

    def text(line, direction="s2c"):
        src, dst = ("smtpd", "auth") if direction == "c2s" else ("auth", "smtpd")
        return cat.resolve(sasl_step(line, direction=direction, session="s", src=src, dst=dst)).en
    assert "Username:" in text("CONT\t1\tVXNlcm5hbWU6")
    assert "Password:" in text("CONT\t1\tUGFzc3dvcmQ6")
    assert "auth_failure_delay" in text("FAIL\t1\tuser=user1")
    assert "not valid base64" in text("FAIL\t1\treason=Invalid base64 data in initial response")
    assert "asked nothing" in text("FAIL\t1\treason=Unexpected continuation")
    assert "LOGIN mechanism" in text("AUTH\t1\tLOGIN\tservice=smtp", "c2s")
    for key in ["sasl.handshake.VERSION", "sasl.handshake.CPID", "sasl.handshake.MECH",
                "sasl.handshake.SPID", "sasl.handshake.CUID", "sasl.handshake.COOKIE",
                "sasl.handshake.DONE", "sasl.cmd.AUTH", "sasl.cmd.CONT", "sasl.reply.CONT",
                "sasl.reply.OK", "sasl.reply.FAIL"]:
        entry = cat.get(key)
        assert entry is not None and entry.es and entry.en and entry.rfc and entry.actor, key


def test_secrets_are_marked_and_masked():
    line = "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tsecured\tresp=" + PLAIN_OK
    step = sasl_step(line, direction="c2s", session="s", src="smtpd", dst="auth")
    assert line[slice(*step.secret)] == PLAIN_OK
    shown = step.to_dict()
    assert PLAIN_OK not in str(shown) and shown["line"].endswith("resp=" + MASK)
    assert step.to_dict(reveal=True)["line"] == line
    cont = sasl_step("CONT\t4\tcGFzcw==", direction="c2s", session="s", src="smtpd", dst="auth")
    assert cont.line[slice(*cont.secret)] == "cGFzcw==" and "cGFzcw==" not in cont.to_json()
    challenge = sasl_step("CONT\t4\tUGFzc3dvcmQ6", direction="s2c", session="s", src="auth", dst="smtpd")
    assert challenge.secret is None
    empty = sasl_step("AUTH\t1\tPLAIN\tservice=smtp\tresp=", direction="c2s", session="s",
                      src="smtpd", dst="auth")
    assert empty.secret is None


# --------------------------------------------------------------------------
# Server, byte-exact

def test_handshake_is_one_write_in_dovecot_order(raw, server):
    c = raw()
    # Dovecot speaks first, before reading anything, in one write.
    data = c.sock.recv(65536)
    assert data.endswith(b"DONE\n"), data
    lines = data.decode().splitlines()
    assert lines[:3] == ["VERSION\t1\t2", "MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext"]
    assert lines[3] == f"SPID\t{os.getpid()}"
    assert re.fullmatch(r"CUID\t\d+", lines[4])
    assert re.fullmatch(r"COOKIE\t[0-9a-f]{32}", lines[5])
    assert lines[6:] == ["DONE"]
    second = raw().handshake()
    assert int(second[4].split("\t")[1]) == int(lines[4].split("\t")[1]) + 1
    assert second[5] != lines[5]


def test_mechanisms_follow_config_order(reactor, labroot, users):
    srv = AuthServer(users, mechanisms=parse_mechanisms("login plain"), reactor=reactor)
    call(reactor, srv.listen, socket_path(labroot))
    try:
        lines = Raw(socket_path(labroot)).handshake()
        assert lines[1:3] == ["MECH\tLOGIN\tplaintext", "MECH\tPLAIN\tplaintext"]
    finally:
        call(reactor, srv.stop)
    with pytest.raises(ValueError, match="cram-md5"):
        parse_mechanisms("plain cram-md5")


def test_plain_with_initial_response_ok(raw):
    c = raw()
    c.handshake()
    c.send(AUTH.format(id=1, mech="PLAIN") + f"\tresp={PLAIN_OK}\n")
    assert c.line() == "OK\t1\tuser=user1"


def test_plain_without_initial_response_gets_empty_cont(raw):
    c = raw()
    c.handshake()
    c.send(AUTH.format(id=1, mech="PLAIN") + "\n")
    assert c.line() == "CONT\t1\t"
    c.send(f"CONT\t1\t{PLAIN_OK}\n")
    assert c.line() == "OK\t1\tuser=user1"


def test_wrong_password_fails_after_delay_without_blocking(raw):
    slow, other = raw(), raw()
    slow.handshake()
    other.handshake()
    start = time.monotonic()
    # a wrong password and, on the same connection, a good one
    slow.send(AUTH.format(id=1, mech="PLAIN") + f"\tsecured\tresp={PLAIN_BAD}\n"
              + AUTH.format(id=2, mech="PLAIN") + f"\tresp={PLAIN_OK}\n")
    assert slow.line() == "OK\t2\tuser=user1"
    # another connection (another client: the failure's penalty is for 127.0.0.1)
    # is served meanwhile
    other.send(AUTH.format(id=1, mech="PLAIN").replace("rip=127.0.0.1", "rip=127.0.0.2")
               + f"\tresp={PLAIN_OK}\n")
    assert other.line() == "OK\t1\tuser=user1"
    assert time.monotonic() - start < DELAY
    assert slow.line() == "FAIL\t1\tuser=user1"
    assert time.monotonic() - start >= DELAY


def test_unknown_user_fails_like_a_wrong_password(raw):
    c = raw()
    c.handshake()
    start = time.monotonic()
    c.send(AUTH.format(id=5, mech="PLAIN") + "\tresp=" + b64(b'\0ghost\0pass') + "\n")
    assert c.line() == "FAIL\t5\tuser=ghost"
    assert time.monotonic() - start >= DELAY


def test_username_is_lowercased_like_auth_username_format(raw):
    c = raw()
    c.handshake()
    c.send(AUTH.format(id=1, mech="PLAIN") + "\tresp=" + b64(b'\0User1\0pass') + "\n")
    assert c.line() == "OK\t1\tuser=user1\toriginal_user=User1"
    # PLAIN with an authorization id equal to the user is fine, another one is not
    c.send(AUTH.format(id=2, mech="PLAIN") + "\tresp=" + b64(b'user1\0user1\0pass') + "\n")
    assert c.line() == "OK\t2\tuser=user1"
    c.send(AUTH.format(id=3, mech="PLAIN") + "\tresp=" + b64(b'user2\0user1\0pass') + "\n")
    assert c.line() == "FAIL\t3\tuser=user1"
    # (from another address: the failure above put a penalty on 127.0.0.1's next request)
    c.send(AUTH.format(id=4, mech="PLAIN").replace("rip=127.0.0.1", "rip=127.0.0.5")
           + "\tresp=" + b64(b'no-nul-here') + "\n")
    assert c.line() == "FAIL\t4"


def test_login_flow(raw):
    c = raw()
    c.handshake()
    c.send(AUTH.format(id=2, mech="LOGIN") + "\tsecured\n")
    assert c.line() == "CONT\t2\tVXNlcm5hbWU6"
    c.send(f"CONT\t2\t{b64(b'user2')}\n")
    assert c.line() == "CONT\t2\tUGFzc3dvcmQ6"
    c.send(f"CONT\t2\t{b64(b'pass')}\n")
    assert c.line() == "OK\t2\tuser=user2"
    # user name as initial response: straight to the password
    c.send(AUTH.format(id=3, mech="login") + "\tresp=" + b64(b'user2') + "\n")
    assert c.line() == "CONT\t3\tUGFzc3dvcmQ6"
    c.send(f"CONT\t3\t{b64(b'nope')}\n")
    assert c.line() == "FAIL\t3\tuser=user2"


def test_bad_base64_fails_at_once_with_reason(raw):
    c = raw()
    c.handshake()
    start = time.monotonic()
    c.send(AUTH.format(id=1, mech="PLAIN") + "\tresp=%%%not-base64\n")
    assert c.line() == "FAIL\t1\treason=Invalid base64 data in initial response"
    c.send(AUTH.format(id=2, mech="LOGIN") + "\n")
    assert c.line() == "CONT\t2\tVXNlcm5hbWU6"
    c.send("CONT\t2\t***\n")
    assert c.line() == "FAIL\t2\treason=Invalid base64 data in continued response"
    assert time.monotonic() - start < DELAY


def test_unexpected_and_unknown_continuations(raw):
    c = raw()
    c.handshake()
    # CONT while the password is being checked: nothing was asked
    c.send(AUTH.format(id=1, mech="PLAIN") + f"\tresp={PLAIN_OK}\nCONT\t1\tabcd\n")
    assert c.line() == "FAIL\t1\treason=Unexpected continuation"
    c.send("CONT\t99\tabcd\n")
    assert c.line() == "FAIL\t99\treason=Authentication request timed out"
    # the abandoned check of request 1 sends nothing more
    c.send(AUTH.format(id=3, mech="PLAIN") + f"\tresp={PLAIN_OK}\n")
    assert c.line() == "OK\t3\tuser=user1"


def test_unknown_params_are_ignored(raw):
    c = raw()
    c.handshake()
    c.send("AUTH\t1\tPLAIN\tservice=smtp\tsession=Xy\tlport=587\trport=50000\t"
           f"secured=tls\tno-penalty\tclient_id=x\tfuture_flag\tresp={PLAIN_OK}\n")
    assert c.line() == "OK\t1\tuser=user1"


@pytest.mark.parametrize("lines", [
    "AUTH\t1\tPLAIN\tservice=smtp\tresp=" + PLAIN_OK + "\tsecured\n",   # params after resp
    "AUTH\t1\tPLAIN\tnologin\n",                                        # no service
    "AUTH\t1\tCRAM-MD5\tservice=smtp\n",                                # not offered
    "AUTH\tx\tPLAIN\tservice=smtp\n",                                   # broken id
    "HELLO\tworld\n",                                                   # unknown command
    "AUTH\t1\tLOGIN\tservice=smtp\nAUTH\t1\tLOGIN\tservice=smtp\n",     # duplicate id
])
def test_protocol_errors_close_the_connection(raw, sink, lines):
    c = raw()
    c.handshake()
    c.send(lines)
    # a duplicate id first gets the CONT of the original request
    if lines.count("AUTH") == 2:
        assert c.line() == "CONT\t1\tVXNlcm5hbWU6"
    assert c.eof()
    assert sink.wait_for(lambda s: s.kind == "event" and s.key == "sasl.event.disconnect", WAIT)


@pytest.mark.parametrize("first", ["VERSION\t2\t0\n", "CPID\t1\n", "AUTH\t1\tPLAIN\tservice=smtp\n"])
def test_handshake_must_start_with_version_1(raw, first):
    c = raw()
    c.send(first)
    assert c.eof()


def test_handshake_needs_cpid_before_requests(raw):
    c = raw()
    c.send("VERSION\t1\t0\nAUTH\t1\tPLAIN\tservice=smtp\n")
    assert c.eof()
    d = raw()
    d.send("VERSION\t1\t0\nCPID\t0\n")
    assert d.eof()


def test_line_length_limit(raw):
    c = raw()
    c.handshake()
    head = AUTH.format(id=1, mech="PLAIN") + "\tpad="
    tail = f"\tresp={PLAIN_OK}"
    fits = head + "x" * (16383 - len(head) - len(tail)) + tail       # 16384 with the LF
    c.send(fits + "\n")
    assert c.line() == "OK\t1\tuser=user1"
    c.send("AUTH\t2\tPLAIN\tservice=smtp\tpad=" + "x" * 16384 + "\n")
    assert c.eof()


def test_request_timeout(reactor, labroot, users):
    srv = AuthServer(users, request_timeout=0.3, reactor=reactor)
    call(reactor, srv.listen, socket_path(labroot))
    try:
        c = Raw(socket_path(labroot))
        c.handshake()
        c.send(AUTH.format(id=1, mech="LOGIN") + "\n")
        assert c.line() == "CONT\t1\tVXNlcm5hbWU6"
        start = time.monotonic()
        deadline = start + WAIT
        pending = lambda: sum(len(conn.requests) for conn in srv.connections)  # noqa: E731
        while call(reactor, pending) and time.monotonic() < deadline:
            time.sleep(0.02)                                     # polling a real state change
        assert time.monotonic() - start >= 0.3 - 0.05
        c.send(f"CONT\t1\t{b64(b'user1')}\n")
        assert c.line() == "FAIL\t1\treason=Authentication request timed out"
        c.close()
    finally:
        call(reactor, srv.stop)


def test_cancel_forgets_the_request(raw):
    c = raw()
    c.handshake()
    c.send(AUTH.format(id=1, mech="LOGIN") + "\nCANCEL\t1\n" f"CONT\t1\t{b64(b'user1')}\n")
    assert c.line() == "CONT\t1\tVXNlcm5hbWU6"
    assert c.line() == "FAIL\t1\treason=Authentication request timed out"


def test_users_file_problem_is_a_temp_failure(raw, users):
    c = raw()
    c.handshake()
    with open(users.path, "a") as fh:
        fh.write("broken\n")
    start = time.monotonic()
    c.send(AUTH.format(id=1, mech="PLAIN") + f"\tresp={PLAIN_OK}\n")
    assert c.line() == "FAIL\t1\tuser=user1\tcode=temp_fail"
    assert time.monotonic() - start >= DELAY


def test_server_steps_for_foreign_clients_only(raw, sink):
    c = raw()
    c.handshake(cpid=4242)
    c.send(AUTH.format(id=1, mech="PLAIN") + f"\tresp={PLAIN_OK}\n")
    assert c.line() == "OK\t1\tuser=user1"
    ok = sink.wait_for(lambda s: s.verb == "OK", WAIT)
    assert ok is not None
    steps = [s for s in sink.steps if s.session == ok.session]
    assert ok.session.startswith("sasl-")
    assert [(s.src, s.dst, s.kind, s.verb) for s in steps] == [
        ("auth", "smtpd", "handshake", "VERSION"), ("auth", "smtpd", "handshake", "MECH"),
        ("auth", "smtpd", "handshake", "MECH"), ("auth", "smtpd", "handshake", "SPID"),
        ("auth", "smtpd", "handshake", "CUID"), ("auth", "smtpd", "handshake", "COOKIE"),
        ("auth", "smtpd", "handshake", "DONE"),
        ("smtpd", "auth", "handshake", "VERSION"), ("smtpd", "auth", "handshake", "CPID"),
        ("smtpd", "auth", "command", "AUTH"), ("auth", "smtpd", "reply", "OK")]
    auth = steps[9]
    assert auth.secret and PLAIN_OK not in auth.to_json() and auth.key == "sasl.cmd.AUTH"
    # our own in-process smtpd (CPID = our pid) is narrated by the client side
    before = len(sink.steps)
    own = raw()
    own.handshake(cpid=os.getpid())
    own.send(AUTH.format(id=1, mech="PLAIN") + f"\tresp={PLAIN_OK}\n")
    assert own.line() == "OK\t1\tuser=user1"
    # the foreign connection's next line proves the server has processed ours
    c.send(AUTH.format(id=2, mech="PLAIN") + f"\tresp={PLAIN_OK}\n")
    assert c.line() == "OK\t2\tuser=user1"
    assert sink.wait_for(lambda s: s.line == "OK\t2\tuser=user1", WAIT)
    assert {s.session for s in sink.steps[before:]} == {ok.session}


# --------------------------------------------------------------------------
# Socket file handling

def test_socket_path_and_mode(server, labroot):
    path = socket_path(labroot)
    assert path == Path(labroot, "var/spool/postfix/private/auth")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666


def test_stale_socket_is_replaced_live_one_refused(reactor, labroot, users):
    path = socket_path(labroot)
    path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))                 # a crashed run leaves the file behind
    dead.close()
    srv = AuthServer(users, reactor=reactor)
    call(reactor, srv.listen, path)
    try:
        assert Raw(path).handshake()[0] == "VERSION\t1\t2"
        other = AuthServer(users, reactor=reactor)
        with pytest.raises(AuthSocketError, match="in use"):
            call(reactor, other.listen, path)
        assert Raw(path).handshake()[0] == "VERSION\t1\t2"     # still ours
    finally:
        call(reactor, srv.stop)
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(AuthSocketError, match="not a socket"):
        call(reactor, AuthServer(users, reactor=reactor).listen, path)
    assert path.read_text() == "not a socket"


# --------------------------------------------------------------------------
# Our client (the Postfix side) against our server

@pytest.fixture
def client(reactor, server, labroot, sink):
    c = AuthClient(socket_path(labroot), emit=sink.step, reactor=reactor)
    yield c
    call(reactor, c.close)


def test_client_handshake_and_mechanisms(reactor, client, sink):
    session = new_session("smtp")
    assert call(reactor, client.mechanisms, session) == ["PLAIN", "LOGIN"]
    assert call(reactor, client.mechanisms, session, "noanonymous") == ["PLAIN", "LOGIN"]
    assert call(reactor, client.mechanisms, session, "noplaintext") == []
    lines = [(s.src, s.line) for s in sink.steps if s.session == session]
    assert lines[:2] == [("smtpd", "VERSION\t1\t0"), ("smtpd", f"CPID\t{os.getpid()}")]
    assert [line for _, line in lines[2:5]] == ["VERSION\t1\t2", "MECH\tPLAIN\tplaintext",
                                                "MECH\tLOGIN\tplaintext"]
    assert lines[-1] == ("auth", "DONE")
    # one connection: asking again sends nothing
    count = len(sink.steps)
    call(reactor, client.mechanisms, session)
    assert len(sink.steps) == count


def test_client_plain_login_and_ids(reactor, client, sink):
    s1, s2 = new_session("smtp"), new_session("submission")
    ok = call(reactor, client.start, "PLAIN", lip="192.168.1.10", rip="192.168.1.50",
              secured=True, resp_b64=PLAIN_OK, session=s1)
    assert ok == AuthReply("OK", 1, user="user1", params={"user": "user1"})
    start = time.monotonic()
    bad = call(reactor, client.start, "PLAIN", lip="192.168.1.10", rip="192.168.1.50",
               secured=True, resp_b64=PLAIN_BAD, session=s2)
    assert time.monotonic() - start >= DELAY
    assert (bad.kind, bad.request_id, bad.user, bad.reason) == ("FAIL", 2, "user1", None)
    # (from another address: the failure put a penalty on 192.168.1.50's next request)
    cont = call(reactor, client.start, "LOGIN", lip="192.168.1.10", rip="192.168.1.51",
                session=s2)
    assert (cont.kind, cont.request_id, cont.challenge) == ("CONT", 3, "VXNlcm5hbWU6")
    cont = call(reactor, client.respond, 3, b64(b"user2"), s2)
    assert cont.challenge == "UGFzc3dvcmQ6"
    done = call(reactor, client.respond, 3, b64(b"pass"), s2)
    assert (done.kind, done.user) == ("OK", "user2")
    auth_lines = [s.line for s in sink.steps if s.verb == "AUTH"]
    assert auth_lines[0] == ("AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=192.168.1.10\t"
                             f"rip=192.168.1.50\tsecured\tresp={PLAIN_OK}")
    assert auth_lines[2] == ("AUTH\t3\tLOGIN\tservice=smtp\tnologin\tlip=192.168.1.10\t"
                             "rip=192.168.1.51")
    # every request line and its reply carry the caller's session, once each
    # (the server does not narrate our own connection a second time)
    s2_lines = [s.line for s in sink.steps if s.session == s2]
    assert s2_lines == [
        f"AUTH\t2\tPLAIN\tservice=smtp\tnologin\tlip=192.168.1.10\trip=192.168.1.50\tsecured\tresp={PLAIN_BAD}",
        "FAIL\t2\tuser=user1",
        "AUTH\t3\tLOGIN\tservice=smtp\tnologin\tlip=192.168.1.10\trip=192.168.1.51",
        "CONT\t3\tVXNlcm5hbWU6", f"CONT\t3\t{b64(b'user2')}", "CONT\t3\tUGFzc3dvcmQ6",
        f"CONT\t3\t{b64(b'pass')}", "OK\t3\tuser=user2"]
    assert all(s.session.startswith(("smtp-", "submission-")) for s in sink.steps)


def test_client_prechecks_send_nothing(reactor, client, sink):
    session = new_session("smtp")
    call(reactor, client.mechanisms, session)
    count = len(sink.steps)
    reply = call(reactor, client.start, "CRAM-MD5", lip="1.1.1.1", rip="2.2.2.2", session=session)
    assert (reply.kind, reply.reason) == ("FAIL", "Invalid authentication mechanism")
    reply = call(reactor, client.start, "plain", lip="1.1.1.1", rip="2.2.2.2",
                 resp_b64="not base64!", session=session)
    assert reply.reason == "Invalid base64 data in initial response"
    assert len(sink.steps) == count
    assert valid_base64("") and valid_base64("AGEAYg==") and not valid_base64("a b")


def test_client_abort_sends_nothing(reactor, client, sink):
    session = new_session("smtp")
    cont = call(reactor, client.start, "LOGIN", lip="1.1.1.1", rip="2.2.2.2", session=session)
    count = len(sink.steps)
    call(reactor, client.abort, cont.request_id)
    assert len(sink.steps) == count
    with pytest.raises(AuthUnavailable):
        call(reactor, client.respond, cont.request_id, b64(b"user1"), session)
    again = call(reactor, client.start, "PLAIN", lip="1.1.1.1", rip="2.2.2.2",
                 resp_b64=PLAIN_OK, session=session)
    assert (again.kind, again.request_id) == ("OK", cont.request_id + 1)


def test_client_reconnects_after_server_restart(reactor, labroot, users, sink):
    path = socket_path(labroot)
    client = AuthClient(path, emit=sink.step, reactor=reactor)
    with pytest.raises(AuthUnavailable) as info:
        call(reactor, client.start, "PLAIN", lip="1.1.1.1", rip="2.2.2.2",
             resp_b64=PLAIN_OK, session="smtp-x-1")
    assert info.value.reason == CONNECTION_LOST
    assert str(path) in str(info.value) and "No such file" in str(info.value)
    expected_ids = iter([1, 3])           # the LOGIN left pending used id 2
    for _ in range(2):
        srv = AuthServer(users, emit=sink.step, reactor=reactor)
        call(reactor, srv.listen, path)
        try:
            reply = call(reactor, client.start, "PLAIN", lip="1.1.1.1", rip="2.2.2.2",
                         resp_b64=PLAIN_OK, session="smtp-x-1")
            assert (reply.kind, reply.request_id) == ("OK", next(expected_ids))
            pending = call(reactor, client.start, "LOGIN", lip="1.1.1.1", rip="2.2.2.2",
                           session="smtp-x-1")
        finally:
            call(reactor, srv.stop)                               # the auth server goes away
        with pytest.raises(AuthUnavailable):
            call(reactor, client.respond, pending.request_id, b64(b"user1"), "smtp-x-1")
    call(reactor, client.close)


class _FakeAuth(threading.Thread):
    """Answers one connection with fixed bytes (a wrong or broken socket)."""

    def __init__(self, path, answer: bytes, hang_up: bool) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.settimeout(WAIT)
        self.answer, self.hang_up = answer, hang_up

    def run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(self.answer)
            if self.hang_up:
                return
            conn.settimeout(WAIT)
            try:
                while conn.recv(4096):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self.join(WAIT)


@pytest.mark.parametrize("answer, hang_up, message", [
    (b"VERSION\t1\t2\nSPID\t123\n", False,
     "SASL: Connected to wrong auth socket (auth-master instead of auth-client)"),
    (b"VERSION\t2\t0\n", False, "SASL: Protocol version mismatch (2 vs. 1)"),
    (b"VERSION\tx\n", False, "SASL: Protocol version error"),
    (b"VERSION\t1\t2\nCUID\t1\nDONE\n", False, "offers no authentication mechanisms"),
    (b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\n", True,
     "closed the connection during the handshake"),
])
def test_client_complains_about_wrong_sockets(reactor, labroot, answer, hang_up, message):
    path = os.path.join(labroot, "auth")
    fake = _FakeAuth(path, answer, hang_up)
    fake.start()
    client = AuthClient(path, reactor=reactor)
    try:
        with pytest.raises(AuthUnavailable) as info:
            call(reactor, client.mechanisms)
        assert message in str(info.value)
        assert info.value.reason == CONNECTION_LOST
    finally:
        call(reactor, client.close)
        fake.close()


def test_client_handshake_timeout(reactor, labroot):
    path = os.path.join(labroot, "auth")
    fake = _FakeAuth(path, b"VERSION\t1\t2\n", False)     # never says DONE
    fake.start()
    client = AuthClient(path, reactor=reactor, timeout=0.3)
    try:
        start = time.monotonic()
        with pytest.raises(AuthUnavailable, match="timeout during the auth handshake"):
            call(reactor, client.mechanisms)
        assert time.monotonic() - start >= 0.3
    finally:
        call(reactor, client.close)
        fake.close()


def test_filter_mechanisms_like_postfix():
    mechs = {"PLAIN": ("plaintext",), "ANONYMOUS": ("anonymous",),
             "SCRAM-SHA-256": ("mutual-auth", "forward-secrecy")}
    assert filter_mechanisms(mechs) == ["PLAIN", "SCRAM-SHA-256"]
    assert filter_mechanisms(mechs, "noanonymous, noplaintext") == ["SCRAM-SHA-256"]
    assert filter_mechanisms(mechs, "mutual_auth") == ["SCRAM-SHA-256"]
    with pytest.raises(ValueError, match="bogus"):
        filter_mechanisms(mechs, "bogus")


@pytest.mark.slow          # waits out a real 4 s penalty (in memory: test_auth_penalty.py)
def test_auth_penalty_makes_the_next_login_from_that_address_wait(raw):
    """auth-penalty.c: after a failure, the next request from the same address
    waits 4 s (then fails after auth_failure_delay: 6 s in all); another
    address does not wait; a success clears the penalty; no-penalty is exempt."""
    from gponsim.server.dovecot import penalty

    c = raw()
    c.handshake()
    c.send(AUTH.format(id=1, mech="PLAIN") + f"\tresp={PLAIN_BAD}\n")
    assert c.line() == "FAIL\t1\tuser=user1"
    start = time.monotonic()
    c.send(AUTH.format(id=2, mech="PLAIN").replace("rip=127.0.0.1", "rip=127.0.0.4")
           + f"\tresp={PLAIN_OK}\n")
    assert c.line() == "OK\t2\tuser=user1" and time.monotonic() - start < 1
    c.send(AUTH.format(id=3, mech="PLAIN") + f"\tno-penalty\tresp={PLAIN_OK}\n")
    assert c.line() == "OK\t3\tuser=user1" and time.monotonic() - start < 1
    c.send(AUTH.format(id=4, mech="PLAIN") + f"\tresp={PLAIN_OK}\n")
    assert c.line() == "OK\t4\tuser=user1"
    assert time.monotonic() - start >= penalty.to_secs(1)
    start = time.monotonic()                  # the success cleared the penalty
    c.send(AUTH.format(id=5, mech="PLAIN") + f"\tresp={PLAIN_OK}\n")
    assert c.line() == "OK\t5\tuser=user1" and time.monotonic() - start < 1


def test_penalty_arithmetic():
    from gponsim.server.dovecot.penalty import AuthPenalty, to_secs

    assert [to_secs(n) for n in range(5)] == [2, 4, 8, 15, 15]
    now = [1000.0]
    p = AuthPenalty(clock=lambda: now[0])
    assert p.lookup("10.0.0.1") == 0
    p.update("10.0.0.1", 1)
    assert p.lookup("10.0.0.1") == 1
    p.update("10.0.0.1", 2)
    now[0] += 20                               # fading: 15 s and 8 s have passed
    assert p.lookup("10.0.0.1") == 0 or p.lookup("10.0.0.1") < 2
    now[0] += 30
    assert p.lookup("10.0.0.1") == 0           # forgotten after 29 s
    p.update("2001:db8:1:2::5", 1)
    assert p.lookup("2001:db8:1:ffff::9") == 1  # IPv6 by /48


def test_the_socket_folder_is_private_to_postfix(server, labroot):
    """Postfix's private/ folder is 0700 (the postfix user's when the lab runs
    as root): other users of the teacher's computer cannot reach the socket."""
    import stat

    private = socket_path(labroot).parent
    assert private.name == "private"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert stat.S_IMODE(socket_path(labroot).stat().st_mode) == 0o666
