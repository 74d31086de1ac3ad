"""Dovecot's IMAP (ports 143 and 993) on Twisted's IMAP4Server.

Twisted's :class:`~twisted.mail.imap4.IMAP4Server` gives us the line and
literal machinery, the command dispatch (``<state>_<COMMAND>`` tuples of a
handler and argument parsers) and its argument parsers; this subclass
answers like Dovecot 2.3 on Debian (lab-facts §4.1) on the user's mail store,
through the mailbox interface (:mod:`gponsim.server.mailstore.interface`; the
format, mbox in the lab, comes from ``mail_location``):

- the greeting and capability lists before and after login, LOGINDISABLED
  and Dovecot's refusal texts before TLS (``disable_plaintext_auth``; a
  client whose address is the server's counts as secured), STARTTLS, 993;
- LOGIN and AUTHENTICATE PLAIN/LOGIN (with SASL-IR) through the lab's
  Dovecot auth socket (``service=imap``);
- what Twisted lacks (lab-facts §8): ID, ENABLE, IDLE ended only by DONE with
  new mail pushed while idling, UIDPLUS, MOVE, UNSELECT, LIST-EXTENDED with
  SPECIAL-USE and CHILDREN, LITERAL+, and partial FETCH answered as
  ``BODY[]<origin>``; FETCH, STORE, SEARCH, COPY are answered here from the
  store, with Twisted's ENVELOPE/BODYSTRUCTURE builders;
- Dovecot's log lines (``imap-login: Login: user=<...>``, ``imap(user): Logged out``).

Every byte in and out goes through :class:`gponsim.wire.imap.ImapConversation`,
which turns it into Steps.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.policy
import email.utils
import io
import os
import re
import secrets
import socket
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet import defer, interfaces
from twisted.mail import imap4
from twisted.python import log as twlog
from zope.interface import implementer

from gponsim.server.mailstore.interface import (
    DELETED, RECENT, SEEN, SYSTEM_FLAGS, Folder, MailStore, Message, StoreError, split_flags,
)
from gponsim.server.mailstore.location import DEFAULT_LOCATION, MailLocation, open_store
from gponsim.server.dovecot import imap_sort
from gponsim.server.dovecot.imap_bodystructure import bodystructure
from gponsim.server.dovecot.imap_match import mailbox_pattern
from gponsim.server.dovecot.imap_preview import imap_string, preview
from gponsim.server.dovecot.imap_search import Context as SearchContext, compile_search
from gponsim.server.dovecot.login import UNAUTHENTICATED_LOGOUT, next_mpid, LoginCommon, LoginFactory
from gponsim.server.dovecot.mailwork import ImapMailWork
from gponsim.server.mailstore.worker import call_in_reactor, in_worker
from gponsim.server.postfix.xsasl import AuthUnavailable, valid_base64
from gponsim.steps import new_session, null_emit
from gponsim.wire import smtp as smtp_wire
from gponsim.wire.imap import ImapConversation

PRE_LOGIN_CAPS = ["IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "LITERAL+"]
#: Dovecot 2.3's post-login list without what gponsim does not implement:
#: THREAD=REFS (Dovecot's own algorithm), URL-PARTIAL and CATENATE (URLAUTH),
#: CONDSTORE and QRESYNC (modification sequences), ESORT, SEARCHRES and
#: CONTEXT=SEARCH (search results kept or updated on the server), SNIPPET=FUZZY,
#: PREVIEW=FUZZY, PREVIEW, SAVEDATE and NOTIFY (docs/imap.md says why).
POST_LOGIN_CAPS = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND UNSELECT CHILDREN NAMESPACE UIDPLUS "
    "LIST-EXTENDED I18NLEVEL=1 ESEARCH ESORT SEARCHRES WITHIN LIST-STATUS BINARY MOVE "
    "SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+").split()
FLAGS_LIST = r"\Answered \Flagged \Deleted \Seen \Draft"
#: FETCH items Dovecot answers first, whatever the order asked (Twisted's names).
_BUFFERED_ITEMS = frozenset({"uid", "flags", "internaldate", "rfc822size"})
#: The commands whose NO may say [NONEXISTENT] (Dovecot's COMMAND_FLAG_USE_NONEXISTENT,
#: src/imap/imap-commands.c: RFC 5530 gives the code to "delete something" operations).
USE_NONEXISTENT = frozenset({"DELETE", "RENAME", "UNSUBSCRIBE"})
#: Largest literal accepted (APPEND): Dovecot has no fixed limit; the lab caps it.
MAX_LITERAL = 50 * 1024 * 1024
#: How often a selected INBOX file is checked for new deliveries without inotify...
WATCH_INTERVAL = 0.2
#: ...and with it (a safety net only).
SAFETY_POLL = 2.0
#: A change seen while a delivery holds the lock is looked at again after this.
RETRY_DELAY = 0.02
IDLE_NOTIFY_INTERVAL = 120.0
#: mail_max_keyword_length's default (10-mail.conf): a longer keyword is not created.
MAX_KEYWORD_LENGTH = 50
_LITERAL_PLUS = re.compile(rb"\{(\d{1,20})\+\}$")
_LITERAL_ANY = re.compile(rb"\{(\d{1,20})\+?\}$")
_LITERAL8 = re.compile(rb"~(\{\d{1,20}\+?\})$")
#: FETCH BINARY items (RFC 3516), which Twisted's FETCH parser does not know.
#: RFC 8970 PREVIEW (and LAZY), Dovecot's SNIPPET (FUZZY), RFC 8514 SAVEDATE
_EXTRA_ITEM = re.compile(rb"(?i)(?<![\w.\[])(?:PREVIEW(?:\s*\(\s*(?P<lazy>LAZY)\s*\))?"
                         rb"|SNIPPET\s*\(\s*FUZZY\s*\)|SAVEDATE)(?![\w.\]])")
_BINARY_ITEM = re.compile(
    rb"(?i)\bBINARY(?P<size>\.SIZE)?(?P<peek>\.PEEK)?\[(?P<section>[0-9.]*)\]"
    rb"(?:<(?P<start>\d+)\.(?P<length>\d+)>)?")


@dataclass
class ImapSettings:
    greeting: str = "Dovecot (Debian) ready."
    disable_plaintext_auth: bool = True
    mechanisms: list = field(default_factory=lambda: ["PLAIN", "LOGIN"])
    mail_location: str | MailLocation = DEFAULT_LOCATION
    special_use: list = field(default_factory=list)   # [(name, "\\Sent", auto)]
    timeout: float = 1800.0
    login_timeout: float = 180.0        # Dovecot's login processes: 3 minutes from connect
    #: mail_max_userip_connections per protocol (0 = no limit)
    max_userip_connections: dict = field(default_factory=lambda: {"imap": 10, "pop3": 10})
    auth_verbose: bool = False


@dataclass
class ImapContext:
    """What an IMAP or POP3 session needs from the lab."""

    lab_root: object
    emit: Callable = null_emit
    log: Callable[[str], None] = lambda text: None      # writes "<text>" as dovecot
    auth: object = None                                 # AuthClient
    settings: ImapSettings = field(default_factory=ImapSettings)
    reactor: object = None
    #: The mail worker: mailbox commands run in its threads (None: made on first use).
    worker: object = None

    def __post_init__(self) -> None:
        log = self.log
        # Logged in the reactor thread, in order, wherever the line comes from.
        self.log = lambda text: call_in_reactor(log, text)

    #: Dovecot's anvil: the open logged-in connections per (protocol, client
    #: address, user). Connections, not a counter: one whose client has gone
    #: is never counted, whatever order its login and its end came in.
    sessions: dict = field(default_factory=dict)

    def userip_refusal(self, protocol: str, ip: str, user: str) -> str | None:
        limit = self.settings.max_userip_connections.get(protocol, 0)
        if limit and self.open_sessions((protocol, ip, user)) >= limit:
            return ("Maximum number of connections from user+IP exceeded "
                    f"(mail_max_userip_connections={limit})")
        return None

    def open_sessions(self, key: tuple) -> int:
        return sum(1 for conn in self.sessions.get(key, ()) if not conn._gone)

    def anvil_connect(self, key: tuple, conn) -> None:
        if not conn._gone:
            self.sessions.setdefault(key, set()).add(conn)

    def anvil_disconnect(self, key: tuple, conn) -> None:
        conns = self.sessions.get(key)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.sessions[key]

    def store_for(self, user: str) -> MailStore:
        store = open_store(self.lab_root, user, self.settings.mail_location)
        for name, _use, auto in self.settings.special_use:
            if auto in ("create", "subscribe"):
                try:
                    store.ensure(name, subscribe=auto == "subscribe")
                except (StoreError, OSError):
                    pass
        return store


# --------------------------------------------------------------------------
# Message parts for Twisted's ENVELOPE / BODYSTRUCTURE builders

@implementer(imap4.IMessagePart)
class _Part:
    def __init__(self, msg: email.message.Message, raw: bytes | None = None) -> None:
        self.msg = msg
        self.raw = raw

    def getHeaders(self, negate, *names):
        wanted = {n.lower() if isinstance(n, str) else n.decode().lower() for n in names}
        out = {}
        for key, value in self.msg.items():
            k = key.lower()
            if (k in wanted) != bool(negate) or (not names and negate):
                out[k] = str(value)
        return out

    def _bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return self.msg.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))

    def body_bytes(self) -> bytes:
        data = self._bytes()
        cut = data.find(b"\r\n\r\n")
        return data[cut + 4:] if cut >= 0 else b""

    def header_bytes(self) -> bytes:
        data = self._bytes()
        cut = data.find(b"\r\n\r\n")
        return data[:cut + 4] if cut >= 0 else data + b"\r\n"

    def getBodyFile(self):
        return io.BytesIO(self.body_bytes())

    def getSize(self):
        return len(self.body_bytes())

    def isMultipart(self):
        return self.msg.is_multipart()

    def getSubPart(self, part):
        payload = self.msg.get_payload()
        if not isinstance(payload, list) or part >= len(payload):
            raise IndexError(part)
        return _Part(payload[part])


def _message_part(msg: Message) -> _Part:
    wire = msg.wire()
    parsed = email.message_from_bytes(wire, policy=email.policy.compat32)
    return _Part(parsed, wire)


# --------------------------------------------------------------------------
# What Dovecot checks before parsing a command

#: A tag: ASTRING-CHARs except "+" (RFC 3501 §9); no 8-bit, no CTL.
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+\]]+')
#: A command name: an atom.
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
#: Commands that take no arguments: Dovecot ignores any that come.
_NO_ARGUMENTS = frozenset({"NOOP", "NAMESPACE", "EXPUNGE", "CAPABILITY", "LOGOUT", "CHECK",
                           "CLOSE", "UNSELECT", "IDLE", "STARTTLS"})
#: LIST-EXTENDED options Dovecot 2.3 knows (RFC 5258, 6154, 5819).
_LIST_SELECT_OPTIONS = frozenset({"SUBSCRIBED", "RECURSIVEMATCH", "REMOTE", "SPECIAL-USE"})
_LIST_RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS",
                                  "MYRIGHTS"})
_EMPTY_FIELDS = re.compile(rb"(?i)HEADER\.FIELDS(?:\.NOT)?\s*\(\s*\)")
#: The system flags STORE takes (lower case); \Recent and others are refused.
_SYSTEM_FLAG_NAMES = frozenset({"\\answered", "\\flagged", "\\deleted", "\\seen", "\\draft"})
#: Commands whose arguments cannot be left out, and Dovecot's words when they are.
_NEEDS_ARGUMENTS = {
    "SELECT": "Invalid arguments", "EXAMINE": "Invalid arguments",
    "LIST": "Invalid reference", "LSUB": "Invalid reference",
    "FETCH": "Invalid arguments", "STORE": "Invalid arguments",
    "SEARCH": "Missing search parameters",
    **dict.fromkeys(("CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "STATUS",
                     "APPEND", "COPY", "MOVE"), "Missing arguments"),
}


def _eight_bit_atom(rest: bytes) -> bool:
    """A byte over 127 outside a quoted string (Dovecot: "8bit data in atom")."""
    if not rest or max(rest) < 0x80:
        return False
    quoted = escaped = False
    for byte in rest:
        if quoted:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                quoted = False
        elif byte == 0x22:
            quoted = True
        elif byte >= 0x80:
            return True
    return False


# --------------------------------------------------------------------------
# Small IMAP argument tokenizer (for LIST, SEARCH, STATUS, ID, ENABLE)

def tokenize(data: bytes) -> list:
    """Atoms and quoted strings as str, parenthesized lists as Python lists."""
    stack: list[list] = [[]]
    i, n = 0, len(data)
    while i < n:
        c = data[i:i + 1]
        if c == b" ":
            i += 1
        elif c == b"(":
            stack.append([])
            i += 1
        elif c == b")":
            if len(stack) == 1:
                raise imap4.IllegalClientResponse("Unexpected ')'")
            done = stack.pop()
            stack[-1].append(done)
            i += 1
        elif c == b'"':
            j = i + 1
            buf = bytearray()
            while j < n and data[j:j + 1] != b'"':
                if data[j:j + 1] == b"\\" and j + 1 < n:
                    j += 1
                buf += data[j:j + 1]
                j += 1
            if j >= n:
                raise imap4.IllegalClientResponse("Missing '\"'")
            stack[-1].append(buf.decode("utf-8", "replace"))
            i = j + 1
        else:
            j = i
            while j < n and data[j:j + 1] not in (b" ", b"(", b")"):
                if data[j:j + 1] == b"[":
                    close = data.find(b"]", j)
                    j = close if close > 0 else j
                j += 1
            stack[-1].append(data[i:j].decode("utf-8", "replace"))
            i = j
    if len(stack) != 1:
        raise imap4.IllegalClientResponse("Missing ')'")
    return stack[0]


def parse_set(text: str, last: int) -> list[tuple[int, int]]:
    """A sequence set (``1:3,5,7:*``) as ranges; ``*`` is ``last``."""
    out = []
    if not text:
        raise imap4.IllegalClientResponse("Invalid messageset")
    for part in text.split(","):
        a, _, b = part.partition(":")
        try:
            lo = last if a == "*" else int(a)
            hi = lo if not _ else (last if b == "*" else int(b))
        except ValueError:
            raise imap4.IllegalClientResponse("Invalid messageset") from None
        if lo <= 0 and a != "*" or hi <= 0 and b not in ("*", ""):
            raise imap4.IllegalClientResponse("Invalid messageset")
        out.append((min(lo, hi), max(lo, hi)))
    return out


def in_set(value: int, ranges) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


def quote(text: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_.\-/&+,]+", text) and text.upper() != "NIL":
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _arg_rawset(server, line: bytes):
    """A sequence set, kept as text (resolved against the view later)."""
    head, _, rest = line.partition(b" ")
    if not head:
        raise imap4.IllegalClientResponse("Missing messageset")
    return head, rest


def _astring_arg(server, line):
    """The server's own astring parser (:meth:`ImapServer.arg_astring`), for
    the command tables, which name their parsers as plain functions."""
    return server.arg_astring(line)


class _Tap:
    """The transport as seen by the protocol: every write is also a Step."""

    def __init__(self, transport, server: "ImapServer") -> None:
        self._t = transport
        self._server = server

    def write(self, data: bytes) -> None:
        if in_worker():                  # a mailbox command: written in order, by the reactor
            call_in_reactor(self.write, data)
            return
        self._server._wrote(data)
        self._t.write(data)

    def writeSequence(self, seq) -> None:
        for data in seq:
            self.write(data)

    def loseConnection(self) -> None:
        call_in_reactor(self._t.loseConnection)

    def __getattr__(self, name):
        return getattr(self._t, name)


class _Discard:
    """A literal nobody will read (too large, or after an error): count it off."""

    def __init__(self, size: int) -> None:
        self.size = size

    def write(self, data: bytes):
        if len(data) < self.size:
            self.size -= len(data)
            return None
        rest = data[self.size:]
        self.size = 0
        return rest


@implementer(interfaces.IHandshakeListener)
class ImapServer(ImapMailWork, LoginCommon, imap4.IMAP4Server):
    ACTOR, STARTTLS_VERB = "imap", "STARTTLS"
    """One IMAP connection: imap-login until logged in, then imap."""

    MAX_LENGTH = 65536
    delimiter = b"\r\n"

    def __init__(self, ctx: ImapContext, tls_options=None, implicit_tls: bool = False) -> None:
        super().__init__(chal={}, contextFactory=tls_options)
        self.lab = ctx
        self.settings = ctx.settings
        self.session = new_session("imaps" if implicit_tls else "imap")
        self.conv = ImapConversation(self.session, tls=implicit_tls)
        self.tls = implicit_tls
        self._starttls = False
        self.user: str | None = None
        self.store: MailStore | None = None
        self.folder: Folder | None = None
        self.readonly = False
        self.view: list[int] = []            # UIDs, index = sequence number - 1
        self.recent: set[int] = set()
        self.keywords: list[str] = []       # the selected mailbox's, as the client was told
        self._untold_keywords: list[str] = []  # registered by a search, FLAGS not sent yet
        #: keywords a search registered in a mailbox EXAMINEd (not written), by
        #: mailbox: Dovecot's index keeps them for this session's later SELECTs
        self._unsaved_keywords: dict[str, list[str]] = {}
        self.uidvalidity = 0
        self._idle_tag: bytes | None = None
        self._idle_timer = None
        self._watch = None
        self._watch_stat = None
        self._watch_handle = None
        self._retry = None
        self._auth_pending: tuple | None = None
        self._literal_plus = 0
        self._cmd_start = time.monotonic()
        self._failed_auths = 0
        self._auth_method = None
        self._connected_at = time.time()
        self._bytes_in = 0
        self._bytes_out = 0
        self._logged_out = False
        self._dovecot_session = base64.b64encode(secrets.token_bytes(12)).decode()[:16]
        self.mpid = next_mpid()
        self.counts = {"expunged": 0, "deleted": 0, "trashed": 0, "hdr_count": 0, "hdr_bytes": 0,
                       "body_count": 0, "body_bytes": 0}
        #: imap-login's client_ignores_capability_resp_code: the client asked
        #: CAPABILITY before STARTTLS, so it gets an untagged CAPABILITY at login
        self._caps_asked = False
        self._last_cmd: tuple[str, float] | None = None   # name as typed, when it ended

    # ------------------------------------------------------------ plumbing

    def makeConnection(self, transport):
        super().makeConnection(_Tap(transport, self))

    def _wrote(self, data: bytes) -> None:
        if self.user:
            self._bytes_out += len(data)
        self._emit_all(self.conv.server_data(data))

    def dataReceived(self, data: bytes) -> None:
        if self._gone or self.transport.disconnecting:
            # Dovecot reads nothing more from a client it has said BYE to;
            # Twisted's TLS layer still hands over what arrives while it
            # waits for the client's close_notify
            return
        if self._feeding:
            # LineReceiver.setLineMode() hands back what followed a literal
            # (the rest of an APPEND line, the next messages of a MULTIAPPEND):
            # bytes counted, and shown, when they arrived. Dovecot's in= is
            # its input stream's offset: each byte once
            super().dataReceived(data)
            return
        if self.user:
            self._bytes_in += len(data)
        self._emit_all(self.conv.client_data(data))
        self._feeding = True
        try:
            super().dataReceived(data)
        finally:
            self._feeding = False
        if not self._worker_busy:
            # the input is used up: Dovecot syncs and answers (a command still
            # in the mail worker answers, held replies included, when it ends)
            self._flush_synced()

    #: Commands that end with a mailbox sync (cmd_sync in Dovecot) and may run
    #: side by side: pipelined one after another, Dovecot runs them all and
    #: sends their tagged replies together after the sync, once the input is
    #: used up or a command that cannot run alongside them comes.
    _SYNC_COMMANDS = frozenset({b"FETCH", b"SEARCH", b"STORE"})
    _held: list = []

    def _next_is_sync_command(self) -> bool:
        buffered = getattr(self, "_buffer", b"")
        end = buffered.find(b"\n")
        if end < 0:
            return False
        words = buffered[:end].split()
        if len(words) >= 3 and words[1].upper() == b"UID":
            words = words[1:]
        return len(words) >= 2 and words[1].upper() in self._SYNC_COMMANDS

    def _sync_ok(self, tag, text: str) -> None:
        uid = self._command.startswith("UID ")
        if self._next_is_sync_command():
            self._held = self._held + [(tag, text, uid)]
            return
        self._held = self._held + [(tag, text, uid)]
        self._flush_synced()

    def _flush_synced(self) -> None:
        """The held tagged replies: Dovecot syncs the commands that use
        sequence numbers first (no expunges may be sent while they run),
        then the UID commands (a full sync)."""
        held, self._held = self._held, []
        if held and self._untold_keywords:
            self._new_keywords([])          # (a search's new keywords: the sync tells them)
        for tag, text, _uid in sorted(held, key=lambda item: item[2]):
            self._ok(tag, text)

    def log(self, text: str) -> None:
        self.lab.log(text)

    def connectionMade(self) -> None:
        self._addresses()
        self.tags = {}
        self.canStartTLS = self.ctx is not None and not self.tls
        self.setTimeout(self.settings.login_timeout)
        self.lab.emit(smtp_wire.event_step(
            "CONNECT", f"connect from {self.client_ip}", session=self.session, proto="imap",
            src="client", dst="imap",
            meta={"port": getattr(self.transport.getHost(), "port", None),
                  "client_ip": self.client_ip}))
        self._greet_when_secure()

    def _greet(self) -> None:
        self.sendLine(("* OK [CAPABILITY " + " ".join(self.pre_login_caps()) + "] "
                       + self.settings.greeting).encode())

    _gone = False
    _feeding = False       # in dataReceived: what comes back in (after a literal) is not new
    _command = ""          # the command being parsed, for Dovecot's "Error in IMAP command X:"

    def _unblock(self):
        if self._gone:                 # the client left while auth was answering
            self.blocked = None
            return
        commands, self.blocked = self.blocked, None
        while commands and self.blocked is None and not self.paused and self.line_mode:
            if self.transport.disconnecting:       # (LOGOUT, or a refusal that hangs up)
                return
            self.lineReceived(commands.pop(0))
        if commands:
            if self.blocked is not None:           # waiting again (another login)
                self.blocked.extend(commands)
            else:
                # a mailbox command now runs in the worker, or a literal is being
                # read: what came meanwhile goes back to the input, read in turn
                self._buffer = b"".join(c + self.delimiter for c in commands) + self._buffer

    def connectionLost(self, reason=None) -> None:
        self._gone = True
        self._stop_watch()
        self._stop_idle_timer()
        self._anvil_disconnect()
        if self._handshaking and not self._refused:
            self._handshake_lost(reason)
        if self.user and not self._logged_out:
            self.log(f"imap({self.user})<{self.mpid}><{self._dovecot_session}>: "
                     f"Disconnected: Connection closed{self._command_status()} {self._stats()}")
        elif not self.user and not self._refused:     # (a refusal logged its own line)
            self._note_tls_eof(reason)
            self.log(self._login_disconnect_line(self._last_user, self._auth_method))
        self.lab.emit(smtp_wire.event_step("DISCONNECT", "disconnect", session=self.session,
                                           proto="imap", src="client", dst="imap",
                                           tls=self.tls and not self._handshaking))
        super().connectionLost(reason)

    _last_user = None

    def _stats(self) -> str:
        """imap_logout_format's default (10-logging.conf)."""
        c = self.counts
        return (f"in={self._bytes_in} out={self._bytes_out} deleted={c['deleted']} "
                f"expunged={c['expunged']} trashed={c['trashed']} hdr_count={c['hdr_count']} "
                f"hdr_bytes={c['hdr_bytes']} body_count={c['body_count']} "
                f"body_bytes={c['body_bytes']}")

    def _command_status(self) -> str:
        """Why the imap process saw the client go (imap-client.c): the command
        still running (IDLE), else the last one and how long ago it ended."""
        if self._idle_tag is not None:
            running = time.monotonic() - self._cmd_start
            return (f" (IDLE running for 0.001 + waiting input for {running:.3f} secs, "
                    f"{self._idle_in} B in + {self._idle_out} B out, state=wait-input)")
        if self._last_cmd is None:
            return " (No commands sent)"
        name, ended = self._last_cmd
        return f" ({name} finished {time.monotonic() - ended:.3f} secs ago)"

    _idle_in = 0
    _idle_out = 0
    _unread = 0          # bytes of arguments a command ignored (not in Dovecot's in=)

    def timeoutConnection(self) -> None:
        if self.user is None:
            self._login_timed_out()
            return
        self.sendLine(b"* BYE Disconnected for inactivity.")
        self.transport.loseConnection()

    # ---------------------------------------------------------- capabilities

    def pre_login_caps(self) -> list[str]:
        caps = list(PRE_LOGIN_CAPS)
        if self.canStartTLS and not self.tls:
            caps.append("STARTTLS")
        if not self.secured and self.settings.disable_plaintext_auth:
            caps.append("LOGINDISABLED")
        else:
            caps += [f"AUTH={m}" for m in self.settings.mechanisms]
        return caps

    def listCapabilities(self):
        caps = POST_LOGIN_CAPS if self.user else self.pre_login_caps()
        if self.user and any(use for _n, use, _a in self.settings.special_use):
            caps = caps + ["SPECIAL-USE"]
        return [c.encode() for c in caps]

    # -------------------------------------------------------------- output

    def _timed(self, tag, text: str) -> str:
        """After login, Dovecot's tagged replies end with the command's timing."""
        if self.user and _b(tag) != b"*" and text.endswith("."):
            elapsed = time.monotonic() - self._cmd_start
            text = text[:-1] + f" ({elapsed:.3f} + 0.000 secs)."
        return text

    def _ok(self, tag, text: str) -> None:
        if self.user and not text.endswith("."):
            text += "."
        self.sendLine(_b(tag) + b" OK " + self._timed(tag, text).encode("utf-8"))

    def _no(self, tag, text: str) -> None:
        if self.user and not text.endswith("."):
            text += "."
        self.sendLine(_b(tag) + b" NO " + self._timed(tag, text).encode("utf-8"))

    def _bad(self, tag, text: str) -> None:
        if self.user is None and not text.startswith("Authentication aborted") \
                and self._invalid_command():
            return
        if self.user and not text.endswith("."):
            text += "."
        self.sendLine(_b(tag or b"*") + b" BAD " + self._timed(tag, text).encode("utf-8"))

    def _untagged(self, text: str | bytes) -> None:
        self.sendLine(b"* " + (text if isinstance(text, bytes) else text.encode("utf-8")))

    def sendBadResponse(self, tag=None, message=b""):
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        text = text.replace("Illegal syntax: ", "")
        if text == "Invalid Argument":          # Twisted's words for trailing garbage
            text = "Invalid arguments"
        if self.user:
            name = f" {self._command}" if self._command else ""
            self._bad(tag, f"Error in IMAP command{name}: {text}")
        else:
            self._bad(tag, "Error in IMAP command received by server.")

    def sendNegativeResponse(self, tag=None, message=b""):
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        self._no(tag or b"*", text)

    def sendPositiveResponse(self, tag=None, message=b""):
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        self.sendLine(_b(tag or b"*") + b" OK " + text.encode())

    # --------------------------------------------------------------- input

    _line_end = b"\r\n"

    def lineReceived(self, line: bytes) -> None:
        if self._idle_tag is not None:
            self._idle_line(line)
            return
        if line.endswith(b"}") and _LITERAL8.search(line):
            # BINARY's literal8 (~{n}): taken like a literal, bytes kept as sent.
            line = _LITERAL8.sub(rb"\1", line)
        if self.parseState == "discard":
            self.parseState = "command"
            return
        if self.parseState == "command":
            self._cmd_start = time.monotonic()
            if self._bad_tag_or_name(line):
                return
            if self._start_literal(line):
                return
        elif self.parseState == "pending" and self._start_literal(line):
            return
        super().lineReceived(line)

    def _bad_tag_or_name(self, line: bytes) -> bool:
        """Dovecot's first two words of a command line, checked before Twisted
        splits it (which would skip a leading space and take the next word as
        the tag): an invalid or empty tag, or no command name after it. True
        when the line has been answered."""
        tag, _sp, rest = line.partition(b" ")
        if not _TAG.fullmatch(tag):
            if self.user is None:
                # imap-login never sends an invalid tag back
                self._bad(b"*", "Error in IMAP command received by server.")
            else:
                self.sendLine(b"* BAD " + self._timed(
                    b"", "Error in IMAP tag: Invalid tag.").encode())
            return True
        if not rest[:1].strip():           # "a1", "a1 ", "a1  NOOP": no command name
            if self.user is None:
                self._bad(tag, "Error in IMAP command received by server.")
            else:
                self._bad(tag, "Error in IMAP command: Invalid command name.")
            return True
        return False

    def _start_literal(self, line: bytes) -> bool:
        """LITERAL+ (``{n+}``): no continuation request; too large: refused."""
        m = _LITERAL_ANY.search(line)
        if not m:
            return False
        size = int(m.group(1))
        plus = line.endswith(b"+}")
        if size > MAX_LITERAL:
            tag = line.split(b" ", 1)[0]
            if plus:
                self.parseState = "discard"
                self._pendingLiteral = _Discard(size)
                self._bad(tag, "Error in IMAP command: Literal too large.")
                self.setRawMode()
            else:
                self._bad(tag, "Error in IMAP command: Literal too large.")
            return True
        if plus:
            self._literal_plus += 1
            line = line[:m.start()] + b"{%d}" % size
            if self.parseState == "command":
                super().lineReceived(line)
            else:
                super().lineReceived(line)
            return True
        return False

    def rawDataReceived(self, data):
        if self.parseState == "discard":
            rest = self._pendingLiteral.write(data)
            if rest is not None:
                self._pendingLiteral = None
                self.setLineMode(rest)
            return
        super().rawDataReceived(data)

    def sendContinuationRequest(self, msg=b"Ready for additional command text"):
        if self._literal_plus:
            self._literal_plus -= 1
            return
        if msg and msg.startswith(b"Ready for"):
            msg = b"OK"
        super().sendContinuationRequest(msg)

    def lineLengthExceeded(self, line):
        self._bad(b"*", "Error in IMAP command received by server: Too long argument.")
        self.clearLineBuffer()

    def arg_plist(self, line):
        """Twisted's parenthesized list (APPEND's and STORE's flags); its
        MismatchedNesting and MismatchedQuoting are a client's error, not the server's."""
        try:
            return super().arg_plist(line)
        except (imap4.MismatchedNesting, imap4.MismatchedQuoting):
            raise imap4.IllegalClientResponse("Invalid arguments") from None

    def _stringLiteral(self, size):
        if size > self._literalStringLimit:
            raise imap4.IllegalClientResponse("Literal too large.")
        return super()._stringLiteral(size)

    def arg_astring(self, line, final=False):
        """Twisted's astring, with what its quoted strings lack: backslash
        escapes (``"a\\"b"`` is ``a"b``, RFC 9051 quoted-specials); and a
        parenthesized list where a string goes is Dovecot's 'Invalid arguments'."""
        text = line.lstrip(b" ")
        if text[:1] == b"(":
            raise imap4.IllegalClientResponse("Invalid arguments")
        if text[:1] != b'"':
            return super().arg_astring(line, final)
        value = bytearray()
        i = 1
        while i < len(text):
            c = text[i:i + 1]
            if c == b"\\" and text[i + 1:i + 2] in (b"\\", b'"'):
                value += text[i + 1:i + 2]
                i += 2
                continue
            if c == b'"':
                return bytes(value), text[i + 1:].lstrip(b" ")
            value += c
            i += 1
        raise _ParserError("Missing '\"'")

    def _IMAP4Server__doCommand(self, tag, handler, args, parseargs, line, uid):
        """Twisted's argument loop (IMAP4Server.__doCommand, name-mangled), where
        what follows a logged-in command's last argument is ignored, as
        Dovecot's client_read_args() reads only the arguments it asked for,
        instead of Twisted's 'Too many arguments for command'."""
        if self.user is not None and not any(callable(a) for a in parseargs):
            line = b""
        return super()._IMAP4Server__doCommand(tag, handler, args, parseargs, line, uid)

    def _IMAP4Server__ebDispatch(self, failure, tag):
        """Twisted's handling of an argument parser's failure, plus a NO that
        ends the command before its literal is asked for (:class:`_Refused`)."""
        if failure.check(_Refused):
            self._no(tag, str(failure.value))
            return
        if failure.check(_ParserError) and self.user is None:
            # imap-login: the parser's own words, not counted as an invalid command
            self.sendLine(_b(tag) + b" BAD " + str(failure.value).encode())
            return
        return super()._IMAP4Server__ebDispatch(failure, tag)

    def dispatchCommand(self, tag, cmd, rest, uid=None):
        # Dovecot's checks, in its order, before any parsing (src/imap/imap-client.c).
        if not _TAG.fullmatch(tag):
            self._bad(b"*", "Error in IMAP tag: Invalid tag.")
            return
        if not _ATOM.fullmatch(cmd) or (cmd.upper() == b"UID" and not (rest or b"").strip()):
            self._bad(tag, "Error in IMAP command: Invalid command name.")
            return
        name = cmd.decode("ascii").upper()
        empty = not (rest or b"").strip()
        if self.lookupCommand(cmd) is None:
            if self.user is None:
                self._bad(tag, "Error in IMAP command received by server.")
            elif self.state == "auth" and empty and name in ("COPY", "MOVE"):
                self._bad(tag, f"Error in IMAP command {name}: Missing arguments.")
            elif self.state == "auth" and getattr(self, f"select_{name}", None):
                self._bad(tag, "No mailbox selected.")
            else:
                self._bad(tag, f"Error in IMAP command {name}: Unknown command.")
            return
        runs_along = name.encode() in self._SYNC_COMMANDS or (
            name == "UID" and (rest or b"").split()[:1] != []
            and rest.split()[0].upper() in self._SYNC_COMMANDS)
        if self._held and not runs_along:
            self._flush_synced()      # this one waits for the earlier ones to finish
        shown = self._command = f"UID {name}" if uid else name
        self._unread = 0
        if name in _NO_ARGUMENTS:
            # Dovecot does not look at what follows (nor counts it in in=)
            self._unread = len((rest or b"").strip())
            rest, empty = b"", True
        if empty:
            if name in _NEEDS_ARGUMENTS:
                self._bad(tag, f"Error in IMAP command {shown}: {_NEEDS_ARGUMENTS[name]}.")
                return
            rest = b""                  # Twisted's argument parsers want bytes
        elif _eight_bit_atom(rest):
            self._bad(tag, f"Error in IMAP command {shown}: 8bit data in atom.")
            return
        super().dispatchCommand(tag, cmd, rest, uid)
        if self.user and cmd.upper() != b"UID":
            typed = cmd.decode("ascii", "replace")           # as the client typed it
            self._last_cmd = (f"UID {typed}" if uid else typed, time.monotonic())

    # ------------------------------------------------------ any state

    def do_CAPABILITY(self, tag):
        if not self.user and not self._starttls:
            self._caps_asked = True
        self._untagged(b"CAPABILITY " + b" ".join(self.listCapabilities()))
        if self.user:
            self._ok(tag, "Capability completed.")
        else:
            self._ok(tag, "Pre-login capabilities listed, post-login capabilities have more.")

    def do_NOOP(self, tag):
        self._refresh(expunges=True)
        self._ok(tag, "NOOP completed.")

    def _disconnect(self, reason: str) -> None:
        """The imap process ends the session: BYE with the reason, which the
        log line repeats (client_disconnect_with_error)."""
        self._untagged(f"BYE {reason}")
        self._logged_out = True
        self._bytes_in -= 2 if self._line_end == b"\r\n" else 1   # (as after LOGOUT)
        self.log(f"imap({self.user})<{self.mpid}><{self._dovecot_session}>: "
                 f"Disconnected: {reason} {self._stats()}")
        self.transport.loseConnection()

    def do_LOGOUT(self, tag):
        self._untagged("BYE Logging out")
        self._ok(tag, "Logout completed.")
        if self.user:
            self._logged_out = True
            # Dovecot's parser stops at the end of the command's arguments and
            # skips the line end when the next command starts: after LOGOUT it
            # never does, so in= leaves out the last CRLF
            self._bytes_in -= (2 if self._line_end == b"\r\n" else 1) + self._unread
            self.log(f"imap({self.user})<{self.mpid}><{self._dovecot_session}>: "
                     f"Disconnected: Logged out {self._stats()}")
        else:
            self._login_end = UNAUTHENTICATED_LOGOUT
        self.transport.loseConnection()

    def do_ID(self, tag, line):
        try:
            tokenize(line)
        except imap4.IllegalClientResponse as exc:     # Dovecot's parser: "Missing ')'"...
            self._bad(tag, f"Error in IMAP command ID: {exc}.")
            return
        self._untagged('ID ("name" "Dovecot")')
        self._ok(tag, "ID completed.")

    unauth_CAPABILITY = auth_CAPABILITY = select_CAPABILITY = (do_CAPABILITY,)
    unauth_NOOP = auth_NOOP = select_NOOP = (do_NOOP,)
    unauth_LOGOUT = auth_LOGOUT = select_LOGOUT = (do_LOGOUT,)
    unauth_ID = auth_ID = select_ID = (do_ID, imap4.IMAP4Server.arg_line)

    # ---------------------------------------------------------- not logged in

    def do_STARTTLS(self, tag):
        if self.tls:
            self._bad(tag, "TLS is already active.")
            return
        if not self.canStartTLS:
            self._bad(tag, "TLS support isn't enabled.")
            return
        self._ok(tag, "Begin TLS negotiation now.")
        # Commands pipelined after STARTTLS came in clear: discard them, as
        # Dovecot does (no plaintext injection into the TLS session).
        self.clearLineBuffer()
        self._start_tls()
        self.canStartTLS = False

    def do_LOGIN(self, tag, user, passwd):
        if not self.secured and self.settings.disable_plaintext_auth:
            self._plaintext_refused(user.decode("utf-8", "replace"))
            self._untagged("BAD [ALERT] Plaintext authentication not allowed without SSL/TLS, "
                           "but your client did it anyway. If anyone was listening, the "
                           "password was exposed.")
            self._no(tag, "[PRIVACYREQUIRED] Plaintext authentication disallowed on "
                          "non-secure (SSL/TLS) connections.")
            return
        resp = base64.b64encode(b"\0" + user + b"\0" + passwd).decode()
        self._last_user = user.decode("utf-8", "replace")
        self._auth_method = "PLAIN"
        self._sasl("PLAIN", resp, tag)

    def do_AUTHENTICATE(self, tag, args):
        words = args.split()
        if not words:
            self._bad(tag, "Error in IMAP command received by server.")
            return
        mech = words[0].decode("ascii", "replace").upper()
        if mech not in self.settings.mechanisms:
            # sasl-server.c: an attempt that failed at once, with an ALERT,
            # and the disconnect line says so (client_get_extra_disconnect_reason)
            self._login_attempts += 1
            self._login_started = self._login_started or time.time()
            self._last_auth_fail = "tried to use unsupported auth mechanism"
            self._auth_method = mech
            self._no(tag, "[ALERT] Unsupported authentication mechanism.")
            return
        if not self.secured and self.settings.disable_plaintext_auth:
            # sasl-server.c's words for AUTHENTICATE (LOGIN has its own), and
            # the disconnect line says the client tried
            self._plaintext_refused(None)
            self._last_auth_fail = "tried to use disallowed plaintext auth"
            self._auth_method = mech
            self._no(tag, "[PRIVACYREQUIRED] Plaintext authentication disabled.")
            return
        # "=" (an empty SASL-IR) goes to the auth server as it came: an empty
        # response, which PLAIN then refuses (no "+ " asking for one)
        initial = words[1].decode("ascii", "replace") if len(words) > 1 else None
        self._auth_method = mech
        self._sasl(mech, initial, tag)

    unauth_STARTTLS = (do_STARTTLS,)
    unauth_LOGIN = (do_LOGIN, _astring_arg, imap4.IMAP4Server.arg_finalastring)
    unauth_AUTHENTICATE = (do_AUTHENTICATE, imap4.IMAP4Server.arg_line)

    def _sasl(self, mech: str, resp: str | None, tag) -> None:
        if self.lab.auth is None:
            self._no(tag, "[UNAVAILABLE] Temporary authentication failure.")
            return
        self._login_attempts += 1
        self._login_started = self._login_started or time.time()
        self.blocked = []
        d = self.lab.auth.start(mech, service="imap", lip=self.server_ip, rip=self.client_ip,
                                secured=self.secured, resp_b64=resp, session=self.session,
                                nologin=False, login_session=self._dovecot_session)
        d.addCallbacks(self._sasl_reply, self._sasl_error, (tag,), None, (tag,), None)

    def _sasl_reply(self, reply, tag) -> None:
        if self._gone:                 # the client left while auth was answering:
            self._auth_pending = None  # no login (Dovecot drops the request)
            return
        if reply.kind == "CONT":
            self._auth_pending = (tag, reply.request_id)
            self.parseState = "authresp"
            self.sendLine(b"+ " + reply.challenge.encode("ascii"))
            self._unblock()
            return
        self._auth_pending = None
        if reply.kind == "OK" and (refusal := self._userip_refusal(reply.user)):
            self._no(tag, f"[UNAVAILABLE] {refusal}")
            self._refuse_userip(reply.user, self._auth_method or "PLAIN", refusal)
        elif reply.kind == "OK":
            self._logged_in(reply.user, tag)
        else:
            if reply.user:
                self._last_user = reply.user
            if reply.reason and "aborted" in reply.reason.lower():
                self._bad(tag, "Authentication aborted by client.")
            else:
                self._no(tag, "[AUTHENTICATIONFAILED] Authentication failed.")
        self._unblock()

    def _sasl_error(self, failure, tag) -> None:
        self._auth_pending = None
        self.parseState = "command"
        if not failure.check(AuthUnavailable):
            twlog.err(failure)
        self._no(tag, "[UNAVAILABLE] Temporary authentication failure.")
        self._unblock()

    def parse_authresp(self, line: bytes) -> None:
        self.parseState = "command"
        tag, rid = self._auth_pending
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            self._auth_pending = None
            self.lab.auth.abort(rid)
            self._bad(tag, "Authentication aborted by client.")
            return
        if not valid_base64(text):
            # login-common decodes the answer itself: the auth server never sees it
            self._auth_pending = None
            self.lab.auth.abort(rid)
            self._no(tag, "[ALERT] Invalid base64 in response")
            return
        self.blocked = []
        self.lab.auth.respond(rid, text, session=self.session).addCallbacks(
            self._sasl_reply, self._sasl_error, (tag,), None, (tag,), None)

    def _logged_in(self, user: str, tag) -> None:
        try:
            self.store = self.lab.store_for(user)
        except StoreError as exc:
            self._no(tag, f"[SERVERBUG] {exc}")
            return
        self.user = user
        # what the client sent after its login command reaches the imap
        # process with the login (Dovecot's in= counts it)
        self._bytes_in += sum(len(line) + len(self.delimiter) for line in self.blocked or ()) \
            + len(getattr(self, "_buffer", b""))
        self._anvil_connect(user)
        self.state = "auth"
        self.setTimeout(self.settings.timeout)
        method = self._auth_method or "PLAIN"
        self.log(f"imap-login: Login: user=<{user}>, method={method}, rip={self.client_ip}, "
                 f"lip={self.server_ip}, mpid={self.mpid}"
                 + (", TLS" if self.tls else ", secured" if self.secured else "")
                 + f", session=<{self._dovecot_session}>")
        caps = " ".join(c.decode() for c in self.listCapabilities())
        if self._caps_asked:
            # imap-login's rule: a client that asked CAPABILITY itself before
            # STARTTLS may not read a resp-code: untagged CAPABILITY, then OK
            self._untagged(f"CAPABILITY {caps}")
            self.sendLine(_b(tag) + b" OK Logged in")
        else:
            self.sendLine(_b(tag) + f" OK [CAPABILITY {caps}] Logged in".encode())

    # ------------------------------------------------------------ logged in

    def do_NAMESPACE(self, tag):
        self._untagged('NAMESPACE (("" "/")) NIL NIL')
        self._ok(tag, "Namespace completed.")

    def do_ENABLE(self, tag, line):
        """cmd-enable.c: only CONDSTORE and QRESYNC can be enabled, and gponsim
        implements neither (docs/fidelity.md), so nothing is: no untagged
        ENABLED at all (Dovecot leaves it out when its list is empty). Every
        argument must be an atom."""
        try:
            args = tokenize(line or b"")
        except imap4.IllegalClientResponse as exc:
            self._bad(tag, f"Error in IMAP command ENABLE: {exc}.")
            return
        if any(isinstance(a, list) for a in args) or b'"' in (line or b""):
            self._bad(tag, "Error in IMAP command ENABLE: Invalid arguments.")
            return
        self._ok(tag, "Enabled.")

    auth_NAMESPACE = select_NAMESPACE = (do_NAMESPACE,)
    auth_ENABLE = select_ENABLE = (do_ENABLE, imap4.IMAP4Server.arg_line)

    def _name(self, raw) -> str:
        if isinstance(raw, bytes):
            try:       # (Twisted's _parseMbox logs a traceback for a bad name first)
                name = raw.decode("imap4-utf-7")
            except ValueError:
                raise imap4.IllegalMailboxEncoding(raw) from None
        else:
            name = raw
        return "INBOX" if name.upper() == "INBOX" else name

    def _store_call(self, tag, fn, *args):
        try:
            return True, fn(*args)
        except StoreError as exc:
            if not exc.code or exc.code == "NONEXISTENT" \
                    and self._command not in USE_NONEXISTENT:
                self._no(tag, str(exc))
            else:
                self._no(tag, f"[{exc.code}] {exc}")
        except OSError as exc:
            self._no(tag, f"[SERVERBUG] Internal error occurred: {exc.strerror}")
        return False, None

    def do_SELECT(self, tag, name, readonly=False):
        if self.folder is not None:
            # cmd-select.c: the mailbox selected before is closed first, and
            # said so, whether or not the new one can be opened
            self._untagged("OK [CLOSED] Previous mailbox closed.")
        self._close_folder()
        name = self._name(name)
        ok, folder = self._store_call(tag, self.store.folder, name)
        if not ok:
            return
        ok, state = self._store_call(tag, folder.sync, not readonly)
        if not ok:
            return
        self.folder, self.readonly = folder, readonly
        self.uidvalidity = state.uidvalidity
        self.view = [m.uid for m in state.messages]
        # EXAMINE reports \Recent too (as Dovecot does), without taking it away.
        self.recent = {m.uid for m in state.messages if m.recent}
        known = {k.lower() for k in state.keywords}
        unsaved = [k for k in self._unsaved_keywords.get(folder.name, []) if k.lower() not in known]
        if unsaved and not readonly:
            # written now that the mailbox is open read-write
            ok, _ = self._store_call(tag, folder.define_keywords, unsaved)
            if not ok:
                return
            del self._unsaved_keywords[folder.name]
        self.keywords = list(state.keywords) + unsaved
        self._flags_lines()
        self._untagged(f"{len(self.view)} EXISTS")
        self._untagged(f"{len(self.recent)} RECENT")
        for seq, msg in enumerate(state.messages, 1):
            if SEEN not in msg.flags:
                self._untagged(f"OK [UNSEEN {seq}] First unseen.")
                break
        self._untagged(f"OK [UIDVALIDITY {state.uidvalidity}] UIDs valid")
        self._untagged(f"OK [UIDNEXT {state.uidnext}] Predicted next UID")
        self.state = "select"
        self._start_watch()
        if readonly:
            self._ok(tag, "[READ-ONLY] Examine completed.")
        else:
            self._ok(tag, "[READ-WRITE] Select completed.")

    def _flags_lines(self) -> None:
        """FLAGS and PERMANENTFLAGS: the mailbox's keywords after the system flags."""
        flags = FLAGS_LIST + "".join(" " + k for k in self.keywords)
        self._untagged(f"FLAGS ({flags})")
        if self.readonly:
            self._untagged("OK [PERMANENTFLAGS ()] Read-only mailbox.")
        else:
            self._untagged(f"OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted.")

    def _new_keywords(self, keywords) -> None:
        """Keywords the mailbox did not have (and those a search registered):
        Dovecot tells the client the new FLAGS and PERMANENTFLAGS at once
        (imap-sync.c), before anything else."""
        new = []
        for k in self._untold_keywords + list(keywords):
            if k not in self.keywords and k not in new:
                new.append(k)
        self._untold_keywords = []
        if new:
            self.keywords = self.keywords + new
            self._flags_lines()

    def do_EXAMINE(self, tag, name):
        self.do_SELECT(tag, name, readonly=True)

    def _arg_select_mailbox(self, line):
        """SELECT's mailbox: cmd-select.c closes the selected mailbox before it
        looks at its arguments' types (a parse error leaves it open)."""
        if line.lstrip(b" ")[:1] == b"(" and self.folder is not None:
            self._untagged("OK [CLOSED] Previous mailbox closed.")
            self._close_folder()
        return self.arg_astring(line, final=True)

    auth_SELECT = select_SELECT = (do_SELECT, _arg_select_mailbox)
    auth_EXAMINE = select_EXAMINE = (do_EXAMINE, _arg_select_mailbox)

    def _close_folder(self) -> None:
        self._stop_watch()
        self.folder = None
        self.view = []
        self.recent = set()
        self.keywords = []
        self._untold_keywords = []
        self._saved = frozenset()        # RFC 5182: "$" is forgotten with the mailbox
        if self.state == "select":
            self.state = "auth"

    def do_CREATE(self, tag, name):
        name = self._name(name)
        if self._store_call(tag, self.store.create, name)[0]:
            self._ok(tag, "Create completed.")

    def do_DELETE(self, tag, name):
        name = self._name(name)
        selected = self.folder is not None and self.folder.name == name
        if selected:
            self._close_folder()
        if self._store_call(tag, self.store.delete, name)[0]:
            self._ok(tag, "Delete completed.")
            if selected:
                # imap-sync: the selected mailbox is gone, and so is the session
                self._disconnect("Selected mailbox was deleted, have to disconnect.")

    def do_RENAME(self, tag, old, new):
        if self._store_call(tag, self.store.rename, self._name(old), self._name(new))[0]:
            self._ok(tag, "Rename completed.")

    def do_SUBSCRIBE(self, tag, name):
        name = self._name(name)
        if not self.store.exists(name):
            # cmd-subscribe.c: a mailbox that is not there cannot be
            # subscribed to (UNSUBSCRIBE of one is fine: it may be a stale entry)
            self._no(tag, f"Mailbox doesn't exist: {name}")
            return
        if self._store_call(tag, self.store.subscribe, name)[0]:
            self._ok(tag, "Subscribe completed.")

    def do_UNSUBSCRIBE(self, tag, name):
        if self._store_call(tag, self.store.unsubscribe, self._name(name))[0]:
            self._ok(tag, "Unsubscribe completed.")

    _A = _astring_arg
    _F = imap4.IMAP4Server.arg_finalastring
    auth_CREATE = select_CREATE = (do_CREATE, _F)
    auth_DELETE = select_DELETE = (do_DELETE, _F)
    auth_RENAME = select_RENAME = (do_RENAME, _A, _F)
    auth_SUBSCRIBE = select_SUBSCRIBE = (do_SUBSCRIBE, _F)
    auth_UNSUBSCRIBE = select_UNSUBSCRIBE = (do_UNSUBSCRIBE, _F)

    # ---- LIST / LSUB (LIST-EXTENDED, SPECIAL-USE, CHILDREN, LIST-STATUS)

    def do_LIST(self, tag, line, lsub=False):
        try:
            args = tokenize(line)
        except imap4.IllegalClientResponse:
            self._bad(tag, "Error in IMAP command LIST: Invalid arguments.")
            return
        select_opts: list[str] = []
        if args and isinstance(args[0], list) and not lsub:
            select_opts = [_word(o) for o in args.pop(0)]
            if any(o not in _LIST_SELECT_OPTIONS for o in select_opts):
                self._bad(tag, "Error in IMAP command LIST: Unknown select options.")
                return
        if len(args) < 2:
            # cmd-list.c: the reference was read, the pattern is missing
            text = "Invalid pattern" if args else "Invalid arguments"
            self._bad(tag, f"Error in IMAP command {'LSUB' if lsub else 'LIST'}: {text}.")
            return
        ref, patterns = args[0], args[1]
        if lsub and len(args) > 2:
            self._bad(tag, "Error in IMAP command LSUB: Extra arguments.")
            return
        if isinstance(ref, list):
            self._bad(tag, "Error in IMAP command LIST: Invalid arguments.")
            return
        patterns = patterns if isinstance(patterns, list) else [patterns]
        if any(isinstance(p, list) for p in patterns):     # ("a" ("b")): not a pattern
            self._bad(tag, "Error in IMAP command LIST: Invalid arguments.")
            return
        return_opts: list = []
        if len(args) >= 4 and _word(args[2]) == "RETURN" and isinstance(args[3], list):
            return_opts = args[3]
        returns = {_word(o) for o in return_opts if not isinstance(o, list)}
        if any(r not in _LIST_RETURN_OPTIONS for r in returns):
            self._bad(tag, "Error in IMAP command LIST: Unknown return options.")
            return
        status_items = None
        for i, o in enumerate(return_opts):
            if _word(o) == "STATUS" and i + 1 < len(return_opts) \
                    and isinstance(return_opts[i + 1], list):
                status_items = [_word(x) for x in return_opts[i + 1]]
        verb = "LSUB" if lsub else "LIST"
        if patterns == [""]:
            self._untagged(f'{verb} (\\Noselect) "/" ""')
            self._ok(tag, f"{verb.title()} completed.")
            return
        subscribed = set(self.store.subscriptions())
        special = {n: use for n, use, _a in self.settings.special_use}
        want_sub = lsub or "SUBSCRIBED" in select_opts
        regexes = [mailbox_pattern(ref + p, "/") for p in patterns]      # linear time
        # What Dovecot's LIST reports (cmd-list.c): CHILDREN information for a
        # plain LIST or when asked for; special-use for a plain LIST, LSUB, or
        # when asked for; \Marked/\UnMarked when the subscriptions are walked.
        # (a list of patterns is LIST-EXTENDED syntax too)
        extended = bool(select_opts or return_opts) or isinstance(args[1], list)
        children = not lsub and (not extended or "CHILDREN" in returns)
        special_use = lsub or not extended or "SPECIAL-USE" in returns \
            or "SPECIAL-USE" in select_opts
        for info in self._dovecot_order(self.store.list()):
            if not any(r.fullmatch(info.name) for r in regexes):
                continue
            if want_sub and info.name not in subscribed:
                continue
            if "SPECIAL-USE" in select_opts and not special.get(info.name):
                continue
            attrs = []
            if info.name in subscribed and ("SUBSCRIBED" in select_opts
                                           or "SUBSCRIBED" in returns):
                attrs.append("\\Subscribed")
            if not info.selectable:
                attrs.append("\\Noselect")
            mbox = self._mbox()
            if not lsub:
                if info.children and children:
                    attrs.append("\\HasChildren")
                elif mbox and info.selectable and info.name != "INBOX":
                    attrs.append("\\NoInferiors")     # an mbox file holds no folders
                elif children:
                    attrs.append("\\HasNoChildren")
            if mbox and "SUBSCRIBED" in select_opts and info.selectable:
                attrs.append(self._marked(info.name))
            if special.get(info.name) and special_use:
                attrs.append(special[info.name])
            self._untagged(f'{verb} ({" ".join(attrs)}) "/" {quote(info.name)}')
            if status_items and info.selectable:
                self._status_line(info.name, status_items)
        self._ok(tag, f"{verb.title()} completed.")

    @staticmethod
    def _dovecot_order(infos):
        """Dovecot's fs iteration: each directory's entries sorted by name
        (files and folders together, a folder's children right after it),
        INBOX (another file, /var/mail/user) at the end."""
        others = sorted((i for i in infos if i.name != "INBOX"),
                        key=lambda i: [part.encode() for part in i.name.split("/")])
        return others + [i for i in infos if i.name == "INBOX"]

    def _mbox(self) -> bool:
        location = self.settings.mail_location
        fmt = location.format if isinstance(location, MailLocation) else \
            str(location).partition(":")[0]
        return fmt == "mbox"

    def _marked(self, name: str) -> str:
        """mbox's \\Marked (new mail: modified since it was last read) or \\UnMarked."""
        try:
            path = getattr(self.store.folder(name), "path", None)
            st = os.stat(path) if path is not None else None
        except (StoreError, OSError):
            st = None
        if st is None:
            return "\\UnMarked"
        return "\\Marked" if st.st_size and st.st_mtime > st.st_atime else "\\UnMarked"

    def do_LSUB(self, tag, line):
        self.do_LIST(tag, line, lsub=True)

    auth_LIST = select_LIST = (do_LIST, imap4.IMAP4Server.arg_line)
    auth_LSUB = select_LSUB = (do_LSUB, imap4.IMAP4Server.arg_line)

    def _status_line(self, name: str, items: list[str]) -> bool:
        folder = self.store.folder(name)
        state = folder.sync()
        values = {
            "MESSAGES": len(state.messages),
            "RECENT": sum(1 for m in state.messages if m.recent),
            "UIDNEXT": state.uidnext,
            "UIDVALIDITY": state.uidvalidity,
            "UNSEEN": sum(1 for m in state.messages if SEEN not in m.flags),
            "SIZE": sum(m.size for m in state.messages),
        }
        if not items:
            raise imap4.IllegalClientResponse("Empty status list")
        for item in items:
            if item not in values:
                # cmd-status.c: the item as the client wrote it (upper case)
                raise imap4.IllegalClientResponse(f"Invalid status item {item}")
        # Dovecot's order, whatever the order asked.
        parts = [f"{item} {values[item]}" for item in values if item in items]
        self._untagged(f"STATUS {quote(name)} ({' '.join(parts)})")
        return True

    def do_STATUS(self, tag, name, line):
        try:
            items = tokenize(line)[:1]        # (what follows the list is ignored)
            if len(items) != 1 or not isinstance(items[0], list):
                raise imap4.IllegalClientResponse("Invalid arguments")
            name = self._name(name)
            if self._store_call(tag, self._status_line, name, [_word(i) for i in items[0]])[0]:
                if self.folder is not None and self.folder.name == name:
                    self._ok(tag, "[CLIENTBUG] Status on selected mailbox completed.")
                else:
                    self._ok(tag, "Status completed.")
        except imap4.IllegalClientResponse as exc:
            self._bad(tag, f"Error in IMAP command STATUS: {exc}")

    auth_STATUS = select_STATUS = (do_STATUS, _astring_arg,
                                   imap4.IMAP4Server.arg_line)

    # ---- APPEND

    def do_APPEND(self, tag, name, flags, date, message, more=()):
        """APPEND, and MULTIAPPEND (RFC 3502): more (flags) "date" {literal}
        groups after the first; all are appended in one rewrite, or none."""
        name = self._name(name)
        groups = [(flags, date, message)] + list(more or [])
        batch = []
        for g_flags, g_date, g_message in groups:
            text = g_date.decode() if isinstance(g_date, bytes) else g_date
            when = parse_internal_date(text)
            if text and when is None:
                self._bad(tag, "Error in IMAP command APPEND: Invalid internal date.")
                return
            flag_list = [f.decode() if isinstance(f, bytes) else str(f) for f in (g_flags or [])]
            batch.append((g_message.read(), flag_list, when))
        if not self.store.exists(name):
            self._no(tag, f"[TRYCREATE] Mailbox doesn't exist: {name}")
            return
        ok, result = self._store_call(tag, lambda: self.store.folder(name).append_many(
            batch, envelope=self.user))
        if ok:
            validity, uids = result
            self._refresh(expunges=True)
            self._ok(tag, f"[APPENDUID {validity} {_uid_set(uids)}] Append completed.")

    def _arg_more_appends(self, line):
        """The MULTIAPPEND groups after the first message: [(flags, date, file)]."""
        groups: list = []

        def step(line: bytes):
            line = line.lstrip(b" ")
            if not line:
                return groups, b""
            flags, line = imap4.IMAP4Server.opt_plist(self, line)
            date, line = imap4.IMAP4Server.opt_datetime(self, line.lstrip(b" "))
            d = imap4.IMAP4Server.arg_literal(self, line.lstrip(b" "))

            def got(result):
                groups.append((flags, date, result[0]))
                return step(result[1])
            return d.addCallback(got)
        return step(line)

    def _arg_append_mailbox(self, line):
        """APPEND's mailbox, which cmd-append.c opens before it asks for the
        message: one that does not exist is refused at once, without the
        '+ OK' (a LITERAL+ message, already on its way, is read and dropped)."""
        parsed = _astring_arg(self, line)
        if isinstance(parsed, defer.Deferred):     # a {literal} name: checked once it came
            return parsed.addCallback(self._append_mailbox_named)
        return self._append_mailbox_named(parsed)

    def _append_mailbox_named(self, parsed):
        name, rest = parsed
        rest = rest.lstrip(b" ")         # (after a {literal} name, the line goes on " {n}")
        try:
            mailbox = self._name(name)
            missing = not self.store.exists(mailbox)
        except (imap4.IllegalMailboxEncoding, StoreError, OSError):
            return name, rest          # (do_APPEND says what is wrong with it)
        if missing:
            literal = _LITERAL_ANY.search(rest.rstrip())
            if literal and self._literal_plus:
                self._literal_plus -= 1
                self.parseState = "discard"
                self._pendingLiteral = _Discard(int(literal.group(1)))
                self.setRawMode()
            raise _Refused(f"[TRYCREATE] Mailbox doesn't exist: {mailbox}")
        return name, rest

    auth_APPEND = select_APPEND = (do_APPEND, _arg_append_mailbox,
                                   imap4.IMAP4Server.opt_plist, imap4.IMAP4Server.opt_datetime,
                                   imap4.IMAP4Server.arg_literal, _arg_more_appends)

    # ---- IDLE (ended by DONE only) and new-mail notification

    def do_IDLE(self, tag):
        self._refresh(expunges=True)
        self._idle_tag = tag
        self.sendLine(b"+ idling")
        call_in_reactor(self._start_idle_timer)

    def _start_idle_timer(self) -> None:
        self._idle_timer = self.lab.reactor.callLater(self._keepalive_delay(), self._still_here)

    def _keepalive_delay(self) -> float:
        """imap_keepalive_interval_msecs(): Dovecot does not count the interval
        from the IDLE but wakes every connection from one client address at
        the same moments, when (now + a hash of the address) is a multiple of
        imap_idle_notify_interval (one wake-up for all of a phone's folders).
        The hash (net_ip_hash) of an IPv4 address is its in_addr as a native
        (little-endian) integer, of an IPv6 one an ELF hash of its bytes;
        without an address, the CRC-32 of the user name."""
        interval = int(IDLE_NOTIFY_INTERVAL)
        key = _ip_hash(self.client_ip)
        if key is None:
            key = zlib.crc32((self.user or "").encode())
        now = int(self._clock())
        return float(interval - (now + key) % interval)

    auth_IDLE = select_IDLE = (do_IDLE,)

    def _still_here(self) -> None:
        self._idle_timer = None
        if self._idle_tag is not None:
            self._untagged("OK Still here")
            self._idle_timer = self.lab.reactor.callLater(self._keepalive_delay(), self._still_here)

    def _stop_idle_timer(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle_line(self, line: bytes) -> None:
        tag, self._idle_tag = self._idle_tag, None
        self._stop_idle_timer()
        if line.strip().upper() == b"DONE":
            self._cmd_start = time.monotonic()
            self._ok(tag, "Idle completed.")
        else:
            self._bad(tag, "Expected DONE.")

    def _start_watch(self) -> None:
        """Learn of deliveries to the selected folder: inotify (pushed to an
        idling client at once), with a slow poll as a safety net; where
        inotify is unavailable, the poll every WATCH_INTERVAL seconds."""
        from twisted.internet.task import LoopingCall
        if in_worker():
            call_in_reactor(self._start_watch)
            return
        self._stop_watch()
        self._watch_stat = self._stat()
        self._watch_handle = self.folder.watch(self.lab.reactor, self._check_watch)
        self._watch = LoopingCall(self._check_watch)
        self._watch.clock = self.lab.reactor
        self._watch.start(WATCH_INTERVAL if self._watch_handle is None else SAFETY_POLL,
                          now=False)

    def _stop_watch(self) -> None:
        if in_worker():
            call_in_reactor(self._stop_watch)
            return
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _stat(self):
        return self.folder.stamp() if self.folder is not None else None

    def _check_watch(self) -> None:
        self._retry = None
        if self.folder is None or self._worker_busy:
            return                       # (a command is at the mailbox: it looks itself)
        now = self._stat()
        if now == self._watch_stat:
            return
        self._watch_stat = now
        if self._idle_tag is not None:
            self._run_in_worker(self._idle_refresh)

    def _idle_refresh(self) -> None:
        """(In the mail worker.) Push what changed to the idling client."""
        if not self._refresh(expunges=True, wait=False):
            # Someone (a delivery) holds the lock: look again shortly.
            call_in_reactor(self._retry_watch)

    def _retry_watch(self) -> None:
        self._retry = self.lab.reactor.callLater(RETRY_DELAY, self._check_watch)

    def _refresh(self, expunges: bool, wait: bool = True) -> bool:
        """Tell the client what changed in the selected folder (EXISTS/EXPUNGE/RECENT).

        ``wait=False``: do not wait for a busy lock (False is returned)."""
        if self.folder is None:
            return True
        try:
            state = self.folder.sync(mark_old=not self.readonly, wait=wait)
        except (StoreError, OSError):
            self._watch_stat = None      # look again at the next tick: nothing is missed
            return False
        self._watch_stat = self._stat()
        if state.uidvalidity != self.uidvalidity:
            self._untagged("BYE Mailbox UIDVALIDITY changed")
            self.transport.loseConnection()
            return True
        uids = [m.uid for m in state.messages]
        present = set(uids)
        recent_before = len(self.recent)
        self._new_keywords(state.keywords)      # (another session, an APPEND...)
        if expunges:
            seq = 0
            while seq < len(self.view):
                if self.view[seq] not in present:
                    self._untagged(f"{seq + 1} EXPUNGE")
                    self.recent.discard(self.view[seq])
                    del self.view[seq]
                else:
                    seq += 1
        known = set(self.view)
        new = [m for m in state.messages if m.uid not in known
               and (not self.view or m.uid > self.view[-1])]
        if new:
            self.view.extend(m.uid for m in new)
            self.recent |= {m.uid for m in new if m.recent}
            self._untagged(f"{len(self.view)} EXISTS")
            self._untagged(f"{len(self.recent)} RECENT")
        elif len(self.recent) != recent_before:
            # imap-sync.c: the RECENT count is told again when expunges changed it
            self._untagged(f"{len(self.recent)} RECENT")
        return True

    # ---- selected state

    def do_CHECK(self, tag):
        self._refresh(expunges=True)
        self._ok(tag, "Check completed.")

    def do_CLOSE(self, tag):
        if self.folder is not None and not self.readonly:
            try:
                gone = self.folder.expunge()
                self.counts["expunged"] += len(gone)
            except (StoreError, OSError):
                pass
        self._close_folder()
        self._ok(tag, "Close completed.")

    def do_UNSELECT(self, tag):
        self._close_folder()
        self._ok(tag, "Unselect completed.")

    select_CHECK = (do_CHECK,)
    select_CLOSE = (do_CLOSE,)
    select_UNSELECT = (do_UNSELECT,)

    def _expunge(self, tag, uids=None) -> None:
        if self.readonly:
            # cmd-expunge.c: an EXAMINEd mailbox is only synced; nothing goes
            self._refresh(expunges=True)
            self._ok(tag, "Expunge completed.")
            return
        ok, gone = self._store_call(tag, self.folder.expunge, uids)
        if not ok:
            return
        self.counts["expunged"] += len(gone)
        self._refresh(expunges=True)
        self._ok(tag, "Expunge completed.")

    def do_EXPUNGE(self, tag):
        self._expunge(tag)

    select_EXPUNGE = (do_EXPUNGE,)

    #: SEARCHRES (RFC 5182): the UIDs the last SEARCH RETURN (SAVE) kept, for "$"
    _saved: frozenset = frozenset()

    def _messages(self, state, set_text: str, uid: bool):
        """(seq, message) pairs of the view matching a sequence/UID set."""
        by_uid = {m.uid: m for m in state.messages}
        if set_text == "$":
            return [(i + 1, by_uid[u]) for i, u in enumerate(self.view)
                    if u in self._saved and u in by_uid]
        if uid:
            last = self.view[-1] if self.view else 0
            ranges = parse_set(set_text, last)
            return [(i + 1, by_uid[u]) for i, u in enumerate(self.view)
                    if in_set(u, ranges) and u in by_uid]
        ranges = parse_set(set_text, len(self.view))
        if any(hi > len(self.view) for _lo, hi in ranges):
            raise imap4.IllegalClientResponse("Invalid messageset")
        return [(i + 1, by_uid[u]) for i, u in enumerate(self.view)
                if in_set(i + 1, ranges) and u in by_uid]

    def _current(self):
        state = self.folder.sync(mark_old=not self.readonly)
        return state

    # ---- FETCH

    def _arg_fetchatt(self, line):
        """Twisted's FETCH attribute parser (see :meth:`_arg_fetchatt_twisted`), its
        failures told in Dovecot's words instead of as server errors."""
        text = (line or b"").strip()
        if not text:                    # FETCH 1: a sequence set and no items
            raise imap4.IllegalClientResponse("Invalid arguments")
        if _EMPTY_FIELDS.search(text):  # imap-msgpart.c: a field list cannot be empty
            raise imap4.IllegalClientResponse("Invalid BODY[..] section")
        if text.count(b"(") > text.count(b")"):
            raise imap4.IllegalClientResponse("Missing ')'")
        if text.count(b"[") > text.count(b"]"):
            raise imap4.IllegalClientResponse("Invalid BODY[..] parameter: Missing ']'")
        items, modifiers = _split_fetch_items(text)
        if modifiers and modifiers[:1] != b"(":
            # cmd-fetch.c: after the items, a list of modifiers or nothing
            raise imap4.IllegalClientResponse("Invalid arguments")
        try:
            (query, binaries), rest = self._arg_fetchatt_twisted(items)
            return (query, binaries, modifiers), rest
        except imap4.IllegalClientResponse:
            raise
        except Exception as exc:        # Twisted raises a bare Exception, or worse
            unknown = re.match(rb"Nothing recognized in fetch_att: b'([^' )]*)",
                               str(exc).encode())
            if unknown and unknown.group(1):
                word = unknown.group(1).decode("ascii", "replace").upper()
                raise imap4.IllegalClientResponse(f"Unknown parameter: {word}") from None
            raise imap4.IllegalClientResponse("Invalid arguments") from None

    def _arg_fetchatt_twisted(self, line):
        """Twisted's FETCH attribute parser, with RFC 3516's BINARY[...],
        BINARY.PEEK[...] and BINARY.SIZE[...] taken out first (Twisted does
        not know them): returns ((twisted query, [binary items]), rest)."""
        binaries = []

        def take(m):
            binaries.append({
                "size": bool(m.group("size")), "peek": bool(m.group("peek")),
                "section": m.group("section").decode("ascii"),
                "start": int(m.group("start")) if m.group("start") is not None else None,
                "length": int(m.group("length")) if m.group("length") is not None else None})
            return b""
        rest = _BINARY_ITEM.sub(take, line)

        def extra(m):
            word = m.group(0).split(b"(")[0].strip().upper()
            kind = {b"PREVIEW": "preview", b"SNIPPET": "snippet", b"SAVEDATE": "savedate"}[word]
            binaries.append({"extra": "lazy" if m.group("lazy") else kind})
            return b""
        rest = _EXTRA_ITEM.sub(extra, rest)
        if not binaries:
            query, rest = imap4.IMAP4Server.arg_fetchatt(self, line)
            return (query, []), rest
        for item in binaries:
            if "extra" in item:
                continue
            if item["size"] and (item["peek"] or item["start"] is not None):
                raise imap4.IllegalClientResponse("Invalid BINARY.SIZE")
            if any(not p.isdigit() or p == "0" for p in item["section"].split(".") if
                   item["section"]) or item["section"].endswith("."):
                raise imap4.IllegalClientResponse("Invalid BINARY section")
        rest = b" ".join(rest.split()).replace(b"( ", b"(").replace(b" )", b")")
        if rest in (b"", b"()"):
            return ([], binaries), b""
        query, rest = imap4.IMAP4Server.arg_fetchatt(self, rest)
        return (query, binaries), rest

    def do_FETCH(self, tag, seqset, query, uid=0):
        query, binaries, modifiers = query
        try:
            state = self._current()
            chosen = self._messages(state, seqset.decode("ascii", "replace"), bool(uid))
        except imap4.IllegalClientResponse:
            self._bad(tag, "Error in IMAP command FETCH: Invalid messageset")
            return
        except (StoreError, OSError) as exc:
            self._no(tag, f"[SERVERBUG] {exc}")
            return
        error = _fetch_modifier_error(modifiers, bool(uid))
        if error:
            self._bad(tag, f"Error in IMAP command {self._command}: {error}")
            return
        wants_seen = any(
            (q.type == "body" and not q.peek and (q.header or q.text or q.mime or q.empty))
            or q.type in ("rfc822", "rfc822text") for q in query) or any(
            "extra" not in b and not b["peek"] and not b["size"] for b in binaries)
        seen_now: set[int] = set()
        if wants_seen and not self.readonly:
            unseen = [m.uid for _s, m in chosen if SEEN not in m.flags]
            if unseen:
                try:
                    self.folder.store(unseen, [SEEN], 1)
                    for _s, m in chosen:
                        if m.uid in unseen:
                            m.flags.add(SEEN)
                    seen_now = set(unseen)
                except (StoreError, OSError):
                    pass
        for seq, msg in chosen:
            # Dovecot's order (src/imap/imap-fetch.c): the items it buffers
            # (UID, FLAGS, INTERNALDATE, RFC822.SIZE; the FLAGS of a message
            # this FETCH made \Seen last among them) before all the others,
            # each group in the order asked.
            items: list[bytes] = []
            others: list[bytes] = []
            names = [q.type for q in query]
            if uid and "uid" not in names:
                items.append(b"UID %d" % msg.uid)
            for q in query:
                (items if q.type in _BUFFERED_ITEMS else others).append(self._fetch_item(q, msg))
            for b in binaries:
                if "extra" in b:
                    (items if b["extra"] == "savedate" else others).append(
                        self._extra_item(b["extra"], msg))
                    continue
                try:
                    item = _binary_item(b, msg)
                    if not b["size"]:
                        self._counted(item.partition(b"}\r\n")[2], header=False)
                    others.append(item)
                except _UnknownCTE:
                    self._no(tag, "[UNKNOWN-CTE] Unknown Content-Transfer-Encoding.")
                    return
            if msg.uid in seen_now and "flags" not in names:
                items.append(self._flags_item(msg))
            if self._untold_keywords and any(i.startswith(b"FLAGS ") for i in items):
                # imap-fetch.c: a message's FLAGS first tells the mailbox's new keywords
                self._new_keywords([])
            self.transport.write(b"* %d FETCH (" % seq + b" ".join(items + others) + b")\r\n")
        self._refresh(expunges=False)
        self._sync_ok(tag, "Fetch completed.")

    def _extra_item(self, kind: str, msg: Message) -> bytes:
        """PREVIEW (RFC 8970), SNIPPET (FUZZY) and SAVEDATE (RFC 8514) as Dovecot
        answers them with mbox: no save date is kept."""
        if kind == "savedate":
            return b"SAVEDATE NIL"
        if kind == "lazy":
            # Dovecot 2.3 with mbox answers NIL: the preview is not at hand
            # without reading the message (checked against its imap binary)
            return b"PREVIEW NIL"
        text = preview(msg.wire())
        if kind == "snippet":
            return b"SNIPPET (FUZZY " + imap_string(text) + b")"
        return b"PREVIEW " + imap_string(text)

    def _flags_item(self, msg: Message) -> bytes:
        flags = [f for f in SYSTEM_FLAGS if f in msg.flags]
        return b"FLAGS (" + " ".join(self._with_recent(msg.uid, flags + list(msg.keywords))
                                     ).encode() + b")"

    def _with_recent(self, uid: int, flags: list[str]) -> list[str]:
        """imap-util.c's flag list: the system flags, \\Recent, then the keywords."""
        if uid not in self.recent:
            return flags
        system = [f for f in flags if f.startswith("\\")]
        return system + [RECENT] + [f for f in flags if not f.startswith("\\")]

    def _fetch_item(self, q, msg: Message) -> bytes:
        t = q.type
        if t == "uid":
            return b"UID %d" % msg.uid
        if t == "flags":
            return self._flags_item(msg)
        if t == "rfc822size":
            return b"RFC822.SIZE %d" % msg.size
        if t == "internaldate":
            tm = time.localtime(msg.internal_date or time.time())
            off = -time.altzone if tm.tm_isdst > 0 else -time.timezone
            sign = "+" if off >= 0 else "-"
            text = time.strftime("%d-", tm) + ("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec"
                                               .split()[tm.tm_mon - 1]) + time.strftime(
                "-%Y %H:%M:%S ", tm) + f"{sign}{abs(off) // 3600:02d}{abs(off) % 3600 // 60:02d}"
            return b'INTERNALDATE "' + text.encode() + b'"'
        if t == "envelope":
            return b"ENVELOPE " + imap4.collapseNestedLists([imap4.getEnvelope(_message_part(msg))])
        if t == "bodystructure":
            return b"BODYSTRUCTURE " + bodystructure(msg.wire(), extended=True)
        wire = msg.wire()
        cut = wire.find(b"\r\n\r\n")
        head = wire[:cut + 4] if cut >= 0 else wire
        text = wire[cut + 4:] if cut >= 0 else b""
        if t == "rfc822":
            return b"RFC822 " + _lit(self._counted(wire, header=False))
        if t == "rfc822header":
            return b"RFC822.HEADER " + _lit(self._counted(head, header=True))
        if t == "rfc822text":
            return b"RFC822.TEXT " + _lit(self._counted(text, header=False))
        if t == "body":
            return self._fetch_body(q, msg, wire, head, text)
        raise imap4.IllegalClientResponse(f"Unknown FETCH item {t}")

    def _fetch_body(self, q, msg, wire, head, text) -> bytes:
        if not (q.header or q.text or q.mime or q.empty):
            return b"BODY " + bodystructure(msg.wire(), extended=False)
        part = _message_part(msg)
        section = ".".join(str(p + 1) for p in q.part)
        if q.part:
            try:
                for p in q.part:
                    if part.isMultipart():
                        part = part.getSubPart(p)
                    elif p > 0:
                        raise IndexError(p)
            except IndexError:
                part = None
        if q.part and (q.header or q.text) and part is not None \
                and part.msg.get_content_type() != "message/rfc822":
            part = None        # imap-msgpart.c: HEADER and TEXT of a part are a message's
        if q.header:
            name = "HEADER"
            source = head if not q.part else (part.header_bytes() if part else b"")
            if q.header.fields:
                fields = [f.decode() if isinstance(f, bytes) else f for f in q.header.fields]
                name = "HEADER.FIELDS" + (".NOT" if q.header.negate else "")
                name += " (" + " ".join(f.upper() for f in fields) + ")"
                source = _filter_headers(source, {f.lower() for f in fields}, q.header.negate)
        elif q.text:
            name = "TEXT"
            source = text if not q.part else (part.body_bytes() if part else b"")
        elif q.mime:
            name = "MIME"
            source = part.header_bytes() if part is not None else b""
        else:
            name = ""
            if not q.part:
                source = wire
            elif part is None:
                source = b""
            else:
                source = part.body_bytes()
        label = section + ("." if section and name else "") + name
        out = b"BODY[" + label.encode() + b"]"
        if q.partialBegin is not None:
            start = q.partialBegin
            source = source[start:start + q.partialLength]
            out += b"<%d>" % start
        return out + b" " + _lit(self._counted(source, header=bool(q.header)))

    def _counted(self, data: bytes, header: bool) -> bytes:
        """imap-fetch-body.c's statistics for the logout line: a part without
        the body counts as a header fetch, anything else as a body fetch."""
        kind = "hdr" if header else "body"
        self.counts[f"{kind}_count"] += 1
        self.counts[f"{kind}_bytes"] += len(data)
        return data

    select_FETCH = (do_FETCH, _arg_rawset, _arg_fetchatt)

    # ---- STORE

    def do_STORE(self, tag, seqset, mode, flags, uid=0):
        mode = mode.upper()
        silent = mode.endswith(b".SILENT")
        how = 1 if mode.startswith(b"+") else -1 if mode.startswith(b"-") else 0
        if mode.lstrip(b"+-").split(b".")[0] != b"FLAGS":
            self._bad(tag, "Error in IMAP command STORE: Invalid arguments.")
            return
        flag_list = [f.decode() for f in flags]
        for flag in flag_list:
            if flag.startswith("\\") and flag.lower() not in _SYSTEM_FLAG_NAMES:
                # imap-util.c: \Recent and unknown system flags are refused
                self._bad(tag, f"Error in IMAP command {self._command}: "
                               f"Invalid system flag {flag.upper()}.")
                return
        try:
            state = self._current()
            chosen = self._messages(state, seqset.decode("ascii", "replace"), bool(uid))
        except imap4.IllegalClientResponse:
            self._bad(tag, "Error in IMAP command STORE: Invalid messageset")
            return
        if self.readonly:
            # cmd-store.c: an EXAMINEd mailbox's flags are not changed, and
            # that is not an error
            self._refresh(expunges=False)
            self._ok(tag, "Store ignored with read-only mailbox.")
            return
        ok, result = self._store_call(tag, self.folder.store, [m.uid for _s, m in chosen],
                                      flag_list, how)
        if not ok:
            return
        if DELETED in flag_list and how >= 0:
            self.counts["deleted"] += len(chosen)
        if how >= 0 and chosen:
            self._new_keywords([f for f in flag_list if not f.startswith("\\")])
        if not silent:
            for seq, msg in chosen:
                new = self._with_recent(msg.uid, result.get(msg.uid, []))
                prefix = f"UID {msg.uid} " if uid else ""
                self._untagged(f"{seq} FETCH ({prefix}FLAGS ({' '.join(new)}))")
        self._refresh(expunges=False)
        self._sync_ok(tag, "Store completed.")

    def _arg_flaglist(self, line):
        """Twisted's flag list; none at all (``STORE 1 +FLAGS``) is an empty list, as
        Dovecot takes it."""
        if not (line or b"").strip():
            return [], b""
        return imap4.IMAP4Server.arg_flaglist(self, line)

    select_STORE = (do_STORE, _arg_rawset, imap4.IMAP4Server.arg_atom, _arg_flaglist)

    # ---- COPY / MOVE (UIDPLUS)

    def _copy(self, tag, seqset, name, uid, move: bool) -> None:
        name = self._name(name)
        verb = "Move" if move else "Copy"
        try:
            state = self._current()
            chosen = self._messages(state, seqset.decode("ascii", "replace"), bool(uid))
        except imap4.IllegalClientResponse:
            self._bad(tag, f"Error in IMAP command {verb.upper()}: Invalid messageset")
            return
        if not self.store.exists(name):
            self._no(tag, f"[TRYCREATE] Mailbox doesn't exist: {name}")
            return
        if not chosen:
            self._ok(tag, "No messages found.")
            return
        ok, result = self._store_call(tag, lambda: self.store.folder(name).add_messages(
            [m for _s, m in chosen]))
        if not ok:
            return
        validity, new_uids = result
        if self._is_trash(name):
            # cmd-copy.c: copies into a \Trash special-use mailbox count as trashed
            self.counts["trashed"] += len(new_uids)
        src = ",".join(str(m.uid) for _s, m in chosen)
        dst = ",".join(str(u) for u in new_uids)
        code = f"[COPYUID {validity} {src} {dst}]"
        if move:
            self._untagged(f"OK {code} Moved UIDs.")
            if not self._store_call(tag, self.folder.remove, [m.uid for _s, m in chosen])[0]:
                return
            self._refresh(expunges=True)
            self._ok(tag, "Move completed.")
        else:
            self._refresh(expunges=False)
            self._ok(tag, f"{code} Copy completed.")

    def _is_trash(self, name: str) -> bool:
        return any(n == name and "\\trash" in (use or "").lower().split()
                   for n, use, _a in self.settings.special_use)

    def do_COPY(self, tag, seqset, name, uid=0):
        self._copy(tag, seqset, name, uid, move=False)

    def do_MOVE(self, tag, seqset, name, uid=0):
        self._copy(tag, seqset, name, uid, move=True)

    select_COPY = (do_COPY, _arg_rawset, imap4.IMAP4Server.arg_finalastring)
    select_MOVE = (do_MOVE, _arg_rawset, imap4.IMAP4Server.arg_finalastring)

    # ---- SEARCH (ESEARCH, WITHIN), SORT, THREAD

    def _search(self, keys: list) -> list[tuple[int, Message]]:
        """(seq, message) of the view matching SEARCH criteria."""
        program = compile_search(keys)          # parsed once, without recursion
        state = self._current()
        self._register_keywords(program.keywords, state.keywords)
        by_uid = {m.uid: m for m in state.messages}
        hits = []
        ctx = SearchContext(count=len(self.view), last_uid=self.view[-1] if self.view else 0,
                            recent=self.recent, now=time.time(), saved=self._saved)
        for seq, u in enumerate(self.view, 1):
            msg = by_uid.get(u)
            if msg is not None and program.matches(seq, msg, ctx):
                hits.append((seq, msg))
        return hits

    def _register_keywords(self, words: list[str], stored: list[str]) -> None:
        """mail_search_args_init(): a valid keyword a search names that the
        mailbox does not have (in any case) becomes one of its keywords, and
        the client is told the new FLAGS when the command syncs, after its
        results. EXAMINEd, the mailbox file is not written: Dovecot's index
        keeps the keyword for this session only."""
        known = {k.lower() for k in self.keywords + self._untold_keywords + list(stored)}
        new = []
        for word in words:
            if word.lower() in known or len(word) > MAX_KEYWORD_LENGTH \
                    or split_flags([word])[1] != [word]:
                continue
            known.add(word.lower())
            new.append(word)
        if not new:
            return
        if self.readonly:
            self._unsaved_keywords.setdefault(self.folder.name, []).extend(new)
        else:
            self.folder.define_keywords(new)
        self._untold_keywords += new

    def _charset(self, tag, name: str) -> bool:
        try:
            codecs.lookup(name)
            return True
        except LookupError:
            pass
        # imap-search-args.c: Dovecot names no charsets in the code
        self._no(tag, "[BADCHARSET] Unknown charset.")
        return False

    def do_SEARCH(self, tag, line, uid=0):
        verb = "UID SEARCH" if uid else "SEARCH"
        try:
            keys = tokenize(line)
            returns = None
            if len(keys) >= 2 and _word(keys[0]) == "RETURN" and isinstance(keys[1], list):
                returns = [_word(r) for r in keys[1]] or ["ALL"]
                unknown = [r for r in returns if r not in ("MIN", "MAX", "COUNT", "ALL", "SAVE")]
                if unknown:
                    raise imap4.IllegalClientResponse(f"Unknown return option: {unknown[0]}")
                keys = keys[2:]
            if keys and _word(keys[0]) == "CHARSET":
                if len(keys) < 2:
                    raise imap4.IllegalClientResponse("Invalid charset argument")
                if isinstance(keys[1], list):
                    raise imap4.IllegalClientResponse("Invalid charset")
                if not self._charset(tag, str(keys[1])):
                    return
                keys = keys[2:]
            found = self._search(keys)
            hits = [msg.uid if uid else seq for seq, msg in found]
        except (imap4.IllegalClientResponse, IndexError, ValueError) as exc:
            self._bad(tag, f"Error in IMAP command {verb}: {exc or 'Invalid arguments'}")
            return
        except (TypeError, AttributeError):      # a list where a string goes: HEADER (x) y
            self._bad(tag, f"Error in IMAP command {verb}: Invalid arguments")
            return
        except (StoreError, OSError) as exc:
            self._no(tag, f"[SERVERBUG] {exc}")
            return
        if returns is None:
            self._untagged("SEARCH" + "".join(f" {h}" for h in hits))
        else:
            if "SAVE" in returns:
                # RFC 5182: with MIN and/or MAX only those are kept
                uids = [m.uid for _s, m in found]
                kept = uids
                if ("MIN" in returns or "MAX" in returns) and not \
                        ("ALL" in returns or "COUNT" in returns) and uids:
                    kept = sorted({uids[0] if "MIN" in returns else uids[-1],
                                   uids[-1] if "MAX" in returns else uids[0]})
                self._saved = frozenset(kept)
            shown = [r for r in returns if r != "SAVE"]
            if shown:
                self._untagged(self._esearch(tag, uid, hits, shown, sort_order=False))
        self._sync_ok(tag, "Search completed.")

    @staticmethod
    def _esearch(tag, uid: int, hits: list[int], returns: list[str], sort_order: bool) -> str:
        """RFC 4731 ESEARCH (RFC 5267 ESORT with ``sort_order``: MIN, MAX and
        ALL follow the sort), items in Dovecot's order."""
        text = f'ESEARCH (TAG "{_b(tag).decode("ascii", "replace")}")'
        if uid:
            text += " UID"
        if hits:
            low, high = (hits[0], hits[-1]) if sort_order else (min(hits), max(hits))
            if "MIN" in returns:
                text += f" MIN {low}"
            if "MAX" in returns:
                text += f" MAX {high}"
            if "ALL" in returns:
                text += f" ALL {_in_order_set(hits) if sort_order else _uid_set(hits)}"
        if "COUNT" in returns:
            text += f" COUNT {len(hits)}"
        return text

    select_SEARCH = (do_SEARCH, imap4.IMAP4Server.arg_line)

    def _sort_items(self, tag, verb: str, line: bytes, uid: int, first_is_list: bool):
        """(first argument, [Info]) for SORT/THREAD, or None after an error reply."""
        try:
            args = tokenize(line)
            if len(args) < 3 or isinstance(args[0], list) != first_is_list \
                    or isinstance(args[1], list):
                raise imap4.IllegalClientResponse("Invalid arguments.")
            first = args[0]
            if first_is_list:
                first = imap_sort.parse_sort_criteria(first)
            else:
                first = str(first).upper()
                if first not in imap_sort.THREAD_ALGORITHMS:
                    raise imap4.IllegalClientResponse(f"Unknown thread algorithm: {args[0]}")
            if not self._charset(tag, str(args[1])):
                return None
            hits = self._search(args[2:])
        except (imap4.IllegalClientResponse, imap_sort.SortError, IndexError, ValueError) as exc:
            self._bad(tag, f"Error in IMAP command {verb}: {exc or 'Invalid arguments'}")
            return None
        except (StoreError, OSError) as exc:
            self._no(tag, f"[SERVERBUG] {exc}")
            return None
        return first, [imap_sort.info(msg.uid if uid else seq, seq, msg) for seq, msg in hits]

    def do_SORT(self, tag, line, uid=0):
        returns = None
        words = (line or b"").split(None, 1)
        if words and words[0].upper() == b"RETURN":            # RFC 5267 ESORT
            m = re.match(rb"(?i)RETURN\s*\(([^()]*)\)\s*(.*)$", line.strip(), re.S)
            if not m:
                self._bad(tag, f"Error in IMAP command {'UID ' if uid else ''}SORT: "
                               "Invalid arguments.")
                return
            returns = [w.decode().upper() for w in m.group(1).split()] or ["ALL"]
            if any(r not in ("MIN", "MAX", "COUNT", "ALL") for r in returns):
                self._bad(tag, f"Error in IMAP command {'UID ' if uid else ''}SORT: "
                               "Invalid arguments.")
                return
            line = m.group(2)
        got = self._sort_items(tag, "UID SORT" if uid else "SORT", line, uid, True)
        if got is None:
            return
        criteria, items = got
        numbers = imap_sort.sort(items, criteria)
        if returns is None:
            self._untagged("SORT" + "".join(f" {n}" for n in numbers))
        else:
            self._untagged(self._esearch(tag, uid, numbers, returns, sort_order=True))
        self._new_keywords([])
        self._ok(tag, "Sort completed.")

    def do_THREAD(self, tag, line, uid=0):
        got = self._sort_items(tag, "UID THREAD" if uid else "THREAD", line, uid, False)
        if got is None:
            return
        algorithm, items = got
        if algorithm == "ORDEREDSUBJECT":
            roots = imap_sort.thread_orderedsubject(items)
        elif algorithm == "REFS":
            roots = imap_sort.thread_refs(items)
        else:
            roots = imap_sort.thread_references(items)
        threads = imap_sort.format_threads(roots)
        self._untagged(f"THREAD {threads}")     # (cmd-thread.c: "* THREAD " even when empty)
        self._new_keywords([])
        self._ok(tag, "Thread completed.")

    select_SORT = (do_SORT, imap4.IMAP4Server.arg_line)
    select_THREAD = (do_THREAD, imap4.IMAP4Server.arg_line)

    # ---- UID

    def do_UID(self, tag, command, line):
        command = command.upper()
        if command == b"EXPUNGE":
            if not (line or b"").strip():
                self._bad(tag, "Error in IMAP command UID EXPUNGE: Missing arguments.")
                return
            try:
                ranges = parse_set((line or b"").strip().decode("ascii", "replace"),
                                   self.view[-1] if self.view else 0)
            except imap4.IllegalClientResponse:
                self._bad(tag, "Error in IMAP command UID EXPUNGE: Invalid uidset")
                return
            self._run_in_worker(self._expunge, tag, [u for u in self.view if in_set(u, ranges)],
                                tag=tag)
            return
        if command not in (b"FETCH", b"STORE", b"COPY", b"MOVE", b"SEARCH", b"SORT", b"THREAD"):
            self._bad(tag, f"Error in IMAP command UID {command.decode('ascii', 'replace')}: "
                           f"Unknown command.")
            return
        self.dispatchCommand(tag, command, line, uid=1)

    select_UID = (do_UID, imap4.IMAP4Server.arg_atom, imap4.IMAP4Server.arg_line)


def _ip_hash(ip: str) -> int | None:
    """Dovecot's net_ip_hash() of an address (None if it is not one)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "little")
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip)
    except OSError:
        return None
    h = 0
    for byte in packed:
        h = ((h << 4) + byte) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
            h ^= g
    return h


def _word(token) -> str | None:
    """An atom, upper-cased; None for a parenthesized list (never printed:
    it may be nested thousands deep)."""
    return None if isinstance(token, list) else str(token).upper()


def _b(tag) -> bytes:
    if tag is None:
        return b"*"
    return tag if isinstance(tag, bytes) else str(tag).encode()


def _lit(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _in_order_set(numbers) -> str:
    """ESORT's ALL: the numbers in sort order, runs of consecutive ascending
    numbers written as ranges (``14,11,16,3:4,6``)."""
    parts: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = n
    if start is not None:
        parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def _uid_set(uids) -> str:
    """``[3, 4, 5, 9]`` → ``3:5,9``."""
    out: list[str] = []
    uids = sorted(uids)
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(str(uids[i]) if i == j else f"{uids[i]}:{uids[j]}")
        i = j + 1
    return ",".join(out)


class _ParserError(imap4.IllegalClientResponse):
    """Dovecot's IMAP parser refused the line (``Missing '"'``)."""


class _Refused(Exception):
    """An argument parser's NO: the command ends there (its text is the reply's)."""


class _UnknownCTE(Exception):
    """A part whose Content-Transfer-Encoding BINARY cannot undo."""


def _find_part(msg: Message, section: str):
    """The _Part of a section number ("1.2"), the whole message for ""; None if absent."""
    part = _message_part(msg)
    if not section:
        return part
    try:
        for p in (int(x) - 1 for x in section.split(".")):
            if part.isMultipart():
                part = part.getSubPart(p)
            elif p > 0:
                return None
    except IndexError:
        return None
    return part


def _split_fetch_items(text: bytes) -> tuple[bytes, bytes]:
    """FETCH's items (an atom such as ``BODY[HEADER.FIELDS (A B)]``, or a
    list) and what follows them (cmd-fetch.c: a list of modifiers, or nothing)."""
    depth = 0
    for i, byte in enumerate(text):
        if byte in b"([":
            depth += 1
        elif byte in b")]":
            depth -= 1
        if depth <= 0 and (byte == 0x20 or (byte == 0x29 and text[:1] == b"(")):
            end = i if byte == 0x20 else i + 1
            return text[:end], text[end:].strip()
    return text, b""


def _fetch_modifier_error(modifiers: bytes, uid: bool) -> str | None:
    """cmd-fetch.c fetch_parse_modifiers(): what Dovecot says of the first
    modifier of ``(...)``, or None for an empty list. CHANGEDSINCE with a valid
    value is an unknown modifier here: gponsim does not implement CONDSTORE
    (Dovecot would enable it); VANISHED needs QRESYNC, never enabled."""
    words: list[str | None] = []        # the list's atoms; None: something else
    i = 1
    while i < len(modifiers) and modifiers[i:i + 1] != b")":
        c = modifiers[i:i + 1]
        if c == b" ":
            i += 1
            continue
        if c in (b'"', b"(", b"{"):
            words.append(None)
            break
        j = i
        while j < len(modifiers) and modifiers[j:j + 1] not in (b" ", b"(", b")"):
            j += 1
        words.append(modifiers[i:j].decode("ascii", "replace").upper())
        i = j
    if not words:
        return None
    if words[0] is None:
        return "FETCH modifiers contain non-atoms."
    if words[0] == "CHANGEDSINCE":
        value = words[1] if len(words) > 1 else None
        if value is None or not re.fullmatch(r"[0-9]+", value) or int(value) >= 2 ** 64:
            return "Invalid CHANGEDSINCE modseq."
    elif words[0] == "VANISHED" and uid:
        return "QRESYNC not enabled"
    return "Unknown FETCH modifier"


def _binary_item(b: dict, msg: Message) -> bytes:
    """One ``BINARY[section]`` / ``BINARY.SIZE[section]`` item (RFC 3516):
    the part's content with its transfer encoding (base64, quoted-printable)
    undone; 7bit, 8bit and binary parts as they are."""
    section = b["section"]
    decoded = False
    if not section:
        data = msg.wire()
    else:
        part = _find_part(msg, section)
        if part is None:
            data = b""
        elif part.isMultipart():
            raise _UnknownCTE()
        else:
            cte = str(part.msg.get("Content-Transfer-Encoding", "7bit")).strip().lower()
            body = part.body_bytes()
            if cte in ("7bit", "8bit", "binary", ""):
                data = body
            elif cte == "base64":
                try:
                    data = base64.b64decode(b"".join(body.split()), validate=False)
                except (binascii.Error, ValueError):
                    raise _UnknownCTE() from None
                decoded = True
            elif cte == "quoted-printable":
                data = binascii.a2b_qp(body)
                decoded = True
            else:
                raise _UnknownCTE()
    if b["size"]:
        return b"BINARY.SIZE[%s] %d" % (section.encode(), len(data))
    label = b"BINARY[%s]" % section.encode()
    if b["start"] is not None:
        data = data[b["start"]:b["start"] + b["length"]]
        label += b"<%d>" % b["start"]
    # Dovecot sends a decoded part as a literal8 (~{n}), 7bit/8bit ones as {n}.
    prefix = b"~" if decoded or b"\0" in data else b""
    return label + b" " + prefix + b"{%d}\r\n" % len(data) + data


def _filter_headers(head: bytes, names: set[str], negate: bool) -> bytes:
    out = []
    keep = False
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        keep = (name in names) != negate
        if keep:
            out.append(line)
    return b"".join(x + b"\r\n" for x in out) + b"\r\n"


# --------------------------------------------------------------------------
# SEARCH's dates and headers (the criteria themselves: imap_search.py)


def parse_internal_date(text: str | None) -> float | None:
    """APPEND's date-time ``"01-Jan-2024 12:00:00 +0100"`` -> epoch seconds."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d{1,2})-(\w{3})-(\d{4}) (\d\d:\d\d:\d\d) ([+-]\d{4})\s*", text)
    if not m:
        return None
    parsed = email.utils.parsedate_tz(
        f"{m.group(1)} {m.group(2)} {m.group(3)} {m.group(4)} {m.group(5)}")
    return float(email.utils.mktime_tz(parsed)) if parsed else None


def _search_date(text) -> float:
    try:
        t = time.strptime(text, "%d-%b-%Y")
    except (TypeError, ValueError):             # not a date, or a list
        raise imap4.IllegalClientResponse("Invalid search date parameter") from None
    return time.mktime(t)


def _header_contains(msg: Message, name: str, needle: str) -> bool:
    parsed = email.message_from_bytes(msg.headers, policy=email.policy.compat32)
    values = parsed.get_all(name) or []
    if not needle:
        return bool(values)
    return any(needle.lower() in str(v).lower() for v in values)


class ImapFactory(LoginFactory):
    protocol = ImapServer

