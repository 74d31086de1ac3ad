"""smtpd: Postfix's SMTP server (ports 25 and 587).

The SMTP engine (:mod:`gponsim.server.smtpserver`: lines in order, DATA and
BDAT, Steps, STARTTLS) with Postfix 3.7's policy on Debian (lab-facts §2):
the banner, EHLO keywords in Postfix's order, STARTTLS gating on submission,
AUTH through the Dovecot auth socket, restrictions evaluated at RCPT, the
queue file opened at the first accepted recipient and fsync'd before
``250 ... queued as``, BDAT, and Postfix's log lines.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.python import log as twlog

from gponsim.server.offline import smtp
from gponsim.server.postfix.address import (command_words, extract_address, own_address_set,
                                            valid_hostname)
from gponsim.server.postfix.restrictions import (
    RcptContext, UnsupportedRestriction, Verdict, check_recipient,
)
from gponsim.server.smtpserver import AUTH, COMMAND, SmtpServer
from gponsim.server.smtpserver import DATA
from gponsim.server.tls import alert_text, handshake_failure, key_exchange_summary
from gponsim.steps import null_emit
from gponsim.wire import smtp as wire

#: Postfix's smtpd command table order, used for the disconnect log counts.
COMMAND_ORDER = ("helo", "ehlo", "xclient", "xforward", "starttls", "auth", "mail", "rcpt",
                 "data", "bdat", "rset", "noop", "vrfy", "etrn", "quit")
#: Commands allowed before STARTTLS when TLS is enforced (smtpd.c PRE_TLS).
PRE_TLS = frozenset({"EHLO", "HELO", "STARTTLS", "NOOP", "QUIT", "XCLIENT"})

#: Commands after which a client must wait for the reply (smtpd.c's
#: SMTPD_CMD_FLAG_LAST): more input already there is "improper pipelining".
LAST_IN_GROUP = frozenset({"HELO", "EHLO", "DATA", "NOOP", "VRFY"})


def _escape(data: bytes) -> str:
    """Postfix's escape(): C escapes for control characters (``\\r\\n``)."""
    named = {0x07: "\\a", 0x08: "\\b", 0x09: "\\t", 0x0a: "\\n", 0x0b: "\\v",
             0x0c: "\\f", 0x0d: "\\r", 0x5c: "\\\\"}
    return "".join(named.get(b) or (chr(b) if 0x20 <= b < 0x7f else f"\\{b:03o}")
                   for b in data)


_HEADER = re.compile(r"^[!-9;-~]+:")
#: smtpd_forbidden_commands: a web browser or proxy talking to port 25.
FORBIDDEN = frozenset({"CONNECT", "GET", "POST"})


@dataclass
class SmtpdSettings:
    """What one smtpd service (a master.cf line) needs from the lab profile."""

    service: str = "smtp"
    syslog_name: str = "postfix"
    myhostname: str = "mail.gponlab.local"
    banner: str = "mail.gponlab.local ESMTP Postfix (Debian/GNU)"
    local_domains: frozenset = frozenset({"mail.gponlab.local", "gponlab.local",
                                          "localhost.localdomain", "localhost"})
    myorigin: str = "gponlab.local"
    mynetworks: list = field(default_factory=list)
    relay_domains: frozenset = frozenset()
    tls_level: str = "may"              # none | may | encrypt
    tls_auth_only: bool = False
    sasl_enabled: bool = False
    sasl_service: str = "smtp"
    client_restrictions: list = field(default_factory=list)
    helo_restrictions: list = field(default_factory=list)
    sender_restrictions: list = field(default_factory=list)
    relay_restrictions: list = field(default_factory=lambda: [
        "permit_mynetworks", "permit_sasl_authenticated", "defer_unauth_destination"])
    recipient_restrictions: list = field(default_factory=list)
    reject_unlisted_recipient: bool = True
    message_size_limit: int = 10240000
    line_length_limit: int = 2048
    recipient_limit: int = 1000
    timeout: float = 300.0
    hard_error_limit: int = 20
    disable_vrfy: bool = False
    tls_loglevel: int = 0
    #: anvil's limits per client address (0 = none) and who is exempt
    connection_count_limit: int = 50
    connection_rate_limit: int = 0
    event_limit_exceptions: list = field(default_factory=list)     # networks

    @property
    def log_tag(self) -> str:
        return f"{self.syslog_name}/smtpd"


class Smtpd(SmtpServer):
    """One SMTP session, as Postfix's smtpd would hold it."""

    def __init__(self, lab: "SmtpdContext", settings: SmtpdSettings, tls_options=None,
                 implicit_tls: bool = False):
        super().__init__(settings.service, tls_options=tls_options, implicit_tls=implicit_tls,
                         timeout=settings.timeout, size_limit=settings.message_size_limit)
        self.lab = lab
        self.settings = settings
        self.host = settings.myhostname
        self._counts: dict[str, list[int]] = {}
        self._errors = 0
        self._last_verb = "CONNECT"
        self._reset_session_state()

    # ------------------------------------------------------------------ state

    def _reset_session_state(self) -> None:
        self.helo_name: str | None = None
        self.esmtp = False
        self.sasl_username: str | None = None
        self.sasl_method: str | None = None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        qf = getattr(self, "queue_file", None)
        if qf is not None:
            qf.abort()
        self.sender: str | None = None
        self.mail_params: dict[str, str] = {}
        #: the last MAIL's SIZE= (smtpd's msg_size: mail_reset() clears it, a
        #: rejected MAIL does not)
        self._msg_size = 0
        self.recipients: list[str] = []
        self.queue_file = None
        self.reset_message()
        self._bdat_failed: tuple[int, str] | None = None
        self._bdat_active = False
        self._bdat_error = False
        self._bdat_last = False
        #: the bytes of the BDAT chunks read whole (what cleanup has)
        self._bdat_whole = 0

    @property
    def _resolve_cache(self) -> "ResolveCache | None":
        """What this service's smtpd process had trivial-rewrite resolve (None
        for a session without a factory, as in the unit tests)."""
        return getattr(getattr(self, "factory", None), "resolved", None)

    @property
    def in_transaction(self) -> bool:
        return self.sender is not None

    #: the verified client name (smtpd_peer.c), set when the client connects
    client_name = "unknown"

    @property
    def client(self) -> str:
        return f"{self.client_name}[{self.client_ip}]"

    def log(self, text: str, program: str | None = None) -> None:
        self.lab.log(program or self.settings.log_tag, text)

    def emit(self, step) -> None:
        self.lab.emit(step)

    # ------------------------------------------------------------- connection

    def greet(self) -> None:
        self.canStartTLS = self.canStartTLS and self.settings.tls_level != "none"
        cache = self._resolve_cache
        if cache is not None:
            cache.opened()
        name = self.lab.client_name(self.client_ip, lambda text: self.log(f"warning: {text}"))
        if isinstance(name, defer.Deferred):      # the lab's DNS: the banner waits, as in smtpd
            name.addErrback(lambda _failure: "unknown").addCallback(self._greet_as)
        else:
            self._greet_as(name)

    def _greet_as(self, name: str) -> None:
        if self._closed:
            return
        self.client_name = name
        self.log(f"connect from {self.client}")
        self.emit(self.event_step("CONNECT", f"connect from {self.client}",
                                  meta={"service": self.settings.service,
                                        "port": getattr(self.local_address(), "port", None),
                                        "client_ip": self.client_ip}))
        self._connect_told = True
        if self._wrappermode:
            # smtpd_proto: in wrapper mode (smtps, 465) TLS comes first; the
            # anvil check and the banner follow the handshake
            if self._early_tls is not None:
                self.tls_established(*self._early_tls)
            return
        self._banner()

    #: the CONNECT Step has been emitted (the client's name may take a lookup)
    _connect_told = False
    #: a wrapper-mode handshake that finished before the name lookup did
    _early_tls: tuple | None = None

    @property
    def _wrappermode(self) -> bool:
        return self.tls and not self.starttls_used

    def _banner(self) -> None:
        if self._over_client_limits():
            return
        self.reply(220, self.settings.banner, answers="CONNECT")

    _anvil = None           # the anvil this connection was counted in

    def _over_client_limits(self) -> bool:
        """anvil's verdict before the greeting (smtpd_proto): a client with too
        many connections open, or opening them too fast, gets 421 instead
        of 220. Clients in smtpd_client_event_limit_exceptions are not counted."""
        s = self.settings
        anvil = getattr(self.lab, "anvil", None)
        if anvil is None or not (s.connection_count_limit > 0 or s.connection_rate_limit > 0):
            return False
        if _in_networks(self.client_ip, s.event_limit_exceptions):
            return False
        self._anvil = anvil
        count, rate = anvil.connect(s.service, self.client_ip)
        if s.connection_count_limit > 0 and count > s.connection_count_limit:
            what = f"Connection concurrency limit exceeded: {count}"
        elif s.connection_rate_limit > 0 and rate > s.connection_rate_limit:
            what = f"Connection rate limit exceeded: {rate}"
        else:
            return False
        self.log(f"warning: {what} from {self.client} for service {s.service}")
        self.reply(421, f"4.7.0 {s.myhostname} Error: too many connections from {self.client_ip}",
                   answers="CONNECT")
        self._hangup()
        return True

    def tls_established(self, version: str, cipher: str, used: int, alg: int) -> None:
        if self._wrappermode and not self._connect_told:
            self._early_tls = (version, cipher, used, alg)     # told after CONNECT
            return
        if self.starttls_used:
            self._count("starttls", True)
        text = (f"Anonymous TLS connection established from {self.client}: "
                f"{version} with cipher {cipher} ({used}/{alg} bits)")
        # Postfix logs this summary only from smtpd_tls_loglevel = 1 on (the
        # lab's main.cf leaves it at 0): the Step narrates it either way.
        logged = self.settings.tls_loglevel >= 1
        if logged:
            text += key_exchange_summary(self.transport, server_side=True)
            self.log(text)
        self.emit(self.event_step("STARTTLS" if self.starttls_used else "IMPLICIT",
                                  text, proto="tls", tls=True,
                                  meta={"version": version, "cipher": cipher,
                                        "logged": logged}))
        if self._wrappermode:
            self._banner()

    def lost(self) -> None:
        cache = self._resolve_cache
        if cache is not None:
            cache.closed()
        if self._anvil is not None:
            self._anvil.disconnect(self.settings.service, self.client_ip)
            self._anvil = None
        if self.handshaking:
            # tls_server.c: the handshake failed (the client refused the
            # certificate, or hung up); STARTTLS counts as a failed command
            status, problems = handshake_failure(self.lost_reason)
            self.log(f"SSL_accept error from {self.client}: {status}")
            for problem in problems:
                self.log(f"warning: TLS library problem: {problem}")
            self._count("starttls" if self.starttls_used else "unknown", False)
            self.emit(self.event_step("TLSFAIL", f"SSL_accept error from {self.client}: {status}",
                                      meta={"alert": alert_text(self.lost_reason) or ""}))
        if self._last_verb == "DATA" and self.mode == DATA:
            # smtpd.c: in the middle of the message, with what had arrived
            self.log(f"lost connection after DATA ({self.raw_message_bytes} bytes) "
                     f"from {self.client}")
            self._count("data", False)
        elif self._last_verb == "BDAT" and self._bdat_active:
            self.log(f"lost connection after BDAT ({self.raw_message_bytes} bytes) "
                     f"from {self.client}")
            if self._raw_remaining:     # in a chunk (not between two: bdat=1)
                self._count("bdat", False)
        elif self._last_verb not in ("QUIT", "END-OF-MESSAGE"):
            # Postfix does not log a client that hangs up right after its
            # message was accepted (Thunderbird does, without QUIT)
            self.log(f"lost connection after {self._last_verb} from {self.client}")
        qf, passed = self.queue_file, self._passed_to_cleanup()
        self._reset_transaction()
        self._log_disconnect()
        if qf is not None and passed:
            # cleanup reads the end of its stream after smtpd has let it go
            qf.lost(passed)

    def _passed_to_cleanup(self) -> bytes:
        """The part of an unfinished message smtpd had passed on to cleanup:
        with DATA, what had come (cleanup keeps the whole lines);
        with BDAT, the chunks read whole."""
        if self.too_big or not (self.mode == DATA or self._bdat_active):
            return b""
        message = b"".join(self.message_parts)
        return message[:self._bdat_whole] if self._bdat_active else message

    def _log_disconnect(self) -> None:
        parts, total = [], 0
        for name in COMMAND_ORDER + ("unknown",):
            if name in self._counts:
                ok, n = self._counts[name]
                total += n
                parts.append(f"{name}={n}" if ok == n else f"{name}={ok}/{n}")
        oks = sum(ok for ok, _ in self._counts.values())
        # (Postfix writes commands=0/0 for a client that sent none)
        parts.append(f"commands={total}" if oks == total and total
                     else f"commands={oks}/{total}")
        text = f"disconnect from {self.client} " + " ".join(parts)
        self.log(text)
        self.emit(self.event_step("DISCONNECT", text,
                                  meta={"counts": {k: v for k, v in self._counts.items()}}))

    def timeoutConnection(self) -> None:
        self.log(f"timeout after {self._last_verb} from {self.client}")
        self.reply(421, f"4.4.2 {self.settings.myhostname} Error: timeout exceeded", answers="TIMEOUT")
        self._last_verb = "QUIT"  # no "lost connection" line after a timeout
        self.transport.loseConnection()

    # ---------------------------------------------------------------- output

    def reply(self, code: int, text: str | list[str], answers: str | None = None) -> None:
        super().reply(code, text, answers or self._last_verb)

    def line_too_long(self) -> None:
        self.reply(500, "5.5.2 Error: line too long", answers="UNKNOWN")

    def _count(self, name: str, ok: bool) -> None:
        entry = self._counts.setdefault(name, [0, 0])
        entry[1] += 1
        if ok:
            entry[0] += 1

    def _fail(self, code: int, text: str, verb: str, counted: bool = True) -> None:
        """A rejected command: reply, count it as failed, enforce the error limit."""
        self.reply(code, text, answers=verb)
        if counted:
            self._count(verb.lower() if verb.lower() in COMMAND_ORDER else "unknown", False)
        self._errors += 1
        if self._errors >= self.settings.hard_error_limit:
            self.log(f"too many errors after {verb} from {self.client}")
            self.reply(421, f"4.7.0 {self.settings.myhostname} Error: too many errors", answers=verb)
            self._hangup()

    def _ok(self, code: int, text, verb: str) -> None:
        self.reply(code, text, answers=verb)
        self._count(verb.lower(), True)

    # ------------------------------------------------------------- commands

    def _bounded(self, raw: bytes) -> bytes:
        """Postfix reads at most line_length_limit bytes of a command and skips the rest."""
        limit = self.settings.line_length_limit
        if len(raw) > limit:
            shown = raw[:30].decode("ascii", "replace")
            self.log(f"warning: {self.client}: request longer than {limit}: {shown}...")
            raw = raw[:limit]
        return raw

    def state_COMMAND(self, raw: bytes) -> None:
        raw = self._bounded(raw)
        line = raw.decode("utf-8", "surrogateescape")
        self.emit(self.command_step(line))
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            # Postfix protects its internals from malformed UTF-8 before parsing.
            self._errors += 1
            self.reply(500, "5.5.2 Error: bad UTF-8 syntax", answers="UNKNOWN")
            return
        verb, args = wire.split_command(line)
        self._line = line
        if not verb:
            # an empty line: answered, counted as an error, not as a command
            self._fail(500, "5.5.2 Error: bad syntax", "UNKNOWN", counted=False)
            return
        if not (verb.isalpha() and hasattr(self, "cmd_" + verb)):
            if _HEADER.match(line) or verb in FORBIDDEN:
                self._last_verb = "UNKNOWN"
                self.log(f"warning: non-SMTP command from {self.client}: {line[:100]}")
                self._last_verb = "QUIT"  # Postfix logs no "lost connection" after this
                self.reply(221, "2.7.0 Error: I can break rules, too. Goodbye.", answers="UNKNOWN")
                self._count("unknown", False)
                self._hangup()
                return
            self._last_verb = "UNKNOWN"
            self._fail(500, "5.5.2 Error: command not recognized", "UNKNOWN")
            return
        self._last_verb = verb
        self._check_pipelining(verb)
        if (self.settings.tls_level == "encrypt" and not self.tls and verb not in PRE_TLS):
            self._fail(530, "5.7.0 Must issue a STARTTLS command first", verb)
            return
        self.dispatch(verb, args)

    _pipelining_logged = False
    #: the command line being handled (for the warnings that quote it)
    _line = ""

    def _check_pipelining(self, verb: str) -> None:
        """smtpd.c: a command that must end a pipelined group (RFC 2920 §3.1)
        followed by more input: logged once per session."""
        if verb in LAST_IN_GROUP and self._inbuf and not self._pipelining_logged:
            self._pipelining_logged = True
            self.log(f"improper command pipelining after {verb} from {self.client}: "
                     f"{_escape(self._inbuf[:100])}")

    def cmd_HELO(self, args: str) -> None:
        if not args.strip():
            self._fail(501, "Syntax: HELO hostname", "HELO")
            return
        self._reset_transaction()
        self.helo_name, self.esmtp = args.strip(), False
        self._ok(250, self.settings.myhostname, "HELO")

    def ehlo_keywords(self) -> list[str]:
        s = self.settings
        words = [s.myhostname, "PIPELINING",
                 f"SIZE {s.message_size_limit}" if s.message_size_limit else "SIZE"]
        if not s.disable_vrfy:
            words.append("VRFY")
        words.append("ETRN")
        if self.canStartTLS and not self.tls:
            words.append("STARTTLS")
        if self._auth_offered():
            words.append("AUTH " + " ".join(self.lab.mechanisms))
        words += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]
        return words

    def _auth_offered(self) -> bool:
        s = self.settings
        if not s.sasl_enabled or not self.lab.mechanisms:
            return False
        return self.tls or not (s.tls_auth_only or s.tls_level == "encrypt")

    def cmd_EHLO(self, args: str) -> None:
        if not args.strip():
            self._fail(501, "Syntax: EHLO hostname", "EHLO")
            return
        self._reset_transaction()
        self.helo_name, self.esmtp = args.strip(), True
        self._ok(250, self.ehlo_keywords(), "EHLO")

    def cmd_STARTTLS(self, args: str) -> None:
        if args.strip():
            self._fail(501, "5.5.4 Syntax: STARTTLS", "STARTTLS")
        elif self.tls:
            self._fail(554, "5.5.1 Error: TLS already active", "STARTTLS")
        elif not self.canStartTLS:
            self._fail(454, "4.7.0 TLS not available due to local problem", "STARTTLS")
        else:
            # counted once the handshake is done (or failed, in lost())
            self.reply(220, "2.0.0 Ready to start TLS", answers="STARTTLS")
            self.start_tls()
            self._reset_session_state()

    # ---- AUTH (through the Dovecot auth socket)

    def cmd_AUTH(self, args: str) -> None:
        s = self.settings
        if not s.sasl_enabled:
            self._fail(503, "5.5.1 Error: authentication not enabled", "AUTH")
            return
        if not self.tls and (s.tls_auth_only or s.tls_level == "encrypt"):
            self._fail(504, "5.5.4 Encryption required for requested authentication mechanism", "AUTH")
            return
        if self.sasl_username:
            self._fail(503, "5.5.1 Error: already authenticated", "AUTH")
            return
        if self.in_transaction:
            self._fail(503, "5.5.1 Error: MAIL transaction in progress", "AUTH")
            return
        parts = args.split()
        if not parts or len(parts) > 2:
            self._fail(501, "5.5.4 Syntax: AUTH mechanism", "AUTH")
            return
        mech = parts[0]   # forwarded to Dovecot as the client typed it, as Postfix does
        # "=" (an empty initial response) goes to Dovecot as it came, resp==,
        # as Postfix sends it: PLAIN then fails on the empty credentials.
        initial = parts[1] if len(parts) == 2 else None
        if mech.upper() not in self.lab.mechanisms:
            self._auth_failed(mech, "Invalid authentication mechanism")
            return
        if initial and not self.lab.auth.valid_base64(initial):
            self._auth_failed(mech, "Invalid base64 data in initial response")
            return
        self.sasl_method = mech
        d = self.lab.auth.start(mech, service=s.sasl_service, lip=self.server_ip,
                                rip=self.client_ip, secured=self.tls, resp_b64=initial,
                                session=self.session)
        d.addCallbacks(self._auth_reply, self._auth_lost)
        self.wait_for(d)

    def _auth_reply(self, reply) -> None:
        if self.closed:
            return
        if reply.kind == "CONT":
            self._auth_request = reply.request_id
            self.mode = AUTH
            self.reply(334, reply.challenge or "", answers="AUTH")
        elif reply.kind == "OK":
            self.mode = COMMAND
            self.sasl_username = _printable(reply.user)
            self._ok(235, "2.7.0 Authentication successful", "AUTH")
        else:
            self.mode = COMMAND
            self._auth_failed(self.sasl_method, reply.reason or "",
                              user=_printable(reply.user) if reply.user else None)

    def _auth_failed(self, mech: str, reason: str, user: str | None = None) -> None:
        shown = reason or "(reason unavailable)"
        # Postfix 3.7.11 names the user Dovecot reported, or "(unavailable)"
        self.log(f"warning: {self.client}: SASL {mech} authentication failed: {shown}, "
                 f"sasl_username={user or '(unavailable)'}")
        self.sasl_method = None
        self._fail(535, f"5.7.8 Error: authentication failed: {shown}", "AUTH")

    def _auth_lost(self, failure) -> None:
        if self.closed:
            return
        self.mode = COMMAND
        message = failure.getErrorMessage()
        if message.startswith("SASL: Connect"):         # xsasl's own warning (no socket)
            self.log(f"warning: {message}")
        # no answer within Postfix's 10 s (a penalized address waits 15 s), or the
        # socket is gone: what Postfix 3.7.11 logs (checked, docs/hostile.md)
        self.log(f"warning: {self.client}: SASL {self.sasl_method} authentication failed: "
                 "Connection lost to authentication server, sasl_username=(unavailable)")
        self.sasl_method = None
        self._fail(454, "4.7.0 Temporary authentication failure: Connection lost to authentication server", "AUTH")

    def state_AUTH(self, raw: bytes) -> None:
        line = self._bounded(raw).decode("ascii", "replace").strip()
        self.emit(self.auth_data_step(line))
        if line == "*":
            self.mode = COMMAND
            self.lab.auth.abort(self._auth_request)
            self.log(f"warning: {self.client}: SASL {self.sasl_method} authentication aborted")
            self.sasl_method = None
            self._fail(501, "5.7.0 Authentication aborted", "AUTH")
            return
        if not self.lab.auth.valid_base64(line):
            self.mode = COMMAND
            self.lab.auth.abort(self._auth_request)
            self._auth_failed(self.sasl_method, "Invalid base64 data in continued response")
            return
        d = self.lab.auth.respond(self._auth_request, line, session=self.session)
        d.addCallbacks(self._auth_reply, self._auth_lost)
        self.wait_for(d)

    # ---- the mail transaction

    def _parse_path(self, args: str, keyword: str, verb: str,
                    bad_syntax: str) -> tuple[str, list[str]] | None:
        """``FROM:``/``TO:``, the address and the parameters, as smtpd reads
        them (:mod:`~gponsim.server.postfix.address`); None once refused."""
        words, unterminated = command_words(args)
        if len(words) < 2 or words[0].lower() != keyword:
            self._fail(501, f"5.5.4 Syntax: {verb} {keyword.upper()}<address>", verb)
            return None
        # SMTPUTF8 (asked in this MAIL FROM, or in the transaction's) lets the
        # domain be non-ASCII
        utf8 = any(w.upper() == "SMTPUTF8" for w in words[2:]) if verb == "MAIL" \
            else "SMTPUTF8" in self.mail_params
        address = None if unterminated == 1 else \
            extract_address(words[1], allow_empty=verb == "MAIL", smtputf8=utf8,
                            resolved=self._resolved)
        if address is None:
            if unterminated != 1:
                self.log(f"warning: Illegal address syntax from {self.client} in {verb} "
                         f"command: {words[1]}")
            self._fail(501, bad_syntax, verb)
            return None
        return address, words[2:]

    def _resolved(self, address: str, warning: str | None) -> None:
        """smtpd had trivial-rewrite resolve ``address``, unless the answer is
        in its cache (:class:`ResolveCache`); trivial-rewrite logs ``warning``
        when it is asked. The sender is the key's other half: none yet for
        MAIL (and VRFY outside a transaction), the transaction's for RCPT."""
        cache = self._resolve_cache
        asked = cache is None or not cache.seen(self.sender, address)
        if warning and asked:
            self.log(warning, program=self.lab.rewrite_log_tag)

    def cmd_MAIL(self, args: str) -> None:
        s = self.settings
        if self.in_transaction:
            self._fail(503, "5.5.1 Error: nested MAIL command", "MAIL")
            return
        if self._after_bdat("MAIL"):
            return
        parsed = self._parse_path(args, "from:", "MAIL", "5.1.7 Bad sender address syntax")
        if parsed is None:
            return
        address, rest = parsed
        params: dict[str, str] = {}
        for word in rest:
            # smtpd.c mail_cmd: each parameter in turn, the first bad one answered
            name, _, value = word.partition("=")
            name = name.upper()
            if word.upper() in ("BODY=8BITMIME", "BODY=7BIT"):
                pass
            elif name == "SIZE" and "=" in word:
                if not (value.isascii() and value.isdigit()):
                    self._fail(501, "5.5.4 Bad message size syntax", "MAIL")
                    return
                if int(value) > _OFF_T_MAX:
                    self._msg_size = 0
                    self._fail(552, "5.3.4 Message size exceeds file system imposed limit", "MAIL")
                    return
                # kept even if this MAIL fails, until RSET, HELO/EHLO or QUIT
                # (mail_reset): a later MAIL without SIZE= meets it again
                self._msg_size = int(value)
            elif name == "AUTH" and "=" in word:
                pass
            elif name == "RET" and "=" in word:
                if "RET" in params or value.upper() not in ("FULL", "HDRS"):
                    self._fail(501, "5.5.4 Bad RET parameter syntax", "MAIL")
                    return
            elif name == "ENVID" and "=" in word:
                envid = _xtext_unquote(value)
                if "ENVID" in params or not envid or not envid.isprintable() \
                        or not envid.isascii():
                    self._fail(501, "5.5.4 Bad ENVID parameter syntax", "MAIL")
                    return
            elif word.upper() == "SMTPUTF8":
                name, value = "SMTPUTF8", ""
            else:
                self._fail(555, f"5.5.4 Unsupported option: {word}", "MAIL")
                return
            params[name] = value
        limit = s.message_size_limit
        if limit and self._msg_size > limit:
            # smtpd_check_size(): a policy reject, logged like one
            self._log_reject("MAIL", "552 5.3.4 Message size exceeds fixed limit",
                             sender=address)
            self._fail(552, "5.3.4 Message size exceeds fixed limit", "MAIL")
            return
        self.sender, self.mail_params = address, params
        self._ok(250, "2.1.0 Ok", "MAIL")

    def cmd_RCPT(self, args: str) -> None:
        s = self.settings
        if not self.in_transaction:
            self._fail(503, "5.5.1 Error: need MAIL command", "RCPT")
            return
        if self._after_bdat("RCPT"):
            return
        parsed = self._parse_path(args, "to:", "RCPT", "5.1.3 Bad recipient address syntax")
        if parsed is None:
            return
        address, rest = parsed
        notify = orcpt = False
        for word in rest:
            # smtpd.c rcpt_cmd: RFC 3461's NOTIFY= and ORCPT=, nothing else
            name, eq, value = word.partition("=")
            if name.upper() == "NOTIFY" and eq:
                if notify or not _dsn_notify_mask(value, lambda text: self.log(f"warning: {text}")):
                    self._fail(501, "5.5.4 Error: Bad NOTIFY parameter syntax", "RCPT")
                    return
                notify = True
            elif name.upper() == "ORCPT" and eq:
                kind, semi, coded = value.partition(";")
                if orcpt or not semi or not kind or _xtext_unquote(coded) is None:
                    self._fail(501, "5.5.4 Error: Bad ORCPT parameter syntax", "RCPT")
                    return
                orcpt = True
            else:
                self._fail(555, f"5.5.4 Unsupported option: {word}", "RCPT")
                return
        if len(self.recipients) >= s.recipient_limit:
            self._fail(452, "4.5.3 Error: too many recipients", "RCPT")
            return
        domain = address.rsplit("@", 1)[1].lower() if "@" in address else ""
        ctx = RcptContext(client_ip=self.client_ip, client_name=self.client_name,
                          sasl_username=self.sasl_username, recipient=address,
                          recipient_domain=domain, mynetworks=s.mynetworks,
                          local_domains=s.local_domains, relay_domains=s.relay_domains,
                          own_addresses=self.lab.own_addresses,
                          local_user_exists=self.lab.local_user_exists,
                          reject_unlisted=s.reject_unlisted_recipient)
        try:
            verdict = check_recipient(ctx, [
                ("smtpd_client_restrictions", s.client_restrictions),
                ("smtpd_helo_restrictions", s.helo_restrictions),
                ("smtpd_sender_restrictions", s.sender_restrictions),
                ("smtpd_relay_restrictions", s.relay_restrictions),
                ("smtpd_recipient_restrictions", s.recipient_restrictions),
            ])
        except UnsupportedRestriction as exc:
            self.log(f"warning: unknown smtpd restriction: \"{exc}\"")
            verdict = Verdict(451, "4.3.5", "Server configuration error", str(exc))
        if verdict is not None:
            self._reject_rcpt(verdict, address)
            return
        final = address if "@" in address else f"{address}@{s.myorigin}"
        if self.queue_file is not None:
            self._accept_rcpt(final, address)
            return
        # The first accepted recipient: cleanup makes the queue file (in a worker
        # thread); the 250 and whatever the client pipelined after wait for it.
        d = self.lab.queue.open(self._envelope(), log_tag=s.log_tag)

        def opened(queue_file) -> None:
            if self.closed or not self.in_transaction:
                queue_file.abort()          # the client left (or reset) meanwhile
                return
            self.queue_file = queue_file
            self._accept_rcpt(final, address)

        def failed(failure) -> None:
            if not self.closed:
                self._fail(451, "4.3.0 Error: queue file write error", "RCPT")
        self.wait_for(d.addCallbacks(opened, failed))

    def _accept_rcpt(self, final: str, address: str) -> None:
        self.queue_file.add_recipient(final, original=address)
        self.recipients.append(final)
        self._ok(250, "2.1.5 Ok", "RCPT")

    def _reject_rcpt(self, verdict: Verdict, address: str) -> None:
        self._log_reject("RCPT", verdict.reply, sender=self.sender, recipient=address)
        self._fail(verdict.code, f"{verdict.enhanced} {verdict.text}", "RCPT")

    def _log_reject(self, where: str, reply: str, *, sender: str | None = None,
                    recipient: str | None = None) -> None:
        """smtpd_check.c log_whatsup(): ``QID: reject: WHERE from CLIENT: REPLY;
        from=<...> to=<...> proto=... helo=<...>`` (from= and to= when known)."""
        proto = "ESMTP" if self.esmtp else "SMTP"
        helo = f" helo=<{self.helo_name}>" if self.helo_name else ""
        # once the queue file exists (a recipient was accepted) it has its id
        qid = self.queue_file.qid if self.queue_file is not None else "NOQUEUE"
        envelope = (f" from=<{sender}>" if sender is not None else "") + \
            (f" to=<{recipient}>" if recipient is not None else "")
        self.log(f"{qid}: reject: {where} from {self.client}: {reply};"
                 f"{envelope} proto={proto}{helo}")

    def _protocol(self) -> str:
        return ("ESMTP" if self.esmtp else "SMTP") + ("S" if self.tls else "") + \
            ("A" if self.sasl_username else "")

    def _envelope(self):
        from gponsim.server.postfix.queuefile import Envelope

        return Envelope(sender=self.sender or "", recipients=list(self.recipients),
                        helo=self.helo_name or "", client_ip=self.client_ip,
                        client_name=self.client_name, protocol=self._protocol(),
                        sasl_method=self.sasl_method if self.sasl_username else None,
                        sasl_username=self.sasl_username, session=self.session,
                        service=self.settings.service,
                        size_param=int(self.mail_params["SIZE"]) if "SIZE" in self.mail_params else None,
                        body_param=self.mail_params.get("BODY"), arrival=time.time())

    def _no_recipients(self, verb: str) -> bool:
        if self.recipients:
            return False
        if not self.in_transaction:
            self._fail(503, "5.5.1 Error: need RCPT command", verb)
        else:
            self._fail(554, "5.5.1 Error: no valid recipients", verb)
        return True

    def cmd_DATA(self, args: str) -> None:
        if self._after_bdat("DATA"):
            return
        # data_cmd: the missing recipients are told before the syntax
        if self._no_recipients("DATA"):
            return
        if args.strip():
            self._fail(501, "5.5.4 Syntax: DATA", "DATA")
            return
        self.start_data()
        self.reply(354, "End data with <CR><LF>.<CR><LF>", answers="DATA")

    def message_received(self, message: bytes, verb: str) -> None:
        self._finish_message(message, verb)

    def _finish_message(self, message: bytes, verb: str,
                        ok_text: str = "2.0.0 Ok: queued as {qid}") -> None:
        if self.too_big:
            self.log(f"warning: {self.queue_file.qid}: queue file size limit exceeded")
            self._reset_transaction()
            self._fail(552, "5.3.4 Error: message file too big", verb)
            return
        received = self.lab.received_header(self, self.queue_file.qid)
        d = self.queue_file.commit(received.encode("utf-8") + message)

        def queued(qid):
            self.queue_file = None
            self._reset_transaction()
            self._last_verb = "END-OF-MESSAGE"
            if not self.closed:
                self._ok(250, ok_text.format(qid=qid), verb)

        def failed(failure):
            # cleanup's refusals carry their reply (554 5.4.0 too many hops);
            # anything else is a queue file write error, as Postfix says.
            self.queue_file = None
            self._reset_transaction()
            reply = getattr(failure.value, "reply", None)
            if reply is None:
                twlog.err(failure, "queue file write error")
                self.log(f"warning: queue file write error: {failure.getErrorMessage()}")
                reply = "451 4.3.0 Error: queue file write error"
            if not self.closed:
                code, text = reply.split(" ", 1)
                self._fail(int(code), text, verb)
        d.addCallbacks(queued, failed)
        self.wait_for(d)

    def cmd_BDAT(self, args: str) -> None:
        parts = args.split()
        if not parts or len(parts) > 2 or not parts[0].isdigit() or \
                (len(parts) == 2 and parts[1].upper() != "LAST"):
            # Without a valid count Postfix cannot tell where the chunk ends: it hangs up.
            qid = self.queue_file.qid if self.queue_file is not None else "NOQUEUE"
            self.log(f"warning: {qid}: malformed BDAT command syntax from {self.client}: "
                     f"{self._line}")
            self._fail(521, "5.5.4 Syntax: BDAT count [LAST]", "BDAT")
            self._hangup()
            return
        size, self._bdat_last = int(parts[0]), len(parts) == 2
        if self._bdat_error:
            # after a refused chunk, the rest up to LAST is read and thrown away
            self._bdat_chunk_size = size
            self.read_chunk(size, self._bdat_discarded)
            return
        if self._bdat_failed is None and not self.recipients:
            self._bdat_failed = ((503, "5.5.1 Error: need RCPT command") if not self.in_transaction
                                 else (554, "5.5.1 Error: no valid recipients"))
        if self._bdat_failed is None and size == 0 and not self._bdat_last:
            self._fail(551, "5.7.1 Null BDAT request", "BDAT")
            return
        self._bdat_active = True
        self._bdat_chunk_size = size
        self.read_chunk(size, self._bdat_done)

    def _bdat_done(self) -> None:
        failed, self._bdat_failed = self._bdat_failed, None
        self._bdat_whole = self.wire_size
        if self._bdat_last:
            self._bdat_active = False
        elif failed:
            # smtpd's BDAT error state: MAIL, RCPT and DATA are refused "after
            # BDAT", and later chunks discarded, until the LAST one
            self._bdat_error = True
        if failed:
            self.reset_message()
            self._fail(*failed, "BDAT")
            return
        if self.too_big:
            self._bdat_active = False
            self._reset_transaction()
            self._fail(552, "5.3.4 Chunk exceeds message size limit", "BDAT")
            return
        if not self._bdat_last:
            self._ok(250, f"2.0.0 Ok: {self._bdat_chunk_size} bytes", "BDAT")
            return
        total = self.message_size
        message = self.chunked_message()
        self.emit(wire.message_step(message, session=self.session, verb="BDAT", tls=self.tls,
                                    size=total))
        self._finish_message(message, "BDAT",
                             ok_text=f"2.0.0 Ok: {_bdat_size(message)} bytes queued as {{qid}}")

    def _bdat_discarded(self) -> None:
        self.reset_message()
        if self._bdat_last:
            self._bdat_error = self._bdat_active = False
        self._fail(551, f"5.0.0 Discarded {self._bdat_chunk_size} bytes after earlier error", "BDAT")

    def _after_bdat(self, verb: str) -> bool:
        """DATA, MAIL or RCPT while BDAT chunks are pending is refused."""
        if self._bdat_active:
            self._fail(503, f"5.5.1 Error: {verb} after BDAT", verb)
            return True
        return False

    def _hangup(self) -> None:
        self._last_verb = "QUIT"
        self.transport.loseConnection()

    def cmd_RSET(self, args: str) -> None:
        if args.strip():
            self._fail(501, "5.5.4 Syntax: RSET", "RSET")
            return
        self._reset_transaction()
        self._ok(250, "2.0.0 Ok", "RSET")

    def cmd_NOOP(self, args: str) -> None:
        self._ok(250, "2.0.0 Ok", "NOOP")

    def cmd_VRFY(self, args: str) -> None:
        if self.settings.disable_vrfy:
            self._fail(502, "5.5.1 VRFY command is disabled", "VRFY")
            return
        words, unterminated = command_words(args)
        if not words:
            self._fail(501, "5.5.4 Syntax: VRFY address [SMTPUTF8]", "VRFY")
            return
        utf8 = len(words) > 1 and words[-1].upper() == "SMTPUTF8"
        if utf8:
            words = words[:-1]
        arg = " ".join(words)               # smtpd.c collapse_args()
        address = None if unterminated is not None else \
            extract_address(arg, allow_empty=False, smtputf8=utf8,
                            resolved=self._resolved)
        if address is None:
            if unterminated is None:
                self.log(f"warning: Illegal address syntax from {self.client} in VRFY command: {arg}")
            self._fail(501, "5.1.3 Bad recipient address syntax", "VRFY")
            return
        domain = address.rsplit("@", 1)[1].lower() if "@" in address else ""
        ctx = RcptContext(client_ip=self.client_ip, client_name=self.client_name, sasl_username=None,
                          recipient=address, recipient_domain=domain,
                          local_domains=self.settings.local_domains,
                          own_addresses=self.lab.own_addresses,
                          local_user_exists=self.lab.local_user_exists)
        from gponsim.server.postfix.restrictions import unlisted_recipient

        verdict = unlisted_recipient(ctx)
        if verdict is not None:
            self._log_reject("VRFY", verdict.reply, sender=self.sender, recipient=address)
            self._fail(verdict.code, f"{verdict.enhanced} {verdict.text}", "VRFY")
            return
        self._ok(252, f"2.0.0 {arg}", "VRFY")

    def cmd_ETRN(self, args: str) -> None:
        # ETRN replies carry no enhanced status codes (smtpd.c etrn_cmd).
        words = args.split()
        if self.in_transaction:
            self._fail(503, "Error: MAIL transaction in progress", "ETRN")
            return
        if len(words) != 1:
            self._fail(500, "Syntax: ETRN domain", "ETRN")
            return
        domain = words[0][1:] if words[0][:1] in ("@", "#") else words[0]
        if not valid_hostname(domain):
            self._fail(501, "Error: invalid parameter syntax", "ETRN")
            return
        # fast_flush_domains = $relay_domains, empty in the lab profile: the
        # flush service refuses, and smtpd says so in mail.log
        self.log(f"warning: reject: ETRN {domain[:100]}... from {self.client}")
        self._fail(459, f"<{domain}>: service unavailable", "ETRN")

    def cmd_XCLIENT(self, args: str) -> None:
        self._not_authorized("XCLIENT", args)

    def cmd_XFORWARD(self, args: str) -> None:
        self._not_authorized("XFORWARD", args)

    def _not_authorized(self, verb: str, args: str) -> None:
        """XCLIENT and XFORWARD: the lab sets no smtpd_authorized_xclient_hosts
        (nor xforward): known commands, refused to every client."""
        if self.in_transaction:
            self._fail(503, "5.5.1 Error: MAIL transaction in progress", verb)
        elif not args.split():
            self._fail(501, f"5.5.4 Syntax: {verb} attribute=value...", verb)
        else:
            self._fail(550, "5.7.0 Error: insufficient authorization", verb)

    def cmd_QUIT(self, args: str) -> None:
        self._reset_transaction()   # an unfinished message is thrown away
        self._ok(221, "2.0.0 Bye", "QUIT")
        self.transport.loseConnection()



def _printable(text: str) -> str:
    """Postfix's printable(text, '?'): xsasl_dovecot_server.c passes the user
    name Dovecot sends through it, so control characters log as '?'."""
    return "".join("?" if c < " " or c == "\x7f" else c for c in text)


def _bdat_size(message: bytes) -> int:
    """The size in smtpd's "Ok: N bytes queued as": the message as lines each
    ending in CRLF (a bare LF counts as CRLF, a last line without an end
    gets one), as smtpd writes them to the queue file."""
    if not message:
        return 0
    return len(message) + message.count(b"\n") + (0 if message.endswith(b"\n") else 2)


#: the largest message size Postfix can hold (off_t); a bigger SIZE= overflows
_OFF_T_MAX = (1 << 63) - 1


def _xtext_unquote(text: str) -> str | None:
    """RFC 3461 xtext decoded (``+XX`` in hex, either case), None when malformed."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "+":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
                return None
            out.append(chr(int(pair, 16)))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_DSN_NOTIFY = ("NEVER", "SUCCESS", "FAILURE", "DELAY")


def _dsn_notify_mask(value: str, warn) -> int:
    """dsn_mask.c dsn_notify_mask(): the NOTIFY= keywords (any case, separated
    by commas or spaces) as a bit mask; 0 when one is unknown (``warn`` is told,
    as name_mask does) or NEVER comes with another."""
    mask = 0
    for word in re.split(r"[, \t\r\n]+", value):
        if not word:
            continue
        if word.upper() not in _DSN_NOTIFY:
            warn(f'unknown DSN NOTIFY command value "{word}" in "{value}"')
            return 0
        mask |= 1 << _DSN_NOTIFY.index(word.upper())
    if mask & 1 and mask & ~1:
        return 0
    return mask


def _in_networks(ip: str, networks) -> bool:
    import ipaddress

    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


class SmtpdContext:
    """What all smtpd sessions of the lab share (set up by lab.py)."""

    def __init__(self, *, emit=null_emit, log=None, auth=None, queue=None, mechanisms=(),
                 local_user_exists=None, received_header=None, client_name=None,
                 anvil=None, own_addresses=("127.0.0.1", "::1"),
                 rewrite_log_tag: str = "postfix/trivial-rewrite") -> None:
        self.emit = emit
        #: the server's addresses (inet_interfaces): ``user@[address]`` is local
        self.own_addresses = own_address_set(own_addresses)
        #: trivial-rewrite, which smtpd asks to resolve each address (its warnings)
        self.rewrite_log_tag = rewrite_log_tag
        self.anvil = anvil               # anvil(8): connection counts per client
        self._log = log
        self.auth = auth
        self.queue = queue
        self.mechanisms = list(mechanisms)
        self.local_user_exists = local_user_exists
        self._received = received_header
        self._client_name = client_name

    def client_name(self, ip: str, warn):
        """The client's verified name (etc/hosts, or a Deferred of it), or "unknown"."""
        return self._client_name(ip, warn) if self._client_name is not None else "unknown"

    def log(self, program: str, text: str) -> None:
        if self._log is not None:
            self._log(program, text)

    def received_header(self, session: Smtpd, qid: str) -> str:
        return self._received(session, qid)


class ResolveCache:
    """smtpd_resolve.c: the (sender, address) pairs one smtpd process had
    trivial-rewrite resolve, kept across its sessions (the last 100); an
    address met again is not asked about again, so trivial-rewrite's warning
    about it is not repeated. The process, and its cache, ends after
    ``max_idle`` seconds without a client or ``max_use`` sessions
    (master.cf's defaults, 100 s and 100)."""

    def __init__(self, size: int = 100, max_idle: float = 100.0, max_use: int = 100,
                 clock=time.monotonic) -> None:
        self.size, self.max_idle, self.max_use, self.clock = size, max_idle, max_use, clock
        self._pairs: dict[tuple, None] = {}
        self._open = self._uses = 0
        self._idle_since = clock()

    def opened(self) -> None:
        if self._open == 0 and (self.clock() - self._idle_since >= self.max_idle
                                or self._uses >= self.max_use):
            self._pairs.clear()                 # a new smtpd process
            self._uses = 0
        self._open += 1
        self._uses += 1

    def closed(self) -> None:
        self._open = max(0, self._open - 1)
        self._idle_since = self.clock()

    def seen(self, sender: str | None, address: str) -> bool:
        """Whether the pair is cached (it is from now on, the newest)."""
        key = (sender, address)
        known = key in self._pairs
        self._pairs.pop(key, None)
        self._pairs[key] = None
        while len(self._pairs) > self.size:
            del self._pairs[next(iter(self._pairs))]
        return known


class SmtpdFactory(smtp.SMTPFactory):
    protocol = Smtpd

    def __init__(self, context: SmtpdContext, settings: SmtpdSettings, tls_options=None,
                 implicit_tls: bool = False) -> None:
        super().__init__()
        self.context, self.settings = context, settings
        self.tls_options, self.implicit_tls = tls_options, implicit_tls
        self.sessions: set[Smtpd] = set()
        #: what "its" smtpd process had trivial-rewrite resolve
        self.resolved = ResolveCache()

    def buildProtocol(self, addr):
        p = self.protocol(self.context, self.settings, self.tls_options, self.implicit_tls)
        p.factory = self
        return p
