"""Dovecot's mail_max_userip_connections: how many sessions one user may have open
from one address, per protocol, against Python's imaplib and poplib."""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import re
import socket
import ssl

import pytest

from labproc import LabProcess, wait_until

pytestmark = pytest.mark.slow          # end to end: `gponsim serve`, imaplib and poplib

REFUSAL = ("Maximum number of connections from user+IP exceeded "
           "(mail_max_userip_connections={n})")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    proc = LabProcess(tmp_path_factory.mktemp("userip") / "gponlab").start()
    yield proc
    proc.stop()


def imap(lab, user="user2", source="127.0.0.1") -> imaplib.IMAP4:
    """imaplib logged in as ``user`` from ``source`` (an address of the loopback
    network; from another address than the server's, after STARTTLS)."""
    class FromSource(imaplib.IMAP4):
        def _create_socket(self, timeout):
            return socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0))
    m = FromSource("127.0.0.1", lab.ports["imap"], timeout=10)
    if source != "127.0.0.1":
        m.starttls(ssl._create_unverified_context())
    m.login(user, "pass")
    return m


def test_the_eleventh_imap_session_of_a_user_is_refused_then_allowed_again(lab):
    sessions = [imap(lab) for _ in range(10)]          # Dovecot's default limit: 10
    try:
        m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"], timeout=10)
        with pytest.raises(imaplib.IMAP4.error) as refused:
            m.login("user2", "pass")
        assert refused.value.args[0] == ("[UNAVAILABLE] " + REFUSAL.format(n=10)).encode()
        # ... and Dovecot closes the connection.
        assert m.sock.recv(1) == b""
        m.shutdown()
        # Another user, or the same user on POP3, is counted apart.
        other = imap(lab, "user1")
        other.logout()
        p = poplib.POP3("127.0.0.1", lab.ports["pop3"], timeout=10)
        p.user("user2")
        assert p.pass_("pass").startswith(b"+OK")
        p.quit()
        # One session ends: a new one gets in.
        sessions.pop().logout()
        sessions.append(wait_until(lambda: _try_login(lab), 10, "a free slot"))
    finally:
        for s in sessions:
            with contextlib.suppress(Exception):
                s.logout()
    log = (lab.root / "var/log/mail.log").read_text()
    line = [ln for ln in log.splitlines() if "Maximum number of connections" in ln][-1]
    assert re.search(r"dovecot\[\d+\]: imap-login: " + re.escape(REFUSAL.format(n=10))
                     + r": user=<user2>, method=PLAIN, rip=127\.0\.0\.1, lip=127\.0\.0\.1, "
                     r"secured, session=<[^>]+>$", line), line
    # The refused connection logs that line only (no "Disconnected" line for it).
    session = re.search(r"session=<([^>]+)>", line).group(1)
    assert [ln for ln in log.splitlines() if session in ln] == [line]
    # Its Steps: the refusal is narrated as Dovecot's temporary failure.
    reply = [s for s in lab.steps() if s.proto == "imap" and "user+IP" in (s.line or "")][-1]
    assert reply.status == "NO" and reply.key


def _try_login(lab):
    try:
        return imap(lab)
    except imaplib.IMAP4.error:
        return None


def test_the_limit_counts_per_address(lab):
    sessions = [imap(lab, "user1") for _ in range(10)]
    try:
        m = imap(lab, "user1", source="127.0.0.2")      # another address: its own count
        m.logout()
    finally:
        for s in sessions:
            s.logout()


def test_protocol_section_sets_the_pop3_limit(tmp_path):
    from gponsim.config import init_config
    conf = tmp_path / "conf"
    init_config(conf)
    (conf / "dovecot/conf.d/20-pop3.conf").write_text(
        "protocol pop3 {\n  mail_max_userip_connections = 1\n}\n")
    proc = LabProcess(tmp_path / "gponlab", config_dir=conf).start()
    try:
        first = poplib.POP3("127.0.0.1", proc.ports["pop3"], timeout=10)
        first.user("user2")
        first.pass_("pass")
        second = poplib.POP3("127.0.0.1", proc.ports["pop3"], timeout=10)
        second.user("user2")
        with pytest.raises(poplib.error_proto) as refused:
            second.pass_("pass")
        assert refused.value.args[0].decode() == "-ERR [SYS/TEMP] " + REFUSAL.format(n=1)
        second.close()
        # IMAP keeps the default.
        sessions = [imap(proc) for _ in range(2)]
        for s in sessions:
            s.logout()
        first.quit()
        log = (proc.root / "var/log/mail.log").read_text()
        assert re.search(r"pop3-login: " + re.escape(REFUSAL.format(n=1))
                         + r": user=<user2>, method=PLAIN, rip=127\.0\.0\.1", log)
    finally:
        proc.stop()
