"""What Dovecot's login processes share (``src/login-common``): who is talking
to whom, and whether the connection counts as secured."""

from __future__ import annotations

import itertools
import os
import time

from twisted.internet import protocol

from gponsim.server.tls import accept_error, alert_text, describe_connection
from gponsim.wire import smtp as smtp_wire


#: Each logged-in session is a process of its own in Dovecot (imap, pop3:
#: service_count = 1), so each has its own pid: mpid= and imap(user)<pid>.
_MPIDS = itertools.count(os.getpid() + 1000)

#: login-common: what a client that logs out before logging in is told in the log
UNAUTHENTICATED_LOGOUT = "Aborted login by logging out"


def next_mpid() -> int:
    return next(_MPIDS)


def whole_secs(now: float, since: float) -> int:
    """Seconds between two moments as login-common counts them: both are
    whole seconds (``ioloop_time - client->created.tv_sec``), so 10.9 s to
    11.2 s is 1 s, not 0."""
    return int(now) - int(since)


class LoginCommon:
    """Mixed into the IMAP and POP3 servers (before their Twisted base class).

    Expects ``self.lab`` (with ``emit``), ``self.tls``, ``self._starttls``,
    ``self.session`` and ``self.transport``; the class names its ``ACTOR``
    (imap, pop3) and its ``STARTTLS_VERB`` (STARTTLS, STLS).
    """

    ACTOR = "imap"
    STARTTLS_VERB = "STARTTLS"
    BYE_PREFIX = b"* BYE "          # how the protocol says its last words
    _last_user = None
    blocked = None

    _addrs: tuple | None = None

    def _addresses(self) -> tuple:
        if self._addrs is None:
            self._addrs = (getattr(self.transport.getPeer(), "host", "127.0.0.1"),
                           getattr(self.transport.getHost(), "host", "127.0.0.1"))
        return self._addrs

    @property
    def client_ip(self) -> str:
        return self._addresses()[0]

    @property
    def server_ip(self) -> str:
        return self._addresses()[1]

    @property
    def secured(self) -> bool:
        """Dovecot's rule: TLS, or a client on the server's own address."""
        return self.tls or self.client_ip == self.server_ip

    #: why the login process let the client go, when it was not just a
    #: closed connection ("Aborted login by logging out")
    _login_end = "Connection closed"
    _login_attempts = 0
    _login_started = 0.0
    #: the only authentication was left unfinished by the client (``*``, or
    #: an answer that was not base64): "client didn't finish SASL auth"
    _auth_abandoned = False
    #: why the last attempt failed, when login-common names it instead of
    #: counting attempts (``last_auth_fail``: "tried to use unsupported auth
    #: mechanism", "tried to use disallowed plaintext auth", "sent invalid
    #: base64 in response"); None: a plain failure
    _last_auth_fail: str | None = None

    def _login_disconnect_line(self, user: str | None, method: str | None) -> str:
        """login-common's line for a client that leaves before logging in
        (``client_get_extra_disconnect_reason``)."""
        now = time.time()
        if not self._login_attempts:
            extra = f"no auth attempts in {whole_secs(now, self._connected_at)} secs"
        else:
            secs = whole_secs(now, self._login_started or self._connected_at)
            if self._login_attempts == 1 and self._auth_abandoned:
                extra = f"client didn't finish SASL auth, waited {secs} secs"
            elif self._last_auth_fail is not None:
                extra = self._last_auth_fail
            else:
                extra = f"auth failed, {self._login_attempts} attempts in {secs} secs"
        who = f"user=<{user or ''}>, "
        if method and self._login_attempts:
            who += f"method={method}, "
        return (f"{self.ACTOR}-login: Disconnected: {self._login_end} ({extra}): "
                f"{who}{self._addr_text()}")

    def _plaintext_refused(self, user: str | None) -> None:
        """``client_check_plaintext_auth``: a password sent in clear where
        disable_plaintext_auth forbids it counts as a failed attempt (by the
        user LOGIN named, if any); with auth_verbose = yes it is logged."""
        self._login_attempts += 1
        self._login_started = self._login_started or time.time()
        if user:
            self._last_user = user
        if self.settings.auth_verbose:
            self.lab.log(f"{self.ACTOR}-login: Login failed: Plaintext authentication disabled: "
                         f"user=<>, {self._addr_text()}")

    def _addr_text(self) -> str:
        """How Dovecot's login processes end a log line: addresses, TLS, session."""
        text = f"rip={self.client_ip}, lip={self.server_ip}"
        if self._handshaking:
            text += ", TLS handshaking" + (f": {self._tls_error}" if self._tls_error else "")
        elif self.tls:
            text += ", TLS" + (": Connection closed" if self._tls_eof else "")
        elif self.secured:
            text += ", secured"
        return text + f", session=<{self._dovecot_session}>"

    # anvil: the logged-in sessions of each user from each address, per protocol
    _anvil_key: tuple | None = None
    _refused: bool = False
    _gone: bool = False            # connectionLost has run

    def _userip_refusal(self, user: str) -> str | None:
        """login-common's check once auth said OK: the refusal text when the
        user already has mail_max_userip_connections sessions from this address."""
        return self.lab.userip_refusal(self.ACTOR, self.client_ip, user)

    def _refuse_userip(self, user: str, method: str, text: str) -> None:
        """Dovecot logs the reason with the login's details and closes the
        connection (the reply, sent by the caller, goes first)."""
        self.lab.log(f"{self.ACTOR}-login: {text}: user=<{user}>, method={method}, "
                     f"{self._addr_text()}")
        self._refused = True
        self.transport.loseConnection()

    def _anvil_connect(self, user: str) -> None:
        self._anvil_key = (self.ACTOR, self.client_ip, user)
        self.lab.anvil_connect(self._anvil_key, self)

    def _anvil_disconnect(self) -> None:
        if self._anvil_key is not None:
            self.lab.anvil_disconnect(self._anvil_key, self)
            self._anvil_key = None

    # ---- the login process's limits (src/login-common; checked against
    # Dovecot 2.3.19, docs/hostile.md)

    #: Invalid commands before a client is dropped: imap-login at the 3rd,
    #: pop3-login after the 3rd (CLIENT_MAX_BAD_COMMANDS).
    MAX_BAD_COMMANDS = 3
    _bad_commands = 0

    def _clock(self) -> float:
        reactor = getattr(self.lab, "reactor", None)
        return reactor.seconds() if reactor is not None else __import__("time").time()

    def makeConnection(self, transport) -> None:
        self._login_clock_start = self._clock()
        super().makeConnection(transport)

    def resetTimeout(self) -> None:
        """Until it logs in, a client has the login timeout from the moment it
        connected (Dovecot's CLIENT_LOGIN_TIMEOUT_MSECS, 3 minutes): talking
        does not extend it, so a guesser cannot stay for ever."""
        if self.user is not None:
            super().resetTimeout()

    def _auth_attempts(self) -> int:
        failed = getattr(self, "_failed_auths", None)
        if failed is None:
            failed = getattr(self, "_failed", 0)
        return failed + (1 if self._authenticating() else 0)

    def _authenticating(self) -> bool:
        """An authentication is under way (waiting for the auth server, or
        for the client's answer to a challenge)."""
        pending = getattr(self, "_auth_pending", None) or getattr(self, "_auth", None)
        return self.blocked is not None or pending is not None

    def _login_disconnect(self, reason: str, reply: bytes) -> None:
        """Dovecot's login process gives up on a client: its last word, the
        log line (``imap-login: Disconnected: <reason> (<what it did>)``), close."""
        if not self._handshaking:         # (under a handshake nothing gets through)
            self.sendLine(reply)
        secs = whole_secs(self._clock(), self._login_clock_start)
        attempts = self._auth_attempts()
        if attempts:
            what = f"auth failed, {attempts} attempts in {secs} secs"
            method = getattr(self, "_auth_method", None) or getattr(self, "_mech", None)
            who = f"user=<{self._last_user or ''}>, method={method}"
        else:
            what = f"no auth attempts in {secs} secs"
            who = "user=<>"
        self.lab.log(f"{self.ACTOR}-login: Disconnected: {reason} ({what}): {who}, "
                     f"{self._addr_text()}")
        self._refused = True              # connectionLost logs nothing more
        self.transport.loseConnection()

    def _login_timed_out(self) -> None:
        if self._authenticating():
            text, reason = "Disconnected for inactivity during authentication.", \
                "Inactivity during authentication"
        else:
            text, reason = "Disconnected for inactivity.", "Inactivity"
        self._login_disconnect(reason, self.BYE_PREFIX + text.encode())

    def _invalid_command(self) -> bool:
        """Count an invalid command of a client not logged in; True when it
        was one too many and the client has been dropped."""
        self._bad_commands += 1
        if self.ACTOR == "imap" and self._bad_commands >= self.MAX_BAD_COMMANDS:
            self._login_disconnect("Too many invalid commands",
                                   b"* BYE Too many invalid IMAP commands.")
            return True
        if self.ACTOR == "pop3" and self._bad_commands > self.MAX_BAD_COMMANDS:
            self._login_disconnect("Disconnected: Too many bad commands",
                                   b"-ERR Too many invalid bad commands.")
            return True
        return False

    def _emit_all(self, steps) -> None:
        for step in steps:
            self.lab.emit(step)

    # ---- implicit TLS (993, 995): the login process completes the TLS
    # handshake before it greets (ssl-iostream holds what is written until
    # then), so the order is: connect, TLS, greeting.

    #: an implicit-TLS connection whose handshake has not finished: the greeting waits
    _greeting_waits = False
    #: a TLS handshake (implicit, or after STARTTLS/STLS) has begun and not finished
    _handshaking = False
    #: why that handshake failed, as login-common's %c shows it
    _tls_error = ""

    def _greet(self) -> None:
        """Send the protocol's greeting (each server says its own)."""
        raise NotImplementedError

    def _greet_when_secure(self) -> None:
        """Called from connectionMade: greet now, or after the implicit-TLS handshake."""
        if self.tls and not self._starttls:
            self._greeting_waits = self._handshaking = True
        else:
            self._greet()

    def handshakeCompleted(self) -> None:
        """Twisted's TLS layer says the handshake is done: a ``tls`` Step, then,
        on an implicit-TLS port, the greeting."""
        self._handshaking = False
        info = describe_connection(self.transport)
        if info is not None:
            version, cipher, used, alg = info
            self.lab.emit(smtp_wire.event_step(
                self.STARTTLS_VERB if self._starttls else "IMPLICIT",
                f"TLS connection established: {version} with cipher {cipher} ({used}/{alg} bits)",
                session=self.session, proto="tls", tls=True, src="client", dst=self.ACTOR,
                meta={"version": version, "cipher": cipher, "dovecot": True}))
        if self._greeting_waits:
            self._greeting_waits = False
            self._greet()

    #: the client closed the TCP connection under TLS without a close_notify:
    #: ssl-iostream's last error, which login-common's %c shows
    _tls_eof = False

    def _note_tls_eof(self, reason) -> None:
        """Twisted's TLS layer turns an EOF without close_notify into
        ConnectionLost (a close_notify leaves the transport's ConnectionDone)."""
        from twisted.internet.error import ConnectionLost
        value = getattr(reason, "value", None)
        self._tls_eof = (self.tls and not self._handshaking
                         and self._login_end == "Connection closed"
                         and isinstance(value, ConnectionLost))

    def _start_tls(self) -> None:
        """STARTTLS/STLS said OK: the handshake begins."""
        self.transport.startTLS(self.ctx)
        self.tls = self.conv.tls = self._starttls = self._handshaking = True

    def _handshake_lost(self, reason) -> None:
        """The client went away during the TLS handshake (it refused the
        certificate, sent something that is not TLS, or just hung up): on an
        implicit-TLS port no greeting was ever sent. A Step says why, in the
        words login-common logs (``SSL_accept() failed: ...``)."""
        self._tls_error = accept_error(reason)
        if self._tls_error:
            self._login_end = f"Connection closed: {self._tls_error}"
        if not self._greeting_waits:
            return      # (the TLSFAIL commentary speaks of 993/995, where no greeting came)
        line = self._tls_error or "Connection closed during the TLS handshake"
        self.lab.emit(smtp_wire.event_step(
            "TLSFAIL", line, session=self.session, proto=self.ACTOR, src="client",
            dst=self.ACTOR, meta={"alert": alert_text(reason) or ""}))


class LoginFactory(protocol.ServerFactory):
    """Builds ``protocol(ctx, tls_options, implicit_tls)`` sessions (IMAP, POP3)."""

    def __init__(self, ctx, tls_options=None, implicit_tls: bool = False) -> None:
        self.ctx = ctx
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr):
        p = self.protocol(self.ctx, self.tls_options, self.implicit_tls)
        p.factory = self
        return p


class LoginAuth:
    """The auth client as Dovecot's login processes use it: unlike Postfix
    (10 s, then ``454 4.7.0 Temporary authentication failure``) they wait
    for each answer as long as it takes; a penalized address may wait 15 s
    before its request is even looked at, and the login timeout (3 minutes)
    is what bounds a client."""

    def __init__(self, client) -> None:
        self._client = client

    def start(self, mech, **kw):
        return self._client.start(mech, reply_timeout=None, **kw)

    def __getattr__(self, name):
        return getattr(self._client, name)
