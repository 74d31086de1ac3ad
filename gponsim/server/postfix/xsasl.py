"""Postfix's side of the Dovecot auth protocol (``xsasl_dovecot_server.c``).

Our smtpd (and later the IMAP/POP3 login) asks the auth server through one
persistent connection per lab process: the handshake ``VERSION\\t1\\t0`` +
``CPID\\t<pid>``, then ``AUTH`` / ``CONT`` requests whose ids count from 1
across sessions, exactly the lines Postfix writes. Unlike one smtpd process,
the lab serves many SMTP sessions at once, so replies are matched to
requests by id.

Every line, in both directions, is emitted as a Step carrying the caller's
session (the SMTP session); the handshake carries the session of the caller
whose request opened the connection.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from gponsim.server.unixpath import socket_address
from gponsim.steps import Emit, new_session, null_emit
from gponsim.wire.sasl import MAX_LINE, decode_line, parse, sasl_step

PROTOCOL_VERSION = (1, 0)               # what Postfix announces
AUTH_TIMEOUT = 10.0                     # Postfix's AUTH_TIMEOUT (connect and read)
#: The text after ``454 4.7.0 Temporary authentication failure: ``.
CONNECTION_LOST = "Connection lost to authentication server"

#: Which lab actor speaks for a SASL service name.
ACTORS = {"smtp": "smtpd", "imap": "imap", "pop3": "pop3"}

_BASE64_RE = re.compile(r"[A-Za-z0-9+/=]*")
# Postfix's smtpd_sasl_security_options vs. Dovecot's MECH flags.
_NEGATIVE = {"noplaintext": "plaintext", "noactive": "active",
             "nodictionary": "dictionary", "noanonymous": "anonymous"}
_POSITIVE = {"forward_secrecy": "forward-secrecy", "mutual_auth": "mutual-auth"}


class AuthUnavailable(Exception):
    """The auth server cannot be reached or went away (smtpd: 454 4.7.0).

    ``str(exc)`` is the detail Postfix would log as a warning; ``reason`` the
    text for the SMTP reply.
    """

    reason = CONNECTION_LOST


@dataclass
class AuthReply:
    """The auth server's answer to one AUTH or CONT."""

    kind: str                           # "CONT" | "OK" | "FAIL"
    request_id: int
    challenge: str = ""                 # base64, for CONT (may be empty)
    user: str | None = None
    reason: str | None = None
    params: dict = field(default_factory=dict)
    flags: list = field(default_factory=list)


def valid_base64(s: str) -> bool:
    """Postfix's pre-check: only ``[A-Za-z0-9+/=]`` (an empty string passes)."""
    return bool(_BASE64_RE.fullmatch(s))


def filter_mechanisms(mechs: dict[str, tuple[str, ...]],
                      security_options: str = "noanonymous") -> list[str]:
    """The mechanisms Postfix offers for ``smtpd_sasl_security_options``."""
    words = security_options.replace(",", " ").split()
    unknown = [w for w in words if w not in _NEGATIVE and w not in _POSITIVE]
    if unknown:
        raise ValueError(f"smtpd_sasl_security_options: unknown value {unknown[0]!r}")
    banned = {_NEGATIVE[w] for w in words if w in _NEGATIVE}
    needed = {_POSITIVE[w] for w in words if w in _POSITIVE}
    return [name for name, flags in mechs.items()
            if needed <= set(flags) and not banned & set(flags)]


def actor_for(service: str) -> str:
    return ACTORS.get(service, "smtpd")


class _Connection(LineOnlyReceiver):
    """One connection to the auth socket, from handshake to close."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE - 1

    def __init__(self, client: "AuthClient", session: str, actor: str) -> None:
        self.client = client
        self.session = session
        self.actor = actor
        self.mechs: "OrderedDict[str, tuple[str, ...]]" = OrderedDict()
        self.ready = defer.Deferred()
        self.done = False
        self.lost = False
        self._seen_mech = False

    # -- steps

    def emit(self, line: str, direction: str, session: str, actor: str) -> None:
        src, dst = (actor, "auth") if direction == "c2s" else ("auth", actor)
        self.client.emit(sasl_step(line, direction=direction, session=session,
                                   src=src, dst=dst))

    def send(self, line: str, session: str, actor: str) -> bool:
        if self.lost or self.transport.disconnecting:
            return False
        self.transport.write(line.encode("utf-8") + b"\n")
        self.emit(line, "c2s", session, actor)
        return True

    # -- Twisted

    def connectionMade(self) -> None:
        lines = [f"VERSION\t{PROTOCOL_VERSION[0]}\t{PROTOCOL_VERSION[1]}",
                 f"CPID\t{os.getpid()}"]
        self.transport.write("".join(line + "\n" for line in lines).encode("ascii"))
        for line in lines:
            self.emit(line, "c2s", self.session, self.actor)

    def lineReceived(self, raw: bytes) -> None:
        line = decode_line(raw)
        if not self.done:
            self.emit(line, "s2c", self.session, self.actor)
            self._handshake(line)
        else:
            self.client._reply(self, line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._abandon(f"SASL: auth server sent a line longer than {MAX_LINE} bytes")

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        if not self.ready.called:
            self.ready.errback(AuthUnavailable(
                "SASL: auth server closed the connection during the handshake"))
        self.client._lost(self)

    # -- handshake (xsasl_dovecot_server_connect)

    def _abandon(self, detail: str) -> None:
        if not self.ready.called:
            self.ready.errback(AuthUnavailable(detail))
        self.transport.loseConnection()

    def _handshake(self, line: str) -> None:
        cmd, args, _params, flags = parse(line)
        if cmd == "VERSION":
            try:
                major, _minor = int(args[0]), int(args[1])
            except (IndexError, ValueError):
                self._abandon("SASL: Protocol version error")
                return
            if major != PROTOCOL_VERSION[0]:
                self._abandon(f"SASL: Protocol version mismatch ({major} vs. "
                              f"{PROTOCOL_VERSION[0]})")
        elif cmd == "MECH" and args:
            self._seen_mech = True
            if "private" not in (f.lower() for f in flags):
                self.mechs[args[0]] = tuple(f.lower() for f in flags)
        elif cmd == "SPID":
            if not self._seen_mech:
                self._abandon("SASL: Connected to wrong auth socket "
                              "(auth-master instead of auth-client)")
        elif cmd == "DONE":
            self.done = True
            if not self.mechs:
                self._abandon("SASL: the auth server offers no authentication mechanisms")
                return
            self.ready.callback(self)
        # anything else (CUID, COOKIE, unknown) is ignored, as Postfix does


class _ConnectionFactory(Factory):
    def __init__(self, client: "AuthClient", session: str, actor: str) -> None:
        self.client, self.session, self.actor = client, session, actor

    def buildProtocol(self, addr):
        proto = _Connection(self.client, self.session, self.actor)
        proto.factory = self
        return proto


#: ``reply_timeout`` not given: the client's own timeout.
_OWN = object()


@dataclass(eq=False)
class _Request:
    id: int
    session: str
    actor: str
    conn: _Connection
    waiting: defer.Deferred | None = None    # set while a reply is awaited
    timer: object = None
    reply_timeout: object = _OWN


class AuthClient:
    """A Dovecot auth client speaking like Postfix's smtpd."""

    def __init__(self, socket_path: str | os.PathLike, emit: Emit = null_emit,
                 reactor=None, timeout: float = AUTH_TIMEOUT) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.socket_path = os.fspath(socket_path)
        self.emit = emit
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._connecting: list[defer.Deferred] | None = None
        self._next_id = 0
        self._requests: dict[int, _Request] = {}
        # who asked for which id, kept a while for late replies' Steps
        self._owners: "OrderedDict[int, tuple[str, str]]" = OrderedDict()

    # ----------------------------------------------------------- connection

    def _connected(self, session: str, actor: str) -> defer.Deferred:
        conn = self._conn
        if conn is not None and conn.done and not conn.lost:
            return defer.succeed(conn)
        waiter: defer.Deferred = defer.Deferred()
        if self._connecting is not None:
            self._connecting.append(waiter)
            return waiter
        self._connecting = [waiter]
        endpoint = UNIXClientEndpoint(self.reactor, socket_address(self.socket_path),
                                      timeout=self.timeout)
        d = endpoint.connect(_ConnectionFactory(self, session, actor))

        def connected(proto: _Connection):
            timer = self.reactor.callLater(self.timeout, proto._abandon,
                                           "SASL: timeout during the auth handshake")

            def stop_timer(result):
                if timer.active():
                    timer.cancel()
                return result
            return proto.ready.addBoth(stop_timer)

        def settle(result):
            if isinstance(result, Failure) and not result.check(AuthUnavailable):
                result = Failure(AuthUnavailable(
                    f"SASL: Connect to Dovecot auth socket '{self.socket_path}' "
                    f"failed: {_os_error(result.value)}"))
            self._handshake_over(result)

        d.addCallback(connected)
        d.addBoth(settle)
        return waiter

    def _handshake_over(self, result):
        waiters, self._connecting = self._connecting or [], None
        if isinstance(result, _Connection):
            self._conn = result
        for w in waiters:
            if isinstance(result, _Connection):
                w.callback(result)
            else:
                w.errback(result)
        return None

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
        for request in [r for r in self._requests.values() if r.conn is conn]:
            self._finish(request)
            if request.waiting is not None:
                d, request.waiting = request.waiting, None
                d.errback(AuthUnavailable(f"SASL: {CONNECTION_LOST}"))

    # ----------------------------------------------------------- API

    def mechanisms(self, session: str | None = None,
                   security_options: str | None = None) -> defer.Deferred:
        """The mechanisms the auth server offers (optionally filtered as
        Postfix does with ``smtpd_sasl_security_options``)."""
        d = self._connected(session or new_session("sasl"), "smtpd")

        def names(conn: _Connection) -> list[str]:
            if security_options is None:
                return list(conn.mechs)
            return filter_mechanisms(conn.mechs, security_options)
        return d.addCallback(names)

    def start(self, mech: str, *, service: str = "smtp", lip: str, rip: str,
              secured: bool = False, resp_b64: str | None = None,
              session: str, nologin: bool = True, reply_timeout=_OWN,
              login_session: str | None = None) -> defer.Deferred:
        """Send ``AUTH``; fires with an :class:`AuthReply` or fails with
        :class:`AuthUnavailable`. Each reply is awaited ``reply_timeout``
        seconds (Postfix: the client's 10 s; None: as long as it takes, as
        Dovecot's login processes wait)."""
        actor = actor_for(service)

        def attempt(conn: _Connection, retry: bool):
            if conn.lost or conn.transport.disconnecting:
                if retry:               # Postfix reconnects once, then gives up
                    return self._connected(session, actor).addCallback(attempt, False)
                return defer.fail(AuthUnavailable(f"SASL: {CONNECTION_LOST}"))
            if mech.upper() not in (m.upper() for m in conn.mechs):
                return AuthReply("FAIL", 0, reason="Invalid authentication mechanism")
            if resp_b64 is not None and not valid_base64(resp_b64):
                return AuthReply("FAIL", 0, reason="Invalid base64 data in initial response")
            self._next_id += 1
            rid = self._next_id
            line = f"AUTH\t{rid}\t{mech}\tservice={service}"
            if nologin:
                line += "\tnologin"
            line += f"\tlip={lip}\trip={rip}"
            if secured:
                line += "\tsecured"
            if login_session:
                # Dovecot's login processes name their session (Postfix does not)
                line += f"\tsession={login_session}"
            if resp_b64 is not None:
                line += f"\tresp={resp_b64}"
            request = _Request(rid, session, actor, conn)
            if reply_timeout is not _OWN:
                request.reply_timeout = reply_timeout
            self._requests[rid] = request
            self._remember(rid, session, actor)
            return self._ask(request, line)
        return self._connected(session, actor).addCallback(attempt, True)

    def respond(self, request_id: int, resp_b64: str, session: str) -> defer.Deferred:
        """Relay the client's answer to a CONT challenge (``CONT\\t<id>\\t<b64>``)."""
        request = self._requests.get(request_id)
        if request is None or request.conn.lost:
            return defer.fail(AuthUnavailable(f"SASL: {CONNECTION_LOST}"))
        if request.waiting is not None:
            return defer.fail(ValueError(f"request {request_id} is still waiting for a reply"))
        if not valid_base64(resp_b64):
            self._finish(request)
            return defer.succeed(AuthReply("FAIL", request_id,
                                           reason="Invalid base64 data in continued response"))
        request.session = session
        self._remember(request_id, session, request.actor)
        return self._ask(request, f"CONT\t{request_id}\t{resp_b64}")

    def abort(self, request_id: int) -> None:
        """The SMTP client answered ``*``. Postfix tells the auth server
        nothing (the request expires there); we just forget it."""
        request = self._requests.get(request_id)
        if request is None:
            return
        self._finish(request)
        if request.waiting is not None:
            d, request.waiting = request.waiting, None
            d.callback(AuthReply("FAIL", request_id, reason="Authentication aborted"))

    def close(self) -> None:
        """Close the connection; pending requests fail with AuthUnavailable."""
        if self._conn is not None and not self._conn.lost:
            self._conn.transport.loseConnection()

    # ----------------------------------------------------------- internals

    def _remember(self, rid: int, session: str, actor: str) -> None:
        self._owners[rid] = (session, actor)
        self._owners.move_to_end(rid)
        while len(self._owners) > 1024:
            self._owners.popitem(last=False)

    def _ask(self, request: _Request, line: str) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if not request.conn.send(line, request.session, request.actor):
            self._finish(request)
            return defer.fail(AuthUnavailable(f"SASL: {CONNECTION_LOST}"))
        request.waiting = d
        timeout = self.timeout if request.reply_timeout is _OWN else request.reply_timeout
        if timeout is not None:
            request.timer = self.reactor.callLater(timeout, self._timed_out, request, timeout)
        return d

    def _timed_out(self, request: _Request, timeout: float) -> None:
        request.timer = None
        self._finish(request)
        if request.waiting is not None:
            d, request.waiting = request.waiting, None
            d.errback(AuthUnavailable(f"SASL: no reply from the auth server in "
                                      f"{timeout:g} s "
                                      f"({CONNECTION_LOST})"))

    def _finish(self, request: _Request) -> None:
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        request.timer = None
        if self._requests.get(request.id) is request:
            del self._requests[request.id]

    def _reply(self, conn: _Connection, line: str) -> None:
        cmd, args, params, flags = parse(line)
        rid = int(args[0]) if args and args[0].isdigit() else None
        request = self._requests.get(rid) if rid is not None else None
        if request is not None and request.conn is not conn:
            request = None
        if request is not None:
            session, actor = request.session, request.actor
        else:
            session, actor = self._owners.get(rid, (conn.session, conn.actor))
        conn.emit(line, "s2c", session, actor)
        if request is None or request.waiting is None or cmd not in ("OK", "CONT", "FAIL"):
            return                      # not ours, or unknown: ignored like Postfix
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        request.timer = None
        d, request.waiting = request.waiting, None
        if cmd == "CONT":
            if len(args) < 2:
                self._finish(request)
                d.callback(AuthReply("FAIL", rid, reason="Authentication backend error"))
            else:
                d.callback(AuthReply("CONT", rid, challenge=args[1], params=params, flags=flags))
            return
        self._finish(request)
        user = params.get("user")
        if cmd == "OK" and not user:
            d.callback(AuthReply("FAIL", rid, reason="Authentication backend error",
                                 params=params, flags=flags))
        elif cmd == "OK":
            d.callback(AuthReply("OK", rid, user=user, params=params, flags=flags))
        else:
            d.callback(AuthReply("FAIL", rid, user=user, reason=params.get("reason"),
                                 params=params, flags=flags))


def _os_error(exc: BaseException) -> str:
    os_error = getattr(exc, "osError", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    if isinstance(os_error, tuple) and len(os_error) == 2:
        return str(os_error[1])
    text = str(exc)
    return text.split(": ", 1)[-1].rstrip(".") if ": " in text else text
