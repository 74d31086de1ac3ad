"""Differential tests: smtpd (ports 25 and 587) for unusual but plausible clients.

The same raw SMTP dialogue (one line at a time, each reply read before the
next line is sent) goes to gponsim and to Debian's Postfix 3.7 configured from
the same lab profile; the replies and the mail.log lines must be the same
(see :mod:`differential` for what is normalised). The scenarios are the ones a
student typing at ``nc``/``openssl s_client`` meets: parameters Postfix does
not know, DSN syntax, addresses it refuses, AUTH given up with ``*``, an empty
initial response, VRFY, ETRN, XCLIENT...
"""

from __future__ import annotations

import socket
import ssl

import pytest

import differential as diff
from reallab import available
from test_differential import HOST, check, figures, lab, unverified  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

EHLO = "EHLO pc.example.org"
MAIL = "MAIL FROM:<alice@example.org>"
RCPT = "RCPT TO:<user2@gponlab.local>"
#: STARTTLS on 587, then EHLO again inside TLS
TLS = [EHLO, "STARTTLS", ("tls",), EHLO]
#: AUTH PLAIN user1 / pass
CREDENTIALS = "AHVzZXIxAHBhc3M="


class Dialogue:
    """A line-at-a-time SMTP client that keeps every line the server sent."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=15)
        self.buffer = b""
        self.received: list[str] = []
        self.closed = False
        self.reply()                            # the greeting

    def reply(self) -> None:
        """Read one whole (multi-line) reply, or up to the end of the connection."""
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                text = line.rstrip(b"\r").decode("utf-8", "replace")
                self.received.append(text)
                if text[3:4] != "-":
                    return
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:        # the server hung up (after 521, 421)
                data = b""
            if not data:
                self.closed = True
                return
            self.buffer += data

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True

    def starttls(self) -> None:
        self.sock = unverified().wrap_socket(self.sock)
        self.buffer = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except (OSError, ssl.SSLError):
            pass


def dialogue(*items):
    """A script: each item a command line (its reply is read), raw bytes sent
    as they are (one reply read), ``("tls",)`` to start TLS, or ``("send",
    bytes)`` sent without reading a reply (last, the client hanging up)."""
    def script(ports, service="smtp"):
        client = Dialogue(ports[service])
        try:
            for item in items:
                if client.closed:
                    break
                if item == ("tls",):
                    client.starttls()
                    continue
                if isinstance(item, tuple) and item[0] == "send":
                    client.send(item[1])
                    continue
                client.send(item if isinstance(item, bytes) else item.encode() + b"\r\n")
                if not client.closed:
                    client.reply()
        finally:
            client.close()
        return client.received
    return script


def on(service: str, script):
    return lambda ports: script(ports, service)


# ---------------------------------------------------------------- MAIL FROM

def test_mail_parameters_postfix_does_not_know(lab):
    """BODY= other than 7BIT/8BITMIME (BINARYMIME: no CHUNKING-only body),
    SMTPUTF8 with a value, an unknown keyword: 555 Unsupported option."""
    check(lab, "MAIL FROM: unknown parameters (25)", dialogue(
        EHLO, f"{MAIL} BODY=BINARYMIME", f"{MAIL} BODY=foo", f"{MAIL} BODY=",
        f"{MAIL} SMTPUTF8=yes", f"{MAIL} FOO=bar", f"{MAIL} body=8bitmime smtputf8", "QUIT"))


def test_mail_size_too_big_is_remembered_until_rset(lab):
    """SIZE= over message_size_limit: 552, logged as a reject; the size stays
    (mail_reset is not called), so the next MAIL without SIZE= is refused
    too, until RSET. An overflowing SIZE= has a reply of its own."""
    check(lab, "MAIL FROM: SIZE too big, then without SIZE (25)", dialogue(
        EHLO, f"{MAIL} SIZE=999999999", f"{MAIL} BODY=8BITMIME", "RSET", f"{MAIL} SIZE=1000",
        "RSET", f"{MAIL} SIZE=99999999999999999999999", f"{MAIL} SIZE=+5", f"{MAIL} SIZE=",
        "QUIT"))


def test_mail_dsn_parameters_syntax(lab):
    """RET= twice or unknown, ENVID= empty, twice or with bad xtext: 501."""
    check(lab, "MAIL FROM: RET= and ENVID= syntax (25)", dialogue(
        EHLO, f"{MAIL} RET=FULL RET=HDRS", f"{MAIL} RET=FOO", f"{MAIL} ENVID=",
        f"{MAIL} ENVID=a+ZZ", f"{MAIL} ENVID=a ENVID=b", f"{MAIL} RET=hdrs ENVID=a+41",
        "QUIT"))


# ---------------------------------------------------------------- RCPT TO

def test_rcpt_dsn_parameters_syntax(lab):
    """NOTIFY= unknown (logged), empty, twice, NEVER with another; ORCPT=
    without a type or with bad xtext; anything else: 555."""
    to = RCPT
    check(lab, "RCPT TO: NOTIFY= and ORCPT= syntax (25)", dialogue(
        EHLO, MAIL, f"{to} NOTIFY=FOO", f"{to} NOTIFY=", f"{to} NOTIFY=SUCCESS NOTIFY=DELAY",
        f"{to} NOTIFY=NEVER,SUCCESS", f"{to} ORCPT=foo", f"{to} ORCPT=;a", f"{to} ORCPT=rfc822;a+4",
        f"{to} FOO=bar", f"{to} NOTIFY", f"{to} NOTIFY=success,,delay ORCPT=rfc822;user2+40x",
        "RSET", "QUIT"))


def test_data_with_an_argument_before_any_recipient(lab):
    """DATA x: the missing MAIL or recipients are told before the syntax."""
    check(lab, "DATA with an argument (25)", dialogue(
        EHLO, "DATA x", MAIL, "DATA x", RCPT, "DATA x", "QUIT"))


# ---------------------------------------------------------------- AUTH on 587

def test_auth_unknown_mechanism_and_bad_base64(lab):
    """Failures Postfix sees itself: sasl_username=(unavailable) in the log."""
    check(lab, "AUTH: unknown mechanism, bad base64 (587)", on("submission", dialogue(
        *TLS, "AUTH CRAM-MD5", "AUTH FOO", "AUTH PLAIN !!!!", "AUTH LOGIN", "@@@", "QUIT")))


def test_auth_given_up_with_a_star(lab):
    """``*`` in answer to 334: 501 Authentication aborted, logged as aborted."""
    check(lab, "AUTH: cancelled with * (587)", on("submission", dialogue(
        *TLS, "AUTH LOGIN", "*", "AUTH PLAIN", "*", f"AUTH PLAIN {CREDENTIALS}", "QUIT")))


def test_auth_plain_with_an_empty_initial_response(lab):
    """``AUTH PLAIN =`` (RFC 4954's empty initial response) goes to Dovecot as
    it came: PLAIN fails on empty credentials, there is no 334."""
    check(lab, "AUTH PLAIN = (587)", on("submission", dialogue(
        *TLS, "AUTH PLAIN =", "QUIT")))


# ---------------------------------------------------------------- addresses

def test_sender_addresses_postfix_finds_illegal(lab):
    """What smtpd's address parser refuses (logged as Illegal address syntax)
    and what it takes: an unterminated <, two addresses in one, a domain
    that is no host name (empty, '..', a leading '-', all digits, a bad
    literal); a source route, a comment, a quoted local part, '<<a>>' pass."""
    items = [EHLO]
    for address in ("<a b@x.org>", "<a,b@x.org>", "<a@>", "<@>", "<a@x..org>", "<a@-x.org>",
                    "<a@123>", "<a@1.2.3.4>", "<a@x.org>x", "<alice@example.org",
                    "<a@b@x.org>", "<@x.org:a@y.org>", "<a(c)@x.org>", '<"a b"@x.org>',
                    "<<a@x.org>>", "a@x.org>", "<a@x.org.>", "<a@x_y.org>", "<a@[IPv6:::1]>",
                    "<a@x.org> <b@x.org>", "a b@x.org"):
        items += [f"MAIL FROM:{address}", "RSET"]
    check(lab, "MAIL FROM: address syntax (25)", dialogue(*items, "QUIT"))


def test_recipient_addresses_postfix_finds_illegal(lab):
    """The same parser for RCPT TO (the null address is illegal here); a
    quoted local part is the user's own name."""
    check(lab, "RCPT TO: address syntax (25)", dialogue(
        EHLO, MAIL, "RCPT TO:<>", "RCPT TO:<a b@x.org>", "RCPT TO:<user2@gponlab.local",
        "RCPT TO:<a@>", "RCPT TO:<a@x..org>", "RCPT TO:<a@x.org> <b@x.org>",
        'RCPT TO:<"user2"@gponlab.local>', "RCPT TO:<user2(Bob)@gponlab.local>",
        "RCPT TO:user2@gponlab.local", "RCPT TO:<nadie>", "RSET", "QUIT"))


# ---------------------------------------------------------------- other commands

def test_vrfy_forms(lab):
    """VRFY without an argument, with two words (one address for Postfix),
    with SMTPUTF8, a user who does not exist (logged as a reject)."""
    check(lab, "VRFY forms (25)", dialogue(
        EHLO, "VRFY", "VRFY user2", "VRFY <user2@gponlab.local>", "VRFY user2 SMTPUTF8",
        "VRFY a b", "VRFY nadie", "VRFY <nadie@gponlab.local>", "QUIT"))


def test_etrn_forms(lab):
    """ETRN: no fast flush domains in the lab, so every valid one is refused
    and logged; two words, a bad name, the @ and # prefixes."""
    check(lab, "ETRN forms (25)", dialogue(
        EHLO, "ETRN", "ETRN a b", "ETRN -x", "ETRN @gponlab.local", "ETRN #gponlab.local",
        "ETRN gponlab.local", MAIL, "ETRN gponlab.local", "QUIT"))


def test_xclient_and_xforward_are_known_but_refused(lab):
    check(lab, "XCLIENT, XFORWARD (25)", dialogue(
        EHLO, "XCLIENT", "XFORWARD", "XCLIENT NAME=pc", "XFORWARD NAME=pc", MAIL,
        "XCLIENT NAME=pc", "XFORWARD NAME=pc", "QUIT"))
    check(lab, "XCLIENT, XFORWARD before STARTTLS (587)", on("submission", dialogue(
        EHLO, "XCLIENT NAME=pc", "XFORWARD NAME=pc", "QUIT")))


def test_empty_lines_are_not_commands(lab):
    """An empty line is answered (500 bad syntax) but not counted in the
    disconnect line's commands=."""
    check(lab, "empty lines (25)", dialogue("", EHLO, "   ", "QUIT"))


def test_malformed_bdat_is_logged(lab):
    """BDAT without a valid size: 521 and Postfix hangs up, with a warning
    naming the queue file if there is one."""
    check(lab, "BDAT with a bad size, no queue file (25)", dialogue(EHLO, MAIL, "BDAT 1 x"))
    check(lab, "BDAT with a bad size, queue file open (25)", dialogue(EHLO, MAIL, RCPT, "BDAT x"))


# ---------------------------------------------------------------- BDAT

def test_bdat_error_state_until_the_last_chunk(lab):
    """A chunk before any recipient is refused, and smtpd stays in its BDAT
    error state: MAIL/RCPT/DATA refused, chunks discarded up to LAST."""
    check(lab, "BDAT error state (25)", dialogue(
        EHLO, b"BDAT 3\r\nabc", MAIL, RCPT, "DATA", b"BDAT 2\r\nab", b"BDAT 3 LAST\r\nabc",
        MAIL, "QUIT"))


def test_commands_after_a_bdat_chunk(lab):
    check(lab, "commands after a BDAT chunk (25)", dialogue(
        EHLO, MAIL, RCPT, b"BDAT 3\r\nabc", "DATA", "MAIL FROM:<bob@example.org>",
        "RCPT TO:<user1@gponlab.local>", "RSET", "QUIT"))


def test_hanging_up_in_the_message_after_its_headers(lab):
    """A client that hangs up in the middle of its message: cleanup has read
    the whole lines smtpd passed on, and logs the Message-ID of a header it
    has whole (the next line has come) and, once the header block is
    complete, the Message-ID it adds when there is none; with BDAT, only
    chunks read whole reach it. Postfix removes the queue file without a
    ``removed`` line: the scenarios wait for smtpd's ``disconnect``."""
    def hang_up(*data: bytes):
        return dialogue(EHLO, MAIL, RCPT, *data[:-1], ("send", data[-1]))
    gone = dict(until=lambda lines: any("disconnect from" in line for line in lines))
    check(lab, "hang-up in DATA after the header block (25)", hang_up(
        "DATA", b"Subject: a\r\nMessage-ID: <partial@example.org>\r\n\r\nHola\r\nadi"),
        **gone)
    check(lab, "hang-up in DATA after the header block, no Message-ID (25)", hang_up(
        "DATA", b"Subject: a\r\n\r\nHola\r\n"), **gone)
    check(lab, "hang-up in DATA in the header block (25)", hang_up(
        "DATA", b"Message-ID: <partial2@example.org>\r\nSubject: a\r\n"
                b"Message-ID: <partial3@example.org>\r\nSubj"), **gone)
    check(lab, "hang-up after a BDAT chunk (25)", dialogue(
        EHLO, MAIL, RCPT, b"BDAT 44\r\nMessage-ID: <partial4@example.org>\r\n\r\nHola\r\n"),
        **gone)
    check(lab, "hang-up in a BDAT chunk (25)", hang_up(
        b"BDAT 44\r\nMessage-ID: <partial5@example.org>\r\n\r\nHola\r\n",
        b"BDAT 100\r\nSubject: a\r\nMessage-ID: <partial6@example.org>\r\n\r\n"), **gone)


def test_bdat_total_with_bare_line_feeds(lab):
    """'Ok: N bytes queued as' counts the message as CRLF lines: a bare LF
    and the missing end of the last line count as CRLF."""
    check(lab, "BDAT total with bare LF (25)", dialogue(
        EHLO, MAIL, RCPT, b"BDAT 21\r\nSubject: bdat\n\nHola\r\n", b"BDAT 5 LAST\r\nadios",
        "QUIT"), until=lambda lines: any("removed" in line for line in lines))


def test_auth_login_answered_with_a_command(lab):
    """A client that sends RSET where AUTH LOGIN wants the user name: it is
    taken as base64 (a user name with a control character, logged as '?')."""
    check(lab, "AUTH LOGIN answered with RSET (587)", on("submission", dialogue(
        *TLS, "AUTH LOGIN", "RSET", "QUIT")))


def test_non_ascii_addresses_with_and_without_smtputf8(lab):
    """A non-ASCII local part always passes; a non-ASCII domain only when
    the client asked for SMTPUTF8 in MAIL FROM (for the whole transaction)."""
    check(lab, "non-ASCII addresses, SMTPUTF8 (25)", dialogue(
        EHLO, "MAIL FROM:<josé@example.org>", "RSET", "MAIL FROM:<a@ñ.example>", "RSET",
        "MAIL FROM:<a@ñ.example> SMTPUTF8", RCPT, "RCPT TO:<b@ñ.example>", "RSET",
        "VRFY josé", "QUIT"))


# ---------------------------------------------------------------- address literals

def _last_delivery(mbox) -> list[str]:
    """The X-Original-To: and Delivered-To: lines of a mailbox's last message."""
    text = mbox.read_text(errors="replace") if mbox.exists() else ""
    last = text[text.rfind("\nFrom ") + 1:] if "\nFrom " in text else text
    return [line for line in last.split("\n\n", 1)[0].splitlines()
            if line.startswith(("X-Original-To:", "Delivered-To:"))]


def test_an_address_literal_of_the_server_is_a_local_domain(lab):
    """``user@[127.0.0.1]``: with inet_interfaces = all an address literal
    naming one of the server's own addresses is local, like mydestination
    (delivered to the mailbox, or User unknown at RCPT); an IPv4 part with a
    leading 0 is octal (0177 = 127); 127.0.0.2 is no interface address, so
    that one is relayed (permit_mynetworks)."""
    check(lab, "RCPT TO: address literals of the server (25)", dialogue(
        EHLO, MAIL, "RCPT TO:<user2@[127.0.0.1]>", "RCPT TO:<nadie@[127.0.0.1]>",
        "RCPT TO:<user1@[IPv6:::1]>", "RCPT TO:<nadie@[ipv6:0:0:0:0:0:0:0:1]>",
        "RCPT TO:<nadie@[0177.0.0.1]>", "RCPT TO:<nadie@[127.0.0.1].>",
        "RCPT TO:<user2@[127.0.0.2]>", "RCPT TO:<user2@[IPv6:::ffff:127.0.0.1]>",
        "VRFY nadie@[127.0.0.1]", "VRFY user2@[127.0.0.1]",
        "DATA", "Subject: literal\r\n\r\nHola\r\n.", "QUIT"))
    for user in ("user1", "user2"):
        ours = _last_delivery(lab.gponsim.root / "var/mail" / user)
        assert ours and ours == _last_delivery(lab.real.path(f"/var/mail/{user}"))


def test_a_recipient_without_local_part_is_mailer_daemon(lab):
    """``<@gponlab.local>`` (or ``<""@...>``) resolves to MAILER-DAEMON, which
    smtpd never looks up (nor double-bounce): accepted; local(8) finds no
    alias for it and discards it with a warning, qmgr drops double-bounce."""
    check(lab, "RCPT TO: no local part, MAILER-DAEMON, double-bounce (25)", dialogue(
        EHLO, MAIL, "RCPT TO:<@gponlab.local>", 'RCPT TO:<""@localhost>',
        "RCPT TO:<mailer-daemon@gponlab.local>", "RCPT TO:<double-bounce@gponlab.local>",
        "RCPT TO:<@[127.0.0.1]>", "RCPT TO:<@>", "VRFY <@gponlab.local>",
        "DATA", "Subject: nadie\r\n\r\nHola\r\n.", "QUIT"))
    check(lab, "MAIL FROM and RCPT TO: no local part, a remote domain (25)", dialogue(
        EHLO, "MAIL FROM:<@gponlab.local>", "RCPT TO:<@example.org>",
        "DATA", "Subject: nadie\r\n\r\nHola\r\n.", "QUIT"))


def test_bad_address_literals_are_logged_by_trivial_rewrite(lab):
    """A literal that is no address: smtpd's 501 and Illegal address syntax,
    after trivial-rewrite's own warning (resolve_local() parses it to see
    whether it is one of the server's addresses). Octets are read as
    valid_hostname.c reads them ([01.2.3.4] passes); no warning when the
    brackets do not make the whole domain."""
    items = [EHLO]
    for literal in ("[foo]", "[1.2.3]", "[999.1.1.1]", "[IPv6:zz]", "[]", "[IPv6:]", "[::1]",
                    "[0.1.2.3]", "[1.2.3.]", "[IPv6:1:2:3:4:5:6:7:8:9]", "[IPv6:1::2::3]",
                    "[IPv6:12345::1]", "[IPv6::1]", "[IPv6:1:2:]", "[IPv6:1.2.3.4]",
                    "[01.2.3.4]", "[IPv6:1::1.2.3.4]", "[1.2.3.4]x", "[foo].org", "[1.2.3.4"):
        items += [f"MAIL FROM:<a@{literal}>", "RSET"]
    check(lab, "address literals that are no address (25)", dialogue(
        *items, "VRFY a@[foo]", MAIL, "RCPT TO:<b@[1.2.3.4.5]>", "QUIT"))
