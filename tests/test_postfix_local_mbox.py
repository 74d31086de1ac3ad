"""gponsim serves an mbox written by real Postfix's local(8) (Debian's package).

A throwaway Postfix instance (its own config_directory, queue_directory and
data_directory in a temporary folder; never /etc/postfix or /var/spool/postfix)
receives mail over SMTP and delivers it with local(8), ``mail_spool_directory``
pointing at the lab root's ``var/mail``. local(8) needs a Unix account for
mailbox delivery, so the recipient is ``nobody`` (every Debian system has
it), given a password in the lab's passwd-file like any lab user. gponsim's
IMAP and POP3 must then serve exactly what Postfix wrote: the same messages,
bodies byte for byte (local(8)'s ``>From`` quoting kept, the From_ line not
part of the message, Return-Path / X-Original-To / Delivered-To shown, as
Dovecot does). A delivery by Postfix after gponsim has rewritten the file
(UIDs written in) still lands, and gets the next UID.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest

from gponsim.server.dovecot.passwd import Users
from labproc import LabProcess, wait_until

POSTFIX = "/usr/sbin/postfix"
LOCAL = "/usr/lib/postfix/sbin/local"
USER = "nobody"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postfix,
    pytest.mark.skipif(not (os.path.exists(POSTFIX) and os.path.exists(LOCAL)),
                       reason="real Postfix not installed (apt-get install postfix)"),
    pytest.mark.root("a throwaway Postfix instance: master(8) refuses any other user ('the master "
                     "command is reserved for the superuser'), and local(8) delivers as the recipient"),
]

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {d}/etc
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.gponlab.local
mydomain = gponlab.local
myorigin = $mydomain
mydestination = $myhostname, gponlab.local, localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
disable_dns_lookups = yes
biff = no
alias_maps =
alias_database =
local_recipient_maps =
relayhost =
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
home_mailbox =
mailbox_command =
mail_spool_directory = {spool}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postfix:
    """A throwaway Postfix: smtpd on a free loopback port, local(8) for delivery."""

    def __init__(self, d: Path, spool: Path) -> None:
        self.d = d
        self.etc = d / "etc"
        for sub in ("etc", "spool", "data"):
            (d / sub).mkdir(parents=True)
        shutil.chown(d / "data", "postfix")
        self.port = free_port()
        (self.etc / "main.cf").write_text(MAIN_CF.format(d=d, spool=spool))
        lines, skipping = [], False
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            f = line.split()
            if line[:1].isspace():              # -o continuation of the entry above
                lines.append(("#" if skipping else "") + line)
                continue
            skipping = False
            if len(f) >= 8 and not line.startswith("#"):
                if f[1] == "inet":
                    if f[0] not in ("smtp", "25"):
                        skipping = True
                        lines.append("#" + line)
                        continue
                    f[0] = f"127.0.0.1:{self.port}"
                f[4] = "n"                      # no chroot jail to populate
                line = " ".join(f)
            lines.append(line)
        (self.etc / "master.cf").write_text("\n".join(lines) + "\n")
        self.master_pid: int | None = None

    def log(self) -> str:
        path = self.d / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no maillog)"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([POSTFIX, "-c", str(self.etc), *args], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "MAIL_CONFIG": str(self.etc)})

    def start(self) -> None:
        out = self.run("start")
        assert out.returncode == 0, f"postfix start failed: {out.stdout}{out.stderr}\n{self.log()}"
        pidfile = self.d / "spool" / "pid" / "master.pid"
        wait_until(pidfile.exists, 30, "Postfix's master.pid")
        self.master_pid = int(pidfile.read_text().split()[0])

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(listening, 30, "Postfix's smtpd to listen")

    def stop(self) -> None:
        self.run("stop")
        pid = self.master_pid
        if pid is None:
            return
        try:
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), 20, "Postfix's master to exit")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)        # the master we started, only

    def send(self, subject: str, body: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30) as s:
            s.sendmail("user1@gponlab.local", [f"{USER}@gponlab.local"],
                       f"From: user1@gponlab.local\r\nTo: {USER}@gponlab.local\r\n"
                       f"Subject: {subject}\r\n\r\n{body}".encode())


def split_mbox(data: bytes) -> list[bytes]:
    """The messages of an mbox as a client should get them, split here
    independently of gponsim: From_ lines start a message (local(8) quotes
    any other), the blank line before the next From_ belongs to no message."""
    parts = re.split(rb"(?:^|\n)From [^\n]*\n", data)
    assert parts[0] == b"", "an mbox starts with a From_ line"
    out = []
    for part in parts[1:]:
        assert part.endswith(b"\n\n") or part.endswith(b"\n")
        out.append(part[:-1] if part.endswith(b"\n\n") else part)
    return [p.replace(b"\n", b"\r\n") for p in out]


DOVECOT_PRIVATE = re.compile(rb"^(X-IMAPbase|X-IMAP|X-UID|Status|X-Status|X-Keywords|"
                             rb"Content-Length):", re.I)


def hide_private(message: bytes) -> bytes:
    head, sep, body = message.partition(b"\r\n\r\n")
    kept = [line for line in head.split(b"\r\n") if not DOVECOT_PRIVATE.match(line)]
    return b"\r\n".join(kept) + sep + body


@pytest.fixture
def where(reachable_dir):
    """A folder the unprivileged delivery user can reach."""
    return reachable_dir


def test_gponsim_serves_the_mbox_real_postfix_local_wrote(where):
    lab = LabProcess(where / "gponlab")
    postfix = None
    try:
        lab.start()
        Users.ensure_default(lab.root / "etc/dovecot/users").add(USER, "secreto")
        spool = lab.root / "var" / "mail"
        spool.mkdir(parents=True, exist_ok=True)
        for p in [spool, *spool.parents]:
            if p == Path("/tmp"):
                break
            p.chmod(p.stat().st_mode | 0o755)
        spool.chmod(0o1777)                     # like a mail spool: users create their mailbox
        postfix = Postfix(where / "postfix", spool)
        postfix.start()
        mbox = spool / USER
        postfix.send("primero", "Hola desde Postfix\r\n")
        # Postfix's qmgr may deliver two queued messages in either order: the
        # second is sent once the first is in the mailbox.
        wait_until(lambda: mbox.exists() and b"\nDelivered-To: " in mbox.read_bytes(),
                   30, f"local(8) to deliver the first message\n{postfix.log()}")
        postfix.send("segundo", "From the start of a line\r\n.punto\r\nfin\r\n")
        sent = re.compile(r"postfix/local\[\d+\]: \w+: to=<nobody@gponlab.local>, .*"
                          r"status=sent \(delivered to mailbox\)")
        wait_until(lambda: mbox.exists() and mbox.read_bytes().count(b"\nDelivered-To: ") == 2,
                   30, f"local(8) to deliver 2 messages\n{postfix.log()}")
        # postlogd writes local(8)'s line after the mailbox is written: wait for it too.
        wait_until(lambda: len(sent.findall(postfix.log())) == 2,
                   30, f"local(8) to log 2 deliveries\n{postfix.log()}")
        written = mbox.read_bytes()
        assert pwd.getpwuid(mbox.stat().st_uid).pw_name == USER
        expected = split_mbox(written)
        assert len(expected) == 2
        assert b"\r\n>From the start of a line\r\n" in expected[1]      # local(8)'s quoting
        assert expected[0].startswith(b"Return-Path: <user1@gponlab.local>\r\n"
                                      b"X-Original-To: nobody@gponlab.local\r\n"
                                      b"Delivered-To: nobody@gponlab.local\r\n")

        m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
        m.login(USER, "secreto")
        typ, data = m.select("INBOX")
        assert (typ, data) == ("OK", [b"2"])
        typ, data = m.fetch("1:*", "(UID RFC822.SIZE BODY.PEEK[])")
        got = [item for item in data if isinstance(item, tuple)]
        assert [item[1] for item in got] == expected
        assert [int(re.search(rb"RFC822.SIZE (\d+)", i[0]).group(1)) for i in got] == \
            [len(e) for e in expected]
        assert [int(re.search(rb"UID (\d+)", i[0]).group(1)) for i in got] == [1, 2]
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert [i[1] for i in data if isinstance(i, tuple)] == [
            b"Subject: primero\r\n\r\n", b"Subject: segundo\r\n\r\n"]
        # gponsim wrote its UIDs into the file, keeping the owner local(8) gave it.
        assert b"X-UID: 2\n" in mbox.read_bytes()
        assert pwd.getpwuid(mbox.stat().st_uid).pw_name == USER

        # Postfix delivers again, into the file gponsim rewrote, while the client idles.
        m.send(b"i1 IDLE\r\n")
        assert m.readline().startswith(b"+ ")
        postfix.send("tercero", "otra vez\r\n")
        line = m.readline()
        while not line.endswith(b"EXISTS\r\n"):
            line = m.readline()
        assert line == b"* 3 EXISTS\r\n"
        m.send(b"DONE\r\n")
        while not m.readline().startswith(b"i1 OK"):
            pass
        typ, data = m.fetch("3", "(UID BODY.PEEK[])")
        assert re.search(rb"UID 3\b", data[0][0])
        # The file now has Dovecot's private headers in it (X-UID, Status, ...):
        # clients never see those.
        third = hide_private(split_mbox(mbox.read_bytes())[2])
        assert data[0][1] == third
        assert b"\r\nSubject: tercero\r\n" in third and third.endswith(b"\r\n\r\notra vez\r\n")
        assert third.startswith(b"Return-Path: <user1@gponlab.local>\r\n")
        m.logout()

        # POP3 serves the same bytes.
        p = poplib.POP3("127.0.0.1", lab.ports["pop3"])
        p.user(USER)
        p.pass_("secreto")
        assert p.stat()[0] == 3
        for n, want in enumerate(expected + [third], 1):
            _resp, lines, _octets = p.retr(n)
            assert b"\r\n".join(lines) + b"\r\n" == want
        p.quit()
    finally:
        if postfix is not None:
            postfix.stop()
        lab.stop()
