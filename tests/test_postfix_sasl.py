"""Real Postfix (Debian's package) authenticates through our auth socket.

A throwaway Postfix instance (``postfix -c <tmp>/etc start``) runs one smtpd
on a free loopback port with ``smtpd_sasl_type = dovecot`` pointing at our
auth server; Python's smtplib logs in through it.
"""

from __future__ import annotations

import base64
import os
import pwd
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest
from reactor_thread import call

from gponsim.server.dovecot.auth import AuthServer, socket_path
from gponsim.server.dovecot.passwd import Users
from gponsim.sinks.memory import ListSink

POSTFIX = "/usr/sbin/postfix"
DELAY = 0.2
WAIT = 30.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postfix,
    pytest.mark.skipif(not os.path.exists(POSTFIX),
                       reason="real Postfix not installed (apt-get install postfix)"),
    pytest.mark.root("a throwaway Postfix instance: master(8) refuses any other user ('the master "
                     "command is reserved for the superuser'), and its smtpd runs as the postfix user"),
]


# -- a throwaway Postfix instance ------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postfix(confdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([POSTFIX, "-c", str(confdir), *args],
                          capture_output=True, text=True, timeout=60)


def _wait_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class PostfixInstance:
    def __init__(self, root: Path, auth_socket: Path) -> None:
        self.root = root
        self.etc = root / "etc"
        self.queue = root / "queue"
        self.data = root / "data"
        self.maillog = root / "maillog"
        self.port = _free_port()
        for d in (self.etc, self.queue, self.data):
            d.mkdir()
        postfix = pwd.getpwnam("postfix")
        os.chown(self.data, postfix.pw_uid, postfix.pw_gid)
        (self.etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
myhostname = mail.gponlab.local
mydomain = gponlab.local
mydestination = $myhostname, localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = {self.maillog}
maillog_file_prefixes = {root}
smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)
smtpd_tls_security_level = none
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {auth_socket}
""")
        (self.etc / "master.cf").write_text(f"""\
127.0.0.1:{self.port} inet n - n - - smtpd
postlog   unix-dgram n  -       n       -       1       postlogd
anvil     unix  -       -       n       -       1       anvil
""")
        self.master_pid: int | None = None

    def log(self) -> str:
        return self.maillog.read_text() if self.maillog.exists() else "(no maillog)"

    def start(self) -> None:
        out = _postfix(self.etc, "start")
        assert out.returncode == 0, f"postfix start failed: {out.stderr}\n{self.log()}"
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + WAIT
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.master_pid = int(pid_file.read_text().split()[0])
        assert _wait_port(self.port, deadline), f"smtpd does not listen\n{self.log()}"

    def stop(self) -> None:
        _postfix(self.etc, "stop")
        pid = self.master_pid
        if pid is None:
            return
        deadline = time.monotonic() + WAIT
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):                      # the master we started, only
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def labroot(reachable_dir):
    # the postfix user must reach the socket
    return reachable_dir


@pytest.fixture
def setup(reactor, labroot):
    users = Users.ensure_default(labroot / "lab" / "etc/dovecot/users")
    sink = ListSink()
    server = AuthServer(users, emit=sink.step, failure_delay=DELAY, reactor=reactor)
    auth = socket_path(labroot / "lab")
    call(reactor, server.listen, auth)
    (labroot / "postfix").mkdir()
    postfix = PostfixInstance(labroot / "postfix", auth)
    try:
        postfix.start()
        yield postfix, sink
    finally:
        postfix.stop()
        call(reactor, server.stop)


def _session_lines(sink: ListSink, verb_line: str) -> list[str]:
    step = sink.wait_for(lambda s: s.line.startswith(verb_line), 10)
    assert step is not None, [s.line for s in sink.steps]
    return [s.line for s in sink.steps if s.session == step.session]


def test_real_postfix_plain_ok_and_wrong_password(setup):
    postfix, sink = setup
    with smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="client.test", timeout=WAIT) as smtp:
        code, _ = smtp.ehlo()
        assert code == 250
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"], postfix.log()
        assert smtp.login("user1", "pass") == (235, b"2.7.0 Authentication successful")

    ok = sink.wait_for(lambda s: s.line == "OK\t1\tuser=user1" and s.src == "auth", 10)
    assert ok is not None, [s.line for s in sink.steps]
    lines = [s for s in sink.steps if s.session == ok.session]
    assert [s.line for s in lines[7:9]] == ["VERSION\t1\t0", lines[8].line]
    cpid = int(lines[8].line.split("\t")[1])
    assert lines[8].line.startswith("CPID\t") and cpid != os.getpid()
    auth = next(s for s in lines if s.verb == "AUTH")
    plain = base64.b64encode(b"\0user1\0pass").decode()
    assert auth.line == ("AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\t"
                         f"rip=127.0.0.1\tresp={plain}")
    assert (auth.src, auth.dst, auth.kind) == ("smtpd", "auth", "command")
    assert auth.line[slice(*auth.secret)] == plain

    with smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="client.test", timeout=WAIT) as smtp:
        smtp.ehlo()
        start = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            smtp.login("user1", "wrong")
        assert time.monotonic() - start >= DELAY
    assert info.value.smtp_code == 535
    assert info.value.smtp_error.startswith(b"5.7.8 Error: authentication failed:")
    fail = sink.wait_for(lambda s: s.verb == "FAIL", 10)
    assert fail is not None and fail.line.endswith("\tuser=user1") and fail.key == "sasl.reply.FAIL"


def test_real_postfix_login_mechanism(setup):
    postfix, sink = setup
    with smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="client.test", timeout=WAIT) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = "user2", "pass"
        assert smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False) == \
            (235, b"2.7.0 Authentication successful")
    lines = _session_lines(sink, "OK\t")
    auth_at = next(i for i, line in enumerate(lines) if line.startswith("AUTH\t"))
    rid = lines[auth_at].split("\t")[1]
    user, password = base64.b64encode(b"user2").decode(), base64.b64encode(b"pass").decode()
    assert lines[auth_at:] == [
        f"AUTH\t{rid}\tLOGIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1",
        f"CONT\t{rid}\tVXNlcm5hbWU6", f"CONT\t{rid}\t{user}",
        f"CONT\t{rid}\tUGFzc3dvcmQ6", f"CONT\t{rid}\t{password}",
        f"OK\t{rid}\tuser=user2"]


def test_the_socket_sits_in_postfix_s_private_folder(setup, labroot):
    """As on Debian: private/ is 0700 and the postfix user's (nobody else can
    even look inside), the socket is 10-master.conf's (0666, postfix:postfix),
    and the real smtpd, running as postfix, still authenticates through it."""
    import stat

    postfix, _sink = setup
    private = labroot / "lab/var/spool/postfix/private"
    st = private.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert pwd.getpwuid(st.st_uid).pw_name == "postfix"
    sock = (private / "auth").stat()
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o666
    assert pwd.getpwuid(sock.st_uid).pw_name == "postfix"
    with smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="client.test", timeout=WAIT) as smtp:
        smtp.ehlo()
        assert smtp.login("user2", "pass") == (235, b"2.7.0 Authentication successful")
