"""Dovecot-faithful POP3 of `gponsim serve`: poplib, curl and raw bytes."""

from __future__ import annotations

import base64
import poplib
import re
import shutil
import smtplib
import ssl
import subprocess

import pytest

from imapclient import Raw
from labproc import LabProcess

pytestmark = pytest.mark.slow          # end to end: `gponsim serve`, poplib and curl


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    proc = LabProcess(tmp_path_factory.mktemp("pop3") / "gponlab").start()
    yield proc
    proc.stop()


def insecure():
    return ssl._create_unverified_context()


def send_mail(lab, subject, body="linea 1\r\n.punto al principio\r\nlinea 3\r\n"):
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=10) as s:
        s.starttls(context=insecure())
        s.login("user1", "pass")
        s.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                   f"Subject: {subject}\r\n\r\n{body}".encode())


def test_greeting_and_capa_before_and_after_login(lab):
    p = poplib.POP3("127.0.0.1", lab.ports["pop3"])
    assert p.getwelcome() == b"+OK Dovecot (Debian) ready."
    raw = p._longcmd("CAPA")[1]
    assert raw == [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"AUTH-RESP-CODE",
                   b"STLS", b"USER", b"SASL PLAIN LOGIN"]
    p.user("user2")
    assert p.pass_("pass") == b"+OK Logged in."
    assert p._longcmd("CAPA")[1] == [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING",
                                     b"AUTH-RESP-CODE"]
    assert p.quit().startswith(b"+OK Logging out")


def test_remote_client_before_stls_gets_bare_sasl_and_no_user(lab):
    c = Raw(lab.ports["pop3"], source="127.0.0.2")
    assert c.line() == "+OK Dovecot (Debian) ready."
    c.send("CAPA\r\n")
    assert c.until(".") == ["+OK", "CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING",
                            "AUTH-RESP-CODE", "STLS", "SASL", "."]
    c.send("USER user2\r\n")
    assert c.line() == ("-ERR [AUTH] Plaintext authentication disallowed on non-secure "
                        "(SSL/TLS) connections.")
    c.send("STLS\r\n")
    assert c.line() == "+OK Begin TLS negotiation now."
    c.starttls()
    c.send("CAPA\r\n")
    assert c.until(".")[-3:] == ["USER", "SASL PLAIN LOGIN", "."]
    c.send("USER user2\r\nPASS pass\r\n")        # pipelined
    assert [c.line(), c.line()] == ["+OK", "+OK Logged in."]
    c.close()


def test_retr_top_uidl_dele_rset_quit(lab):
    send_mail(lab, "pop uno")
    send_mail(lab, "pop dos")
    lab.wait_for_mail("user2", 2)
    p = poplib.POP3("127.0.0.1", lab.ports["pop3"])
    p.user("user2")
    p.pass_("pass")
    count, size = p.stat()
    assert count >= 2
    resp, listing, _ = p.list()
    assert resp == f"+OK {count} messages:".encode()
    assert sum(int(x.split()[1]) for x in listing) == size
    resp, uidls, _ = p.uidl()
    assert all(re.fullmatch(rb"\d+ [0-9a-f]{16}", u) for u in uidls)   # Dovecot: lower case
    resp, lines, octets = p.retr(count)
    assert re.fullmatch(rb"\+OK \d+ octets", resp)
    assert b"Subject: pop dos" in lines and b".punto al principio" in lines
    resp, lines, _ = p.top(count, 1)
    assert lines[-1] == b"linea 1" and b"linea 3" not in lines
    assert p.dele(1) == b"+OK Marked to be deleted."
    with pytest.raises(poplib.error_proto) as err:
        p.retr(1)
    assert err.value.args[0] == b"-ERR Message is deleted."
    assert p.rset() == b"+OK"
    p.dele(1)
    assert p.quit() == b"+OK Logging out, messages deleted."
    p = poplib.POP3("127.0.0.1", lab.ports["pop3"])
    p.user("user2")
    p.pass_("pass")
    assert p.stat()[0] == count - 1
    # UIDLs are stable across sessions (UID + UIDVALIDITY).
    assert [u.split()[1] for u in p.uidl()[1]] == [u.split()[1] for u in uidls[1:]]
    p.quit()
    log = lab.log_text()
    assert re.search(r"pop3-login: Login: user=<user2>, method=PLAIN, rip=127\.0\.0\.1", log)
    assert re.search(r"pop3\(user2\)<\d+><[^>]+>: Disconnected: Logged out top=1/\d+, "
                     r"retr=1/\d+, del=1/\d+, size=\d+", log)


def test_wrong_password_and_bad_commands(lab):
    c = Raw(lab.ports["pop3"])
    c.line()
    c.send("STAT\r\n")
    assert c.line() == "-ERR Unknown command."
    c.send("USER user2\r\nPASS wrong\r\n")
    assert [c.line(), c.line()] == ["+OK", "-ERR [AUTH] Authentication failed."]
    c.send("AUTH PLAIN\r\n")
    assert c.line() == "+ "
    c.send("*\r\n")
    assert c.line() == "-ERR Authentication aborted by client."
    c.send("AUTH PLAIN " + base64.b64encode(b"\0user2\0pass").decode() + "\r\n")
    assert c.line() == "+OK Logged in."
    c.send("RETR abc\r\nRETR 99999\r\nFROB\r\nNOOP\r\n")
    assert [c.line() for _ in range(4)] == [
        "-ERR Invalid message number: abc", "-ERR There's no message 99999.",
        "-ERR Unknown command: FROB", "+OK"]
    c.close()
    steps = lab.steps()
    pw = [s for s in steps if s.proto == "pop3" and s.verb == "PASS" and s.kind == "command"]
    assert pw and all(s.shown_line() == "PASS ********" for s in pw)
    assert all(s.key for s in steps if s.proto == "pop3" and s.kind in ("command", "reply"))


def test_pop3s_995_with_poplib(lab):
    p = poplib.POP3_SSL("127.0.0.1", lab.ports["pop3s"], context=insecure())
    assert p.getwelcome() == b"+OK Dovecot (Debian) ready."
    assert b"STLS" not in b" ".join(p._longcmd("CAPA")[1])
    p.user("user2")
    p.pass_("pass")
    p.stat()
    p.quit()
    p = poplib.POP3("127.0.0.1", lab.ports["pop3"])
    p.stls(context=insecure())
    p.user("user2")
    p.pass_("pass")
    p.quit()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_pop3_and_pop3s(lab):
    send_mail(lab, "curl pop")
    lab.wait_for_mail("user2")
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-u", "user2:pass",
                          f"pop3://127.0.0.1:{lab.ports['pop3']}/"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert re.match(r"1 \d+\r?\n", out.stdout)
    out = subprocess.run(["curl", "-sS", "--insecure", "--max-time", "20", "-u", "user2:pass",
                          f"pop3s://127.0.0.1:{lab.ports['pop3s']}/1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Delivered-To: user2@gponlab.local" in out.stdout


def test_lines_pipelined_after_stls_are_discarded(lab):
    c = Raw(lab.ports["pop3"], source="127.0.0.2")
    c.line()
    c.send("STLS\r\nUSER user2\r\nPASS pass\r\n")
    assert c.line() == "+OK Begin TLS negotiation now."
    c.starttls()
    c.send("STAT\r\n")
    assert c.line() == "-ERR Unknown command."          # not logged in: USER/PASS were dropped
    c.close()
