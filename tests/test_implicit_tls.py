"""The order of the Steps around TLS, end to end: `gponsim serve` with real
clients (imaplib, poplib, smtplib).

On an implicit-TLS port (993, 995, and 465 with smtpd_tls_wrappermode = yes)
Dovecot and Postfix complete the TLS handshake before they greet, so the
Steps say connect, TLS established, greeting. After STARTTLS/STLS the TLS
Step comes between the server's OK and the client's next command.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import ssl

import pytest

from gponsim.config import init_config
from labproc import LabProcess, wait_until

pytestmark = pytest.mark.slow

TLS_LINE = re.compile(r"TLS connection established: TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A lab with Debian's commented-out ``submissions`` service (465) turned on."""
    base = tmp_path_factory.mktemp("implicit-tls")
    conf = base / "conf"
    init_config(conf)
    master = conf / "postfix" / "master.cf"
    text = master.read_text()
    commented = ("#submissions     inet  n       -       y       -       -       smtpd\n"
                 "#  -o syslog_name=postfix/submissions\n"
                 "#  -o smtpd_tls_wrappermode=yes\n"
                 "#  -o smtpd_sasl_auth_enable=yes\n")
    assert commented in text
    master.write_text(text.replace(commented, commented.replace("#", "")))
    proc = LabProcess(base / "gponlab", config_dir=conf,
                      extra=["--port", "submissions=0"]).start()
    yield proc
    proc.stop()


def insecure():
    return ssl._create_unverified_context()


def last_session(lab, prefix: str, until=None) -> list:
    """The Steps of the newest session named ``prefix-…``, in the order they were
    emitted (``until``: wait until one of them satisfies it)."""
    def steps():
        found = [s for s in lab.steps() if s.session.startswith(prefix + "-")]
        if not found:
            return None
        mine = [s for s in found if s.session == found[-1].session]
        return mine if until is None or any(until(s) for s in mine) else None
    return wait_until(steps, 10, f"the Steps of a {prefix} session")


def told(steps) -> list[str]:
    """Each Step as "proto VERB" (the greeting is the reply to CONNECT)."""
    return [f"{s.proto} {s.verb}" + (" reply" if s.kind == "reply" else "") for s in steps]


def test_imaps_greeting_comes_after_the_tls_handshake(lab):
    m = imaplib.IMAP4_SSL("127.0.0.1", lab.ports["imaps"], ssl_context=insecure())
    m.login("user2", "pass")
    m.logout()
    steps = last_session(lab, "imaps", until=lambda s: s.verb == "DISCONNECT")
    assert told(steps)[:3] == ["imap CONNECT", "tls IMPLICIT", "imap CONNECT reply"]
    assert TLS_LINE.fullmatch(steps[1].line)
    assert steps[2].line == m.welcome.decode()
    assert [s.tls for s in steps[:3]] == [False, True, True]
    assert told(steps).count("tls IMPLICIT") == 1


def test_pop3s_greeting_comes_after_the_tls_handshake(lab):
    p = poplib.POP3_SSL("127.0.0.1", lab.ports["pop3s"], context=insecure())
    p.user("user2")
    p.pass_("pass")
    p.quit()
    steps = last_session(lab, "pop3s", until=lambda s: s.verb == "DISCONNECT")
    assert told(steps)[:3] == ["pop3 CONNECT", "tls IMPLICIT", "pop3 CONNECT reply"]
    assert steps[2].line == p.getwelcome().decode() == "+OK Dovecot (Debian) ready."


def test_submissions_465_banner_comes_after_the_tls_handshake(lab):
    with smtplib.SMTP_SSL("127.0.0.1", lab.ports["submissions"], context=insecure(),
                          timeout=10) as s:
        code, _ = s.ehlo()
        assert code == 250 and "STARTTLS" not in s.esmtp_features
        assert s.login("user1", "pass")[0] == 235
    steps = last_session(lab, "submissions", until=lambda s: s.verb == "DISCONNECT")
    assert told(steps)[:3] == ["smtp CONNECT", "tls IMPLICIT", "smtp CONNECT reply"]
    assert steps[1].line.startswith("Anonymous TLS connection established from localhost[127.0.0.1]: ")
    assert steps[2].line == "220 mail.gponlab.local ESMTP Postfix (Debian/GNU)"


def test_a_client_that_refuses_the_certificate_on_993_gets_no_greeting(lab):
    checking = ssl.create_default_context()      # the system's authorities: the lab's cert fails
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL("127.0.0.1", lab.ports["imaps"], ssl_context=checking, timeout=10)
    steps = last_session(lab, "imaps", until=lambda s: s.verb == "DISCONNECT")
    assert told(steps) == ["imap CONNECT", "imap TLSFAIL", "imap DISCONNECT"]
    assert steps[1].line.startswith("SSL_accept() failed: error:0A000")
    assert "alert" in steps[1].line
    assert not any(s.tls for s in steps)
    line = wait_until(lambda: [l for l in lab.log_text().splitlines()
                               if "imap-login: Disconnected: Connection closed: SSL_accept() failed:" in l],
                      10, "imap-login's line")[-1]
    assert ", TLS handshaking: SSL_accept() failed: " in line


def test_a_client_that_closes_right_after_the_handshake(lab):
    """The certificate check of Thunderbird or the tls lesson: handshake, look,
    hang up. The handshake finished, so Dovecot did send its greeting."""
    import socket

    with socket.create_connection(("127.0.0.1", lab.ports["imaps"]), timeout=10) as raw:
        with insecure().wrap_socket(raw) as tls:
            assert tls.getpeercert(binary_form=True)
    steps = last_session(lab, "imaps", until=lambda s: s.verb == "DISCONNECT")
    assert told(steps) == ["imap CONNECT", "tls IMPLICIT", "imap CONNECT reply",
                           "imap DISCONNECT"]


def test_starttls_step_comes_between_the_ok_and_the_next_command(lab):
    m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    m.starttls(ssl_context=insecure())
    m.login("user2", "pass")
    m.logout()
    imap = told(last_session(lab, "imap", until=lambda s: s.verb == "DISCONNECT"))
    ok = imap.index("imap STARTTLS reply")
    assert imap[ok + 1:ok + 3] == ["tls STARTTLS", "imap CAPABILITY"]

    p = poplib.POP3("127.0.0.1", lab.ports["pop3"])
    p.stls(context=insecure())
    p.user("user2")
    p.pass_("pass")
    p.quit()
    pop = told(last_session(lab, "pop3", until=lambda s: s.verb == "DISCONNECT"))
    ok = pop.index("pop3 STLS reply")
    assert pop[ok + 1:ok + 3] == ["tls STLS", "pop3 USER"]

    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=10) as s:
        s.starttls(context=insecure())
        s.login("user1", "pass")
    smtp = told(last_session(lab, "submission", until=lambda s: s.verb == "DISCONNECT"))
    ok = smtp.index("smtp STARTTLS reply")
    assert smtp[ok + 1:ok + 3] == ["tls STARTTLS", "smtp EHLO"]
