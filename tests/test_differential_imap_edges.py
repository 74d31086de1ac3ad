"""Differential tests of IMAP edge cases: what a client typing by hand (or a
buggy one) sends, against gponsim and Debian's Dovecot 2.3 from the same lab
profile (:mod:`test_differential` starts both and compares).

The client is a raw TLS socket on 993: each line is sent as it is, and the
server's lines are read up to the tagged reply of that line's tag (or until
the server is quiet, for a line that gets no tagged reply). Both servers get
the same lines in the same order, so their mailboxes stay alike.
"""

from __future__ import annotations

import re
import socket
import ssl
import time

import pytest

from test_differential import (  # noqa: F401  (fixtures)
    HOST, IMAP_CAPABILITIES, check, figures, lab, mail_for_user2, unverified,
)
from differential import Deliberate
from labproc import wait_until
from reallab import available

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

LOGIN = "a0 LOGIN user2 pass"


class RawSession:
    """A TLS socket to port 993 that records every line the server sends."""

    def __init__(self, port: int, tls: bool = True, source: str | None = None) -> None:
        raw = socket.create_connection((HOST, port), 10,
                                       source_address=(source, 0) if source else None)
        self.sock = unverified().wrap_socket(raw, server_hostname=HOST) if tls else raw
        self.buffer = b""
        self.received: list[str] = []
        self.closed = False
        self._continued: bytes | None = None    # the tag of a command a {n} literal goes on
        self._read(lambda line: line.startswith(b"* OK"), 10)

    def _read(self, done, timeout: float, quiet: float | None = None) -> None:
        """Lines until ``done(line)`` holds for one of them, or (``quiet``)
        until the server has said nothing for that long, or the connection ends."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        self.sock.settimeout(0.05)
        while time.monotonic() < deadline and not self.closed:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                data = None
            except (OSError, ssl.SSLError):
                data = b""
            if data == b"":
                self.closed = True
            elif data:
                self.buffer += data
                last = time.monotonic()
            *lines, self.buffer = self.buffer.split(b"\r\n")
            self.received += [line.decode("utf-8", "replace") for line in lines]
            if done is not None and any(done(line) for line in lines):
                return
            if quiet is not None and time.monotonic() - last >= quiet:
                return

    def send(self, line: str, wait_tag: bool = True) -> None:
        """One line; after a line ending in a {n} literal, or an AUTHENTICATE
        without an initial response, that the server answered with '+ ', the
        next line is that literal and the rest of the command, or the SASL
        response (its reply is the command's)."""
        data = line.encode() + b"\r\n"
        self.sock.sendall(data)
        tag = self._continued or line.split(" ", 1)[0].encode()
        self._continued = None
        if wait_tag and tag and tag not in (b"*", b"+"):
            literal = re.search(r"\{\d+\}$", line) is not None \
                or re.fullmatch(r"\S+ AUTHENTICATE \S+", line, re.I) is not None
            seen = len(self.received)
            # its tagged reply, or the untagged one that answers an invalid
            # tag, or the '+ ' that asks for a literal or a SASL response
            self._read(lambda got: got.startswith((tag + b" ", b"* BAD ", b"* BYE Too many"))
                       or (literal and got.startswith(b"+ ")), 15)
            if literal and any(got.startswith("+ ") for got in self.received[seen:]):
                self._continued = tag
                return
            if "\r\n" in line:
                self._read(None, 5, quiet=0.5)      # (the replies to pipelined commands)
        else:
            self._read(None, 5, quiet=0.5)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _next_second() -> None:
    """Until the clock's next whole second has just begun (at most a second)."""
    start = int(time.time())
    wait_until(lambda: int(time.time()) != start, 2.0, "the clock's next second")


def session(*lines, wait_tag: bool = True, after_bye: tuple = (), plain_from: str | None = None):
    """A script: the lines, each sent after the previous one's reply; then
    ``after_bye``, sent whether or not the server has closed (a client that
    does not notice), without reading. ``plain_from``: on port 143 without
    TLS, from that address instead (another computer: not secured)."""
    def script(ports) -> list[str]:
        # login-common's 'in N secs' subtracts whole seconds of the clock:
        # both servers' sessions start just after a second begins
        _next_second()
        if plain_from:
            s = RawSession(ports["imap"], tls=False, source=plain_from)
        else:
            s = RawSession(ports["imaps"])
        try:
            for line in lines:
                if s.closed:
                    break
                s.send(line, wait_tag)
            for line in after_bye:
                try:
                    s.sock.sendall(line.encode() + b"\r\n")
                except OSError:
                    break
                s._read(None, 2, quiet=0.3)     # the server's close (or any answer it gives)
        finally:
            s.close()
        return s.received
    return script


def test_mailbox_management_replies(mail_for_user2):
    """CREATE, RENAME, SUBSCRIBE, DELETE: the NO texts of Dovecot's mbox
    storage (a folder is a file and holds no others; INBOX is /var/mail/user2,
    which the user cannot rename; a mailbox that is not there cannot be
    subscribed to)."""
    check(mail_for_user2, "IMAP edges: CREATE/RENAME/SUBSCRIBE/DELETE refusals", session(
        LOGIN, "b1 CREATE Edge1", "b2 CREATE Edge1/Sub", "b3 SUBSCRIBE Nope", "b4 UNSUBSCRIBE Nope",
        "b5 DELETE INBOX", "b6 RENAME INBOX Old", "b7 RENAME Edge1 INBOX", "b8 DELETE Edge1",
        "z LOGOUT"), [IMAP_CAPABILITIES])


def test_status_and_enable_arguments(mail_for_user2):
    """STATUS with an empty or unknown item list; ENABLE of what is not
    enabled (no untagged ENABLED), and ENABLE with a string."""
    check(mail_for_user2, "IMAP edges: STATUS items, ENABLE", session(
        LOGIN, "b1 STATUS INBOX ()", "b2 STATUS INBOX (FOO)", "b3 STATUS INBOX (messages)",
        "b4 ENABLE UTF8=ACCEPT", "b5 ENABLE FOO BAR", 'b6 ENABLE "FOO"', "b7 ENABLE (FOO)",
        "z LOGOUT"), [IMAP_CAPABILITIES])


def test_search_with_an_unknown_charset(mail_for_user2):
    check(mail_for_user2, "IMAP edges: SEARCH/SORT CHARSET unknown", session(
        LOGIN, "b1 EXAMINE INBOX", "b2 SEARCH CHARSET X-NONE ALL", "b3 SORT (DATE) X-NONE ALL",
        "b4 SEARCH CHARSET UTF-8 ALL", "z LOGOUT"), [IMAP_CAPABILITIES])


def test_examined_mailbox_expunge_store_and_move(mail_for_user2):
    """In an EXAMINEd mailbox Dovecot answers EXPUNGE and STORE with OK and
    changes nothing, refuses \\Recent and unknown system flags, and lets MOVE
    through (cmd-copy.c checks no read-only state): the message goes to Trash,
    counted as trashed= on the logout line. FETCH of MIME headers and BINARY
    count as body fetches there. The message is moved back at the end."""
    check(mail_for_user2, "IMAP edges: EXAMINE, then EXPUNGE, STORE, FETCH, MOVE", session(
        LOGIN, "b0 CREATE Trash", "b1 EXAMINE INBOX", "b2 EXPUNGE", "b3 STORE 1 +FLAGS (\\Seen)",
        "b4 UID STORE 1 FLAGS.SILENT (\\Deleted)", "b5 UID EXPUNGE 1",
        "b6 STORE 1 FLAGS (\\Recent)", "b7 STORE 1 +FLAGS (\\Foo)",
        "b8 FETCH 1 (BODY.PEEK[1.MIME] BINARY.PEEK[1] BINARY.SIZE[1])",
        "b9 FETCH 1", "c1 FETCH 1 BODY.PEEK[HEADER.FIELDS ()]",
        "c2 MOVE 1 Trash", "c3 SELECT Trash", "c4 MOVE 1 INBOX", "z LOGOUT"),
        [IMAP_CAPABILITIES])


def test_appended_and_copied_messages_are_recent(mail_for_user2):
    """APPEND and COPY make new messages in the destination: \\Recent for the
    session that selects it next (here the one that has it selected)."""
    check(mail_for_user2, "IMAP edges: \\Recent after APPEND and COPY", session(
        LOGIN, "b0 CREATE Reciente", "b1 SELECT Reciente",
        "b2 APPEND Reciente {18+}\r\nSubject: y\r\n\r\nhola", "b3 COPY 1 Reciente",
        "b4 FETCH 1:* (UID FLAGS)", "b5 UNSELECT",
        "b6 APPEND Reciente (\\Seen) {18+}\r\nSubject: z\r\n\r\nhola", "b7 EXAMINE Reciente",
        "b8 FETCH 1:* (FLAGS)", "b9 UNSELECT", "c1 DELETE Reciente", "z LOGOUT"),
        [IMAP_CAPABILITIES])


def test_syntax_errors_before_login(mail_for_user2):
    """imap-login never echoes an invalid tag (``*`` instead), counts it as an
    invalid command, answers a parser error (an unclosed quote) in the
    parser's own words without counting it, and takes escaped quotes; a
    CAPABILITY with arguments is still answered. Each client gets its own
    connection: the third invalid command ends one."""
    lab = mail_for_user2
    for name, lines in (
            ("leading space, '*' tag", (" NOOP", "* NOOP", "z LOGOUT")),
            ("tab, two spaces", ("a\tNOOP", "a  NOOP", "z LOGOUT")),
            ("']' and '/' in a tag", ("a] NOOP", "a/ NOOP", "z LOGOUT")),
            ("LOGIN quoting", ('a LOGIN "us\\"er" pass', "b LOGIN (user2) pass",
                               'c LOGIN "user2" "pass', "d CAPABILITY now", "z LOGOUT"))):
        check(lab, f"IMAP edges before login: {name}", session(*lines), [IMAP_CAPABILITIES])


def test_syntax_errors_after_login(mail_for_user2):
    """The imap process: 'Invalid tag' (untagged, with the timing) for an
    empty or invalid tag, 'Invalid command name' for a tag alone; arguments
    after the last one a command reads are ignored; a list where a mailbox
    name goes is 'Invalid arguments' (SELECT closes the selected mailbox
    first); quoted names take backslash escapes."""
    check(mail_for_user2, "IMAP edges after login: tags, extra and bad arguments", session(
        LOGIN, " NOOP", "* NOOP", "", "a1", "a\tNOOP", "a] NOOP", "a} NOOP",
        "b1 CREATE Tx extra", "b2 SUBSCRIBE Tx extra", "b3 UNSUBSCRIBE Tx extra",
        "b4 RENAME Tx Ty extra", "b5 STATUS Ty (MESSAGES) extra", "b6 DELETE Ty extra",
        "b7 EXAMINE INBOX extra", "b8 CHECK extra", "b9 CAPABILITY extra", "c1 CLOSE extra",
        'c2 CREATE "a\\"b"', 'c3 SELECT "a\\"b"', 'c4 SELECT "INBOX', "c5 SELECT (INBOX)",
        "c6 RENAME (a) b", 'c7 DELETE "a\\"b"', 'c8 LSUB "" * extra', "c9 LOGOUT extra"),
        [IMAP_CAPABILITIES])


#: The BYE line's byte count: the capability list Dovecot announces is longer.
DELETED_OUT = Deliberate(
    "imap-extensions-not-implemented", IMAP_CAPABILITIES.reason,
    both=((r"(have to disconnect\. in=\d+ out=)\d+", r"\1N"),))


def test_deleting_the_selected_mailbox_ends_the_session(mail_for_user2):
    check(mail_for_user2, "IMAP edges: DELETE of the selected mailbox", session(
        LOGIN, "b1 CREATE Borrar", "b2 SELECT Borrar", "b3 DELETE Borrar", "z LOGOUT"),
        [IMAP_CAPABILITIES, DELETED_OUT])


def test_append_to_a_missing_mailbox_is_refused_before_the_literal(mail_for_user2):
    """cmd-append.c opens the mailbox first: NO [TRYCREATE] instead of '+ OK'
    (the message then reaches the server as lines: commands it refuses); a
    LITERAL+ message, already sent, is read and dropped."""
    check(mail_for_user2, "IMAP edges: APPEND to a missing mailbox", session(
        LOGIN, "b1 APPEND Nope {18}", "Subject: y", "", "hola",
        "b2 APPEND Nope {18+}\r\nSubject: y\r\n\r\nhola", "b3 NOOP", "z LOGOUT"),
        [IMAP_CAPABILITIES])


def test_unsupported_mechanism_and_lines_after_the_bye(mail_for_user2):
    """AUTHENTICATE with a mechanism the server does not offer: an ALERT, and
    the disconnect line names it. Then three invalid commands end the
    session; lines the client sends after the BYE are not read (nor logged
    again)."""
    lab = mail_for_user2
    check(lab, "IMAP edges before login: AUTHENTICATE CRAM-MD5", session(
        "a AUTHENTICATE CRAM-MD5", "z LOGOUT"), [IMAP_CAPABILITIES])
    check(lab, "IMAP edges before login: lines after the BYE", session(
        "a FOO", "b BAR", "c BAZ", after_bye=("d QUX", "e NOOP")), [IMAP_CAPABILITIES])


def test_store_of_new_keywords_and_flag_order(mail_for_user2):
    """A STORE that brings keywords new to the mailbox makes Dovecot send the
    new FLAGS and PERMANENTFLAGS first; in a flag list \\Recent comes after
    the system flags and before the keywords. BODY[1.HEADER] and [1.TEXT] of
    a part that is not message/rfc822 are empty. The flags are put back."""
    check(mail_for_user2, "IMAP edges: STORE keywords, flag order, part HEADER/TEXT", session(
        LOGIN, "b1 SELECT INBOX", "b2 STORE 1 +FLAGS (\\Flagged foo $Label1)",
        "b3 STORE 1 -FLAGS.SILENT (foo)", "b4 FETCH 1 FLAGS", "b5 STORE 1 FLAGS (bar)",
        "b6 UID STORE 1 +FLAGS (baz)", "b7 FETCH 1 (BODY.PEEK[1.HEADER] BODY.PEEK[1.TEXT])",
        "b8 STORE 1 FLAGS ()", "z LOGOUT"), [IMAP_CAPABILITIES])


def test_list_extended_options_and_children(mail_for_user2):
    """Unknown LIST-EXTENDED options, a missing pattern; \\HasChildren only
    for a plain LIST or RETURN (CHILDREN) (a list of patterns is extended
    syntax); SEARCH CHARSET without a charset."""
    check(mail_for_user2, "IMAP edges: LIST-EXTENDED options and children", session(
        LOGIN, "b1 CREATE Dir/", "b2 CREATE Dir/Sub", 'b3 LIST (FOO) "" *',
        'b4 LIST "" * RETURN (FOO)', 'b5 LIST ""', 'b6 LIST "" Dir', 'b7 LIST "" (Dir INBOX)',
        'b8 LIST "" Dir RETURN (STATUS (MESSAGES))', 'b9 LIST "" Dir RETURN (CHILDREN)',
        "c1 EXAMINE INBOX", "c2 SEARCH CHARSET", "c3 DELETE Dir/Sub", "c4 DELETE Dir",
        "z LOGOUT"), [IMAP_CAPABILITIES])


def test_authenticate_in_clear_invalid_base64_and_pipelined_logout(mail_for_user2):
    """AUTHENTICATE on 143 without TLS from another computer: sasl-server.c's
    'Plaintext authentication disabled.', and the disconnect line says the
    client tried. On 993: an answer that is not base64 is login-common's
    ALERT; a LOGOUT sent right behind LOGIN counts in the imap process's in=."""
    lab = mail_for_user2
    check(lab, "IMAP edges: AUTHENTICATE in clear (143, another computer)", session(
        "a AUTHENTICATE PLAIN AHVzZXIyAHBhc3M=", "b NOOP", plain_from="127.0.0.2"),
        [IMAP_CAPABILITIES])
    check(lab, "IMAP edges: invalid base64, LOGOUT pipelined after LOGIN", session(
        "a AUTHENTICATE PLAIN", "!!!", "b LOGIN user2 pass\r\nz LOGOUT"), [IMAP_CAPABILITIES])


def test_an_empty_initial_response_is_a_failed_attempt(mail_for_user2):
    """AUTHENTICATE PLAIN = (SASL-IR's empty response): the auth server gets
    it as an empty response and PLAIN refuses it, with no '+ ' asking for
    credentials; the disconnect line counts the attempt."""
    check(mail_for_user2, "IMAP edges: AUTHENTICATE PLAIN =", session(
        "a AUTHENTICATE PLAIN =", "z LOGOUT"), [IMAP_CAPABILITIES])


def test_search_registers_the_keywords_it_names(mail_for_user2):
    """A keyword SEARCH, SORT or THREAD names that the mailbox does not have
    (in any case) becomes one of its keywords: the new FLAGS and
    PERMANENTFLAGS come after the results, before the tagged OK, or before
    the FLAGS of a FETCH run alongside; a backslash or a space makes no
    keyword, nor do KEYWORD k and UNKEYWORD k side by side. EXAMINEd, the
    keyword stays in this session's index until a read-write SELECT. The
    mailbox is a new one with a message \\Recent at the SELECT, whose file
    Dovecot rewrites then (mbox_lazy_writes), keywords included: the next
    session lists them (docs/fidelity.md: not so when it has nothing to rewrite)."""
    lab = mail_for_user2
    check(lab, "IMAP edges: a mailbox for SEARCH KEYWORD", session(
        LOGIN, "b1 CREATE Claves", "b2 APPEND Claves {18+}\r\nSubject: y\r\n\r\nhola",
        "z LOGOUT"), [IMAP_CAPABILITIES])
    check(lab, "IMAP edges: SEARCH KEYWORD registers the keyword", session(
        LOGIN, "b1 SELECT Claves", "b2 SEARCH KEYWORD Buscada", "b3 SEARCH KEYWORD BUSCADA",
        "b4 UID SEARCH OR KEYWORD kw1 NOT KEYWORD kw2", "b5 SEARCH KEYWORD kw3 UNKEYWORD kw3",
        "b6 SEARCH OR KEYWORD kw4 UNKEYWORD kw4", "b7 SEARCH KEYWORD \\Seen",
        'b8 SEARCH KEYWORD "a b"', "b9 SORT (DATE) UTF-8 KEYWORD kw5",
        "c1 THREAD REFS UTF-8 KEYWORD kw6", "c2 SEARCH RETURN (COUNT) UNKEYWORD kw7",
        "c3 SEARCH KEYWORD kw8\r\nc4 SEARCH KEYWORD kw9\r\nc5 FETCH 1 FLAGS",
        "c6 EXAMINE Claves", "c7 SEARCH KEYWORD soloLectura", "c8 EXAMINE Claves",
        "c9 SELECT Claves", "z LOGOUT"), [IMAP_CAPABILITIES])
    check(lab, "IMAP edges: the next session lists the keywords", session(
        LOGIN, "b1 EXAMINE Claves", "b2 UNSELECT", "b3 DELETE Claves", "z LOGOUT"),
        [IMAP_CAPABILITIES])


def test_fetch_modifiers(mail_for_user2):
    """cmd-fetch.c: after the items, a list of modifiers or nothing; an
    unknown modifier, VANISHED without QRESYNC, a CHANGEDSINCE without a
    valid value, and a list or string among them are refused in Dovecot's
    words, after the message set is checked; an empty list is nothing. (A
    valid CHANGEDSINCE would make Dovecot enable CONDSTORE, which gponsim
    does not implement, and keep modseqs for the mailbox: docs/fidelity.md.)"""
    check(mail_for_user2, "IMAP edges: FETCH modifiers", session(
        LOGIN, "b1 EXAMINE INBOX", "b2 FETCH 1 (UID) (x)", "b3 FETCH 1 UID (VANISHED)",
        "b4 UID FETCH 1 (UID) (VANISHED)", "b5 FETCH 1 (UID) ((x))", 'b6 FETCH 1 (UID) ("x")',
        "b7 FETCH 1 (UID) (x) y", "b8 FETCH 1 (UID) () y", "b9 FETCH 1 (UID) x",
        "c1 FETCH 99 (UID) (x)", "c2 FETCH 1 (FOO) (x)", "c3 FETCH 1 (UID) (CHANGEDSINCE x)",
        "c4 FETCH 1 (UID) (CHANGEDSINCE)", "c5 FETCH 1 (UID) (changedsince -1)",
        "c6 FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)] (x)", "c7 FETCH 1 (UID) (x",
        "z LOGOUT"), [IMAP_CAPABILITIES])


def test_append_literals_and_the_bytes_in(mail_for_user2):
    """APPEND with {n} (the '+ OK' asked for) and {n+} literals, MULTIAPPEND
    of both kinds and a mailbox name sent as a literal: the logout line's
    in= counts each byte the client sent once, but for LOGOUT's CRLF."""
    check(mail_for_user2, "IMAP edges: APPEND literals, in= after them", session(
        LOGIN, "b0 CREATE Cuenta", "b1 APPEND Cuenta {18}", "Subject: a\r\n\r\nhola",
        "b2 APPEND Cuenta (\\Seen) {18+}\r\nSubject: b\r\n\r\nhola",
        "b3 APPEND Cuenta {18+}\r\nSubject: c\r\n\r\nhola"
        " (\\Flagged) {18+}\r\nSubject: d\r\n\r\nhola",
        "b4 APPEND Cuenta {18}", "Subject: e\r\n\r\nhola {18}", "Subject: f\r\n\r\nhola",
        "b5 APPEND {6+}\r\nCuenta {18+}\r\nSubject: g\r\n\r\nhola", "b6 STATUS Cuenta (MESSAGES)",
        "b7 DELETE Cuenta", "z LOGOUT"), [IMAP_CAPABILITIES])


def test_new_mailboxes_of_one_second_get_distinct_uidvalidities(mail_for_user2):
    """A mailbox gets its UIDVALIDITY when first synced empty (SELECT, STATUS,
    APPEND; not CREATE), the next of the user's counter
    (~/mail/.imap/dovecot-uidvalidity, mailbox-uidvalidity.c): mailboxes
    created and selected in one pipeline, within one second, get distinct
    values, and one deleted and created again a new one. (The replies'
    values are numbered in order of appearance: equal ones get one number.)"""
    check(mail_for_user2, "IMAP edges: UIDVALIDITY of new mailboxes in one second", session(
        LOGIN, "b1 CREATE Uno\r\nb2 CREATE Dos\r\nb3 SELECT Uno\r\nb4 SELECT Dos"
        "\r\nb5 STATUS Uno (UIDVALIDITY)\r\nb6 CREATE Tres"
        "\r\nb7 APPEND Tres {18+}\r\nSubject: y\r\n\r\nhola", "b8 STATUS Tres (UIDVALIDITY)",
        "c1 DELETE Uno\r\nc2 CREATE Uno\r\nc3 SELECT Uno\r\nc4 STATUS Dos (UIDVALIDITY)",
        "c5 UNSELECT", "c6 DELETE Uno", "c7 DELETE Dos", "c8 DELETE Tres", "z LOGOUT"),
        [IMAP_CAPABILITIES])


#: Dovecot's ssl-iostream may try a handshake that failed once more, from its
#: other stream: OpenSSL's error queue is empty then and errno is still the
#: EINVAL the first failure set, so that attempt's text is "syscall failed:
#: Invalid argument". Which of the two the line shows (the reason, the TLS
#: state, or both) depends on the order the streams meet the failure, not
#: on the client; gponsim always gives OpenSSL's error.
SECOND_ATTEMPT = Deliberate(
    "second handshake attempt", "Dovecot's race between its streams (docs/fidelity.md)",
    rewrite=((r"SSL_accept\(\) syscall failed: Invalid argument",
              "SSL_accept() failed: error:0A00010B:SSL routines::wrong version number"),))


def _starttls_then_clear(ports) -> list[str]:
    """STARTTLS on 143, then a line in clear where the ClientHello should be."""
    _next_second()
    s = RawSession(ports["imap"], tls=False)
    try:
        s.send("a STARTTLS")
        s.sock.sendall(b"b NOOP\r\n")
        s._read(None, 10)               # until the server hangs up
    finally:
        s.close()
    return s.received + (["<closed>"] if s.closed else [])


def test_a_failed_starttls_handshake_is_logged_with_its_error(mail_for_user2):
    """A client that sends a line in clear after STARTTLS's OK: OpenSSL
    refuses the record (wrong version number) and imap-login's line says so,
    twice (the reason, and the TLS state that ends the line)."""
    check(mail_for_user2, "IMAP edges: a line in clear after STARTTLS",
          _starttls_then_clear, [IMAP_CAPABILITIES, SECOND_ATTEMPT])
