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

import imaplib
import json
import os
import poplib
import re
import shutil
import socket
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
        try:
            self.real = RealLab(self.base / "real", self.gponsim.root, self.profile,
                                gmail_port=self.gponsim.ports["gmail"]).start()
        except BaseException:
            self.gponsim.stop()          # (the fixture's teardown does not run after this)
            raise
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
        done = until or diff.settled
        ours_log = diff.quiet(lambda: diff.log_since(self.maillog, mark), settle, until=done)
        theirs = script(self.real.ports)
        theirs_log = diff.quiet(self.real.maillog, settle, until=done)
        replies = diff.compare_replies(ours, theirs, deliberate)
        log = diff.compare_logs(ours_log, theirs_log, deliberate)
        FIGURES.append({"scenario": name,
                        "reply_lines": replies.compared, "reply_identical": replies.identical,
                        "log_lines": log.compared, "log_identical": log.identical,
                        "deliberate": sorted({d.name for d, n_real, n_ours in replies.deliberate
                                              + log.deliberate if n_real or n_ours}),
                        "deliberate_lines": sum(max(n_real, n_ours) for _d, n_real, n_ours
                                                in replies.deliberate + log.deliberate)})
        return replies, log


def _new_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="gponsim-diff-", dir="/tmp"))
    base.chmod(0o755)         # the postfix user reaches the real instance's queue
    return base


@pytest.fixture(scope="module")
def figures(request):
    yield FIGURES
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not FIGURES:
        return
    total = {k: sum(f[k] for f in FIGURES) for k in
             ("reply_lines", "reply_identical", "log_lines", "log_identical")}
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("differential suite (lines compared, identical): " + json.dumps(total))
        for f in FIGURES:
            reporter.write_line(f"  {json.dumps(f, ensure_ascii=False)}")
    if os.environ.get("GPONSIM_DIFFERENTIAL_FIGURES"):
        Path(os.environ["GPONSIM_DIFFERENTIAL_FIGURES"]).write_text(
            json.dumps({"total": total, "scenarios": FIGURES}, indent=1, ensure_ascii=False))
    FIGURES.clear()


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
    with open(profile / "dovecot/conf.d/10-auth.conf", "a") as fh:
        fh.write("auth_verbose = yes\n")            # 10-logging.conf's, as an instructor sets it
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


class SourceIMAP4(diff.RecordingIMAP4):
    """imaplib from another address (127.0.0.2: not the server's own)."""

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=("127.0.0.2", 0))


def test_auth_verbose_wrong_password_and_unknown_user(edited):
    def script(ports):
        received = []
        for user in ("user2", "nadie"):
            client = diff.RecordingIMAP4_SSL(HOST, ports["imaps"], ssl_context=unverified())
            try:
                client.login(user, "incorrecta")
            except imaplib.IMAP4.error:
                pass
            client.logout()
            received += client.received
        return received
    check(edited, "auth_verbose: wrong password, unknown user (IMAP 993)", script)


def test_auth_verbose_plaintext_login_refused(edited):
    """LOGIN in clear from another computer: refused, and logged with auth_verbose."""
    def script(ports):
        client = SourceIMAP4(HOST, ports["imap"])
        try:
            client.login("user2", "pass")
        except imaplib.IMAP4.error:
            pass
        client.logout()
        return client.received
    check(edited, "auth_verbose: plaintext LOGIN from another computer (IMAP 143)", script)


def test_auth_verbose_smtp_wrong_password(edited):
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["submission"]), "--tls",
                          "--auth", "LOGIN", "--auth-user", "user1",
                          "--auth-password", "incorrecta", "--from", "user1@gponlab.local",
                          "--to", "user2@gponlab.local", "--helo", "[127.0.0.1]", *HEADERS)
    check(edited, "auth_verbose: wrong password (587, AUTH LOGIN)", script)


def test_submission_from_outside_needs_login(edited):
    """Port 587 from outside mynetworks: smtpd_client_restrictions refuses without AUTH."""
    def script(ports):
        return diff.swaks("--server", HOST, "--port", str(ports["submission"]), "--tls",
                          "--local-interface", "127.0.0.2", "--from", "alice@example.org",
                          "--to", "user2@gponlab.local", "--helo", "pc.example.org", *HEADERS)
    check(edited, "submission without AUTH from outside (587)", script)


# ---------------------------------------------------------------- IMAP

#: docs/fidelity.md: the IMAP extensions Dovecot 2.3 announces that gponsim
#: does not implement, and therefore does not announce either.
UNIMPLEMENTED_IMAP = ("URL-PARTIAL", "CATENATE", "CONDSTORE", "QRESYNC", "CONTEXT=SEARCH",
                      "NOTIFY")
IMAP_CAPABILITIES = Deliberate(
    "imap-extensions-not-implemented",
    "gponsim announces only the IMAP extensions it implements; Dovecot's list also has "
    + " ".join(UNIMPLEMENTED_IMAP) + " (the byte counts of the logout line change with it)",
    rewrite=tuple((rf"(CAPABILITY .*) {re.escape(cap)}(?=[ \]]|$)", r"\1")
                  for cap in UNIMPLEMENTED_IMAP),
    both=((r"(Disconnected: Logged out in=\d+ out=)\d+", r"\1N"),))

@pytest.fixture(scope="module")
def mail_for_user2(lab):
    """user2's INBOX holds at least one message on both servers (the same one)."""
    for ports, read in ((lab.gponsim.ports, lambda: diff.log_since(lab.maillog, 0)),
                        (lab.real.ports, lab.real.maillog)):
        lab.real.settle()
        send_mail(ports)
        diff.quiet(read, until=lambda lines: any("removed" in line for line in lines))
    return lab


def imaplib_session(ports, implicit: bool) -> list[str]:
    """imaplib as a script would use it: CAPABILITY (imaplib asks it itself),
    STARTTLS on 143, LOGIN, SELECT, FETCH headers and body, LIST, LOGOUT."""
    if implicit:
        client = diff.RecordingIMAP4_SSL(HOST, ports["imaps"], ssl_context=unverified())
    else:
        client = diff.RecordingIMAP4(HOST, ports["imap"])
        client.starttls(ssl_context=unverified())
    client.login("user2", "pass")
    client.select("INBOX")
    client.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
    client.fetch("1", "(BODY[])")
    client.list()
    client.lsub()
    client.logout()
    return client.received


def test_imap_143_starttls_with_imaplib(mail_for_user2):
    lab = mail_for_user2
    check(lab, "IMAP 143 STARTTLS (imaplib)", lambda ports: imaplib_session(ports, False), [IMAP_CAPABILITIES])


def test_imap_993_with_imaplib(mail_for_user2):
    lab = mail_for_user2
    check(lab, "IMAP 993 (imaplib)", lambda ports: imaplib_session(ports, True), [IMAP_CAPABILITIES])


def test_imap_143_starttls_with_curl(mail_for_user2):
    lab = mail_for_user2
    def script(ports):
        return diff.curl(f"imap://{HOST}:{ports['imap']}/INBOX;UID=1", "--ssl-reqd",
                         "--insecure", "-u", "user2:pass")
    check(lab, "IMAP 143 STARTTLS (curl)", script, [IMAP_CAPABILITIES])


def test_imap_993_folder_list_with_curl(mail_for_user2):
    lab = mail_for_user2
    def script(ports):
        return diff.curl(f"imaps://{HOST}:{ports['imaps']}/", "--insecure", "-u", "user2:pass")
    check(lab, "IMAP 993 LIST (curl)", script, [IMAP_CAPABILITIES])


def test_imap_wrong_password(mail_for_user2):
    lab = mail_for_user2
    def script(ports):
        client = diff.RecordingIMAP4_SSL(HOST, ports["imaps"], ssl_context=unverified())
        try:
            client.login("user2", "incorrecta")
        except imaplib.IMAP4.error:
            pass
        client.logout()
        return client.received
    check(lab, "IMAP wrong password (993)", script, [IMAP_CAPABILITIES])


def test_imap_plaintext_login_from_another_computer(mail_for_user2):
    lab = mail_for_user2
    """From 127.0.0.2 (not the server's address), port 143 without TLS:
    LOGINDISABLED, and curl refuses to send the password."""
    def script(ports):
        return diff.curl(f"imap://{HOST}:{ports['imap']}/INBOX", "--interface", "127.0.0.2",
                         "-u", "user2:pass")
    check(lab, "IMAP 143 from another computer, no TLS (curl)", script, [IMAP_CAPABILITIES])


# ---------------------------------------------------------------- POP3

def poplib_session(ports, implicit: bool) -> list[str]:
    if implicit:
        client = diff.RecordingPOP3_SSL(HOST, ports["pop3s"], context=unverified())
    else:
        client = diff.RecordingPOP3(HOST, ports["pop3"])
        client.capa()
        client.stls(context=unverified())
    client.capa()
    client.user("user2")
    client.pass_("pass")
    client.stat()
    client.list()
    client.uidl()
    client.retr(1)
    client.quit()
    return client.received


def test_pop3_110_stls_with_poplib(mail_for_user2):
    lab = mail_for_user2
    check(lab, "POP3 110 STLS (poplib)", lambda ports: poplib_session(ports, False))


def test_pop3_995_with_poplib(mail_for_user2):
    lab = mail_for_user2
    check(lab, "POP3 995 (poplib)", lambda ports: poplib_session(ports, True))


def test_pop3_stls_with_curl(mail_for_user2):
    lab = mail_for_user2
    def script(ports):
        return diff.curl(f"pop3://{HOST}:{ports['pop3']}/1", "--ssl-reqd", "--insecure",
                         "-u", "user2:pass")
    check(lab, "POP3 110 STLS (curl)", script)


def test_pop3_wrong_password(mail_for_user2):
    lab = mail_for_user2
    def script(ports):
        client = diff.RecordingPOP3_SSL(HOST, ports["pop3s"], context=unverified())
        client.user("user2")
        try:
            client.pass_("incorrecta")
        except poplib.error_proto:
            pass
        client.quit()
        return client.received
    check(lab, "POP3 wrong password (995)", script)


def test_imap_folders_and_their_attributes(mail_for_user2):
    """CREATE, SUBSCRIBE, LIST and LIST-EXTENDED as Thunderbird asks
    (mbox folders are files: they cannot have children)."""
    lab = mail_for_user2

    def script(ports):
        client = diff.RecordingIMAP4_SSL(HOST, ports["imaps"], ssl_context=unverified())
        client.login("user2", "pass")
        for name in ("Trash", "Sent", "Archivo"):
            client.create(name)
        client.subscribe("Trash")
        client.list()
        client.lsub()
        client._simple_command("LIST", "(SUBSCRIBED)", '""', '"*"', "RETURN", "(SPECIAL-USE)")
        client._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE SUBSCRIBED)")
        client._simple_command("LIST", '""', "%", "RETURN", "(CHILDREN)")
        client.status("Trash", "(MESSAGES UNSEEN UIDNEXT)")
        client.delete("Archivo")
        client.logout()
        return client.received
    check(lab, "IMAP folders: CREATE, SUBSCRIBE, LIST-EXTENDED (imaplib)", script, [IMAP_CAPABILITIES])


def test_imap_pipelined_fetches(mail_for_user2):
    """mbsync-like pipelining: several FETCH commands in one packet."""
    lab = mail_for_user2

    def script(ports):
        client = diff.RecordingIMAP4_SSL(HOST, ports["imaps"], ssl_context=unverified())
        client.login("user2", "pass")
        client.select("INBOX")
        tags = [client._new_tag() for _ in range(3)]
        client.send(b"".join(t + b" " + c + b"\r\n" for t, c in zip(tags, (
            b"FETCH 1 (FLAGS)", b"UID FETCH 1:* (UID RFC822.SIZE)", b"FETCH 1 (INTERNALDATE)"))))
        for tag in tags:
            client._get_tagged_response(tag)
        client.logout()
        return client.received
    check(lab, "IMAP pipelined FETCH (imaplib)", script, [IMAP_CAPABILITIES])
