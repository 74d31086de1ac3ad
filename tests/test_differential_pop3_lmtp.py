"""Differential tests of POP3 clients the lesson scenarios do not cover:
commands before login, USER/PASS/APOP/AUTH in odd orders, bad arguments,
DELE/RSET, failed commands in a row, against gponsim and Debian's Dovecot 2.3
configured from the same lab profile (see test_differential.py).

The client is poplib, driven command by command (``_shortcmd``/``_longcmd``
and ``_getline`` where Dovecot says one more line): every line either server
sent is compared, and so is mail.log.

Two values depend on the clock's phase, not on the program: the whole
seconds in login-common's ``(... in N secs)``/``(... waited N secs)``
(both ends of the interval are whole seconds, so 1.9 s can read 1 or 2 on
either server); they are read as ``N`` here, and ``whole_secs`` is tested in
tests/test_pop3_unit.py. Scenarios that fail a login use their own client
address (127.0.0.x on 995) so that Dovecot's auth penalty of one does not
delay the next.
"""

from __future__ import annotations

import poplib
import re
import socket

import pytest

import differential as diff
from reallab import available
from test_differential import (HOST, IMAP_CAPABILITIES, edited, figures,  # noqa: F401
                               lab, send_mail, unverified)

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

_SECS = re.compile(r"\b(in|waited) \d+ secs\b")


def check(pair, name: str, script, deliberate=()) -> None:
    replies, log = pair.run(name, script, deliberate)
    for c in (replies, log):
        c.real = [_SECS.sub(r"\1 N secs", line) for line in c.real]
        c.gponsim = [_SECS.sub(r"\1 N secs", line) for line in c.gponsim]
    diff.assert_same(replies, log)


@pytest.fixture(scope="module")
def two_messages(lab):  # noqa: F811 (the imported fixture)
    """user2's INBOX holds two messages on both servers (the same ones)."""
    for ports, read in ((lab.gponsim.ports, lambda: diff.log_since(lab.maillog, 0)),
                        (lab.real.ports, lab.real.maillog)):
        lab.real.settle()
        send_mail(ports)
        send_mail(ports)
        diff.quiet(read, until=lambda lines: sum(line.endswith(": removed")
                                                 for line in lines) >= 2)
    return lab


class SourcePOP3_SSL(diff.RecordingPOP3_SSL):
    """poplib on 995 from a given address of 127/8 (its own auth penalty)."""

    def __init__(self, host, port, source: str, **kw) -> None:
        self.source = source
        super().__init__(host, port, **kw)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))
        return self.context.wrap_socket(sock, server_hostname=self.host)


def ask(client, line: str, multi: bool = False) -> None:
    """Send one command, read its answer (a -ERR is an answer too)."""
    try:
        if multi:
            client._longcmd(line)
        else:
            client._shortcmd(line)
    except poplib.error_proto:
        pass


def hangs_up(client) -> None:
    """The server closed the connection: poplib reads nothing more."""
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        client._getline()
    client.received.append("<closed>")


def session(ports, commands, *, login: bool = True, source: str | None = None,
            quit: bool = True) -> poplib.POP3:
    client = (SourcePOP3_SSL(HOST, ports["pop3s"], source, context=unverified()) if source
              else diff.RecordingPOP3(HOST, ports["pop3"]))
    if login:
        client.user("user2")
        client.pass_("pass")
    for command in commands:
        multi = command.endswith("…")
        ask(client, command.rstrip("…"), multi)
    if quit:
        ask(client, "QUIT")
        client.close()
    return client


# ------------------------------------------------------------ before login

def test_commands_before_login_and_the_third_unknown_one(two_messages):
    """STAT, LIST, RETR are unknown to pop3-login; a valid command in
    between starts the count again; the third in a row is answered, then
    the client is dropped with one more line."""
    def script(ports):
        client = session(ports, ["STAT", "LIST", "CAPA…", "RETR 1", "NOOP"], login=False,
                         quit=False)
        ask(client, "foo bar")
        client._getline()                      # -ERR Too many invalid bad commands.
        hangs_up(client)
        return client.received
    check(two_messages, "POP3 commands before login (110)", script)


def test_user_pass_orders_apop_and_empty_user(two_messages):
    def script(ports):
        client = session(ports, ["PASS pass", "USER user1", "USER user2", "APOP",
                                 "APOP user2 0123456789abcdef0123456789abcdef",
                                 "PASS pass", "CAPA…", "APOP x", "USER", "NOOP"], login=False)
        return client.received
    check(two_messages, "POP3 USER/PASS orders, APOP (110)", script)


def test_empty_user_name_is_refused_by_the_auth_server(two_messages):
    def script(ports):
        return session(ports, ["USER", "PASS pass"], login=False, source="127.0.0.21").received
    check(two_messages, "POP3 USER without a name (995)", script)


def test_user_keeps_its_spaces(two_messages):
    """``USER  user2`` (two spaces): pop3-login keeps the name as typed."""
    def script(ports):
        return session(ports, ["USER  user2", "PASS pass"], login=False,
                       source="127.0.0.23").received
    check(two_messages, "POP3 USER with two spaces (995)", script)


def test_long_lines_before_and_after_login(two_messages):
    """pop3-login takes 1024 bytes after the command name; pop3 a line of
    2046 bytes. Longer: the last word, and the connection is closed."""
    def script(ports):
        first = session(ports, ["NOOP " + "y" * 1024], login=False, quit=False)
        ask(first, "AB " + "y" * 1025)
        hangs_up(first)
        second = session(ports, ["NOOP " + "y" * 2041], quit=False)
        ask(second, "NOOP " + "y" * 2042)
        hangs_up(second)
        return first.received + second.received
    check(two_messages, "POP3 long lines (110)", script)


# ------------------------------------------------------------------- AUTH

def test_auth_unsupported_mechanism(two_messages):
    def script(ports):
        return session(ports, ["AUTH…", "AUTH FOO"], login=False).received
    check(two_messages, "POP3 AUTH FOO (110)", script)


def test_auth_bad_base64_initial_response(two_messages):
    def script(ports):
        return session(ports, ["AUTH PLAIN !!!"], login=False).received
    check(two_messages, "POP3 AUTH PLAIN with bad base64 (110)", script)


def test_auth_cancelled_with_a_star(two_messages):
    def script(ports):
        return session(ports, ["AUTH LOGIN", "*"], login=False).received
    check(two_messages, "POP3 AUTH LOGIN cancelled (110)", script)


def test_auth_cancelled_twice(two_messages):
    def script(ports):
        return session(ports, ["AUTH PLAIN", "*", "AUTH LOGIN", "*"], login=False).received
    check(two_messages, "POP3 AUTH cancelled twice (110)", script)


def test_auth_answer_that_is_not_base64_then_a_login(two_messages):
    def script(ports):
        first = session(ports, ["AUTH PLAIN", "!!!"], login=False)
        second = session(ports, ["AUTH PLAIN", "!!!", "AUTH LOGIN dXNlcjI=", "cGFzcw==",
                                 "STAT"], login=False)
        return first.received + second.received
    check(two_messages, "POP3 AUTH answer not base64 (110)", script)


def test_auth_plain_with_an_empty_initial_response(two_messages):
    """``AUTH PLAIN =``: an empty response, which PLAIN refuses (after the
    failure delay); not a request for a challenge."""
    def script(ports):
        return session(ports, ["AUTH PLAIN ="], login=False, source="127.0.0.22").received
    check(two_messages, "POP3 AUTH PLAIN = (995)", script)


# ---------------------------------------- auth_verbose = yes (the lesson's edit)

def test_auth_verbose_why_the_auth_process_refused(edited):  # noqa: F811
    """The auth process names what its mechanism refused: an empty user
    name, a character outside auth_username_chars, an empty PLAIN response,
    a login as another user (no master passdb), bad base64."""
    def script(ports):
        received = []
        for source, commands in (("127.0.0.51", ["USER", "PASS pass"]),
                                 ("127.0.0.52", ["USER us er", "PASS pass"]),
                                 ("127.0.0.53", ["AUTH PLAIN ="]),
                                 ("127.0.0.54", ["AUTH PLAIN dXNlcjEAdXNlcjIAcGFzcw=="]),
                                 ("127.0.0.55", ["AUTH PLAIN !!!"])):
            received += session(ports, commands, login=False, source=source).received
        return received
    check(edited, "auth_verbose: refused by the mechanism (POP3 995)", script)


def test_auth_verbose_what_pop3_login_refused(edited):  # noqa: F811
    def script(ports):
        return session(ports, ["APOP a b", "AUTH FOO", "APOP a b", "AUTH PLAIN", "*",
                               "AUTH LOGIN", "!!!"], login=False, source="127.0.0.56").received
    check(edited, "auth_verbose: refused by pop3-login (POP3 995)", script)


# ------------------------------------------------------------- logged in

def test_message_numbers_and_sizes_as_dovecot_parses_them(two_messages):
    def script(ports):
        return session(ports, [
            "LIST 1", "LIST 0", "LIST 3", "LIST x", "LIST 1 2", "LIST -1", "LIST  1", "LIST 1 ",
            "LIST 01", "LIST 4294967295", "LIST 4294967296", "LIST 4294967296x", "LIST …",
            "UIDL 0", "UIDL +1", "UIDL 1 2", "UIDL 2", "STAT x",
            "RETR", "RETR 9", "RETR 1 2", "TOP", "TOP 1", "TOP x 1", "TOP 1 x", "TOP 1 -1",
            "TOP 9 1", "TOP 1 1 1", "TOP 1 18446744073709551616", " LIST", "", "LAST", "noop",
            "USER user1", "APOP a b"]).received
    check(two_messages, "POP3 message numbers and sizes (110)", script)


def test_top_beyond_the_body_and_with_no_limit(two_messages):
    """TOP n 0, TOP with more lines than the body has (no extra empty line),
    and TOP n 18446744073709551615, which is RETR (top= counts it)."""
    def script(ports):
        return session(ports, ["TOP 1 0…", "TOP 1 1…", "TOP 2 1000…",
                               "TOP 1 18446744073709551615…"]).received
    check(two_messages, "POP3 TOP (110)", script)


def test_dele_then_the_same_message_and_rset(two_messages):
    """A message marked with DELE is "deleted" for every command; RSET
    undoes it, and QUIT then says no message was deleted."""
    def script(ports):
        return session(ports, ["DELE 1", "RETR 1", "LIST 1", "UIDL 1", "TOP 1 0", "DELE 1",
                               "STAT", "LIST…", "UIDL…", "RSET", "STAT", "DELE 2", "RSET x",
                               "NOOP x"]).received
    check(two_messages, "POP3 DELE and RSET (110)", script)


def test_rset_forgets_what_retr_would_mark_seen(two_messages):
    """RETR, RSET, QUIT: the message stays unread. A second session's TOP
    shows no difference, the flags do: IMAP sees no \\Seen."""
    def script(ports):
        first = session(ports, ["RETR 2…", "RSET"])
        imap = diff.RecordingIMAP4(HOST, ports["imap"])
        imap.login("user2", "pass")
        imap.select("INBOX", readonly=True)
        imap.fetch("2", "(FLAGS)")
        imap.logout()
        return first.received + [line for line in imap.received if "FLAGS (" in line
                                 and line.startswith("* 2 FETCH")]
    check(two_messages, "POP3 RSET after RETR (110)", script, [IMAP_CAPABILITIES])


def test_twenty_one_failed_commands_in_a_row(two_messages):
    """pop3 drops a client at its 21st failed command in a row; a command
    that succeeds starts the count again."""
    def script(ports):
        client = session(ports, ["FOO"] * 19 + ["NOOP"] + ["LIST 9"] * 20, quit=False)
        ask(client, "FOO")
        client._getline()                      # -ERR Too many bad commands.
        hangs_up(client)
        return client.received
    check(two_messages, "POP3 too many bad commands (110)", script)


def test_quit_after_dele_expunges(two_messages):
    """Runs last: it removes a message on both servers."""
    def script(ports):
        return session(ports, ["RETR 1…", "TOP 2 0…", "DELE 2"]).received
    check(two_messages, "POP3 QUIT after DELE (110)", script)


# ------------------------------------------------------------------- LMTP
# Dovecot's LMTP service as the profile's LMTP switch enables it, spoken to
# on its Unix socket. Normalised besides differential.LOG_RULES: the lmtp
# process id, the session ids with their :R<n>/:T<n> suffixes, and the real
# instance's host name (Dovecot's default ``hostname`` is the machine's; the
# lab server's is mail.gponlab.local, what gponsim says).

LMTP_SOCKET = "/var/spool/postfix/private/dovecot-lmtp"
MESSAGE = ["Subject: hola", "Message-ID: <lmtp-diff@pc1>", "", "Hola", "."]


@pytest.fixture(scope="module")
def lmtp_lab(figures):  # noqa: F811 (the imported fixture)
    import shutil

    from gponsim.config import apply_switch, init_config
    from gponsim.config.profile import LMTP_SWITCH
    from test_differential import Pair, _new_base

    base = _new_base()
    profile = base / "profile"
    init_config(profile)
    apply_switch(profile, LMTP_SWITCH)
    pair = Pair(base, profile).start()
    yield pair
    pair.stop()
    shutil.rmtree(base, ignore_errors=True)


class LmtpClient:
    """A scripted LMTP client on a Unix socket, keeping every line it read."""

    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.received: list[str] = []
        self.read()

    def read(self, replies: int = 1) -> None:
        for _ in range(replies):
            while True:
                line = self.file.readline().decode("utf-8", "replace").rstrip("\r\n")
                self.received.append(line)
                if len(line) < 4 or line[3] != "-":
                    break

    def send(self, line: str, replies: int = 1) -> None:
        self.sock.sendall(line.encode() + b"\r\n")
        self.read(replies)

    def starttls(self) -> None:
        self.send("STARTTLS")
        self.file.close()
        self.sock = unverified().wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


_LMTP_IDS = [(re.compile(r"lmtp\(\d+\)"), "lmtp(PID)"),
             (re.compile(r"lmtp\((\w+)\)<(?:\d+|PID\d+)><(?:[A-Za-z0-9+/]{22}|S)"), r"lmtp(\1)<PID><S"),
             (re.compile(r"(2\.0\.0 <[^>]*> )[A-Za-z0-9+/]{22}"), r"\1SID")]


def check_lmtp(pair, name: str, script) -> None:
    def run(ports):
        side = pair.gponsim.root if ports is pair.gponsim.ports else pair.real.root
        return script(side / LMTP_SOCKET.lstrip("/"))
    replies, log = pair.run(name, run)
    greeting = re.match(r"220 (\S+) ", replies.real[0]) if replies.real else None
    for c in (replies, log):
        if greeting:
            c.real = [re.sub(rf"(?<=^220 |^250-){re.escape(greeting.group(1))}$|"
                             rf"(?<=^220 ){re.escape(greeting.group(1))}(?= )",
                             "mail.gponlab.local", line) for line in c.real]
        for pattern, replacement in _LMTP_IDS:
            c.real = [pattern.sub(replacement, line) for line in c.real]
            c.gponsim = [pattern.sub(replacement, line) for line in c.gponsim]
    diff.assert_same(replies, log)


def test_lmtp_vrfy_and_a_client_that_never_says_lhlo(lmtp_lab):
    """VRFY's parameter is checked; without LHLO (or MAIL, RSET) the
    connection's state is still GREETING when it ends."""
    def script(path):
        client = LmtpClient(path)
        for line in ("VRFY", "VRFY user2", "VRFY a b", "NOOP", "HELO x", "QUIT"):
            client.send(line)
        client.close()
        return client.received
    check_lmtp(lmtp_lab, "LMTP VRFY, no LHLO", script)


def test_lmtp_lhlo_offers_starttls_and_delivery_under_tls(lmtp_lab):
    """Dovecot has a certificate (ssl = yes): LHLO offers STARTTLS, and
    after the handshake it does not, and a second STARTTLS is refused."""
    def script(path):
        client = LmtpClient(path)
        client.send("LHLO pc1")
        client.starttls()
        client.send("LHLO pc1")
        client.send("STARTTLS")
        client.send("MAIL FROM:<user1@gponlab.local>")
        client.send("RCPT TO:<user2@gponlab.local>")
        client.send("DATA")
        for line in MESSAGE[:-1]:
            client.sock.sendall(line.encode() + b"\r\n")
        client.send(MESSAGE[-1])
        client.send("QUIT")
        client.close()
        return client.received
    check_lmtp(lmtp_lab, "LMTP STARTTLS", script)


def test_lmtp_recipients_rset_and_one_reply_each(lmtp_lab):
    def script(path):
        client = LmtpClient(path)
        for line in ("LHLO pc1", "RCPT TO:<user2@gponlab.local>", "MAIL FROM:<>",
                     "RCPT TO:<user2@gponlab.local>", "RCPT TO:<nadie@gponlab.local>",
                     "RCPT TO:<User1@Other.Org>", "RCPT TO:<user2+x@gponlab.local>", "DATA"):
            client.send(line)
        for line in MESSAGE[:-1]:
            client.sock.sendall(line.encode() + b"\r\n")
        client.send(MESSAGE[-1], replies=3)
        for line in ("MAIL FROM:<user1@gponlab.local>", "RCPT TO:<user1@gponlab.local>",
                     "RSET", "DATA", "QUIT"):
            client.send(line)
        client.close()
        return client.received
    check_lmtp(lmtp_lab, "LMTP several recipients, RSET", script)


def test_lmtp_client_hanging_up_in_data(lmtp_lab):
    def script(path):
        client = LmtpClient(path)
        for line in ("LHLO pc1", "MAIL FROM:<a@b>", "RCPT TO:<user2@gponlab.local>", "DATA"):
            client.send(line)
        client.sock.sendall(b"Subject: sin terminar\r\n")
        client.close()
        return client.received
    check_lmtp(lmtp_lab, "LMTP hang-up in DATA", script)


# ------------------------------------------------------------------ TLS

def _raw(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), 10)
    sock.settimeout(10)
    return sock


def _lines(sock, until: bytes) -> list[str]:
    """What the server sends up to a line starting with ``until``, or its hang-up."""
    data = b""
    while not any(line.startswith(until) for line in data.split(b"\r\n")[:-1]):
        try:
            chunk = sock.recv(4096)
        except OSError:
            chunk = b""
        if not chunk:
            return data.decode("utf-8", "replace").split("\r\n")[:-1] + ["<closed>"]
        data += chunk
    return data.decode("utf-8", "replace").split("\r\n")[:-1]


#: see test_differential_imap_edges.SECOND_ATTEMPT
SECOND_ATTEMPT = diff.Deliberate(
    "second handshake attempt", "Dovecot's race between its streams (docs/fidelity.md)",
    rewrite=((r"SSL_accept\(\) syscall failed: Invalid argument",
              "SSL_accept() failed: error:0A00010B:SSL routines::wrong version number"),))


def test_a_line_in_clear_after_stls(two_messages):
    """OpenSSL refuses a record that is not TLS (wrong version number):
    pop3-login's line gives the error, as the reason and as the TLS state."""
    def script(ports):
        sock = _raw(ports["pop3"])
        received = _lines(sock, b"+OK")
        sock.sendall(b"STLS\r\n")
        received += _lines(sock, b"+OK")
        sock.sendall(b"NOOP\r\n")
        received += _lines(sock, b"\0")           # (only its hang-up)
        sock.close()
        return received
    check(two_messages, "POP3 a line in clear after STLS", script, [SECOND_ATTEMPT])


def test_tls_clients_hanging_up_without_close_notify(two_messages):
    """A client on TLS (STLS on 110, and 995) that closes its socket before
    logging in, without QUIT and without TLS's close_notify: ssl-iostream's
    last error is the closed connection, and the line's TLS state says it."""
    def script(ports):
        received = []
        for port, stls in ((ports["pop3"], True), (ports["pop3s"], False)):
            sock = _raw(port)
            if stls:
                received += _lines(sock, b"+OK")
                sock.sendall(b"STLS\r\n")
                received += _lines(sock, b"+OK")
            tls = unverified().wrap_socket(sock, server_hostname=HOST)
            if not stls:
                received += _lines(tls, b"+OK")
            tls.sendall(b"CAPA\r\n")
            received += _lines(tls, b".")
            tls.close()               # (not unwrap(): no close_notify)
        return received
    check(two_messages, "POP3 TLS hang-up without close_notify", script)
