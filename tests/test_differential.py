"""Differential tests: every lesson scenario against gponsim and against Debian's
Postfix 3.7 + Dovecot 2.3 configured from the same lab profile.

Each scenario is a client script run with a real client (swaks, curl,
smtplib, imaplib, poplib) against both servers, one after the other; the
lines each server sent back and the lines each wrote to mail.log since the
scenario began must be the same, in order (see :mod:`differential` for what
is normalised and how mail.log is ordered). Where gponsim deliberately
differs, the scenario names the :class:`~differential.Deliberate` entry, and
``docs/fidelity.md`` lists it with its reason.

Both servers share the lab root's files (etc/passwd, etc/aliases, etc/hosts,
the users file, the certificates) and relay to the same Gmail simulator, so
the scenarios run in the same order on both and leave both mailboxes alike.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import ssl
import tempfile
from pathlib import Path

import pytest

import differential as diff
from differential import Deliberate
from labproc import LabProcess
from reallab import RealLab, available

from gponsim.config.profile import SHIPPED_PROFILE

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

HOST = "127.0.0.1"
#: Fixed headers: the same message bytes on both servers.
HEADERS = ["--header", "Date: Mon, 01 Dec 2025 10:00:00 +0000",
           "--header", "Message-Id: <diff-test@gponlab.local>",
           "--header", "Subject: Hola desde el laboratorio",
           "--body", "Mensaje de prueba.\n"]
FIGURES: list[dict] = []


def unverified() -> ssl.SSLContext:
    """The lab's certificate is self-signed: the students' clients accept it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Pair:
    """gponsim and the real programs, from one profile and one lab root."""

    def __init__(self, base: Path, profile: Path) -> None:
        self.base = base
        self.profile = profile
        extra = [] if profile == SHIPPED_PROFILE else ["--config", str(profile)]
        self.gponsim = LabProcess(base / "gponlab", extra=extra + ["--port", "gmail=0"])
        self.real: RealLab | None = None

    def start(self) -> "Pair":
        self.gponsim.start()
        self.real = RealLab(self.base / "real", self.gponsim.root, self.profile,
                            gmail_port=self.gponsim.ports["gmail"]).start()
        return self

    def stop(self) -> None:
        if self.real is not None:
            self.real.stop()
        self.gponsim.stop()

    @property
    def maillog(self) -> Path:
        return self.gponsim.root / "var/log/mail.log"

    def run(self, name: str, script, deliberate=(), settle: float = 1.0,
            until=None) -> tuple[diff.Comparison, diff.Comparison]:
        """Run ``script(ports)`` against both; compare replies and mail.log."""
        mark = self.maillog.stat().st_size
        self.real.settle()
        ours = script(self.gponsim.ports)
        ours_log = diff.quiet(lambda: diff.log_since(self.maillog, mark), settle, until=until)
        theirs = script(self.real.ports)
        theirs_log = diff.quiet(self.real.maillog, settle, until=until)
        replies = diff.compare_replies(ours, theirs, deliberate)
        log = diff.compare_logs(ours_log, theirs_log, deliberate)
        FIGURES.append({"scenario": name,
                        "reply_lines": replies.compared, "reply_identical": replies.identical,
                        "log_lines": log.compared, "log_identical": log.identical,
                        "deliberate": [d.name for d, n_real, n_ours in replies.deliberate
                                       + log.deliberate if n_real or n_ours]})
        return replies, log


def _new_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="gponsim-diff-", dir="/tmp"))
    base.chmod(0o755)         # the postfix user reaches the real instance's queue
    return base


@pytest.fixture(scope="module")
def figures(request):
    yield FIGURES
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not FIGURES:
        return
    total = {k: sum(f[k] for f in FIGURES) for k in
             ("reply_lines", "reply_identical", "log_lines", "log_identical")}
    reporter.write_line("")
    reporter.write_line("differential suite: " + json.dumps(total))
    for f in FIGURES:
        reporter.write_line(f"  {json.dumps(f)}")


@pytest.fixture(scope="module")
def lab(figures):
    base = _new_base()
    pair = Pair(base, SHIPPED_PROFILE).start()
    yield pair
    pair.stop()
    shutil.rmtree(base, ignore_errors=True)


def check(pair: Pair, name: str, script, deliberate=(), **kw) -> None:
    replies, log = pair.run(name, script, deliberate, **kw)
    diff.assert_same(replies, log)


# ---------------------------------------------------------------- SMTP

def send_mail(ports) -> list[str]:
    """The lab document's sending: 587, STARTTLS, AUTH PLAIN, to user2."""
    return diff.swaks("--server", HOST, "--port", str(ports["submission"]), "--tls",
                      "--auth", "PLAIN", "--auth-user", "user1", "--auth-password", "pass",
                      "--from", "user1@gponlab.local", "--to", "user2@gponlab.local",
                      "--helo", "[127.0.0.1]", *HEADERS)


def test_send_on_587(lab):
    check(lab, "send (587, STARTTLS, AUTH PLAIN)", send_mail)


def test_receive_on_25(lab):
    """Mail from the Internet to user2 on port 25 (no authentication)."""
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["smtp"]),
                          "--from", "alice@example.org", "--to", "user2@gponlab.local",
                          "--helo", "mx.example.org", *HEADERS)
    check(lab, "receive (25)", script)


def test_postmaster_and_root_are_local_recipients(lab):
    """alias_maps (postmaster -> root) and the system's accounts (root)."""
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["smtp"]),
                          "--from", "alice@example.org",
                          "--to", "postmaster@gponlab.local,root@gponlab.local",
                          "--helo", "mx.example.org", *HEADERS)
    check(lab, "postmaster and root (25)", script)


def test_unknown_user(lab):
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["smtp"]),
                          "--from", "alice@example.org", "--to", "nadie@gponlab.local",
                          "--helo", "mx.example.org", *HEADERS)
    check(lab, "unknown user (25)", script)


def test_wrong_password(lab):
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["submission"]), "--tls",
                          "--auth", "PLAIN", "--auth-user", "user1",
                          "--auth-password", "incorrecta", "--from", "user1@gponlab.local",
                          "--to", "user2@gponlab.local", "--helo", "[127.0.0.1]", *HEADERS)
    check(lab, "wrong password (587)", script)


def test_no_starttls_on_587(lab):
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["submission"]),
                          "--from", "user1@gponlab.local", "--to", "user2@gponlab.local",
                          "--helo", "[127.0.0.1]", *HEADERS)
    check(lab, "no STARTTLS (587)", script)


def test_relay_to_gmail(lab):
    """user1 writes to an outside address: smtp(8) relays it to [smtp.gmail.com]:587."""
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["submission"]), "--tls",
                          "--auth", "PLAIN", "--auth-user", "user1", "--auth-password", "pass",
                          "--from", "user1@gponlab.local", "--to", "bob@gmail.com",
                          "--helo", "[127.0.0.1]", *HEADERS)
    check(lab, "relay to Gmail (587 -> smtp.gmail.com)", script,
          until=lambda lines: any("removed" in line for line in lines))


def test_client_refusing_the_certificate(lab):
    """curl checks the certificate (no --insecure): the self-signed one fails."""
    def script(ports):
        return diff.curl(f"smtp://{HOST}:{ports['submission']}", "--ssl-reqd",
                         "--mail-from", "user1@gponlab.local", "--mail-rcpt",
                         "user2@gponlab.local", "-u", "user1:pass", "-T", "/dev/null")
    check(lab, "client refusing the certificate (587)", script)


def test_client_closing_without_quit_after_its_message(lab):
    """smtplib's close() after the message, as Thunderbird hangs up without QUIT."""
    def script(ports):
        client = diff.RecordingSMTP(HOST, ports["submission"], local_hostname="[127.0.0.1]")
        client.starttls(context=unverified())
        client.login("user1", "pass")
        client.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                        b"Date: Mon, 01 Dec 2025 10:00:00 +0000\r\nSubject: sin QUIT\r\n\r\nHola\r\n")
        client.close()
        return client.received
    check(lab, "close without QUIT after DATA (587)", script)


def test_client_hanging_up_in_the_message(lab):
    """A client that drops the connection right after DATA (lost connection
    after DATA, with the bytes received)."""
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["smtp"]),
                          "--from", "alice@example.org", "--to", "user2@gponlab.local",
                          "--helo", "mx.example.org", "--drop-after", "DATA", *HEADERS)
    check(lab, "drop after DATA (25)", script)


def test_pipelining_client(lab):
    """swaks --pipeline: MAIL, RCPT and DATA in one packet (RFC 2920)."""
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["smtp"]), "--pipeline",
                          "--from", "alice@example.org",
                          "--to", "user2@gponlab.local,nadie@gponlab.local",
                          "--helo", "mx.example.org", *HEADERS)
    check(lab, "pipelining (25)", script)


# ------------------------------------------- the profile as lessons edit it

@pytest.fixture(scope="module")
def edited(figures):
    """The lab profile with the edits of the tls and relay-denied lessons:
    ``smtpd_tls_loglevel = 1``, ``smtp_tls_loglevel = 1`` (the TLS summary
    lines in mail.log) and ``mynetworks`` without the rest of 127.0.0.0/8
    (127.0.0.2 plays a computer outside the lab's networks)."""
    base = _new_base()
    profile = base / "profile"
    shutil.copytree(SHIPPED_PROFILE, profile)
    main_cf = profile / "postfix/main.cf"
    text = main_cf.read_text().replace(
        "mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 192.168.0.0/16",
        "mynetworks = 127.0.0.1/32 [::1]/128 192.168.0.0/16")
    assert "127.0.0.1/32" in text
    main_cf.write_text(text + "smtpd_tls_loglevel = 1\nsmtp_tls_loglevel = 1\n")
    pair = Pair(base, profile).start()
    yield pair
    pair.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_tls_summary_lines_at_loglevel_1(edited):
    check(edited, "TLS logging: send (587)", send_mail)


def test_tls_summary_of_the_relay_at_loglevel_1(edited):
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["submission"]), "--tls",
                          "--auth", "PLAIN", "--auth-user", "user1", "--auth-password", "pass",
                          "--from", "user1@gponlab.local", "--to", "carol@gmail.com",
                          "--helo", "[127.0.0.1]", *HEADERS)
    check(edited, "TLS logging: relay to Gmail", script,
          until=lambda lines: any("removed" in line for line in lines))


def test_refused_certificate_at_loglevel_1(edited):
    def script(ports):
        return diff.curl(f"smtp://{HOST}:{ports['smtp']}", "--ssl-reqd",
                         "--mail-from", "alice@example.org", "--mail-rcpt",
                         "user2@gponlab.local", "-T", "/dev/null")
    check(edited, "TLS logging: client refusing the certificate (25)", script)


def test_relay_denied_outside_mynetworks(edited):
    """A computer outside mynetworks, not logged in, writing to Gmail: refused."""
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["smtp"]),
                          "--local-interface", "127.0.0.2", "--from", "alice@example.org",
                          "--to", "bob@gmail.com", "--helo", "pc.example.org", *HEADERS)
    check(edited, "relay denied (25, outside mynetworks)", script)


def test_relay_allowed_inside_mynetworks(edited):
    """The same from an address inside mynetworks, without a password: relayed."""
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["smtp"]),
                          "--from", "user1@gponlab.local", "--to", "dave@gmail.com",
                          "--helo", "pc.gponlab.local", *HEADERS)
    check(edited, "relay allowed (25, inside mynetworks)", script,
          until=lambda lines: any("removed" in line for line in lines))


def test_submission_from_outside_needs_login(edited):
    """Port 587 from outside mynetworks: smtpd_client_restrictions refuses without AUTH."""
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["submission"]), "--tls",
                          "--local-interface", "127.0.0.2", "--from", "alice@example.org",
                          "--to", "user2@gponlab.local", "--helo", "pc.example.org", *HEADERS)
    check(edited, "submission without AUTH from outside (587)", script)
