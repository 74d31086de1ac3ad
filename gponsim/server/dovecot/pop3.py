"""Dovecot's POP3 (ports 110 and 995) on Twisted's POP3 protocol.

Twisted's :class:`~twisted.mail.pop3.POP3` gives the line handling, the
idle timeout and command pipelining (``blocked``); this subclass answers like
Dovecot 2.3 (lab-facts §4.2): greeting, CAPA with RFC 2449 names before and
after login (not Twisted's ``PIPELINE`` or its joke capabilities), STLS,
USER/PASS and AUTH (SASL PLAIN/LOGIN, with initial response) through the
lab's Dovecot auth socket (``service=pop3``), ``-ERR [AUTH]`` texts, and
STAT LIST UIDL TOP RETR DELE RSET NOOP QUIT on the user's INBOX, through the
mailbox interface (:mod:`gponsim.server.mailstore.interface`). Messages
marked with DELE are removed at QUIT; retrieved ones become \\Seen. Every
line is a Step (:mod:`gponsim.wire.pop3`).
"""

from __future__ import annotations

import base64
import re
import secrets
import time

from twisted.internet import interfaces
from twisted.mail import pop3
from twisted.python import log as twlog
from zope.interface import implementer

from gponsim.server.dovecot.imap import ImapContext
from gponsim.server.mailstore.interface import SEEN, StoreError
from gponsim.server.dovecot.login import UNAUTHENTICATED_LOGOUT, next_mpid, LoginCommon, LoginFactory
from gponsim.server.dovecot.mailwork import MailWork, worker_of
from gponsim.server.mailstore.worker import call_in_reactor, in_worker
from gponsim.server.postfix.xsasl import AuthUnavailable
from gponsim.steps import new_session
from gponsim.wire import smtp as smtp_wire
from gponsim.wire.pop3 import Pop3Conversation

PRE_AUTH = frozenset({"CAPA", "USER", "PASS", "AUTH", "STLS", "QUIT", "APOP"})
#: pop3's CLIENT_MAX_BAD_COMMANDS: a logged-in client whose failed commands
#: in a row pass this is dropped ("-ERR Too many bad commands.")
MAX_BAD_COMMANDS = 20
#: the largest message number (an unsigned int) and TOP line count (uoff_t)
_MAX_UINT = 2 ** 32 - 1
_MAX_UOFF = 2 ** 64 - 1
_DIGITS = re.compile(r"[0-9]+")


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _base64(text: str) -> bool:
    """Whether an AUTH argument or answer is base64 as Dovecot's decoder
    takes it ("=" alone is an empty initial response)."""
    return bool(_BASE64.fullmatch(text)) and (len(text) % 4 == 0 or text == "=")


class _Refused(Exception):
    """A command's argument was refused (the -ERR has been sent)."""


class _Tap:
    def __init__(self, transport, server: "Pop3Server") -> None:
        self._t = transport
        self._server = server

    def write(self, data: bytes) -> None:
        if in_worker():                  # QUIT's mailbox work: written in order, by the reactor
            call_in_reactor(self.write, data)
            return
        self._server._emit_all(self._server.conv.server_data(data))
        self._t.write(data)

    def loseConnection(self) -> None:
        call_in_reactor(self._t.loseConnection)

    def writeSequence(self, seq) -> None:
        for data in seq:
            self.write(data)

    def __getattr__(self, name):
        return getattr(self._t, name)


@implementer(interfaces.IHandshakeListener)
class Pop3Server(MailWork, LoginCommon, pop3.POP3):
    ACTOR, STARTTLS_VERB = "pop3", "STLS"
    BYE_PREFIX = b"-ERR "
    #: the longest command line (without CRLF) pop3 takes once logged in;
    #: 2047 bytes get "-ERR Input line too long." (measured on Dovecot 2.3.19)
    MAX_LENGTH = 2046
    #: before login, pop3-login takes at most this many bytes after the
    #: command name and its space; more: "-ERR Input buffer full, aborting"
    MAX_LOGIN_ARGS = 1024
    delimiter = b"\r\n"

    def __init__(self, ctx: ImapContext, tls_options=None, implicit_tls: bool = False) -> None:
        self.lab = ctx
        self.settings = ctx.settings
        self.ctx = tls_options
        self.tls = implicit_tls
        self._starttls = False
        self.session = new_session("pop3s" if implicit_tls else "pop3")
        self.conv = Pop3Conversation(self.session, tls=implicit_tls)
        self.user: str | None = None
        self.pending_user: str | None = None
        self.folder = None
        self.messages = []
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()
        self.stats = {"top": [0, 0], "retr": [0, 0]}
        self._auth = None          # (request id, mech) while AUTH is in progress
        self._mech = None
        self._failed = 0
        self._last_user = None
        self._logged_out = False
        self._failed_command = False
        self._bad_in_a_row = 0
        #: why a logged-in session ended, for its "Disconnected:" line
        self._end_reason = "Connection closed"
        self._connected_at = time.time()
        self._dovecot_session = base64.b64encode(secrets.token_bytes(12)).decode()[:16]
        self.mpid = next_mpid()
        self.blocked = None
        self.state = "COMMAND"

    # ------------------------------------------------------------ plumbing

    def makeConnection(self, transport):
        super().makeConnection(_Tap(transport, self))

    _after_stls = False

    def dataReceived(self, data: bytes) -> None:
        self._emit_all(self.conv.client_data(data))
        self._after_stls = False
        super().dataReceived(data)

    @property
    def plaintext_ok(self) -> bool:
        return self.secured or not self.settings.disable_plaintext_auth

    def ok(self, text: str = "") -> None:
        self.sendLine(("+OK " + text if text else "+OK").encode("utf-8"))

    def err(self, text: str) -> None:
        self._failed_command = True
        self.sendLine(("-ERR " + text).encode("utf-8"))

    def connectionMade(self) -> None:
        self._addresses()
        self.lab.emit(smtp_wire.event_step(
            "CONNECT", f"connect from {self.client_ip}", session=self.session, proto="pop3",
            src="client", dst="pop3",
            meta={"port": getattr(self.transport.getHost(), "port", None),
                  "client_ip": self.client_ip}))
        self.setTimeout(self.settings.login_timeout)
        self._greet_when_secure()

    def _greet(self) -> None:
        self.ok(self.settings.greeting)

    _gone = False

    def connectionLost(self, reason=None) -> None:
        self._gone = True
        self.setTimeout(None)
        self._anvil_disconnect()
        if self._handshaking and not self._refused:
            self._handshake_lost(reason)
        if self.user and not self._logged_out:
            self.lab.log(f"pop3({self.user})<{self.mpid}><{self._dovecot_session}>: "
                         f"Disconnected: {self._end_reason} {self._stats()}")
        elif not self.user and not self._refused:     # (a refusal logged its own line)
            self._note_tls_eof(reason)
            self.lab.log(self._login_disconnect_line(self._last_user, self._mech))
        self.lab.emit(smtp_wire.event_step("DISCONNECT", "disconnect", session=self.session,
                                           proto="pop3", src="client", dst="pop3",
                                           tls=self.tls and not self._handshaking))

    def _stats(self) -> str:
        size = sum(m.size for m in self.messages)
        dels = sum(self.messages[i].size for i in self.deleted)
        return (f"top={self.stats['top'][0]}/{self.stats['top'][1]}, "
                f"retr={self.stats['retr'][0]}/{self.stats['retr'][1]}, "
                f"del={len(self.deleted)}/{len(self.messages)}, size={size}"
                + ("" if not dels else ""))

    def timeoutConnection(self) -> None:
        if self.user is None:
            self._login_timed_out()
            return
        self.err("Disconnected for inactivity.")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line):
        if self.user is None:
            self._login_disconnect("Input buffer full", b"-ERR Input buffer full, aborting")
            return
        self.err("Input line too long.")
        self._end_reason = "Input line too long"
        self.transport.loseConnection()

    # -------------------------------------------------------------- dispatch

    def state_COMMAND(self, line: bytes) -> None:
        if self._after_stls:
            return                      # plaintext that followed STLS in the same read
        if self._auth is not None:
            self._auth_line(line)
            return
        text = line.decode("utf-8", "replace")
        # Dovecot: the command name ends at the first space; leading spaces of
        # the arguments are skipped, anything else is kept ("LIST 1 " is noise)
        verb, _, args = text.partition(" ")
        verb = verb.upper()
        if self.user is None and len(line) - len(verb) - 1 > self.MAX_LOGIN_ARGS:
            self.lineLengthExceeded(line)
            return
        if self.user is not None:           # (pop3-login keeps them: "USER  x" is " x")
            args = args.lstrip(" ")
        if self.blocked is not None:
            self.blocked.append((verb, (args,)))
            return
        self.processCommand(verb, args)

    def processCommand(self, verb, *args):
        if self.blocked is not None:
            self.blocked.append((verb, args))
            return
        args_text = args[0] if args else ""
        if isinstance(verb, bytes):
            verb = verb.decode()
        handler = getattr(self, "cmd_" + verb, None) if verb.isalpha() else None
        if self.user is None:
            if handler is None or verb not in PRE_AUTH:
                self.err("Unknown command.")
                self._invalid_command()
                return
            self._bad_commands = 0          # pop3-login: a valid command starts the count again
            handler(args_text)
            return
        self._failed_command = False
        if handler is None or verb in ("USER", "PASS", "AUTH", "STLS", "APOP"):
            # (a line starting with a space has an empty name)
            self.err(f"Unknown command: {verb}" if verb else "Unknown command.")
        else:
            try:
                handler(args_text)
            except _Refused:
                pass
        self._count_command()

    def _count_command(self) -> None:
        """pop3's bad_counter: failed commands in a row; the 21st drops the client."""
        if not self._failed_command:
            self._bad_in_a_row = 0
            return
        self._bad_in_a_row += 1
        if self._bad_in_a_row > MAX_BAD_COMMANDS and not self._logged_out:
            self.err("Too many bad commands.")
            self._end_reason = "Too many bad commands."
            self.transport.loseConnection()

    def _invalid_command(self) -> bool:
        """pop3-login answers every unknown command; at the third in a row it
        adds its last word and drops the client."""
        self._bad_commands += 1
        if self._bad_commands >= self.MAX_BAD_COMMANDS:
            self._login_disconnect("Disconnected: Too many bad commands",
                                   b"-ERR Too many invalid bad commands.")
            return True
        return False

    def _hold(self):
        self.blocked = []

    def _release(self):
        if self._gone:                 # the client left while auth was answering
            self.blocked = None
            return
        if self._worker_busy:          # released when the mailbox work is done
            return
        if self.blocked is not None:
            commands, self.blocked = self.blocked, None
            while commands and self.blocked is None and not self.transport.disconnecting:
                verb, args = commands.pop(0)
                self.processCommand(verb, *args)
            if self.blocked is not None:
                self.blocked.extend(commands)

    # ------------------------------------------------------------ pre-login

    def capabilities(self) -> list[str]:
        caps = ["CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
        if self.user is None:
            if self.ctx is not None and not self.tls:
                caps.append("STLS")
            if self.plaintext_ok:
                caps.append("USER")
                caps.append("SASL " + " ".join(self.settings.mechanisms))
            else:
                caps.append("SASL")
        return caps

    def cmd_CAPA(self, args: str) -> None:
        lines = ["+OK"] + self.capabilities() + ["."]
        self.transport.write("".join(line + "\r\n" for line in lines).encode())

    def cmd_STLS(self, args: str) -> None:
        if self.tls:
            self.err("TLS is already active.")
            return
        if self.ctx is None:
            self.err("TLS support isn't enabled.")
            return
        self.ok("Begin TLS negotiation now.")
        # Lines pipelined after STLS came in clear: discard them, as Dovecot does.
        self._buffer = b""
        self._after_stls = True
        self._start_tls()

    def cmd_QUIT(self, args: str) -> None:
        if self.user is None:
            self.ok("Logging out")
            self._login_end = UNAUTHENTICATED_LOGOUT
            self.transport.loseConnection()
            return
        if not in_worker():            # the INBOX is rewritten: in the mail worker
            self._run_in_worker(self.cmd_QUIT, args)
            return
        removed = False
        try:
            if self.retrieved - self.deleted:
                self.folder.store([self.messages[i].uid for i in self.retrieved - self.deleted],
                                  [SEEN], 1)
            if self.deleted:
                self.folder.remove([self.messages[i].uid for i in self.deleted])
                removed = True
        except (StoreError, OSError) as exc:
            self.err(f"[SYS/TEMP] Couldn't delete messages: {exc}")
            self.transport.loseConnection()
            return
        self.ok("Logging out, messages deleted." if removed else "Logging out.")
        self._logged_out = True
        self.lab.log(f"pop3({self.user})<{self.mpid}><{self._dovecot_session}>: Disconnected: "
                     f"Logged out {self._stats()}")
        self.transport.loseConnection()

    def cmd_USER(self, args: str) -> None:
        if not self.plaintext_ok:
            self._plaintext_refused(None)
            self.err("[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) "
                     "connections.")
            return
        # as typed, spaces included; an empty name is accepted too (the auth
        # server refuses both at PASS)
        self.pending_user = args
        self.ok()

    def cmd_APOP(self, args: str) -> None:
        # no passdb of the lab gives plaintext passwords: pop3-login sent no
        # APOP challenge in its greeting
        self._verbose_failure("APOP failed: APOP not enabled")
        self.err("APOP not enabled.")

    def _verbose_failure(self, text: str) -> None:
        """auth_verbose = yes: pop3-login says why an attempt failed, in its
        log format (an element whose value is empty, as method= before any
        AUTH, is left out)."""
        if not self.settings.auth_verbose:
            return
        who = f"user=<{self._last_user or ''}>, " + (f"method={self._mech}, " if self._mech else "")
        self.lab.log(f"pop3-login: {text}: {who}{self._addr_text()}")

    def cmd_PASS(self, args: str) -> None:
        if self.pending_user is None:
            self.err("No username given.")
            return
        user, self.pending_user = self.pending_user, None
        self._last_user = user
        resp = base64.b64encode(b"\0" + user.encode() + b"\0" + args.encode()).decode()
        self._mech = "PLAIN"
        self._start_sasl("PLAIN", resp)

    def cmd_AUTH(self, args: str) -> None:
        words = args.split()
        if not words:
            lines = ["+OK"] + list(self.settings.mechanisms) + ["."]
            self.transport.write("".join(line + "\r\n" for line in lines).encode())
            self.conv.in_auth = False
            return
        mech = words[0].upper()
        if mech not in self.settings.mechanisms:
            self.conv.in_auth = False
            self._login_attempts += 1
            self._login_started = self._login_started or time.time()
            self._mech = mech
            self._last_auth_fail = "tried to use unsupported auth mechanism"
            self._verbose_failure(f"Authenticate {mech} failed: Unsupported authentication "
                                  "mechanism.")
            self.err("[AUTH] Unsupported authentication mechanism.")
            return
        if not self.plaintext_ok:
            self.conv.in_auth = False
            self._plaintext_refused(None)
            self.err("[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) "
                     "connections.")
            return
        initial = words[1] if len(words) > 1 else None
        self._mech = mech
        if initial is not None and not _base64(initial):
            # the auth server refuses it at once, without delay or penalty
            # (the lab's client checks it itself, as Postfix's does); with
            # auth_verbose it says so in the auth process's words
            self.conv.in_auth = False
            self._login_attempts += 1
            self._login_started = self._login_started or time.time()
            self._last_auth_fail = "sent invalid base64 in response"
            if self.settings.auth_verbose:
                self.lab.log(f"auth: {mech.lower()}(?,{self.client_ip},"
                             f"<{self._dovecot_session}>): Invalid base64 data in initial "
                             "response")
            self.err("[AUTH] Invalid base64 data in initial response")
            return
        self._start_sasl(mech, initial)

    def _start_sasl(self, mech: str, resp: str | None) -> None:
        if self.lab.auth is None:
            self.err("[SYS/TEMP] Temporary authentication failure.")
            return
        self._login_attempts += 1
        self._login_started = self._login_started or time.time()
        self._last_auth_fail = None
        self._hold()
        d = self.lab.auth.start(mech, service="pop3", lip=self.server_ip, rip=self.client_ip,
                                secured=self.secured, resp_b64=resp, session=self.session,
                                nologin=False, login_session=self._dovecot_session)
        d.addCallbacks(self._sasl_reply, self._sasl_error)

    def _sasl_reply(self, reply) -> None:
        if self._gone:                 # the client left while auth was answering:
            self._auth = None          # no login (Dovecot drops the request)
            return
        if reply.kind == "CONT":
            self._auth = reply.request_id
            self.sendLine(b"+ " + reply.challenge.encode("ascii"))
            self.blocked = None        # the next line is the client's answer
            return
        self._auth = None
        self.conv.in_auth = False
        if reply.kind == "OK" and (refusal := self._userip_refusal(reply.user)):
            self.err(f"[SYS/TEMP] {refusal}")
            self._refuse_userip(reply.user, self._mech or "PLAIN", refusal)
        elif reply.kind == "OK":
            self._open_inbox(reply.user)
        else:
            self._failed += 1
            self._last_auth_fail = None
            if reply.user:
                self._last_user = reply.user
            if reply.reason and "aborted" in reply.reason.lower():
                self.err("Authentication aborted by client.")
            else:
                # login-common shows the auth server's reason, when it gives one
                self.err(f"[AUTH] {reply.reason or 'Authentication failed.'}")
        self._release()

    def _sasl_error(self, failure) -> None:
        self._auth = None
        self.conv.in_auth = False
        if not failure.check(AuthUnavailable):
            twlog.err(failure)
        self.err("[SYS/TEMP] Temporary authentication failure.")
        self._release()

    def _auth_line(self, line: bytes) -> None:
        rid, self._auth = self._auth, None
        text = line.decode("ascii", "replace").strip()
        if text == "*" or not _base64(text):
            # the client gave up, or answered with what is not base64:
            # login-common ends the request itself
            self.lab.auth.abort(rid)
            self._failed += 1
            self._auth_abandoned = True
            self.conv.in_auth = False
            if text != "*":
                self._verbose_failure(f"Authenticate {self._mech} failed: Invalid base64 in "
                                      "response")
            self.err("Authentication aborted by client." if text == "*"
                     else "[AUTH] Invalid base64 in response")
            return
        self._hold()
        self.lab.auth.respond(rid, text, session=self.session).addCallbacks(
            self._sasl_reply, self._sasl_error)

    # ---- the INBOX is read, and rewritten at QUIT, in the mail worker

    def _hold_input(self) -> None:
        self._hold()

    def _release_input(self) -> None:
        self._release()

    def _open_inbox(self, user: str) -> None:
        """Read (and give UIDs to) the user's INBOX in the mail worker, then
        log in: the login itself finds it parsed."""
        self._worker_busy = True
        self._hold()
        d = worker_of(self.lab).run(user, self._read_inbox, user)
        d.addErrback(lambda failure: None)     # told by _logged_in, which tries again
        d.addBoth(lambda _: self._inbox_read(user))

    def _read_inbox(self, user: str) -> None:
        self.lab.store_for(user).folder("INBOX").sync()

    def _inbox_read(self, user: str) -> None:
        self._worker_busy = False
        if self._gone:
            return
        self._logged_in(user)
        self._release()

    def _logged_in(self, user: str) -> None:
        try:
            store = self.lab.store_for(user)
            self.folder = store.folder("INBOX")
            # a read-write session: the messages are no longer \Recent for IMAP
            state = self.folder.sync(mark_old=True)
        except (StoreError, OSError) as exc:
            self.err(f"[SYS/TEMP] {exc}")
            return
        self.user = user
        self._anvil_connect(user)
        self.uidvalidity = state.uidvalidity
        self.messages = state.messages
        self.setTimeout(600)
        self.lab.log(f"pop3-login: Login: user=<{user}>, method={self._mech}, "
                     f"rip={self.client_ip}, lip={self.server_ip}, mpid={self.mpid}"
                     + (", TLS" if self.tls else ", secured" if self.secured else "")
                     + f", session=<{self._dovecot_session}>")
        self.ok("Logged in.")

    # ------------------------------------------------------------- logged in

    def _msgnum(self, args: str, then_space: bool = False) -> tuple[int, str]:
        """Dovecot's get_msgnum: a message number (digits first), then either
        the end of the arguments or a space (``then_space``); returns the
        0-based index and what follows, its leading spaces skipped. Refused
        with Dovecot's -ERR text (``_Refused``)."""
        m = _DIGITS.match(args)
        if m is None:
            self._refuse(f"Invalid message number: {args}")
        rest = args[m.end():]
        n = int(m.group())
        if n > _MAX_UINT:
            self._refuse(f"Message number too large: {rest}")
        if rest[:1] != (" " if then_space else ""):
            self._refuse(f"Noise after message number: {rest}")
        if n == 0 or n > len(self.messages):
            self._refuse(f"There's no message {n}.")
        if n - 1 in self.deleted:
            self._refuse("Message is deleted.")
        return n - 1, rest.lstrip(" ")

    def _size(self, args: str) -> int:
        """Dovecot's get_size (TOP's line count): digits, then nothing."""
        m = _DIGITS.match(args)
        if m is None:
            self._refuse(f"Invalid size: {args}")
        rest = args[m.end():]
        n = int(m.group())
        if n > _MAX_UOFF:
            self._refuse(f"Size too large: {args}")
        if rest:
            self._refuse(f"Noise after size: {rest}")
        return n

    def _refuse(self, text: str):
        self.err(text)
        raise _Refused(text)

    def cmd_STAT(self, args: str) -> None:
        alive = [m for i, m in enumerate(self.messages) if i not in self.deleted]
        self.ok(f"{len(alive)} {sum(m.size for m in alive)}")

    def cmd_LIST(self, args: str) -> None:
        if args:
            i, _ = self._msgnum(args)
            self.ok(f"{i + 1} {self.messages[i].size}")
            return
        alive = [(i, m) for i, m in enumerate(self.messages) if i not in self.deleted]
        lines = [f"+OK {len(alive)} messages:"] + [f"{i + 1} {m.size}" for i, m in alive] + ["."]
        self.transport.write("".join(line + "\r\n" for line in lines).encode())

    def _uidl(self, msg) -> str:
        # Dovecot's default pop3_uidl_format = %08Xu%08Xv: var_expand's X
        # modifier writes hexadecimal in lower case
        return f"{msg.uid:08x}{self.uidvalidity:08x}"

    def cmd_UIDL(self, args: str) -> None:
        if args:
            i, _ = self._msgnum(args)
            self.ok(f"{i + 1} {self._uidl(self.messages[i])}")
            return
        lines = ["+OK"] + [f"{i + 1} {self._uidl(m)}" for i, m in enumerate(self.messages)
                           if i not in self.deleted] + ["."]
        self.transport.write("".join(line + "\r\n" for line in lines).encode())

    def _send_message(self, data: bytes, first: str) -> int:
        """Send ``first``, the message (dot-stuffed) and the final dot; returns
        what Dovecot's retr=/top= byte counters add: the bytes from the +OK line
        to the end of the message (the final ".\r\n" not included)."""
        lines = data.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
        body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                        for line in lines)
        head = first.encode() + b"\r\n"
        self.transport.write(head + body + b".\r\n")
        return len(head) + len(body)

    def cmd_RETR(self, args: str) -> None:
        i, _ = self._msgnum(args)
        self._fetch(i, None, "retr")

    def _fetch(self, i: int, lines: int | None, counter: str) -> None:
        """Send message ``i``: whole (``lines`` None: "+OK n octets", and it
        becomes \\Seen at QUIT), or its header and first ``lines`` body lines."""
        data = self.messages[i].wire()
        if lines is None:
            self.retrieved.add(i)
            first = f"+OK {len(data)} octets"
        else:
            cut = data.find(b"\r\n\r\n")
            head, body = (data[:cut + 4], data[cut + 4:]) if cut >= 0 else (data, b"")
            kept = body.split(b"\r\n")
            if kept[-1] == b"":
                kept.pop()                   # (the last line's CRLF is not a line of its own)
            data = head + b"".join(line + b"\r\n" for line in kept[:lines])
            first = "+OK"
        self.stats[counter][0] += 1
        self.stats[counter][1] += self._send_message(data, first)

    def cmd_TOP(self, args: str) -> None:
        i, rest = self._msgnum(args, then_space=True)
        lines = self._size(rest)
        # the largest count, (uoff_t)-1, is Dovecot's "no limit": RETR's answer
        self._fetch(i, None if lines == _MAX_UOFF else lines, "top")

    def cmd_DELE(self, args: str) -> None:
        i, _ = self._msgnum(args)
        self.deleted.add(i)
        self.ok("Marked to be deleted.")

    def cmd_RSET(self, args: str) -> None:
        # Dovecot forgets the deletions and the messages RETR would mark \\Seen
        self.deleted.clear()
        self.retrieved.clear()
        self.ok()

    def cmd_NOOP(self, args: str) -> None:
        self.ok()


class Pop3Factory(LoginFactory):
    protocol = Pop3Server
