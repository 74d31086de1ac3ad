"""LMTP against the real programs (Debian's packages).

- gponsim's lmtp(8) client delivers to real Dovecot 2.3's LMTP service
  (``dovecot-lmtpd``), run as a throwaway instance (``dovecot -F`` with its own
  base_dir and configuration in a temporary folder) on the lab's socket path,
  with the lab's passwd-file users and ``mail_location``: with
  ``auth_username_format = %Ln`` the mail is saved and gponsim's mail store
  reads what Dovecot wrote; without it, Dovecot's 550 is the lab's pitfall.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from reactor_thread import call

from gponsim.server.dovecot.passwd import Users
from gponsim.server.mailstore.location import open_store
from gponsim.server.maillog import MailLog
from gponsim.server.postfix.lmtp import LmtpClient, LmtpSettings
from gponsim.server.postfix.queuefile import Envelope
from gponsim.server.postfix.transport import DeliveryRequest
from gponsim.sinks.memory import ListSink
from labproc import wait_until

DOVECOT = "/usr/sbin/dovecot"
LMTP = "/usr/lib/dovecot/lmtp"
NOBODY = 65534

pytestmark = [
    pytest.mark.slow,                  # real Dovecot
    pytest.mark.skipif(not (os.path.exists(DOVECOT) and os.path.exists(LMTP)),
                       reason="real Dovecot LMTP not installed (apt-get install dovecot-lmtpd)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot's lmtp delivers as the user: needs root"),
]

MESSAGE = (b"Received: from pc1 (unknown [127.0.0.1])\n\tby mail.gponlab.local (Postfix) with ESMTP"
           b" id 4F1A2C0D9E\n\tfor <user2@gponlab.local>; Mon,  1 Jan 2024 12:00:00 +0000 (UTC)\n"
           b"From: user1@gponlab.local\nTo: user2@gponlab.local\nSubject: por LMTP\n"
           b"Message-ID: <lmtp-interop@pc1>\n\nHola user2\n.un punto\n")


class RealDovecot:
    """Dovecot's master in the foreground (its pid is ours to stop), LMTP only."""

    def __init__(self, root: Path, work: Path, username_format: str | None) -> None:
        self.root = root
        self.work = work
        self.log = work / "dovecot.log"
        users = Users.ensure_default(root / "etc/dovecot/users")
        os.chmod(users.path, 0o644)             # the auth process runs as user dovecot
        for sub in ("var/mail", "home/user1", "home/user2", "var/spool/postfix/private"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("var/mail", "home/user1", "home/user2"):
            os.chown(root / sub, NOBODY, NOBODY)
        protocol = (f"protocol lmtp {{\n  auth_username_format = {username_format}\n}}\n"
                    if username_format else "")
        self.conf = work / "dovecot.conf"
        self.conf.write_text(f"""\
base_dir = {work}/run
state_dir = {work}/state
log_path = {self.log}
protocols = lmtp
ssl = no
hostname = mail.gponlab.local
first_valid_uid = 100
mail_location = mbox:~/mail:INBOX={root}/var/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=BLF-CRYPT username_format=%u {root}/etc/dovecot/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/etc/dovecot/users
  default_fields = uid={NOBODY} gid={NOBODY} home={root}/home/%u
}}
service lmtp {{
  unix_listener {root}/var/spool/postfix/private/dovecot-lmtp {{
    mode = 0600
    user = root
  }}
}}
{protocol}""")
        self.socket = root / "var/spool/postfix/private/dovecot-lmtp"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_until(self.socket.exists, 20, "Dovecot's LMTP socket")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)       # the master we started stops its children
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def short_dir():
    """Socket paths must stay short, and Dovecot's users must reach the folder."""
    path = Path(tempfile.mkdtemp(prefix="gponsim-lmtp-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dovecot_factory(short_dir):
    started = []

    def make(username_format: str | None) -> RealDovecot:
        work = short_dir / "dovecot"
        work.mkdir()
        dv = RealDovecot(short_dir / "lab", work, username_format)
        started.append(dv)
        dv.start()
        return dv
    yield make
    for dv in started:
        dv.stop()


def deliver(reactor, root: Path, rcpts: list[str], sender: str = "user1@gponlab.local"):
    sink = ListSink()
    log = MailLog(root / "var/log/mail.log")
    client = LmtpClient(LmtpSettings(lab_root=root), emit=sink.step, log=log, reactor=reactor)
    env = Envelope(sender=sender, recipients=rcpts, session="smtp-interop-1")
    request = DeliveryRequest("4F1A2C0D9E", env, [(i, r, r) for i, r in enumerate(rcpts)],
                              MESSAGE, time.time(), nexthop="unix:private/dovecot-lmtp")
    statuses = call(reactor, client.deliver, request, timeout=30)
    lines = (root / "var/log/mail.log").read_text().splitlines()
    return statuses, [line.split("]: ", 1)[1] for line in lines], sink


def test_gponsim_lmtp_client_delivers_to_real_dovecot(reactor, dovecot_factory):
    dv = dovecot_factory("%Ln")
    statuses, log, sink = deliver(reactor, dv.root, ["user2@gponlab.local", "user1@gponlab.local"])
    assert [(s.status, s.dsn) for s in statuses] == [("sent", "2.0.0"), ("sent", "2.0.0")], \
        dv.log_text()
    assert re.fullmatch(r"250 2\.0\.0 <user2@gponlab\.local> [A-Za-z0-9+/]{22} Saved",
                        statuses[0].reason), statuses[0].reason
    assert re.fullmatch(r"250 2\.0\.0 <user1@gponlab\.local> [A-Za-z0-9+/]{22}:R2 Saved",
                        statuses[1].reason), statuses[1].reason
    assert re.fullmatch(r"4F1A2C0D9E: to=<user2@gponlab\.local>, relay=mail\.gponlab\.local"
                        r"\[private/dovecot-lmtp\], delay=\S+, delays=\S+, dsn=2\.0\.0, "
                        r"status=sent \(250 2\.0\.0 <user2@gponlab\.local> \S+ Saved\)", log[0])
    # Dovecot's replies, as the client narrated them
    replies = [s.line for s in sink.steps if s.kind == "reply"]
    assert replies[:2] == ["220 mail.gponlab.local Dovecot (Debian) ready.",
                           "250-mail.gponlab.local\n250-8BITMIME\n250-CHUNKING\n"
                           "250-ENHANCEDSTATUSCODES\n250 PIPELINING"]
    assert replies[2:5] == ["250 2.1.0 OK", "250 2.1.5 OK", "250 2.1.5 OK"]
    assert replies[5] == "354 OK" and replies[-1] == "221 2.0.0 Bye"
    # what real Dovecot wrote, read by gponsim's mail store
    wait_until(lambda: "saved mail to INBOX" in dv.log_text(), 10, "Dovecot's log")
    [msg] = open_store(dv.root, "user2").folder("INBOX").sync().messages
    headers = msg.headers.decode()
    assert msg.from_line.startswith(b"From user1@gponlab.local  ")
    assert headers.startswith("Return-Path: <user1@gponlab.local>\nReceived: from "
                              "mail.gponlab.local\n\tby mail.gponlab.local with LMTP\n\tid ")
    assert "Delivered-To:" not in headers          # two recipients: none (lmtp_hdr_delivery_address)
    assert msg.body == b"Hola user2\n.un punto\n"
    assert re.search(r"lmtp\(user2\)<\d+><[A-Za-z0-9+/]{22}>: Info: msgid=<lmtp-interop@pc1>: "
                     r"saved mail to INBOX", dv.log_text()), dv.log_text()


def test_real_dovecot_without_ln_refuses_the_whole_address(reactor, dovecot_factory):
    dv = dovecot_factory(None)
    statuses, log, sink = deliver(reactor, dv.root, ["user2@gponlab.local"])
    [status] = statuses
    assert (status.status, status.dsn) == ("bounced", "5.1.1")
    assert status.reason == ("host mail.gponlab.local[private/dovecot-lmtp] said: 550 5.1.1 "
                             "<user2@gponlab.local> User doesn't exist: user2@gponlab.local "
                             "(in reply to RCPT TO command)")
    assert [s.line for s in sink.steps if s.kind == "command"][-2:] == ["RSET", "QUIT"]
    assert not (dv.root / "var/mail/user2").exists()


# ---------------------------------------------------------------------------
# The same LMTP session against real Dovecot and gponsim's Dovecot LMTP.

SESSION = [
    "LHLO mail.gponlab.local", "NOOP", "VRFY user2", "HELO x", "FOO", "DATA",
    "MAIL FROM:user1@x", "MAIL FROM: <a@b>", "MAIL FROM:<a@b", "MAIL FROM:<a b@c>",
    "MAIL FROM:<a@b> SIZE=400", "MAIL FROM:<a@b> BODY=BINARYMIME", "MAIL",
    "MAIL FROM:<user1@gponlab.local> BODY=8BITMIME", "MAIL FROM:<c@d>",
    "RCPT TO:", "RCPT TO:<>", "RCPT TO:user2@gponlab.local", "RCPT TO:<a@>",
    "RCPT TO:<user2@gponlab.local> NOTIFY=NEVER", "RCPT TO:<user2@[127.0.0.1]>",
    "RCPT TO:<user2@gponlab.local>", "RCPT TO:<User1@GPONLAB.local>",
    "RCPT TO:<nosuch@gponlab.local>", "RCPT TO:<user2+lab@gponlab.local>", "RCPT TO:<USER2>",
    "DATA x", "DATA", "@MESSAGE",
    "MAIL FROM:<>", "RCPT TO:<user1@gponlab.local>", "RSET x", "RSET", "QUIT",
]
BODY = b"Subject: compared\r\nMessage-ID: <cmp@pc1>\r\n\r\nFrom here\r\n..dot\r\n.\r\n"


def play(path: Path) -> list[str]:
    """Run SESSION on the LMTP socket at ``path``; every reply line, in order."""
    import socket as so

    sock = so.socket(so.AF_UNIX)
    sock.settimeout(20)
    sock.connect(str(path))
    reader = sock.makefile("rb")
    out: list[str] = []

    def replies(n: int = 1) -> None:
        for _ in range(n):
            while True:
                line = reader.readline().decode().rstrip("\r\n")
                out.append(line)
                if line[3:4] != "-":
                    break
    replies()
    accepted = 0
    for line in SESSION:
        if line == "@MESSAGE":
            sock.sendall(BODY)
            replies(accepted)
            continue
        sock.sendall(line.encode() + b"\r\n")
        replies()
        if line.startswith("RCPT") and out[-1].startswith("250"):
            accepted += 1
    sock.close()
    return out


def normalized(lines: list[str]) -> list[str]:
    """Session ids differ from run to run: ``<sid>`` (their :T/:R suffixes kept)."""
    return [re.sub(r"^(250 2\.0\.0 <[^>]*> )[A-Za-z0-9+/]{22}", r"\1<sid>", line)
            for line in lines]


@pytest.mark.parametrize("username_format", ["%Ln", None])
def test_gponsim_answers_as_real_dovecot(reactor, dovecot_factory, short_dir, username_format):
    from gponsim.server.dovecot.lmtp import LmtpService
    from gponsim.server.dovecot.lmtp import LmtpSettings as DovecotSettings

    dv = dovecot_factory(username_format)
    real = play(dv.socket)
    ours_root = short_dir / "ours"
    settings = DovecotSettings(username_format=username_format or "%Lu")
    users = Users.ensure_default(ours_root / "etc/dovecot/users")
    service = LmtpService(ours_root, settings, user_exists=users.exists, reactor=reactor)
    path = ours_root / "lmtp"
    call(reactor, service.listen, path)
    try:
        ours = play(path)
    finally:
        call(reactor, service.stop)
    assert normalized(ours) == normalized(real)
    # what each wrote into user2's INBOX: the same headers (ids and dates aside)
    def saved(root: Path) -> list[tuple[bytes, bytes, bytes]]:
        return [(m.from_line.split(b"  ")[0],
                 re.sub(rb"\tid [A-Za-z0-9+/]{22}|; \w{3}, \d\d \w{3} \d{4} [\d:]{8} [+-]\d{4}",
                        b"", m.headers), m.body)
                for m in open_store(root, "user2").folder("INBOX").sync().messages]
    wait_until(lambda: "saved mail to INBOX" in dv.log_text(), 10, "Dovecot's save")
    theirs, mine = saved(dv.root), saved(ours_root)
    assert [(f, h) for f, h, _b in mine] == [(f, h) for f, h, _b in theirs]
    # bodies: the mail store quotes a body line starting with "From " (mboxo), Dovecot
    # does not (mboxcl2); docs/lmtp.md lists the difference
    assert [b.replace(b"\n>From ", b"\nFrom ").removeprefix(b">") for _f, _h, b in mine] == \
        [b for _f, _h, b in theirs]
    pitfall = "550 5.1.1 <user2@gponlab.local> User doesn't exist: user2@gponlab.local"
    assert (pitfall in real) == (username_format is None)
    assert sum(line.endswith(" Saved") for line in real) == (4 if username_format else 1)
