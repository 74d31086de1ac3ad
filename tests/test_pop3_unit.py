"""Dovecot's POP3 replies, word for word, in memory (milliseconds; tests/dovecot_memory.py).

test_pop3.py keeps what needs a real connection: poplib and curl, STLS and 995.
"""

from __future__ import annotations

import base64
import re

import pytest

from dovecot_memory import MemoryLab

CAPS = ["CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
SECOND = 1704110400.0          # Mon Jan  1 12:00:00 2024 UTC
FIRST = (b"Return-Path: <user1@gponlab.local>\r\nDelivered-To: user2@gponlab.local\r\n"
         b"Subject: uno\r\n\r\n.punto al principio\r\nlinea 2\r\n>From quoted\r\n")
SECOND_MESSAGE = (b"Return-Path: <user1@gponlab.local>\r\nDelivered-To: user2@gponlab.local\r\n"
                  b"Subject: dos\r\n\r\nsegundo\r\n")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PLAIN_USER1 = b64(b"\0user1\0pass")
PLAIN_USER2 = b64(b"\0user2\0pass")


@pytest.fixture
def mem(tmp_path, utc):
    lab = MemoryLab(tmp_path, failure_delay=2.0)
    yield lab
    lab.close()


@pytest.fixture
def inbox(mem):
    mem.deliver("user2", b"Subject: uno\n\n.punto al principio\nlinea 2\nFrom quoted\n", when=SECOND)
    mem.deliver("user2", b"Subject: dos\n\nsegundo\n", when=SECOND + 60)
    return mem.root / "var/mail/user2"


def logged_in(mem, user="user2"):
    c = mem.pop3(local=True)
    assert c.lines() == ["+OK Dovecot (Debian) ready."]
    assert c.send(f"USER {user}") == ["+OK"]
    assert c.send("PASS pass") == ["+OK Logged in."]
    return c


def uidvalidity(inbox) -> int:
    return int(re.search(rb"X-IMAPbase: (\d+) ", inbox.read_bytes()).group(1))


# ------------------------------------------------------------------ greeting, CAPA, STLS

def test_capa_of_a_remote_client_before_stls(mem):
    c = mem.pop3(tls_options=object())
    assert c.lines() == ["+OK Dovecot (Debian) ready."]
    assert c.send("CAPA") == ["+OK", *CAPS, "STLS", "SASL", "."]
    assert c.send("USER user2") == [
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."]
    assert c.send(f"AUTH PLAIN {PLAIN_USER2}") == [
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."]


def test_stls_then_user_and_sasl_are_offered_and_pipelined_lines_are_dropped(mem):
    c = mem.pop3(tls_options="the lab's TLS options")
    c.lines()
    assert c.send(b"STLS\r\nUSER user2\r\n") == ["+OK Begin TLS negotiation now."]
    assert c.transport.tls_started_with == "the lab's TLS options"
    assert c.send("CAPA") == ["+OK", *CAPS, "USER", "SASL PLAIN LOGIN", "."]
    assert c.send("PASS pass") == ["-ERR No username given."]      # USER was dropped
    assert c.send("STLS") == ["-ERR TLS is already active."]


def test_capa_of_a_secured_client_and_after_login(mem):
    c = mem.pop3(local=True, tls_options=object())
    c.lines()
    assert c.send("CAPA") == ["+OK", *CAPS, "STLS", "USER", "SASL PLAIN LOGIN", "."]
    c.send("USER user2")
    c.send("PASS pass")
    assert c.send("CAPA") == ["+OK", *CAPS, "."]


def test_no_stls_without_tls_and_on_995(mem):
    assert mem.pop3(local=True).send("STLS")[-1] == "-ERR TLS support isn't enabled."
    c = mem.pop3(tls_options=object(), implicit_tls=True)
    c.lines()
    assert c.send("CAPA") == ["+OK", *CAPS, "USER", "SASL PLAIN LOGIN", "."]


def test_implicit_tls_greets_after_the_handshake_and_stls_before_the_next_command(mem):
    c = mem.pop3(tls_options=object(), implicit_tls=True, handshake=False)
    assert c.read() == b""
    c.handshake()
    assert c.lines() == ["+OK Dovecot (Debian) ready."]
    assert [(s.proto, s.verb) for s in mem.sink.steps] == [
        ("pop3", "CONNECT"), ("tls", "IMPLICIT"), ("pop3", "CONNECT")]
    assert mem.sink.steps[2].line == "+OK Dovecot (Debian) ready."
    mem.sink.steps.clear()
    c = mem.pop3(tls_options=object())
    c.lines()
    assert c.send("STLS") == ["+OK Begin TLS negotiation now."]
    c.handshake()
    c.send("CAPA")
    assert [(s.proto, s.line) for s in mem.sink.steps][2:5] == [
        ("pop3", "STLS"), ("pop3", "+OK Begin TLS negotiation now."),
        ("tls", "TLS connection established: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 "
                "(256/256 bits)")]
    assert mem.sink.steps[5].line == "CAPA"


def test_a_client_that_refuses_the_certificate_on_995_gets_no_greeting(mem):
    from OpenSSL import SSL

    c = mem.pop3(tls_options=object(), implicit_tls=True, handshake=False)
    c.drop(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]))
    assert c.read() == b""
    assert [(s.verb, s.line) for s in mem.sink.steps][1:] == [
        ("TLSFAIL", "SSL_accept() failed: error:0A000418:SSL routines::tlsv1 alert unknown ca: "
                    "SSL alert number 48"), ("DISCONNECT", "disconnect")]
    assert mem.log_lines[-1].startswith(
        "pop3-login: Disconnected: Connection closed: SSL_accept() failed: ")


# ------------------------------------------------------------------ USER/PASS, AUTH

def test_login_and_its_log_line(mem):
    logged_in(mem)
    assert re.fullmatch(r"pop3-login: Login: user=<user2>, method=PLAIN, rip=192\.168\.1\.1, "
                        r"lip=192\.168\.1\.1, mpid=\d+, secured, session=<[A-Za-z0-9+/]{16}>",
                        mem.log_lines[0])


def test_wrong_password_after_the_failure_delay_then_success(mem):
    c = mem.pop3(local=True)
    c.lines()
    assert c.send("USER user2") == ["+OK"]
    assert c.send("PASS wrong") == []
    assert c.send(b"", seconds=2) == ["-ERR [AUTH] Authentication failed."]
    assert c.send("PASS pass") == ["-ERR No username given."]
    c.send("USER user2")
    # Dovecot's auth penalty: one failure from this address makes the next
    # login wait 4 seconds, even with the right password (penalty.py)
    assert c.send("PASS pass") == []
    assert c.send(b"", seconds=3.9) == []
    assert c.send(b"", seconds=0.1) == ["+OK Logged in."]


def test_auth_plain_login_abort_and_mechanism_list(mem):
    c = mem.pop3(local=True)
    c.lines()
    assert c.send("AUTH") == ["+OK", "PLAIN", "LOGIN", "."]
    assert c.send("AUTH CRAM-MD5") == ["-ERR [AUTH] Unsupported authentication mechanism."]
    assert c.send("AUTH PLAIN") == ["+ "]
    assert c.send("*") == ["-ERR Authentication aborted by client."]
    assert c.send("AUTH LOGIN") == ["+ VXNlcm5hbWU6"]
    assert c.send(b64(b"user2")) == ["+ UGFzc3dvcmQ6"]
    assert c.send(b64(b"pass")) == ["+OK Logged in."]
    assert "method=LOGIN" in mem.log_lines[-1]
    c = mem.pop3(local=True)
    c.lines()
    assert c.send(f"AUTH PLAIN {PLAIN_USER1}") == ["+OK Logged in."]


def test_unknown_commands_before_and_after_login(mem):
    c = mem.pop3(local=True)
    c.lines()
    assert c.send("STAT") == ["-ERR Unknown command."]
    assert c.send("FOO") == ["-ERR Unknown command."]
    c = logged_in(mem)
    assert c.send("FOO") == ["-ERR Unknown command: FOO"]
    assert c.send("USER user1") == ["-ERR Unknown command: USER"]


# ------------------------------------------------------------------ the mailbox

def test_stat_list_uidl(mem, inbox):
    c = logged_in(mem)
    size = len(FIRST) + len(SECOND_MESSAGE)
    assert c.send("STAT") == [f"+OK 2 {size}"]
    assert c.send("LIST") == ["+OK 2 messages:", f"1 {len(FIRST)}", f"2 {len(SECOND_MESSAGE)}", "."]
    assert c.send("LIST 2") == [f"+OK 2 {len(SECOND_MESSAGE)}"]
    v = uidvalidity(inbox)
    # pop3_uidl_format = %08Xu%08Xv: Dovecot's var_expand writes X in lower case
    # (compared with the real pop3 in test_differential.py)
    assert c.send("UIDL") == ["+OK", f"1 00000001{v:08x}", f"2 00000002{v:08x}", "."]
    assert c.send("UIDL 1") == [f"+OK 1 00000001{v:08x}"]
    assert c.send("LIST 3") == ["-ERR There's no message 3."]
    assert c.send("LIST x") == ["-ERR Invalid message number: x"]


def test_retr_dot_stuffs_and_marks_seen_at_quit(mem, inbox):
    c = logged_in(mem)
    c.server.dataReceived(b"RETR 1\r\n")
    mem.reactor.drive()
    assert c.read() == (b"+OK %d octets\r\n" % len(FIRST)
                        + FIRST.replace(b"\r\n.punto", b"\r\n..punto") + b".\r\n")
    assert b"Status: R" not in inbox.read_bytes()                 # not before QUIT
    assert c.send("QUIT") == ["+OK Logging out."]
    assert c.closed
    assert re.search(rb"\nX-UID: 1\nStatus: RO?\n", inbox.read_bytes())     # R: \\Seen
    # not retrieved: not \\Seen, but no longer \\Recent for a later IMAP session
    # (Dovecot answers "* 0 RECENT" after a POP3 session; it keeps that in its
    # index, gponsim in the Status header: docs/fidelity.md)
    assert b"X-UID: 2\nStatus: O\nContent-Length" in inbox.read_bytes()
    # Dovecot's retr= counts the bytes sent from the +OK line to the end of the
    # dot-stuffed message (the final ".\r\n" not included): 184 for 167 octets
    # with one stuffed dot, in the real pop3 binary
    sent = len(b"+OK %d octets\r\n" % len(FIRST)) + len(FIRST) + 1
    assert re.fullmatch(rf"pop3\(user2\)<\d+><[^>]+>: Disconnected: Logged out top=0/0, "
                        rf"retr=1/{sent}, del=0/2, size={len(FIRST) + len(SECOND_MESSAGE)}",
                        mem.log_lines[-1])


def test_top(mem, inbox):
    c = logged_in(mem)
    c.server.dataReceived(b"TOP 1 1\r\n")
    mem.reactor.drive()
    head, _, body = FIRST.partition(b"\r\n\r\n")
    assert c.read() == b"+OK\r\n" + head + b"\r\n\r\n..punto al principio\r\n.\r\n"
    # Dovecot's get_msgnum/get_size texts (compared with the real pop3 in
    # test_differential_pop3_lmtp.py)
    assert c.send("TOP 1") == ["-ERR Noise after message number: "]
    assert c.send("TOP 1 -1") == ["-ERR Invalid size: -1"]


def test_dele_rset_and_quit_removes_the_deleted(mem, inbox):
    c = logged_in(mem)
    assert c.send("DELE 1") == ["+OK Marked to be deleted."]
    assert c.send("RETR 1") == ["-ERR Message is deleted."]
    assert c.send("STAT") == [f"+OK 1 {len(SECOND_MESSAGE)}"]
    assert c.send("RSET") == ["+OK"]
    assert c.send("STAT")[0].startswith("+OK 2 ")
    assert c.send("DELE 1") == ["+OK Marked to be deleted."]
    assert c.send("NOOP") == ["+OK"]
    assert c.send("QUIT") == ["+OK Logging out, messages deleted."]
    data = inbox.read_bytes()
    assert b"Subject: uno" not in data and b"Subject: dos" in data
    c = logged_in(mem)
    assert c.send("UIDL") == ["+OK", f"1 00000002{uidvalidity(inbox):08x}", "."]


def test_client_gone_without_quit_deletes_nothing(mem, inbox):
    c = logged_in(mem)
    c.send("DELE 1")
    c.drop()
    assert b"Subject: uno" in inbox.read_bytes()
    assert re.fullmatch(r"pop3\(user2\)<\d+><[^>]+>: Disconnected: Connection closed top=0/0, "
                        r"retr=0/0, del=1/2, size=\d+", mem.log_lines[-1])


def test_quit_before_login(mem):
    c = mem.pop3(local=True)
    c.lines()
    assert c.send("QUIT") == ["+OK Logging out"]
    assert c.closed


def test_login_timeout(mem):
    """pop3-login gives a client 3 minutes from its connection, talking or not."""
    c = mem.pop3(local=True)
    c.lines()
    for _ in range(17):
        assert c.send("CAPA", seconds=10)[0] == "+OK"
    assert c.send(b"", seconds=10) == ["-ERR Disconnected for inactivity."]
    assert c.closed
    assert re.fullmatch(r"pop3-login: Disconnected: Inactivity \(no auth attempts in \d+ secs\): "
                        r"user=<>, rip=192\.168\.1\.1, .*", mem.log_lines[-1])


def test_a_third_unknown_command_in_a_row_before_login_drops_the_client(mem):
    """pop3-login answers it, then drops the client at once; a valid command
    in between starts the count again (as the real pop3-login does)."""
    c = mem.pop3(local=True)
    c.lines()
    for verb in ("BOGUS", "BOGUS", "CAPA", "BOGUS", "BOGUS"):
        assert c.send(verb)[0] in ("-ERR Unknown command.", "+OK")
    assert not c.closed
    assert c.send("BOGUS") == ["-ERR Unknown command.", "-ERR Too many invalid bad commands."]
    assert c.closed
    assert re.fullmatch(r"pop3-login: Disconnected: Disconnected: Too many bad commands \(no auth "
                        r"attempts in 0 secs\): user=<>, rip=192\.168\.1\.1, .*", mem.log_lines[-1])


def test_logins_whose_client_left_at_once_do_not_count_for_the_userip_limit(mem):
    """Eleven clients send PASS and hang up before the answer (issue #18):
    the limit counts open connections, so the next login is let in."""
    for _ in range(11):
        c = mem.pop3(local=True)
        c.server.dataReceived(b"USER user2\r\nPASS pass\r\n")
        c.drop()
    assert mem.ctx.sessions == {}
    c = logged_in(mem)
    assert mem.ctx.open_sessions(("pop3", "192.168.1.1", "user2")) == 1
    c.drop()
    assert mem.ctx.sessions == {}


# ------------------------------------------------ as the real pop3 answers (differential)

def test_message_numbers_are_parsed_as_dovecot_does(mem, inbox):
    c = logged_in(mem)
    assert c.send("LIST  1") == [f"+OK 1 {len(FIRST)}"]           # leading spaces skipped
    assert c.send("LIST 1 ") == ["-ERR Noise after message number:  "]
    assert c.send("LIST 1 2") == ["-ERR Noise after message number:  2"]
    assert c.send("LIST -1") == ["-ERR Invalid message number: -1"]
    assert c.send("UIDL +1") == ["-ERR Invalid message number: +1"]
    assert c.send("LIST 4294967296x") == ["-ERR Message number too large: x"]
    assert c.send("RETR") == ["-ERR Invalid message number: "]
    assert c.send("TOP x 1") == ["-ERR Invalid message number: x 1"]
    assert c.send("TOP 1 1 1") == ["-ERR Noise after size:  1"]
    assert c.send("TOP 1 18446744073709551616") == ["-ERR Size too large: 18446744073709551616"]
    assert c.send(" LIST") == ["-ERR Unknown command."]
    assert c.send("DELE 2") == ["+OK Marked to be deleted."]
    assert c.send("UIDL 2") == ["-ERR Message is deleted."]
    assert c.send("DELE 2") == ["-ERR Message is deleted."]


def test_top_past_the_end_of_the_body_and_without_limit(mem, inbox):
    c = logged_in(mem)
    c.server.dataReceived(b"TOP 2 50\r\n")
    mem.reactor.drive()
    assert c.read() == b"+OK\r\n" + SECOND_MESSAGE + b".\r\n"      # no line added
    c.server.dataReceived(b"TOP 2 18446744073709551615\r\n")       # (uoff_t)-1: no limit
    mem.reactor.drive()
    assert c.read() == b"+OK %d octets\r\n" % len(SECOND_MESSAGE) + SECOND_MESSAGE + b".\r\n"
    assert c.send("QUIT") == ["+OK Logging out."]
    top = 2 * len(b"+OK\r\n" + SECOND_MESSAGE) + len(b"%d octets" % len(SECOND_MESSAGE)) + 1
    assert f"top=2/{top}, retr=0/0" in mem.log_lines[-1]
    assert b"X-UID: 2\nStatus: RO\n" in inbox.read_bytes()      # like RETR: \\Seen


def test_rset_forgets_the_messages_retr_would_mark_seen(mem, inbox):
    c = logged_in(mem)
    c.server.dataReceived(b"RETR 1\r\n")
    mem.reactor.drive()
    c.read()
    assert c.send("RSET") == ["+OK"]
    assert c.send("QUIT") == ["+OK Logging out."]
    assert b"Status: RO" not in inbox.read_bytes()


def test_the_21st_failed_command_in_a_row_drops_a_logged_in_client(mem, inbox):
    c = logged_in(mem)
    for _ in range(19):
        assert c.send("FOO") == ["-ERR Unknown command: FOO"]
    assert c.send("NOOP") == ["+OK"]                              # starts the count again
    for _ in range(20):
        assert c.send("LIST 9") == ["-ERR There's no message 9."]
    assert not c.closed
    assert c.send("RETR 0") == ["-ERR There's no message 0.", "-ERR Too many bad commands."]
    assert c.closed
    c.drop()
    assert re.fullmatch(r"pop3\(user2\)<\d+><[^>]+>: Disconnected: Too many bad commands\. "
                        r"top=0/0, retr=0/0, del=0/2, size=\d+", mem.log_lines[-1])


def test_apop_empty_user_and_auth_errors_before_login(mem):
    c = mem.pop3(local=True)
    c.lines()
    for _ in range(3):                                   # not counted as bad commands
        assert c.send("APOP user2 0123456789abcdef") == ["-ERR APOP not enabled."]
    assert c.send("USER") == ["+OK"]
    assert c.send("PASS pass", seconds=3) == ["-ERR [AUTH] Authentication failed."]
    # checked by pop3-login itself: no failure delay, no auth penalty
    assert c.send("AUTH PLAIN !!!") == ["-ERR [AUTH] Invalid base64 data in initial response"]
    # an empty initial response, refused by PLAIN (after the penalty and the delay)
    assert c.send("AUTH PLAIN =", seconds=5) == []
    assert c.send(b"", seconds=2) == ["-ERR [AUTH] Authentication failed."]
    assert c.send("AUTH PLAIN", seconds=10) == ["+ "]
    assert c.send("!!!") == ["-ERR [AUTH] Invalid base64 in response"]
    assert c.send("AUTH FOO") == ["-ERR [AUTH] Unsupported authentication mechanism."]
    assert c.send("QUIT") == ["+OK Logging out"]
    c.drop()
    assert re.fullmatch(r"pop3-login: Disconnected: Aborted login by logging out \(tried to use "
                        r"unsupported auth mechanism\): user=<>, method=FOO, .*", mem.log_lines[-1])


@pytest.mark.parametrize("answers, why", [
    (["AUTH LOGIN", "*"], r"client didn't finish SASL auth, waited 0 secs"),
    (["AUTH PLAIN", "!!!"], r"client didn't finish SASL auth, waited 0 secs"),
    (["AUTH PLAIN", "*", "AUTH PLAIN", "*"], r"auth failed, 2 attempts in 0 secs"),
    (["AUTH PLAIN !!!"], r"sent invalid base64 in response"),
])
def test_why_pop3_login_says_a_client_left(mem, answers, why):
    c = mem.pop3(local=True)
    c.lines()
    for line in answers:
        c.send(line)
    assert c.send("QUIT") == ["+OK Logging out"]
    c.drop()
    assert re.fullmatch(rf"pop3-login: Disconnected: Aborted login by logging out \({why}\): "
                        r"user=<>, method=\w+, .*", mem.log_lines[-1]), mem.log_lines[-1]


def test_login_common_counts_whole_seconds():
    from gponsim.server.dovecot.login import whole_secs
    assert whole_secs(11.2, 10.9) == 1          # ioloop_time - created.tv_sec
    assert whole_secs(11.9, 11.0) == 0
    assert whole_secs(13.0, 10.99) == 3


def test_line_limits_before_and_after_login(mem, inbox):
    c = mem.pop3(local=True)
    c.lines()
    assert c.send("NOOP " + "y" * 1024) == ["-ERR Unknown command."]
    assert c.send("AB " + "y" * 1025) == ["-ERR Input buffer full, aborting"]
    assert c.closed
    c.drop()
    assert re.fullmatch(r"pop3-login: Disconnected: Input buffer full \(no auth attempts in 0 "
                        r"secs\): user=<>, .*", mem.log_lines[-1])
    c = logged_in(mem)
    assert c.send("NOOP " + "y" * 2041) == ["+OK"]               # 2046 bytes
    assert c.send("NOOP " + "y" * 2042) == ["-ERR Input line too long."]
    assert c.closed
    c.drop()
    assert re.fullmatch(r"pop3\(user2\)<\d+><[^>]+>: Disconnected: Input line too long "
                        r"top=0/0, retr=0/0, del=0/2, size=\d+", mem.log_lines[-1])


def test_pop3_login_keeps_the_spaces_of_user(mem):
    c = mem.pop3(local=True)
    c.lines()
    assert c.send("USER  user2") == ["+OK"]
    assert c.send("PASS pass", seconds=3) == ["-ERR [AUTH] Authentication failed."]
    assert c.send("QUIT") == ["+OK Logging out"]
    c.drop()
    assert re.search(r"\(auth failed, 1 attempts in \d+ secs\): user=< user2>, method=PLAIN, ",
                     mem.log_lines[-1]), mem.log_lines[-1]


def test_auth_verbose_lines_of_the_mechanism_and_of_pop3_login(tmp_path, utc):
    from gponsim.server.dovecot.imap import ImapSettings

    lab = MemoryLab(tmp_path, settings=ImapSettings(auth_verbose=True))
    lab.auth_server.verbose, lab.auth_server.log = True, lab.log_lines.append
    try:
        c = lab.pop3(local=True)
        c.lines()
        assert c.send("APOP a b") == ["-ERR APOP not enabled."]
        assert c.send("AUTH FOO") == ["-ERR [AUTH] Unsupported authentication mechanism."]
        assert c.send("AUTH PLAIN") == ["+ "]
        assert c.send("!!!") == ["-ERR [AUTH] Invalid base64 in response"]
        assert c.send("USER us er") == ["+OK"]
        assert c.send("PASS pass", seconds=3) == ["-ERR [AUTH] Authentication failed."]
        addr = r"rip=192\.168\.1\.1, lip=192\.168\.1\.1, secured, session=<[^>]+>"
        # (as the real pop3-login and auth wrote them: tests/test_differential_pop3_lmtp.py)
        expected = [r"pop3-login: APOP failed: APOP not enabled: user=<>, " + addr,
                    r"pop3-login: Authenticate FOO failed: Unsupported authentication "
                    r"mechanism\.: user=<>, method=FOO, " + addr,
                    r"pop3-login: Authenticate PLAIN failed: Invalid base64 in response: "
                    r"user=<>, method=PLAIN, " + addr,
                    r"auth: plain\(\?,192\.168\.1\.1,<[^>]+>\): Username character disallowed "
                    r"by auth_username_chars: 0x20 \(username: us er\)"]
        assert len(lab.log_lines) == len(expected), lab.log_lines
        for line, pattern in zip(lab.log_lines, expected):
            assert re.fullmatch(pattern, line), line
    finally:
        lab.close()
