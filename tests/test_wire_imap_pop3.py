"""The IMAP and POP3 wire parsers (shared by the live lab and the capture analyzer)."""

from __future__ import annotations

from gponsim.commentary import catalog
from gponsim.wire.imap import ImapConversation
from gponsim.wire.pop3 import Pop3Conversation


def test_imap_commands_literals_and_secrets():
    c = ImapConversation("s")
    greet = c.server_data(b"* OK [CAPABILITY IMAP4rev1] Dovecot (Debian) ready.\r\n")
    assert greet[0].key == "imap.greeting" and greet[0].verb == "CONNECT"
    [login] = c.client_data(b'a1 LOGIN user2 "se cret"\r\n')
    assert (login.tag, login.verb, login.shown_line()) == ("a1", "LOGIN", 'a1 LOGIN user2 "********"')
    assert login.shown_line(reveal=True) == 'a1 LOGIN user2 "se cret"'
    assert c.client_data(b"a2 LOGIN {5}\r\n") == []           # waits for the literal
    [lit] = c.client_data(b"user2 {4}\r\npass\r\n")
    assert lit.shown_line() == "a2 LOGIN {5}\nuser2 {4}\n********"
    [app] = c.client_data(b"a3 APPEND INBOX {21+}\r\nSubject: Hi\r\n\r\nbody\r\n\r\n")
    assert app.line == "a3 APPEND INBOX {21+}[message: 21 bytes, 3 lines, Subject: Hi]"
    [uid] = c.client_data(b"a4 uid fetch 1:* (FLAGS)\r\n")
    assert uid.verb == "UID FETCH" and uid.key == "imap.cmd.UID_FETCH"
    steps = c.server_data(b"* 1 FETCH (UID 1 BODY[] {5}\r\nhello)\r\na4 OK Fetch completed.\r\n")
    assert steps[0].line == "* 1 FETCH (UID 1 BODY[] {5}[literal: 5 bytes])"
    assert steps[0].meta["response"] == "FETCH" and steps[0].verb == "UID FETCH"
    assert steps[1].status == "OK" and steps[1].key == "imap.reply.UID_FETCH.OK"
    no = c.server_data(b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")[0]
    assert no.failed and no.meta["code"] == "AUTHENTICATIONFAILED"
    assert no.key == "imap.code.AUTHENTICATIONFAILED"


def test_imap_authenticate_and_idle_and_refused_literal():
    c = ImapConversation("s")
    [cmd] = c.client_data(b"a AUTHENTICATE PLAIN\r\n")
    [cont] = c.server_data(b"+ \r\n")
    assert cont.status == "+" and cont.key == "imap.reply.AUTHENTICATE.+"
    [data] = c.client_data(b"AHVzZXIyAHBhc3M=\r\n")
    assert data.kind == "data" and data.shown_line() == "********"
    c.server_data(b"a OK Logged in\r\n")
    [idle] = c.client_data(b"b IDLE\r\n")
    c.server_data(b"+ idling\r\n")
    [push] = c.server_data(b"* 4 EXISTS\r\n")
    assert push.verb == "IDLE" and push.key == "imap.untagged.EXISTS"
    [done] = c.client_data(b"DONE\r\n")
    assert done.verb == "DONE" and done.kind == "command"
    assert c.client_data(b"c APPEND INBOX {999999999}\r\n") == []
    [cmd, bad] = c.server_data(b"c BAD Error in IMAP command: Literal too large.\r\n")
    assert cmd.kind == "command" and cmd.verb == "APPEND" and bad.status == "BAD"
    [noop] = c.client_data(b"d NOOP\r\n")
    assert noop.verb == "NOOP"
    for step in (cmd, bad, noop, push, done, data, cont):
        assert catalog().resolve(step) is not None


def test_pop3_multiline_and_secrets():
    c = Pop3Conversation("s")
    [greet] = c.server_data(b"+OK Dovecot (Debian) ready.\r\n")
    assert greet.key == "pop3.reply.CONNECT.+OK"
    c.client_data(b"CAPA\r\nUSER user2\r\nPASS secret\r\nRETR 1\r\nLIST 1\r\n")
    steps = c.server_data(b"+OK\r\nCAPA\r\nTOP\r\n.\r\n+OK\r\n+OK Logged in.\r\n"
                          b"+OK 30 octets\r\nSubject: a\r\n\r\n..dot\r\n.\r\n+OK 1 30\r\n")
    assert [s.verb for s in steps] == ["CAPA", "USER", "PASS", "RETR", "LIST"]
    assert steps[0].line == "+OK\nCAPA\nTOP\n."
    assert steps[3].line.startswith("+OK 30 octets\n[message: ") and "Subject: a" in steps[3].line
    assert steps[4].line == "+OK 1 30"
    [err] = c.server_data(b"") or [None]
    c.client_data(b"PASS x\r\n")
    [fail] = c.server_data(b"-ERR [AUTH] Authentication failed.\r\n")
    assert fail.status == "-ERR" and fail.meta["code"] == "AUTH" and fail.key == "pop3.code.AUTH"
