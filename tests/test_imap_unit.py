"""Dovecot's IMAP replies, word for word, in memory (milliseconds; tests/dovecot_memory.py).

The same server class as `gponsim serve`, the real auth server and mbox store;
the end-to-end tests (test_imap.py, test_dovecot_interop.py) keep what only a
real connection shows: TLS, real clients, real Dovecot reading our files.
"""

from __future__ import annotations

import base64
import re

import pytest

from dovecot_memory import MemoryLab
from gponsim.server.dovecot.imap import ImapSettings

PRE = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+"
POST = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
        "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND UNSELECT CHILDREN NAMESPACE UIDPLUS "
        "LIST-EXTENDED I18NLEVEL=1 ESEARCH ESORT SEARCHRES WITHIN LIST-STATUS BINARY MOVE "
        "SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+")
TIMING = r" \(\d+\.\d{3} \+ 0\.000 secs\)\."
SECOND = 1704110400.0          # Mon Jan  1 12:00:00 2024 UTC


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PLAIN_USER1 = b64(b"\0user1\0pass")
PLAIN_USER2 = b64(b"\0user2\0pass")


def done(line: str, tag: str, text: str) -> bool:
    """A logged-in tagged reply: Dovecot puts the command's timing before the final dot."""
    return re.fullmatch(re.escape(f"{tag} {text}") + TIMING, line) is not None


@pytest.fixture
def mem(tmp_path, utc):
    lab = MemoryLab(tmp_path, failure_delay=2.0)
    yield lab
    lab.close()


@pytest.fixture
def inbox(mem):
    """user2's INBOX with two deliveries by local(8)."""
    mem.deliver("user2", b"Subject: uno\nFrom: user1@gponlab.local\n\nFrom the start\nline 2\n",
                when=SECOND)
    mem.deliver("user2", b"Subject: dos\n\nsecond\n", when=SECOND + 60)
    return mem.root / "var/mail/user2"


def logged_in(mem, user="user2", caps=POST):
    c = mem.imap(local=True)
    c.lines()
    assert c.send(f"a0 LOGIN {user} pass") == [f"a0 OK [CAPABILITY {caps}] Logged in"]
    return c


def selected(mem):
    c = logged_in(mem)
    assert c.send("s0 SELECT INBOX")[-1].startswith("s0 OK [READ-WRITE]")
    return c


# ------------------------------------------------------------------ greeting, capabilities

def test_greeting_and_capability_for_a_remote_client_before_tls(mem):
    c = mem.imap(tls_options=object())
    assert c.lines() == [f"* OK [CAPABILITY {PRE} STARTTLS LOGINDISABLED] Dovecot (Debian) ready."]
    assert c.send("a1 CAPABILITY") == [
        f"* CAPABILITY {PRE} STARTTLS LOGINDISABLED",
        "a1 OK Pre-login capabilities listed, post-login capabilities have more."]


def test_client_on_the_server_s_address_counts_as_secured(mem):
    c = mem.imap(local=True, tls_options=object())
    assert c.lines() == [
        f"* OK [CAPABILITY {PRE} STARTTLS AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready."]


def test_implicit_tls_offers_auth_and_no_starttls(mem):
    c = mem.imap(tls_options=object(), implicit_tls=True)
    assert c.lines() == [f"* OK [CAPABILITY {PRE} AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready."]
    assert c.send("a STARTTLS") == ["a BAD TLS is already active."]


def _told(steps) -> list[tuple[str, str]]:
    """(verb or kind, line) of each Step, in the order they were emitted."""
    return [(s.verb if s.proto == "tls" or s.kind == "event" else s.kind, s.line) for s in steps]


def test_implicit_tls_greets_after_the_handshake(mem):
    """On 993 Dovecot completes the TLS handshake first, then greets: nothing
    is written before it, and the Steps say connect, TLS, greeting."""
    c = mem.imap(tls_options=object(), implicit_tls=True, handshake=False)
    assert c.read() == b""
    assert _told(mem.sink.steps) == [("CONNECT", "connect from 192.168.1.50")]
    c.handshake()
    greeting = f"* OK [CAPABILITY {PRE} AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready."
    assert c.lines() == [greeting]
    assert _told(mem.sink.steps) == [
        ("CONNECT", "connect from 192.168.1.50"),
        ("IMPLICIT", "TLS connection established: TLSv1.3 with cipher "
                     "TLS_AES_256_GCM_SHA384 (256/256 bits)"),
        ("reply", greeting)]
    assert [s.tls for s in mem.sink.steps] == [False, True, True]


def test_a_client_that_refuses_the_certificate_on_993_gets_no_greeting(mem):
    """The client sends an alert instead of finishing the handshake: no
    greeting was sent, a TLSFAIL Step says why, and imap-login logs it."""
    from OpenSSL import SSL

    c = mem.imap(tls_options=object(), implicit_tls=True, handshake=False)
    c.drop(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]))
    assert c.read() == b""
    error = ("SSL_accept() failed: error:0A000418:SSL routines::tlsv1 alert unknown ca: "
             "SSL alert number 48")
    assert _told(mem.sink.steps) == [("CONNECT", "connect from 192.168.1.50"),
                                     ("TLSFAIL", error), ("DISCONNECT", "disconnect")]
    assert not any(s.tls for s in mem.sink.steps)
    assert mem.sink.steps[1].key == "imap.event.TLSFAIL"
    assert re.fullmatch(
        rf"imap-login: Disconnected: Connection closed: {re.escape(error)} \(no auth attempts "
        rf"in 0 secs\): user=<>, rip=192\.168\.1\.50, lip=192\.168\.1\.1, TLS handshaking: "
        rf"{re.escape(error)}, session=<[A-Za-z0-9+/]{{16}}>", mem.log_lines[-1])


def test_a_client_that_hangs_up_during_the_handshake(mem):
    c = mem.imap(tls_options=object(), implicit_tls=True, handshake=False)
    c.drop()
    assert _told(mem.sink.steps)[1:] == [
        ("TLSFAIL", "Connection closed during the TLS handshake"), ("DISCONNECT", "disconnect")]
    assert ", TLS handshaking, session=<" in mem.log_lines[-1]


def test_starttls_step_comes_between_the_ok_and_the_next_command(mem):
    c = mem.imap(tls_options=object())
    c.lines()
    assert c.send("a STARTTLS") == ["a OK Begin TLS negotiation now."]
    c.handshake()
    c.send("b CAPABILITY")
    told = _told(mem.sink.steps)
    ok = told.index(("reply", "a OK Begin TLS negotiation now."))
    assert told[ok + 1][0] == "STARTTLS" and told[ok + 1][1].startswith("TLS connection established")
    assert told[ok + 2] == ("command", "b CAPABILITY")


def test_greeting_comes_from_the_settings(tmp_path):
    lab = MemoryLab(tmp_path, settings=ImapSettings(greeting="Dovecot ready."))
    try:
        assert lab.imap(local=True).lines()[0].endswith("] Dovecot ready.")
    finally:
        lab.close()


def test_starttls_then_auth_is_offered_and_pipelined_commands_are_dropped(mem):
    c = mem.imap(tls_options="the lab's TLS options")
    c.lines()
    assert c.send(b"a STARTTLS\r\nb LOGIN user2 pass\r\n") == ["a OK Begin TLS negotiation now."]
    assert c.transport.tls_started_with == "the lab's TLS options"
    assert c.send("c CAPABILITY") == [
        f"* CAPABILITY {PRE} AUTH=PLAIN AUTH=LOGIN",
        "c OK Pre-login capabilities listed, post-login capabilities have more."]
    assert c.send("d LOGIN user2 pass") == [f"d OK [CAPABILITY {POST}] Logged in"]


def test_capability_after_login_and_special_use(tmp_path):
    lab = MemoryLab(tmp_path, settings=ImapSettings(special_use=[("Sent", "\\Sent", "subscribe")]))
    try:
        c = lab.imap(local=True)
        c.lines()
        assert c.send("a LOGIN user1 pass") == [f"a OK [CAPABILITY {POST} SPECIAL-USE] Logged in"]
        reply = c.send("b CAPABILITY")
        assert reply[0] == f"* CAPABILITY {POST} SPECIAL-USE"
        assert done(reply[1], "b", "OK Capability completed")
    finally:
        lab.close()


# ------------------------------------------------------------------ LOGIN, AUTHENTICATE

def test_plaintext_login_refused_before_tls(mem):
    c = mem.imap()
    c.lines()
    assert c.send("a1 LOGIN user2 pass") == [
        "* BAD [ALERT] Plaintext authentication not allowed without SSL/TLS, but your client "
        "did it anyway. If anyone was listening, the password was exposed.",
        "a1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) "
        "connections."]
    # AUTHENTICATE has sasl-server.c's shorter words (checked against Dovecot 2.3.19)
    assert c.send(f"a2 AUTHENTICATE PLAIN {PLAIN_USER2}") == [
        "a2 NO [PRIVACYREQUIRED] Plaintext authentication disabled."]
    assert mem.log_lines == []
    c.drop()
    assert re.fullmatch(r"imap-login: Disconnected: Connection closed \(tried to use disallowed "
                        r"plaintext auth\): user=<user2>, method=PLAIN, rip=192\.168\.1\.50, .*",
                        mem.log_lines[-1])


def test_invalid_base64_answer_and_commands_pipelined_after_login(mem):
    """A SASL answer that is not base64: login-common's own ALERT. Commands
    the client sent while its login was being checked count in the imap
    process's in= (Dovecot hands them over with the login)."""
    c = mem.imap(local=True)
    c.lines()
    assert c.send("a AUTHENTICATE PLAIN") == ["+ "]
    assert c.send("!!!") == ["a NO [ALERT] Invalid base64 in response"]
    got = c.send("b LOGIN user2 pass\r\nz LOGOUT\r\n".encode())
    assert got[-2:][0] == "* BYE Logging out" and got[-1].startswith("z OK Logout completed")
    assert " Logged out in=8 " in mem.log_lines[-1]


def test_login_logs_like_imap_login(mem):
    c = logged_in(mem)
    assert len(mem.log_lines) == 1
    assert re.fullmatch(r"imap-login: Login: user=<user2>, method=PLAIN, rip=192\.168\.1\.1, "
                        r"lip=192\.168\.1\.1, mpid=\d+, secured, session=<[A-Za-z0-9+/]{16}>",
                        mem.log_lines[0])
    bye, ok = c.send("z LOGOUT")
    assert bye == "* BYE Logging out" and done(ok, "z", "OK Logout completed")
    assert c.closed
    assert re.fullmatch(r"imap\(user2\)<\d+><[^>]+>: Disconnected: Logged out in=\d+ out=\d+ deleted=0 "
                        r"expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0",
                        mem.log_lines[1])


def test_wrong_password_answered_after_the_failure_delay(mem):
    c = mem.imap(local=True)
    c.lines()
    assert c.send("a1 LOGIN user2 wrong") == []                      # auth_failure_delay = 2s
    assert c.send(b"", seconds=1.9) == []
    assert c.send(b"", seconds=0.1) == ["a1 NO [AUTHENTICATIONFAILED] Authentication failed."]
    # Dovecot's auth penalty: after one failure from this address, the next
    # login waits 4 seconds (penalty.py), even with the right password
    assert c.send("a2 LOGIN user2 pass") == []
    assert c.send(b"", seconds=3.9) == []
    assert c.send(b"", seconds=0.1) == [f"a2 OK [CAPABILITY {POST}] Logged in"]


def test_commands_pipelined_behind_login_wait_for_its_answer(mem):
    c = mem.imap(local=True)
    c.lines()
    reply = c.send(b"a LOGIN user2 pass\r\nb NAMESPACE\r\n")
    assert reply[0] == f"a OK [CAPABILITY {POST}] Logged in"
    assert reply[1] == '* NAMESPACE (("" "/")) NIL NIL' and done(reply[2], "b", "OK Namespace completed")


def test_authenticate_plain_with_initial_response_and_with_continuation(mem):
    c = mem.imap(local=True)
    c.lines()
    assert c.send(f"a AUTHENTICATE PLAIN {PLAIN_USER2}") == [
        f"a OK [CAPABILITY {POST}] Logged in"]
    c = mem.imap(local=True)
    c.lines()
    assert c.send("b AUTHENTICATE PLAIN") == ["+ "]
    assert c.send(PLAIN_USER1) == [f"b OK [CAPABILITY {POST}] Logged in"]
    assert "method=PLAIN" in mem.log_lines[-1] and "user=<user1>" in mem.log_lines[-1]


def test_authenticate_login_asks_dovecot_s_username_and_password(mem):
    c = mem.imap(local=True)
    c.lines()
    assert c.send("c AUTHENTICATE LOGIN") == ["+ VXNlcm5hbWU6"]          # "Username:"
    assert c.send(b64(b"user2")) == ["+ UGFzc3dvcmQ6"]                   # "Password:"
    assert c.send(b64(b"pass")) == [f"c OK [CAPABILITY {POST}] Logged in"]
    assert "method=LOGIN" in mem.log_lines[-1]


def test_authenticate_abort_and_unknown_mechanism(mem):
    c = mem.imap(local=True)
    c.lines()
    assert c.send("d AUTHENTICATE PLAIN") == ["+ "]
    assert c.send("*") == ["d BAD Authentication aborted by client."]
    assert c.send("e AUTHENTICATE CRAM-MD5") == ["e NO [ALERT] Unsupported authentication mechanism."]


def test_an_unsupported_mechanism_is_an_attempt_the_log_names(mem):
    """login-common (checked against Dovecot 2.3.19): an ALERT, and the
    disconnect line's reason is the unsupported mechanism, which it names."""
    c = mem.imap(local=True)
    c.lines()
    assert c.send("e AUTHENTICATE FOO") == ["e NO [ALERT] Unsupported authentication mechanism."]
    assert c.send("z LOGOUT")[-1] == "z OK Logout completed."
    c.drop()
    assert re.fullmatch(r"imap-login: Disconnected: Aborted login by logging out \(tried to use "
                        r"unsupported auth mechanism\): user=<>, method=FOO, rip=192\.168\.1\.1, .*",
                        mem.log_lines[-1])


def test_lines_after_the_bye_are_not_read(mem):
    """The third invalid command ends the session; what the client sends
    while the connection closes is not answered, nor logged again."""
    c = mem.imap(local=True)
    c.lines()
    c.send("a FOO")
    c.send("b BAR")
    assert c.send("c BAZ") == ["* BYE Too many invalid IMAP commands."]
    mem.log_lines.clear()
    c.server.dataReceived(b"d QUX\r\ne NOOP\r\n")
    c.drop()
    assert c.lines() == [] and mem.log_lines == []


def test_auth_server_gone_is_a_temporary_failure(mem):
    mem.auth_server.stop()
    mem.reactor.drive()
    mem.reactor.unixServers.clear()            # nobody listens on the socket any more
    c = mem.imap(local=True)
    c.lines()
    assert c.send("a LOGIN user2 pass") == ["a NO [UNAVAILABLE] Temporary authentication failure."]


# ------------------------------------------------------------------ SELECT, FETCH, STORE

def test_select_reports_what_the_mbox_holds(mem, inbox):
    c = logged_in(mem)
    lines = c.send("b SELECT INBOX")
    validity = re.search(rb"X-IMAPbase: (\d+) 0000000002\n", inbox.read_bytes()).group(1).decode()
    assert lines[:-1] == [
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.",
        "* 2 EXISTS",
        "* 2 RECENT",
        "* OK [UNSEEN 1] First unseen.",
        f"* OK [UIDVALIDITY {validity}] UIDs valid",
        "* OK [UIDNEXT 3] Predicted next UID"]
    assert done(lines[-1], "b", "OK [READ-WRITE] Select completed")
    # The read-write SELECT took \Recent away for later sessions ("Status: O").
    assert inbox.read_bytes().count(b"\nStatus: O\n") == 2
    other = logged_in(mem)
    assert "* 0 RECENT" in other.send("c EXAMINE INBOX")


def test_examine_is_read_only(mem, inbox):
    c = logged_in(mem)
    lines = c.send("b EXAMINE INBOX")
    assert lines[1] == "* OK [PERMANENTFLAGS ()] Read-only mailbox."
    assert done(lines[-1], "b", "OK [READ-ONLY] Examine completed")
    assert b"Status:" not in inbox.read_bytes()        # still \Recent for the next session
    assert done(c.send("c STORE 1 +FLAGS (\\Seen)")[-1], "c", "OK Store completed") is False


def test_select_missing_folder_and_commands_needing_a_selection(mem):
    c = logged_in(mem)
    # [NONEXISTENT] only for DELETE, RENAME, UNSUBSCRIBE (Dovecot follows RFC 5530 there)
    assert done(c.send("a SELECT Nope")[0], "a", "NO Mailbox doesn't exist: Nope")
    assert done(c.send("a2 STATUS Nope (MESSAGES)")[0], "a2", "NO Mailbox doesn't exist: Nope")
    assert done(c.send("a3 DELETE Nope")[0], "a3", "NO [NONEXISTENT] Mailbox doesn't exist: Nope")
    assert done(c.send("b FETCH 1 FLAGS")[0], "b", "BAD No mailbox selected")


def test_fetch_flags_size_and_body_sets_seen(mem, inbox):
    c = selected(mem)
    lines = c.send("f1 FETCH 1 (UID RFC822.SIZE FLAGS)")
    message = (b"Return-Path: <user1@gponlab.local>\r\nDelivered-To: user2@gponlab.local\r\n"
               b"Subject: uno\r\nFrom: user1@gponlab.local\r\n\r\n>From the start\r\nline 2\r\n")
    assert lines[0] == f"* 1 FETCH (UID 1 RFC822.SIZE {len(message)} FLAGS (\\Recent))"
    assert done(lines[1], "f1", "OK Fetch completed")
    raw = c.server.dataReceived(b"f2 FETCH 1 BODY[]\r\n") or mem.reactor.drive() or c.read()
    # the FLAGS this FETCH changed come before the text, as real Dovecot sends them
    assert raw.startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) BODY[] {%d}\r\n" % len(message)
                          + message + b")\r\n")
    assert b"\nStatus: RO\n" in inbox.read_bytes()


def test_fetch_items_in_dovecot_s_order(mem, inbox):
    """What Dovecot 2.3's imap answered to these FETCHes (run on a copy of such
    an mbox): the buffered items in the order asked, then the message text."""
    mem.deliver("user2", b"Subject: tres\n\nhola\n")
    c = selected(mem)
    c.server.dataReceived(b"a FETCH 1 (BODY[HEADER] RFC822.SIZE BODY[TEXT] INTERNALDATE)\r\n"
                          b"b FETCH 2 (RFC822.HEADER UID FLAGS)\r\n"
                          b"c FETCH 3 (BODY[]<2.5> UID)\r\n"
                          b"d FETCH 3 (BODY.PEEK[1] ENVELOPE BODYSTRUCTURE RFC822.SIZE)\r\n")
    mem.reactor.drive()
    data = c.read()
    replies = [line for line in data.split(b"\r\n") if b"FETCH (" in line]
    assert replies == [
        b'* 1 FETCH (RFC822.SIZE 139 INTERNALDATE "01-Jan-2024 12:00:00 +0000" '
        b"FLAGS (\\Seen \\Recent) BODY[HEADER] {114}",
        b"* 2 FETCH (UID 2 FLAGS (\\Recent) RFC822.HEADER {87}",
        b"* 3 FETCH (UID 3 FLAGS (\\Seen \\Recent) BODY[]<2> {5}",
        b"* 3 FETCH (RFC822.SIZE 94 BODY[1] {6}"]
    # ENVELOPE and BODYSTRUCTURE are not buffered: after the text, in the order asked
    assert b"BODY[1] {6}\r\nhola\r\n ENVELOPE (" in data
    # pipelined FETCHes: every FETCH response first, then the tagged replies
    assert re.search(rb"\r\n ENVELOPE \(.*\) BODYSTRUCTURE \(.*\)\)\r\na OK Fetch completed .*"
                     rb"\r\nb OK .*\r\nc OK .*\r\nd OK .*\r\n$", data)


def test_partial_body_fetch_names_only_the_origin(mem, inbox):
    # RFC 3501 §7.4.2: BODY[]<origin>, where Twisted would say <origin.length> (lab-facts §8)
    c = selected(mem)
    c.server.dataReceived(b"p FETCH 1 BODY.PEEK[]<10.20>\r\n")
    mem.reactor.drive()
    data = c.read()
    assert data.startswith(b"* 1 FETCH (BODY[]<10> {20}\r\nh: <user1@gponlab.lo)\r\n")
    assert b"\nStatus: RO" not in inbox.read_bytes()          # PEEK: not \Seen


def test_fetch_header_fields_and_internaldate(mem, inbox):
    c = selected(mem)
    c.server.dataReceived(b"h UID FETCH 2 (INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
    mem.reactor.drive()
    data = c.read()
    assert data.startswith(b'* 2 FETCH (UID 2 INTERNALDATE "01-Jan-2024 12:01:00 +0000" '
                           b"BODY[HEADER.FIELDS (SUBJECT)] {16}\r\nSubject: dos\r\n\r\n)\r\n")


def test_store_flags_are_written_as_dovecot_s_headers(mem, inbox):
    c = selected(mem)
    # $Label1 is new to the mailbox: FLAGS and PERMANENTFLAGS first; \Recent
    # goes between the system flags and the keywords (checked against Dovecot 2.3.19)
    got = c.send("s1 STORE 1 +FLAGS (\\Flagged \\Answered $Label1)")
    assert done(got.pop(), "s1", "OK Store completed") and got == [
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)",
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 \\*)] "
        "Flags permitted.",
        "* 1 FETCH (FLAGS (\\Answered \\Flagged \\Recent $Label1))"]
    assert done(c.send("s2 STORE 1 -FLAGS.SILENT (\\Answered)")[0], "s2", "OK Store completed")
    assert c.send("s3 UID STORE 2 FLAGS (\\Seen)")[0] == "* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))"
    data = inbox.read_bytes()
    assert b"X-UID: 1\nStatus: O\nX-Status: F\nX-Keywords: $Label1\n" in data
    assert b"X-UID: 2\nStatus: RO\nContent-Length: 7\n" in data
    assert re.search(rb"X-IMAPbase: \d+ 0000000002 \$Label1\n", data)
    flags = c.send("s4 FETCH 1:2 FLAGS")
    assert flags[:2] == ["* 1 FETCH (FLAGS (\\Flagged \\Recent $Label1))",
                         "* 2 FETCH (FLAGS (\\Seen \\Recent))"]


def test_search(mem, inbox):
    c = selected(mem)
    c.send("x STORE 2 +FLAGS (\\Seen \\Flagged)")
    for command, found in [("ALL", "1 2"), ("UNSEEN", "1"), ("FLAGGED", "2"), ("SUBJECT uno", "1"),
                           ("BODY second", "2"), ("NOT SEEN FROM user1", "1"),
                           ("SINCE 1-Jan-2024", "1 2"), ("BEFORE 1-Jan-2024", "")]:
        lines = c.send(f"q SEARCH {command}")
        assert lines[0] == f"* SEARCH {found}".rstrip(), command
        assert done(lines[1], "q", "OK Search completed"), lines
    assert c.send("u UID SEARCH 2:*")[0] == "* SEARCH 2"
    assert c.send("e SEARCH RETURN (MIN COUNT) ALL")[0] == '* ESEARCH (TAG "e") MIN 1 COUNT 2'


def test_search_criteria_nested_as_deep_as_a_command_line_allows(mem, inbox):
    """Dovecot answers 5,000 levels (and more) of parentheses, NOT and OR; the
    lab used to log a RecursionError. Nothing is deeper than what fits in
    imap_max_line_length (64 KB)."""
    c = selected(mem)
    c.send("x STORE 2 +FLAGS (\\Flagged)")
    for criteria, found in [("(" * 30000 + "FLAGGED" + ")" * 30000, "2"),
                            ("NOT " * 15000 + "FLAGGED", "2"),
                            ("NOT " * 15001 + "FLAGGED", "1"),
                            ("OR ALL " * 8000 + "ALL", "1 2"),
                            ("OR UNFLAGGED " * 4500 + "UNFLAGGED", "1"),
                            ("(" * 10000 + "OR SUBJECT dos NOT ALL" + ")" * 10000, "2")]:
        lines = c.send(f"q SEARCH {criteria}")
        assert lines[0] == f"* SEARCH {found}", criteria[:40]
        assert done(lines[1], "q", "OK Search completed"), lines
    assert not [s for s in mem.sink.steps if "Traceback" in (s.line or "")]


def test_search_registers_the_keywords_it_names(mem, inbox):
    """mail_search_args_init() creates a keyword the mailbox does not have:
    FLAGS and PERMANENTFLAGS after the results, written to X-IMAPbase in a
    read-write session; not one that differs only in case, is not a valid
    keyword, or meets its own negation (checked against Dovecot 2.3.19)."""
    c = selected(mem)
    got = c.send("q1 SEARCH KEYWORD Nueva")
    assert done(got.pop(), "q1", "OK Search completed") and got == [
        "* SEARCH",
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Nueva)",
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Nueva \\*)] "
        "Flags permitted."]
    assert re.search(rb"X-IMAPbase: \d+ 0000000002 Nueva\n", inbox.read_bytes())
    for criteria in ("KEYWORD NUEVA", "KEYWORD \\Seen", "KEYWORD x UNKEYWORD x",
                     "OR KEYWORD y NOT KEYWORD y", "KEYWORD " + "z" * 51):
        got = c.send(f"q2 SEARCH {criteria}")
        assert len(got) == 2 and done(got[1], "q2", "OK Search completed"), criteria
    # run alongside: the FLAGS go before the FETCH that shows a message's flags
    got = c.send("q3 SEARCH KEYWORD otra\r\nq4 FETCH 1 FLAGS")
    assert got[:3] == ["* SEARCH", "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
                       "Nueva otra)", "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted "
                       "\\Seen \\Draft Nueva otra \\*)] Flags permitted."]
    assert got[3] == "* 1 FETCH (FLAGS (\\Recent))"
    other = logged_in(mem)
    assert other.send("e1 EXAMINE INBOX")[0] == (
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Nueva otra)")
    # EXAMINEd: for this session only, until it SELECTs the mailbox
    got = other.send("e2 SEARCH KEYWORD leida")
    assert got[1:3] == ["* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Nueva otra leida)",
                        "* OK [PERMANENTFLAGS ()] Read-only mailbox."]
    assert b"leida" not in inbox.read_bytes()
    assert other.send("e3 EXAMINE INBOX")[1] == (
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Nueva otra leida)")
    other.send("e4 SELECT INBOX")
    assert re.search(rb"X-IMAPbase: \d+ 0000000002 Nueva otra leida\n", inbox.read_bytes())


@pytest.mark.parametrize("items,error", [
    ("(UID) (x)", "Unknown FETCH modifier"), ("UID (VANISHED)", "Unknown FETCH modifier"),
    ("(UID) ((x))", "FETCH modifiers contain non-atoms"),
    ('(UID) ("x")', "FETCH modifiers contain non-atoms"),
    ("(UID) (CHANGEDSINCE x)", "Invalid CHANGEDSINCE modseq"),
    ("(UID) (CHANGEDSINCE)", "Invalid CHANGEDSINCE modseq"),
    # gponsim does not implement CONDSTORE, which Dovecot enables here
    ("(UID) (CHANGEDSINCE 1)", "Unknown FETCH modifier"),
    ("(UID) (x) y", "Unknown FETCH modifier"), ("(UID) x", "Invalid arguments"),
    ("BODY.PEEK[HEADER.FIELDS (SUBJECT)] (x)", "Unknown FETCH modifier"),
    ("(FOO) (x)", "Unknown parameter: FOO"),
])
def test_fetch_modifiers_are_refused_in_dovecot_s_words(mem, inbox, items, error):
    c = selected(mem)
    (line,) = c.send(f"f FETCH 1 {items}")
    assert done(line, "f", f"BAD Error in IMAP command FETCH: {error}"), line


def test_fetch_modifiers_after_the_message_set_and_with_uid(mem, inbox):
    c = selected(mem)
    (line,) = c.send("f1 FETCH 9 (UID) (x)")
    assert done(line, "f1", "BAD Error in IMAP command FETCH: Invalid messageset"), line
    (line,) = c.send("f2 UID FETCH 1 (UID) (VANISHED)")
    assert done(line, "f2", "BAD Error in IMAP command UID FETCH: QRESYNC not enabled"), line
    got = c.send("f3 FETCH 1 (UID) () y")
    assert got[0] == "* 1 FETCH (UID 1)" and done(got[1], "f3", "OK Fetch completed")


@pytest.mark.parametrize("criteria,error", [
    ("FROM", "Missing parameter for search key (for search key: FROM)"),
    ("FOO", "Unknown argument FOO"), ("NOT", "Missing argument"), ("OR ALL", "Missing argument"),
    ("()", "No search parameters inside list"), ("LARGER x", "Invalid search size parameter"),
    ("HEADER (a) b", "Unexpected ( (for search key: HEADER)"),
    ("UID x", "Invalid UID messageset"), ("1:x", "Invalid messageset"),
    ("YOUNGER x", "Invalid search interval parameter"),
])
def test_search_errors_are_dovecot_s(mem, inbox, criteria, error):
    c = selected(mem)
    (line,) = c.send(f"q SEARCH {criteria}")
    assert done(line, "q", f"BAD Error in IMAP command SEARCH: {error}"), line


def test_expunge_and_noop_report_what_another_session_did(mem, inbox):
    c = selected(mem)
    other = selected(mem)
    other.send("d STORE 1 +FLAGS (\\Deleted)")
    lines = other.send("e EXPUNGE")
    assert lines[0] == "* 1 EXPUNGE" and done(lines[1], "e", "OK Expunge completed")
    lines = c.send("n NOOP")
    assert lines[0] == "* 1 EXPUNGE" and done(lines[-1], "n", "OK NOOP completed")
    assert b"Subject: uno" not in inbox.read_bytes()


def test_append_with_literal_and_literal_plus(mem):
    c = logged_in(mem)
    message = b"Subject: borrador\r\n\r\nhola\r\n"
    assert c.send(f'a APPEND INBOX (\\Draft) "01-Jan-2024 12:00:00 +0000" {{{len(message)}}}') == [
        "+ OK"]
    reply = c.send(message + b"\r\n")
    assert re.fullmatch(r"a OK \[APPENDUID \d+ 1\] Append completed" + TIMING, reply[0])
    reply = c.send(b"b APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
    assert re.fullmatch(r"b OK \[APPENDUID \d+ 2\] Append completed" + TIMING, reply[0])
    assert done(c.send('c APPEND Nope {1+}\r\nx')[0], "c", "NO [TRYCREATE] Mailbox doesn't exist: Nope")
    # the mailbox's name itself a literal: checked once it has come (a fuzz input once
    # crashed here: "Server error")
    assert c.send("d APPEND {4}") == ["+ OK"]
    assert done(c.send(b"Nope {1}\r\n")[0], "d", "NO [TRYCREATE] Mailbox doesn't exist: Nope")
    assert c.send("e APPEND {5}") == ["+ OK"]
    assert c.send(b"INBOX {%d}\r\n" % len(message)) == ["+ OK"]
    assert re.fullmatch(r"e OK \[APPENDUID \d+ 3\] Append completed" + TIMING,
                        c.send(message + b"\r\n")[0])
    data = (mem.root / "var/mail/user2").read_bytes()
    assert data.startswith(b"From user2  Mon Jan 01 12:00:00 2024\nSubject: borrador\n")


def test_bytes_in_after_append_count_each_byte_once(mem):
    """in= is Dovecot's input offset: a literal and what follows it on the
    line are counted once (Twisted hands them back after the literal), as in
    one packet as in several; only LOGOUT's CRLF is left out."""
    c = logged_in(mem)
    before = len(mem.sink.steps)
    message = b"Subject: x\r\n\r\nhola"
    sent = [b"b APPEND INBOX {%d}\r\n" % len(message), message + b"\r\n",
            b"c APPEND INBOX {%d+}\r\n%s (\\Seen) {%d+}\r\n%s\r\n"
            % (len(message), message, len(message), message),
            b"z LOGOUT\r\n"]
    for data in sent:
        c.send(data)
    assert f" Logged out in={sum(map(len, sent)) - 2} " in mem.log_lines[-1]
    # and each command narrated once, its messages summarised where they go
    summary = "[message: 18 bytes, 2 lines, Subject: x]"
    assert [s.line for s in mem.sink.steps[before:] if s.dir == "c2s"] == [
        "b APPEND INBOX {18}" + summary,
        f"c APPEND INBOX {{18+}}{summary} (\\Seen) {{18+}}{summary}", "z LOGOUT"]


def test_list_lsub_create_subscribe_and_special_use(tmp_path, utc):
    """What Dovecot 2.3's imap answered to the same commands with the lab's
    15-mailboxes.conf kind of folders (special_use, auto = no) on mbox: folders
    are files, so they cannot have children (\\NoInferiors)."""
    lab = MemoryLab(tmp_path, settings=ImapSettings(
        special_use=[("Sent", "\\Sent", "no"), ("Trash", "\\Trash", "no")]))
    try:
        c = logged_in(lab, caps=POST + " SPECIAL-USE")
        assert c.send('a LIST "" ""')[0] == '* LIST (\\Noselect) "/" ""'
        assert done(c.send("b CREATE Trash")[0], "b", "OK Create completed")
        assert done(c.send("b2 CREATE Trash")[0], "b2", "NO [ALREADYEXISTS] Mailbox already exists")
        assert done(c.send("b3 CREATE Sent")[0], "b3", "OK Create completed")
        assert done(c.send("b4 SUBSCRIBE Sent")[0], "b4", "OK Subscribe completed")
        lines = c.send('c LIST "" "*"')
        assert lines[:-1] == ['* LIST (\\NoInferiors \\Sent) "/" Sent',
                              '* LIST (\\NoInferiors \\Trash) "/" Trash',
                              '* LIST (\\HasNoChildren) "/" INBOX']
        assert done(lines[-1], "c", "OK List completed")
        assert c.send('d LIST (SUBSCRIBED) "" "*"')[:-1] == [
            '* LIST (\\Subscribed \\NoInferiors \\UnMarked) "/" Sent']
        assert done(c.send("e SUBSCRIBE Trash")[0], "e", "OK Subscribe completed")
        assert c.send('f LSUB "" "*"')[:-1] == ['* LSUB (\\Sent) "/" Sent',
                                              '* LSUB (\\Trash) "/" Trash']
        lines = c.send('g LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))')
        assert lines[:-1] == ['* LIST (\\NoInferiors) "/" Sent',
                              "* STATUS Sent (MESSAGES 0 UNSEEN 0)",
                              '* LIST (\\NoInferiors) "/" Trash',
                              "* STATUS Trash (MESSAGES 0 UNSEEN 0)",
                              '* LIST () "/" INBOX',
                              "* STATUS INBOX (MESSAGES 0 UNSEEN 0)"]
        assert c.send('h LIST (SUBSCRIBED) "" "*"')[:-1] == [
            '* LIST (\\Subscribed \\NoInferiors \\UnMarked) "/" Sent',
            '* LIST (\\Subscribed \\NoInferiors \\UnMarked) "/" Trash']
        assert c.send('i LIST "" "*" RETURN (SPECIAL-USE)')[:-1] == [
            '* LIST (\\NoInferiors \\Sent) "/" Sent',
            '* LIST (\\NoInferiors \\Trash) "/" Trash',
            '* LIST () "/" INBOX']
        assert c.send('j LIST (SPECIAL-USE) "" "*"')[:-1] == [
            '* LIST (\\NoInferiors \\Sent) "/" Sent',
            '* LIST (\\NoInferiors \\Trash) "/" Trash']
        assert (tmp_path / "home/user2/mail/.subscriptions").read_text() == "Sent\nTrash\n"
    finally:
        lab.close()


def test_copy_and_move_between_folders(mem, inbox):
    c = selected(mem)
    c.send("a CREATE Archive")
    assert re.fullmatch(r"b OK \[COPYUID \d+ 1 1\] Copy completed" + TIMING,
                        c.send("b COPY 1 Archive")[0])
    moved = c.send("m UID MOVE 2 Archive")
    assert re.fullmatch(r"\* OK \[COPYUID \d+ 2 2\] Moved UIDs\.", moved[0])
    # both were \Recent in INBOX: one left, and the count is told again (imap-sync.c)
    assert moved[1:3] == ["* 2 EXPUNGE", "* 1 RECENT"] and done(moved[3], "m", "OK Move completed")
    status = c.send("s STATUS Archive (MESSAGES UIDNEXT)")
    assert status[0] == "* STATUS Archive (MESSAGES 2 UIDNEXT 3)"
    archive = (mem.root / "home/user2/mail/Archive").read_bytes()
    assert archive.startswith(b"From user1@gponlab.local  Mon Jan  1 12:00:00 2024\n")   # From_ kept


# ------------------------------------------------------------------ IDLE, LOGOUT

def test_idle_pushes_a_delivery_and_ends_with_done(mem, inbox):
    c = selected(mem)
    assert c.send("i IDLE") == ["+ idling"]
    mem.deliver("user2", b"Subject: tres\n\nnew\n")
    assert c.send(b"", seconds=0.01) == ["* 3 EXISTS", "* 3 RECENT"]      # inotify, at once
    assert c.send(b"", seconds=120) == ["* OK Still here"]
    assert done(c.send("DONE")[0], "i", "OK Idle completed")


def test_idle_keepalive_comes_at_the_client_address_s_moments(mem, inbox):
    """imap_keepalive_interval_msecs(): '* OK Still here' when (now + the
    client address's hash) is a multiple of 120 s, not 120 s after the IDLE
    (checked against Dovecot 2.3.19, both sending it within the same second)."""
    c = selected(mem)            # from 192.168.1.1: its in_addr, little-endian
    h = int.from_bytes(bytes([192, 168, 1, 1]), "little")
    start = mem.reactor.seconds()
    mem.reactor.advance((90 - h - int(start)) % 120)        # now + h = 90 (mod 120)
    assert c.send("i IDLE") == ["+ idling"]
    assert c.send(b"", seconds=29.5) == []
    assert c.send(b"", seconds=1) == ["* OK Still here"]              # 30 s after
    assert c.send(b"", seconds=119) == []
    assert c.send(b"", seconds=1) == ["* OK Still here"]              # then every 120 s
    assert done(c.send("DONE")[0], "i", "OK Idle completed")


def test_idle_ends_only_with_done(mem, inbox):
    c = selected(mem)
    assert c.send("i IDLE") == ["+ idling"]
    assert done(c.send("j NOOP")[0], "i", "BAD Expected DONE")


def test_idle_without_inotify_polls(mem, inbox, monkeypatch):
    from gponsim.server.mailstore.mbox import MboxFolder
    monkeypatch.setattr(MboxFolder, "watch", lambda self, reactor, callback: None)
    c = selected(mem)
    assert c.send("i IDLE") == ["+ idling"]
    mem.deliver("user2", b"Subject: tres\n\nnew\n")
    assert c.send(b"", seconds=0.01) == []
    assert c.send(b"", seconds=0.2) == ["* 3 EXISTS", "* 3 RECENT"]          # WATCH_INTERVAL


def test_inactivity_logs_out(mem):
    """imap-login gives a client 3 minutes from its connection (Dovecot 2.3.19)."""
    c = mem.imap(local=True)
    c.lines()
    assert c.send(b"", seconds=179) == []
    assert c.send(b"", seconds=1) == ["* BYE Disconnected for inactivity."]
    assert c.closed
    assert re.fullmatch(r"imap-login: Disconnected: Inactivity \(no auth attempts in \d+ secs\): "
                        r"user=<>, rip=192\.168\.1\.1, lip=192\.168\.1\.1, secured, "
                        r"session=<[^>]+>", mem.log_lines[-1])


def test_talking_does_not_extend_the_login_timeout(mem):
    """A guesser that keeps trying is dropped 3 minutes after it connected,
    in the middle of its attempt (the penalty makes it wait 15 s each time)."""
    c = mem.imap(local=True)
    c.lines()
    replies = []
    for i in range(40):
        got = c.send(f"a{i} LOGIN user2 guess{i}")
        while not got and not c.closed:         # the next guess as soon as this one failed
            got = c.send(b"", seconds=1)
        replies += got
        if c.closed:
            break
    assert replies[-1] == "* BYE Disconnected for inactivity during authentication."
    assert 10 <= sum(r.endswith("Authentication failed.") for r in replies) <= 13
    assert re.fullmatch(r"imap-login: Disconnected: Inactivity during authentication "
                        r"\(auth failed, \d+ attempts in 180 secs\): user=<user2>, "
                        r"method=PLAIN, rip=192\.168\.1\.1, .*", mem.log_lines[-1])


def test_three_invalid_commands_before_login_drop_the_client(mem):
    c = mem.imap(local=True)
    c.lines()
    assert c.send("a FOO") == ["a BAD Error in IMAP command received by server."]
    assert c.send("b NOOP") == ["b OK NOOP completed."]
    assert c.send("c LOGIN") == ["c BAD Error in IMAP command received by server."]
    assert c.send("d BAR") == ["* BYE Too many invalid IMAP commands."]
    assert c.closed
    assert re.fullmatch(r"imap-login: Disconnected: Too many invalid commands \(no auth attempts "
                        r"in 0 secs\): user=<>, rip=192\.168\.1\.1, .*", mem.log_lines[-1])
    assert len(mem.log_lines) == 1


def test_examined_mailbox_takes_expunge_store_and_move(mem, inbox):
    """Dovecot 2.3 (checked against it): EXPUNGE and STORE in an EXAMINEd
    mailbox answer OK and change nothing; MOVE is not refused and counts as
    trashed= when it goes to a \\Trash special-use mailbox."""
    mem.ctx.settings.special_use = [("Trash", "\\Trash", "no")]
    c = logged_in(mem, caps=POST + " SPECIAL-USE")
    c.send("c CREATE Trash")
    c.send("e EXAMINE INBOX")
    assert done(c.send("x EXPUNGE")[0], "x", "OK Expunge completed")
    assert c.send("s STORE 1 +FLAGS (\\Deleted)")[0].startswith(
        "s OK Store ignored with read-only mailbox (")
    assert done(c.send("r STORE 1 FLAGS (\\Recent)")[0], "r",
                "BAD Error in IMAP command STORE: Invalid system flag \\RECENT")
    moved = c.send("m MOVE 1 Trash")
    assert moved[1:3] == ["* 1 EXPUNGE", "* 1 RECENT"] and done(moved[3], "m", "OK Move completed")
    assert c.send("z LOGOUT")[-1].startswith("z OK")
    assert " deleted=0 expunged=0 trashed=1 " in mem.log_lines[-1]


def test_list_extended_options_and_errors(mem, inbox):
    """Dovecot 2.3.19: unknown LIST-EXTENDED options are refused, a missing
    pattern is 'Invalid pattern'; children are reported for a plain LIST or
    when RETURN (CHILDREN) asks, not for other extended forms (a list of
    patterns is one)."""
    c = logged_in(mem)
    c.send("c1 CREATE Dir/")
    c.send("c2 CREATE Dir/Sub")
    assert done(c.send('l1 LIST (FOO) "" *')[0], "l1",
                "BAD Error in IMAP command LIST: Unknown select options")
    assert done(c.send('l2 LIST "" * RETURN (FOO)')[0], "l2",
                "BAD Error in IMAP command LIST: Unknown return options")
    assert done(c.send('l3 LIST ""')[0], "l3", "BAD Error in IMAP command LIST: Invalid pattern")
    assert c.send('l4 LIST "" Dir')[0] == '* LIST (\\Noselect \\HasChildren) "/" Dir'
    assert c.send('l5 LIST "" (Dir INBOX)')[:2] == ['* LIST (\\Noselect) "/" Dir',
                                                   '* LIST () "/" INBOX']
    assert c.send('l6 LIST "" Dir RETURN (CHILDREN)')[0] == \
        '* LIST (\\Noselect \\HasChildren) "/" Dir'
    c.send("s SELECT INBOX")
    assert done(c.send("s1 SEARCH CHARSET")[0], "s1",
                "BAD Error in IMAP command SEARCH: Invalid charset argument")


def test_bad_commands(mem):
    c = mem.imap(local=True)
    c.lines()
    assert c.send("a FOO") == ["a BAD Error in IMAP command received by server."]
    # imap-login never echoes an invalid tag (checked against Dovecot 2.3.19)
    assert c.send("a+b NOOP") == ["* BAD Error in IMAP command received by server."]
    c = logged_in(mem)
    for line in (" NOOP", "", "a]b NOOP", "a\tNOOP"):       # the imap process says why
        got = c.send(line)
        assert len(got) == 1 and re.fullmatch(r"\* BAD Error in IMAP tag: Invalid tag" + TIMING,
                                              got[0]), (line, got)
    assert done(c.send("a1")[0], "a1", "BAD Error in IMAP command: Invalid command name")
    assert done(c.send("b} NOOP")[0], "b}", "OK NOOP completed")      # '}' may be in a tag
    assert done(c.send("d BLAH")[0], "d", "BAD Error in IMAP command BLAH: Unknown command")
    assert done(c.send("e SELECT")[0], "e", "BAD Error in IMAP command SELECT: Invalid arguments")


def test_logins_whose_client_left_at_once_do_not_count_for_the_userip_limit(mem):
    """Eleven clients send LOGIN and hang up before the answer (issue #18):
    mail_max_userip_connections counts open connections, so the twelfth is
    let in and nothing is left counted."""
    for _ in range(11):
        c = mem.imap(local=True)
        c.server.dataReceived(b"a LOGIN user2 pass\r\n")
        c.drop()
    assert mem.ctx.sessions == {}
    c = logged_in(mem)
    assert mem.ctx.open_sessions(("imap", "192.168.1.1", "user2")) == 1
    assert not any("Login:" in line for line in mem.log_lines[:-1])    # only the last one
    c.drop()
    assert mem.ctx.sessions == {}
