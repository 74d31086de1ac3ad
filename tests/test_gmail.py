"""The Gmail simulator on its own (`gponsim gmail`), checked with real clients."""

from __future__ import annotations

import json
import mailbox
import shutil
import signal
import subprocess
import sys

import pytest

from gponsim.server.sims import gmail as gm
from gponsim.steps import read_jsonl
from labproc import LabProcess, wait_until

pytestmark = pytest.mark.slow          # end to end: `gponsim gmail` processes and real clients

SWAKS = shutil.which("swaks")


@pytest.fixture
def gmail_sim(tmp_path):
    root = tmp_path / "gponlab"
    ready = tmp_path / "gmail.ready.json"
    steps = tmp_path / "gmail.steps.jsonl"
    err = open(tmp_path / "gmail.stderr", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gponsim", "gmail", "--lab-root", str(root),
                             "--port", "0", "--ready-file", str(ready), "--quiet",
                             "--steps", str(steps)], stdout=subprocess.DEVNULL, stderr=err)

    def up():
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "gmail.stderr").read_text())
        return ready.exists()
    wait_until(up, 20, "gponsim gmail to listen")
    info = json.loads(ready.read_text())
    yield {"root": root, "port": info["port"], "steps": steps}
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    err.close()


def swaks(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SWAKS, "--server", "127.0.0.1", "--port", str(port), "--tls",
                           "--ehlo", "mail.gponlab.local", "--from", "user1@gponlab.local",
                           "--to", "bob@example.com", "--h-Subject", "swaks via gmail sim",
                           *args], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")
def test_swaks_starttls_and_app_password(gmail_sim):
    r = swaks(gmail_sim["port"], "--auth", "PLAIN", "--auth-user", gm.DEFAULT_ACCOUNT,
              "--auth-password", gm.DEFAULT_APP_PASSWORD)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "<-  220 smtp.gmail.com ESMTP " in out and " - gsmtp" in out
    assert "<-  250-STARTTLS" in out
    assert "<-  220 2.0.0 Ready to start TLS" in out
    assert "<~  250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH" in out
    assert "<~  235 2.7.0 Accepted" in out
    assert "<~  250 2.0.0 OK  " in out
    assert "<~  221 2.0.0 closing connection " in out
    path = gm.internet_mbox(gmail_sim["root"], "bob@example.com")
    assert path == gmail_sim["root"] / "internet" / "example.com" / "bob"
    box = mailbox.mbox(str(path))
    [msg] = list(box)
    assert msg["Subject"] == "swaks via gmail sim"
    assert msg["Received"].startswith("from mail.gponlab.local ([127.0.0.1])")
    def narrated():
        steps = list(read_jsonl(gmail_sim["steps"])) if gmail_sim["steps"].exists() else []
        return (any(s.src == "client" and s.dst == "relay" and s.verb == "AUTH" for s in steps)
                and any(s.verb == "INTERNET" and s.dst == "internet" for s in steps))
    wait_until(narrated, 10, "the simulator's Steps")


@pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")
@pytest.mark.parametrize("password,reply", [
    (gm.DEFAULT_NORMAL_PASSWORD, ["534-5.7.9 Application-specific password required. For more "
                                  "information, go to",
                                  "534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor "]),
    ("nope", ["535-5.7.8 Username and Password not accepted. For more information, go to",
              "535 5.7.8  https://support.google.com/mail/?p=BadCredentials "]),
])
def test_swaks_wrong_passwords(gmail_sim, password, reply):
    r = swaks(gmail_sim["port"], "--auth", "LOGIN", "--auth-user", gm.DEFAULT_ACCOUNT,
              "--auth-password", password)
    assert r.returncode != 0
    for line in reply:
        assert f"<~* {line}" in r.stdout
    assert not (gmail_sim["root"] / "internet").exists()


@pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")
def test_swaks_without_tls_gets_530(gmail_sim):
    r = subprocess.run([SWAKS, "--server", "127.0.0.1", "--port", str(gmail_sim["port"]),
                        "--from", "a@b.c", "--to", "bob@example.com", "--auth", "PLAIN",
                        "--auth-user", "x", "--auth-password", "y"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    # no AUTH before TLS: swaks refuses to authenticate; MAIL without AUTH gets 530
    assert "250-AUTH" not in r.stdout


def test_send_to_lab_is_narrated_from_the_internet(tmp_path):
    lab = LabProcess(tmp_path / "gponlab").start()
    steps = tmp_path / "send.jsonl"
    try:
        r = subprocess.run([sys.executable, "-m", "gponsim", "gmail", "send-to-lab",
                            "--from", "alice@example.org", "--to", "user2@gponlab.local",
                            "--subject", "Desde internet", "--port", str(lab.ports["smtp"]),
                            "--quiet", "--steps", str(steps)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        [msg] = lab.wait_for_mail("user2")
    finally:
        lab.stop()
    assert msg["Subject"] == "Desde internet"
    assert msg["From"] == "alice@example.org"
    assert msg["Received"].startswith("from mail-sor-f41.google.com (localhost [127.0.0.1])")
    client = list(read_jsonl(steps))
    commands = [s.line.split()[0] for s in client if s.kind == "command"]
    assert commands == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert all(s.src == "internet" for s in client if s.kind == "command")
    assert all(s.dst == "internet" for s in client if s.kind == "reply")
    assert "queue id" in r.stderr


@pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")
def test_swaks_submits_external_mail_through_the_lab(tmp_path):
    lab = LabProcess(tmp_path / "gponlab").start()
    try:
        r = subprocess.run([SWAKS, "--server", "127.0.0.1", "--port", str(lab.ports["submission"]),
                            "--tls", "--auth", "PLAIN", "--auth-user", "user1",
                            "--auth-password", "pass", "--from", "user1@gponlab.local",
                            "--to", "zoe@example.net", "--h-Subject", "swaks to the internet"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout
        path = gm.internet_mbox(lab.root, "zoe@example.net")
        wait_until(path.exists, 20, "the internet mbox")
        wait_until(lambda: "status=sent" in lab.log_text(), 10, "status=sent")
        msgs = list(mailbox.mbox(str(path)))
    finally:
        lab.stop()
    [msg] = msgs
    assert msg["Subject"] == "swaks to the internet"
    gmail_hop, lab_hop = msg.get_all("Received")
    assert gmail_hop.startswith("from mail.gponlab.local ([127.0.0.1])")
    assert "by smtp.gmail.com with ESMTPSA" in gmail_hop
    assert "by mail.gponlab.local (Postfix) with ESMTPSA" in lab_hop


def test_chunking_bdat(gmail_sim):
    import smtplib
    import ssl

    ctx = ssl.create_default_context(cafile=str(gmail_sim["root"] / "etc/gmail-ca/ca.pem"))
    with smtplib.SMTP("127.0.0.1", gmail_sim["port"], timeout=15) as c:
        c.ehlo("mail.gponlab.local")
        assert c.has_extn("chunking") and c.has_extn("starttls")
        c.starttls(context=ctx)   # verified: the CA signs it (SAN 127.0.0.1 too)
        c.ehlo("mail.gponlab.local")
        c.login(gm.DEFAULT_ACCOUNT, gm.DEFAULT_APP_PASSWORD)
        assert c.mail("user1@gponlab.local")[0] == 250
        assert c.rcpt("ana@example.com")[0] == 250
        part1, part2 = b"Subject: en trozos\r\n\r\nuno ", b"dos\r\n"
        c.send(f"BDAT {len(part1)}\r\n".encode() + part1)
        code, text = c.getreply()
        assert code == 250 and text.startswith(f"2.0.0 {len(part1)} bytes received".encode())
        c.send(f"BDAT {len(part2)} LAST\r\n".encode() + part2)
        code, text = c.getreply()
        assert code == 250 and text.startswith(b"2.0.0 OK  ")
    [msg] = list(mailbox.mbox(str(gm.internet_mbox(gmail_sim["root"], "ana@example.com"))))
    assert msg["Subject"] == "en trozos" and msg.get_payload() == "uno dos\n"
