"""Dovecot's LMTP service (``dovecot-lmtpd``): mail for the local mailboxes,
handed over by Postfix's lmtp(8) on a Unix socket.

It runs when ``protocols`` includes ``lmtp``, on every ``unix_listener`` of
``service lmtp`` in 10-master.conf, under the lab root — in the LMTP variant
of the lab ``/var/spool/postfix/private/dovecot-lmtp`` (mode 0600, user
postfix: what main.cf's ``mailbox_transport = lmtp:unix:private/dovecot-lmtp``
connects to). It is the SMTP server engine (:mod:`gponsim.server.smtpserver`)
with Dovecot 2.3.19's LMTP policy, as recorded from the real program
(docs/lmtp.md)::

    220 mail.gponlab.local Dovecot (Debian) ready.
    LHLO → 250-mail.gponlab.local / 8BITMIME / CHUNKING / ENHANCEDSTATUSCODES / PIPELINING
    MAIL → 250 2.1.0 OK
    RCPT → 250 2.1.5 OK   or   550 5.1.1 <user2@gponlab.local> User doesn't exist: user2@gponlab.local
    DATA → 354 OK, then one reply per accepted recipient:
           250 2.0.0 <user2@gponlab.local> <session id> Saved

RCPT looks the user up as Dovecot does: the address without its ``+detail``
(``recipient_delimiter``), checked against ``auth_username_chars``, formatted
with ``auth_username_format`` (``protocol lmtp { }`` first; Dovecot's
default ``%Lu`` keeps the domain) and searched in the passwd-file. The lab's
users are ``user1``, ``user2``: without ``auth_username_format = %Ln`` every
full address is refused — the classic pitfall, faithfully.

Each accepted recipient's copy is saved into its INBOX (``mail_location``)
through the lab's mail store, with the headers Dovecot's LMTP adds:
``Return-Path:``, ``Delivered-To:`` (one recipient only) and ``Received:
from <LHLO name> by <hostname> with LMTP id <id> (envelope-from <...>)``.
Dovecot's log lines go to mail.log::

    dovecot[pid]: lmtp(12345): Connect from local
    dovecot[pid]: lmtp(user2)<12345><KFJXOFk8FmvRdgAAg+zDdQ>: msgid=<...>: saved mail to INBOX
    dovecot[pid]: lmtp(12345): Disconnect from local: Logged out (state=READY)

Every line is a Step (proto ``lmtp``, ``lmtp`` ↔ ``dovecot-lmtp``). When the
client is the lab's own lmtp(8) (:mod:`gponsim.server.inprocess`), the
client narrates the wire and this side only adds Dovecot's log events, in
the client's session.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, protocol, threads

from gponsim.server import inprocess
from gponsim.server.maillog import MailLog, pid_for
from gponsim.server.mailstore.interface import MailStore
from gponsim.server.mailstore.location import MailLocation, open_store, parse_mail_location
from gponsim.server.smtpserver import DATA, SmtpServer
from gponsim.server.unixpath import give_socket, socket_address, socket_folder
from gponsim.steps import Emit, Step, null_emit
from gponsim.wire import smtp as wire

CAPABILITIES = ["8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING"]
#: Dovecot's ``auth_username_chars`` default: a user name with any other
#: character is not looked up at all.
USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@")
#: The longest command parameters Dovecot's smtp-server reads (then "Line too long").
MAX_PARAMETERS = 4096
_VERB = re.compile(r"[A-Za-z]{1,32}")
_LOCAL_CHARS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass
class LmtpSettings:
    """What Dovecot's LMTP service reads from the profile."""

    hostname: str = "mail.gponlab.local"        #: ``hostname`` (empty: the machine's)
    greeting: str = "Dovecot (Debian) ready."   #: ``login_greeting``
    username_format: str = "%Lu"                #: ``auth_username_format`` for lmtp
    recipient_delimiter: str = "+"
    mail_location: MailLocation = field(default_factory=lambda: parse_mail_location(""))
    timeout: float = 300.0

    @property
    def inbox_template(self) -> str:
        """Where a user's INBOX is, as the lab shows it (``/var/mail/%u``)."""
        return self.mail_location.inbox or "/var/mail/%u"


def settings_from_profile(profile) -> LmtpSettings:
    location = profile.mail_location()
    return LmtpSettings(
        hostname=profile.dovecot("hostname") or profile.main("myhostname"),
        greeting=profile.dovecot("login_greeting") or "Dovecot ready.",
        username_format=profile.protocol_setting("lmtp", "auth_username_format") or "%Lu",
        recipient_delimiter=profile.protocol_setting("lmtp", "recipient_delimiter"),
        mail_location=location)


# --------------------------------------------------------------------------
# Names and texts

def format_username(template: str, user: str) -> str:
    """Dovecot's ``%u %n %d`` (with ``L``/``U`` modifiers, ``%%``) for one user name."""
    local, at, domain = user.rpartition("@") if "@" in user else (user, "", "")

    def value(modifier: str, var: str) -> str:
        v = {"u": user, "n": local, "d": domain}[var]
        return v.lower() if modifier == "L" else v.upper() if modifier == "U" else v
    return re.sub(r"%(?:(%)|([LU]?)([und]))",
                  lambda m: "%" if m.group(1) else value(m.group(2), m.group(3)), template)


def strip_detail(address: str, delimiters: str) -> str:
    """``user2+lab@gponlab.local`` → ``user2@gponlab.local`` (the first delimiter found)."""
    local, at, domain = address.rpartition("@") if "@" in address else (address, "", "")
    for i, ch in enumerate(local):
        if delimiters and ch in delimiters:
            local = local[:i]
            break
    return local + at + domain


def session_guid(pid: int, hostname: str, when: float | None = None) -> str:
    """A Dovecot session id: a 128-bit GUID (nanoseconds, seconds, pid, host
    hash; little-endian) in base64 without padding, 22 characters."""
    now = time.time() if when is None else when
    raw = struct.pack("<IIII", int((now % 1) * 1e9), int(now) & 0xFFFFFFFF, pid & 0xFFFFFFFF,
                      zlib.crc32(hostname.encode()))
    return base64.b64encode(raw).decode().rstrip("=")


def received_date(when: float) -> str:
    """``Mon, 07 Dec 2026 04:54:50 +0000`` (zero-padded day, numeric zone)."""
    tm = time.localtime(when)
    offset = tm.tm_gmtoff or 0
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return (f"{_DAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year} "
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{hours:02d}{minutes:02d}")


def parse_path(text: str, keyword: str, *, null_ok: bool) -> tuple[str | None, str, str]:
    """``FROM:<a@b> PARAMS`` → (address, params, error). ``error`` is
    Dovecot's text after ``Invalid FROM: `` / ``Invalid TO: `` ("" when fine)."""
    if not text[:len(keyword) + 1].upper() == keyword + ":":
        return None, "", "parameters"
    rest = text[len(keyword) + 1:]
    if rest == "":
        return None, "", "Path is empty string"
    if rest[0] in " \t":
        return None, "", "Unexpected whitespace before path"
    if rest[0] != "<":
        return None, "", "Missing '<' at beginning of path"
    end = rest.find(">")
    if end < 0:
        return None, "", "Missing '>' at end of path"
    path, params = rest[1:end], rest[end + 1:]
    if params and params[0] != " ":
        return None, "", "Invalid character in path"
    if path.startswith("@") and ":" in path:            # a source route: dropped
        path = path.split(":", 1)[1]
    if path == "":
        return ("", params.strip(), "") if null_ok else (None, "", "Null path not allowed")
    local, at, domain = path.rpartition("@") if "@" in path else (path, "", "")
    if not _LOCAL_CHARS.fullmatch(local):
        return None, "", "Invalid character in localpart"
    if at and not domain:
        return None, "", "Missing domain after '@'"
    return path, params.strip(), ""


# --------------------------------------------------------------------------
# The service

@dataclass
class _Recipient:
    address: str
    user: str            #: the userdb's name for it (after auth_username_format)
    number: int          #: position of its RCPT in the transaction (1 = first)


class LmtpService:
    """The ``lmtp`` service: its listeners and what its sessions share."""

    def __init__(self, lab_root: str | os.PathLike, settings: LmtpSettings, *,
                 user_exists: Callable[[str], bool], log: MailLog | None = None,
                 emit: Emit = null_emit, reactor: Any = None,
                 clock: Callable[[], float] = time.time, save_in_thread: bool = True,
                 tls_options=None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.root = Path(lab_root)
        self.settings = settings
        self.user_exists = user_exists
        self.log = log
        self.emit = emit
        self.reactor = reactor
        self.clock = clock
        self.save_in_thread = save_in_thread
        #: Dovecot's ssl_cert/ssl_key when ``ssl`` is not ``no``: LHLO offers STARTTLS
        self.tls_options = tls_options
        self.pid = pid_for("dovecot/lmtp")
        self.ports: list = []
        self.paths: list[Path] = []
        self._connections = 0

    def write_log(self, text: str) -> None:
        if self.log is not None:
            self.log.write("dovecot", pid_for("dovecot"), text)

    def next_connection(self) -> int:
        self._connections += 1
        return self._connections

    # ---------------------------------------------------------- listening

    def listen(self, path: str | os.PathLike, mode: int = 0o600, user: str = "",
               group: str = ""):
        """Create the socket at ``path`` (a real path under the lab root) and
        listen. Its mode is ``mode``; run as root, it is given to ``user`` and
        ``group`` when they exist, as Dovecot does."""
        path = Path(path)
        socket_folder(path)
        _clear_stale_socket(path)
        port = self.reactor.listenUNIX(socket_address(path), _Factory(self, path), mode=mode)
        give_socket(path, mode, user, group)
        self.ports.append(port)
        self.paths.append(path)
        return port

    def stop(self) -> defer.Deferred:
        ports, self.ports, self.paths = self.ports, [], []
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports])

    # ---------------------------------------------------------------- users

    def lookup(self, address: str) -> tuple[str, str | None]:
        """(the name Dovecot reports, the userdb user or None) for a RCPT address."""
        username = strip_detail(address, self.settings.recipient_delimiter)
        if not username or any(ch not in USERNAME_CHARS for ch in username):
            return username, None
        user = format_username(self.settings.username_format, username)
        return username, (user if self.user_exists(user) else None)

    def store_for(self, user: str) -> MailStore:
        return open_store(self.root, user, self.settings.mail_location)


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket nobody listens on (a crashed run); refuse a live one."""
    import errno
    import stat

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(socket_address(path))
    except OSError:
        os.unlink(path)
    else:
        raise OSError(errno.EADDRINUSE, f"{path} is in use: another LMTP server listens there")
    finally:
        probe.close()


class _Factory(protocol.ServerFactory):
    def __init__(self, service: LmtpService, path: Path) -> None:
        self.service = service
        self.path = path

    def buildProtocol(self, addr):
        proto = DovecotLmtp(self.service, self.path)
        proto.factory = self
        return proto


# --------------------------------------------------------------------------
# One connection

class DovecotLmtp(SmtpServer):
    """One LMTP session: the engine with Dovecot's LMTP policy."""

    proto = "lmtp"
    server_actor = "dovecot-lmtp"
    client_actor = "lmtp"

    def __init__(self, service: LmtpService, path: Path) -> None:
        super().__init__("lmtp", timeout=service.settings.timeout,
                         tls_options=service.tls_options)
        self.service = service
        self.path = path
        self.settings = service.settings
        self.lhlo: str | None = None
        #: False when the lab's own lmtp(8) is the client: it narrates the wire
        self.wire_steps = True
        self.number = 0
        self.base_id = ""
        self.transactions = 0
        self.quitting = False
        self.timed_out = False
        self._bdat_last = False
        self._bdat_failed = False
        #: smtp-server's state stays GREETING until LHLO, MAIL, RSET or STARTTLS
        self.greeted = False
        self._reset()

    def _reset(self) -> None:
        self.sender: str | None = None
        self.rcpt_commands = 0
        self.recipients: list[_Recipient] = []
        self.reset_message()

    # -------------------------------------------------------------- output

    def emit(self, step: Step) -> None:
        if self.wire_steps or step.kind == "event":
            self.service.emit(step)

    def log_event(self, verb: str, text: str, dst: str = "dovecot-lmtp", **meta) -> None:
        """One of Dovecot's log lines: written to mail.log and emitted as a Step."""
        self.service.write_log(text)
        self.emit(wire.event_step(verb, text, session=self.session, src="dovecot-lmtp",
                                  dst=dst, proto="lmtp",
                                  meta={k: v for k, v in meta.items() if v is not None}))

    def state(self) -> str:
        if self.mode == DATA or self._raw_remaining or self.message_parts:
            return "DATA"
        if self.recipients:
            return "RCPT TO"
        if self.sender is not None:
            return "MAIL FROM"
        return "READY" if self.greeted else "GREETING"

    def transaction_id(self) -> str:
        return self.base_id if self.transactions <= 1 else f"{self.base_id}:T{self.transactions}"

    def recipient_id(self, rcpt: _Recipient) -> str:
        tid = self.transaction_id()
        return tid if rcpt.number <= 1 else f"{tid}:R{rcpt.number}"

    # ---------------------------------------------------------- connection

    def greet(self) -> None:
        claimed = inprocess.claim(self.path)
        if claimed is not None:
            self.session = claimed
            self.wire_steps = False
        svc = self.service
        self.number = svc.next_connection()
        self.base_id = session_guid(svc.pid, self.settings.hostname, svc.clock())
        self.log_event("CONNECTED", f"lmtp({svc.pid}): Connect from local",
                       path=str(self.path))
        self.reply(220, f"{self.settings.hostname} {self.settings.greeting}", "CONNECT")

    def lost(self) -> None:
        why = "Logged out" if self.quitting else "Disconnected for inactivity" \
            if self.timed_out else "Connection closed (unfinished BDAT command)" \
            if self._raw_remaining else "Connection closed (unfinished DATA command)" \
            if self.mode == DATA else "Connection closed"
        self.log_event("DISCONNECTED", f"lmtp({self.service.pid}): Disconnect from local: "
                                       f"{why} (state={self.state()})")

    def timeoutConnection(self) -> None:
        """After 5 minutes of silence (Dovecot's CLIENT_IDLE_TIMEOUT_MSECS)."""
        self.reply(421, f"4.4.2 {self.settings.hostname} Disconnected for inactivity", "TIMEOUT")
        self.timed_out = True
        self.transport.loseConnection()

    def line_too_long(self) -> None:
        self.reply(500, "5.5.2 Line too long", "UNKNOWN")

    # --------------------------------------------------------------- input

    def state_COMMAND(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "surrogateescape")
        self.emit(self.command_step(line))
        verb, sep, args = line.partition(" ")
        if not verb.strip():
            self.reply(500, "5.5.1 Unknown command", "UNKNOWN")
            return
        if not _VERB.fullmatch(verb) or (sep and args[:1] == " "):
            self.reply(500, "5.5.2 Invalid command syntax", "UNKNOWN")
            return
        if len(args.encode("utf-8", "surrogateescape")) > MAX_PARAMETERS:
            self.reply(500, "5.5.2 Line too long", verb.upper())
            return
        if not self.dispatch(verb.upper(), args):
            self.reply(500, "5.5.1 Unknown command", verb.upper())

    def _no_params(self, verb: str, args: str) -> bool:
        if args:
            self.reply(501, "5.5.4 Invalid parameters", verb)
            return False
        return True

    # ------------------------------------------------------------ commands

    def cmd_LHLO(self, args: str) -> None:
        if not args.strip():
            self.reply(501, "Missing hostname", "LHLO")
            return
        self.lhlo = args.strip()
        self.greeted = True
        self._reset()
        # STARTTLS while Dovecot has a certificate (ssl = yes) and TLS is not on yet
        tls = ["STARTTLS"] if self.ctx is not None and not self.tls else []
        self.reply(250, [self.settings.hostname, *CAPABILITIES, *tls], "LHLO")

    def cmd_STARTTLS(self, args: str) -> None:
        if self.ctx is None:
            self.reply(500, "5.5.1 Unknown command", "STARTTLS")
            return
        if not self._no_params("STARTTLS", args):
            return
        if self.tls:
            self.reply(502, "5.5.1 TLS is already active.", "STARTTLS")
            return
        self.greeted = True
        self.reply(220, "2.0.0 Begin TLS negotiation now.", "STARTTLS")
        self.start_tls()

    def cmd_MAIL(self, args: str) -> None:
        if self.sender is not None:
            self.reply(503, "5.5.0 MAIL already given", "MAIL")
            return
        sender, params, error = parse_path(args, "FROM", null_ok=True)
        if error:
            self.reply(501, "5.5.4 Invalid parameters" if error == "parameters"
                       else f"5.5.4 Invalid FROM: {error}", "MAIL")
            return
        for param in params.split():
            key, _, value = param.partition("=")
            if key.upper() == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                continue
            self.reply(555, "5.5.4 Unsupported mail BODY type" if key.upper() == "BODY"
                       else "5.5.4 Unsupported parameters", "MAIL")
            return
        self.sender = sender
        self.greeted = True
        self.transactions += 1
        self.reply(250, "2.1.0 OK", "MAIL")

    def cmd_RCPT(self, args: str) -> None:
        if self.sender is None:
            self.reply(503, "5.5.0 MAIL needed first", "RCPT")
            return
        address, params, error = parse_path(args, "TO", null_ok=False)
        if error:
            self.reply(501, "5.5.4 Invalid parameters" if error == "parameters"
                       else f"5.5.4 Invalid TO: {error}", "RCPT")
            return
        if any(p.partition("=")[0].upper() != "ORCPT" for p in params.split()):
            self.reply(555, "5.5.4 Unsupported parameters", "RCPT")
            return
        self.rcpt_commands += 1
        shown, user = self.service.lookup(address)
        if user is None:
            self.reply(550, f"5.1.1 <{address}> User doesn't exist: {shown}", "RCPT")
            return
        self.recipients.append(_Recipient(address, user, self.rcpt_commands))
        self.reply(250, "2.1.5 OK", "RCPT")

    def cmd_DATA(self, args: str) -> None:
        if not self._no_params("DATA", args):
            return
        if self.sender is None:
            self.reply(503, "5.5.0 MAIL needed first", "DATA")
            return
        if not self.recipients:
            self.reply(503, "5.5.0 No valid recipients", "DATA")
            return
        self.start_data()
        self.reply(354, "OK", "DATA")

    def message_received(self, message: bytes, verb: str) -> None:
        self._deliver(message, verb)

    def cmd_BDAT(self, args: str) -> None:
        parts = args.split()
        if not parts or not parts[0].isdigit() or len(parts) > 2 or \
                (len(parts) == 2 and parts[1].upper() != "LAST"):
            self.reply(501, "5.5.4 Invalid parameters", "BDAT")
            return
        self._bdat_last = len(parts) == 2
        self.read_chunk(int(parts[0]), self._bdat_chunk)

    def _bdat_chunk(self) -> None:
        if self._bdat_failed:
            self.reset_message()
            self.reply(503, "5.5.0 Previous data chunk failed, issue RSET first", "BDAT")
            return
        if self.sender is None or not self.recipients:
            self._bdat_failed = self.sender is not None
            self.reset_message()
            self.reply(503, "5.5.0 MAIL needed first" if self.sender is None
                       else "5.5.0 No valid recipients", "BDAT")
            return
        if not self._bdat_last:
            self.reply(250, f"2.0.0 Added {self.message_size} octets", "BDAT")
            return
        message = self.chunked_message()
        self.emit(wire.message_step(message, session=self.session, verb="BDAT", src="lmtp",
                                    dst="dovecot-lmtp", proto="lmtp", size=self.wire_size))
        self._deliver(message, "BDAT")

    def cmd_RSET(self, args: str) -> None:
        if self._no_params("RSET", args):
            self._bdat_failed = False
            self.greeted = True
            self._reset()
            self.reply(250, "2.0.0 OK", "RSET")

    def cmd_NOOP(self, args: str) -> None:
        self.reply(250, "2.0.0 OK", "NOOP")

    def cmd_VRFY(self, args: str) -> None:
        if not args:
            self.reply(501, "5.5.4 Invalid parameters", "VRFY")
        elif " " in args and not (args.startswith('"') and args.endswith('"')):
            # the parameter is one SMTP string (an atom or a quoted string)
            self.reply(501, "5.5.4 Invalid string parameter: Invalid character in string", "VRFY")
        else:
            self.reply(252, "2.3.3 Try RCPT instead", "VRFY")

    def cmd_QUIT(self, args: str) -> None:
        if self._no_params("QUIT", args):
            self.quitting = True
            self.reply(221, "2.0.0 Bye", "QUIT")
            self.transport.loseConnection()

    # ------------------------------------------------------------ delivery

    def _deliver(self, message: bytes, verb: str) -> None:
        """Save one copy per recipient (a worker thread), then one reply each."""
        sender = self.sender or ""
        rcpts = list(self.recipients)
        tid = self.transaction_id()
        now = self.service.clock()
        single = len(rcpts) == 1
        msgid = _message_id(message)
        work = [(r, self._headers(sender, r, tid, now, single) + message) for r in rcpts]
        self._reset()

        def save_all():
            out = []
            for rcpt, content in work:
                try:
                    self.service.store_for(rcpt.user).folder("INBOX", create=True).append(
                        content, when=now, envelope=sender)
                    out.append((rcpt, None))
                except Exception as exc:  # noqa: BLE001 - reported as Dovecot does
                    out.append((rcpt, _error_text(exc)))
            return out

        def replied(results):
            svc = self.service
            for rcpt, error in results:
                prefix = f"lmtp({rcpt.user})<{svc.pid}><{self.recipient_id(rcpt)}>"
                if error is None:
                    self.log_event("SAVED", f"{prefix}: msgid={msgid}: saved mail to INBOX",
                                   dst="mailbox", user=rcpt.user, recipient=rcpt.address,
                                   mailbox=self.settings.inbox_template.replace("%u", rcpt.user),
                                   session_id=self.recipient_id(rcpt))
                    self.reply(250, f"2.0.0 <{rcpt.address}> {self.recipient_id(rcpt)} Saved", verb)
                else:
                    self.log_event("SAVE_FAILED", f"{prefix}: msgid={msgid}: save failed to "
                                                  f"INBOX: {error}", dst="mailbox",
                                   user=rcpt.user, recipient=rcpt.address)
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
                    self.reply(451, f"4.2.0 <{rcpt.address}> Internal error occurred. Refer to "
                                    f"server log for more information. [{stamp}]", verb)

        if self.service.save_in_thread:
            d = threads.deferToThreadPool(self.service.reactor,
                                          self.service.reactor.getThreadPool(), save_all)
        else:
            d = defer.maybeDeferred(save_all)
        d.addCallback(replied)
        d.addErrback(lambda f: self.reply(451, "4.3.0 Temporary internal error", verb))
        self.wait_for(d)

    def _headers(self, sender: str, rcpt: _Recipient, tid: str, now: float,
                 single: bool) -> bytes:
        lines = [f"Return-Path: <{sender}>"]
        if single:
            lines.append(f"Delivered-To: {rcpt.address}")
        lines += [f"Received: from {self.lhlo or 'unknown'}",
                  f"\tby {self.settings.hostname} with LMTP", f"\tid {tid}"]
        if single:
            lines += [f"\t(envelope-from <{sender}>)",
                      f"\tfor <{rcpt.address}>; {received_date(now)}"]
        else:
            lines.append(f"\t(envelope-from <{sender}>); {received_date(now)}")
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def _message_id(message: bytes) -> str:
    """The Message-ID header's value for Dovecot's ``msgid=`` (``unspecified`` without one)."""
    end = message.find(b"\n\n")
    head = message[:end if end >= 0 else len(message)].replace(b"\r\n", b"\n")
    m = re.search(rb"^message-id:[ \t]*(.*(?:\n[ \t].*)*)", head, re.I | re.M)
    if not m:
        return "unspecified"
    value = b" ".join(m.group(1).split()).decode("utf-8", "replace")
    return value[:80] or "unspecified"


def _error_text(exc: Exception) -> str:
    """How Dovecot names a failed mailbox open/write."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"Mailbox INBOX: open() failed with mbox: {os.strerror(exc.errno)}"
    return f"Mailbox INBOX: {exc}"


def start_lmtp(lab, emit: Emit | None = None) -> LmtpService | None:
    """The lab's LMTP service, when ``protocols`` includes ``lmtp``: one
    listener per ``unix_listener`` of ``service lmtp`` (under the lab root)."""
    profile = lab.profile
    if not profile.lmtp_enabled():
        return None
    ssl = profile.dovecot("ssl").strip().lower()
    service = LmtpService(lab.root, settings_from_profile(profile),
                          user_exists=lab.users.exists, log=lab.log,
                          emit=emit or lab.emit, reactor=lab.reactor,
                          tls_options=getattr(lab, "dovecot_tls_options", None)
                          if ssl in ("yes", "required") else None)
    for path, listener in profile.lmtp_socket_paths():
        service.listen(profile.path(path, lab.root), listener.mode, listener.user,
                       listener.group)
    return service


__all__ = ["DovecotLmtp", "LmtpService", "LmtpSettings", "format_username", "parse_path",
           "session_guid", "settings_from_profile", "start_lmtp", "strip_detail"]
