"""The lab's Dovecot auth service (actor ``auth``) on a UNIX socket.

Postfix's smtpd (``smtpd_sasl_type = dovecot``) connects to
``/var/spool/postfix/private/auth`` (the ``unix_listener`` of the lab's
10-master.conf) and asks it to check user names and passwords. This module
answers exactly as Dovecot 2.3's auth process does (``src/auth/
auth-client-connection.c``, ``auth-request-handler.c``, ``mech-plain.c``,
``mech-login.c``): same handshake, same replies, same failure delay, same
reasons. See ``lab-facts.md`` §1. A client address that keeps failing
waits longer before each new attempt, whichever service it uses (IMAP,
POP3, SMTP AUTH through Postfix): Dovecot's auth penalty
(:mod:`gponsim.server.dovecot.penalty`).

Passwords are checked by :meth:`gponsim.server.dovecot.passwd.Users.verify` in a
thread (bcrypt), so the reactor never stalls.

Steps: lines of connections from foreign clients (e.g. a real Postfix) are
emitted with ``src="smtpd" dst="auth"`` (received) and ``src="auth"
dst="smtpd"`` (sent). A connection whose CPID is this process's pid is the
in-process smtpd, whose client side emits the same Steps itself, so the
server stays silent for it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import secrets
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from twisted.internet import threads
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from gponsim.server.unixpath import give_socket, socket_address, socket_folder
from gponsim.commentary import annotate
from gponsim.server.dovecot.passwd import Users
from gponsim.server.dovecot.penalty import AuthPenalty, checksum, to_secs
from gponsim.steps import Emit, Step, new_session, null_emit
from gponsim.wire.sasl import MAX_LINE, decode_line, escape, sasl_step

log = logging.getLogger("gponsim.auth")

#: Where the socket lives, relative to the lab root (10-master.conf).
RELATIVE_SOCKET = Path("var/spool/postfix/private/auth")
PROTOCOL_VERSION = (1, 2)                 # Dovecot 2.3
FAILURE_DELAY = 2.0                       # auth_failure_delay
REQUEST_TIMEOUT = 150.0                   # MASTER_AUTH_SERVER_TIMEOUT_SECS
#: MECH flags (``src/auth/mech.c``) of the mechanisms gponsim simulates.
MECH_FLAGS = {"PLAIN": ("plaintext",), "LOGIN": ("plaintext",)}
#: Dovecot's default auth_username_chars.
USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@")

_PROMPT_USER = b"Username:"
_PROMPT_PASS = b"Password:"


class AuthSocketError(Exception):
    """The auth socket cannot be created (in use, not a socket, ...)."""


def socket_path(lab_root: str | os.PathLike) -> Path:
    """The auth socket of the lab whose root folder is ``lab_root``."""
    return Path(lab_root) / RELATIVE_SOCKET


def parse_mechanisms(value: str) -> list[str]:
    """``auth_mechanisms = plain login`` -> ``["PLAIN", "LOGIN"]``.

    Raises ValueError for a mechanism gponsim does not simulate.
    """
    mechs: list[str] = []
    for word in value.replace(",", " ").split():
        name = word.upper()
        if name not in MECH_FLAGS:
            raise ValueError(f"auth_mechanisms: {word!r} is not simulated by gponsim "
                             f"(supported: {', '.join(m.lower() for m in MECH_FLAGS)})")
        if name not in mechs:
            mechs.append(name)
    if not mechs:
        raise ValueError("auth_mechanisms is empty")
    return mechs


def _b64decode(text: str) -> bytes | None:
    if text and not text.strip("="):
        return b""                       # Dovecot's decoder: padding alone is empty data
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _uint(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


@dataclass(eq=False)
class _Request:
    id: int
    mech: str
    service: str
    user: str | None = None              # after auth_username_format (%Lu)
    original: str | None = None          # as the client typed it
    accept_cont: bool = False
    removed: bool = False
    timer: object = None
    rip: str | None = None               # the client's address (the penalty's key)
    session: str = ""                    # the login process's session id, if it sent one
    no_penalty: bool = False             # "no-penalty": never delayed nor counted
    last_penalty: int = 0                # the address's penalty when the request came
    checksum: int = 0                    # user+password, once a password was given
    penalty_timer: object = None         # waiting out the penalty


class AuthConnection(LineOnlyReceiver):
    """One client connection (one smtpd process, or our in-process client)."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE - 1            # the LF must fit in the 16384 bytes too

    factory: "AuthServer"

    def __init__(self) -> None:
        self.session = new_session("sasl")
        self.version_received = False
        self.cpid: int | None = None
        self.requests: dict[int, _Request] = {}
        self._pending_steps: list[Step] | None = []   # until we know who it is
        self._delayed: list = []
        self._closed = False

    # ------------------------------------------------------------- steps

    def _record(self, line: str, direction: str) -> None:
        if self._pending_steps is None and self.cpid == os.getpid():
            return
        src, dst = ("smtpd", "auth") if direction == "c2s" else ("auth", "smtpd")
        step = sasl_step(line, direction=direction, session=self.session, src=src, dst=dst)
        self._deliver(step)

    def _deliver(self, step: Step) -> None:
        if self._pending_steps is not None:
            self._pending_steps.append(step)
        else:
            self.factory.emit(step)

    def _settle(self) -> None:
        """Decide, once CPID is known (or never will be), what to emit."""
        pending, self._pending_steps = self._pending_steps, None
        if pending and self.cpid != os.getpid():
            for step in pending:
                self.factory.emit(step)

    def _event(self, message: str) -> None:
        if self._pending_steps is None and self.cpid == os.getpid():
            return
        self._deliver(annotate(Step(t=time.time(), session=self.session, proto="sasl",
                                    src="auth", dst="smtpd", dir="internal", kind="event",
                                    line=message, verb="disconnect")))

    # ------------------------------------------------------------- I/O

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self.cuid = self.factory.next_cuid()
        lines = [f"VERSION\t{PROTOCOL_VERSION[0]}\t{PROTOCOL_VERSION[1]}"]
        lines += ["\t".join(("MECH", m, *MECH_FLAGS[m])) for m in self.factory.mechanisms]
        lines += [f"SPID\t{os.getpid()}", f"CUID\t{self.cuid}",
                  f"COOKIE\t{secrets.token_hex(16)}", "DONE"]
        # Dovecot sends the whole handshake in one write, before reading.
        self.transport.write("".join(line + "\n" for line in lines).encode("ascii"))
        for line in lines:
            self._record(line, "s2c")

    def send(self, line: str) -> None:
        if self._closed or self.transport.disconnecting:
            return
        self.transport.write(line.encode("utf-8") + b"\n")
        self._record(line, "s2c")

    def _drop(self, error: str) -> None:
        """Dovecot logs an error and closes the connection."""
        log.warning("auth: %s", error)
        self._event(f"auth: Error: {error}")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._drop(f"BUG: Auth client {self.cpid or 0} sent us more than {MAX_LINE} bytes")

    def connectionLost(self, reason=None) -> None:
        self._closed = True
        self.factory.connections.discard(self)
        for call in self._delayed:
            if call.active():
                call.cancel()
        for request in list(self.requests.values()):
            self._remove(request)
        if self._pending_steps is not None:
            self._settle()

    def lineReceived(self, raw: bytes) -> None:
        line = decode_line(raw)
        self._record(line, "c2s")
        if self.cpid is None:
            self._handshake(line)
            return
        if line.startswith("AUTH\t"):
            self._auth(line)
        elif line.startswith("CONT\t"):
            self._cont(line)
        elif line.startswith("CANCEL\t"):
            self._cancel(line)
        else:
            self._drop(f"BUG: Authentication client sent unknown command: {line[:80]}")

    def _handshake(self, line: str) -> None:
        if not self.version_received:
            fields = line.split("\t")
            if fields[0] != "VERSION" or len(fields) < 2 or fields[1] != str(PROTOCOL_VERSION[0]):
                self._drop("Authentication client not compatible with this server "
                           "(mixed old and new binaries?)")
                return
            self.version_received = True
            return
        if not line.startswith("CPID\t"):
            self._drop(f"BUG: Authentication client sent unknown handshake command: {line[:80]}")
            return
        pid = _uint(line[5:])
        if not pid:
            self._drop("BUG: Authentication client said it's PID 0")
            return
        self.cpid = pid
        self._settle()

    # ------------------------------------------------------------- requests

    def _auth(self, line: str) -> None:
        fields = line.split("\t")[1:]
        request_id = _uint(fields[0]) if fields else None
        if len(fields) < 2 or request_id is None:
            self._drop(f"BUG: Authentication client {self.cpid} sent broken AUTH request")
            return
        mech = fields[1].upper()
        if mech not in self.factory.mechanisms:
            self._drop(f"BUG: Authentication client {self.cpid} requested unsupported "
                       f"authentication mechanism {fields[1][:64]}")
            return
        params: dict[str, str] = {}
        resp: str | None = None
        rest = fields[2:]
        for i, item in enumerate(rest):
            name, _, value = item.partition("=")
            if name == "resp":
                resp = value
                if i != len(rest) - 1:
                    self._drop(f"BUG: Authentication client {self.cpid} "
                               "sent AUTH parameters after 'resp'")
                    return
                break
            params[name] = value                 # unknown ones are ignored
        if "service" not in params:
            self._drop(f"BUG: Authentication client {self.cpid} didn't specify service in request")
            return
        if request_id in self.requests:
            self._drop(f"BUG: Authentication client {self.cpid} sent a duplicate ID {request_id}")
            return
        request = _Request(id=request_id, mech=mech, service=params["service"],
                           session=params.get("session", ""))
        request.timer = self.factory.reactor.callLater(
            self.factory.request_timeout, self._timed_out, request)
        self.requests[request_id] = request
        data: bytes | None = None
        if resp:                                 # an empty resp= is no response
            # "=" is SASL's empty initial response (Postfix forwards AUTH PLAIN = as is)
            data = b"" if resp == "=" else _b64decode(resp)
            if data is None:
                request.rip = params.get("rip") or None
                self._verbose(request, "Invalid base64 data in initial response")
                self._fail_now(request, "Invalid base64 data in initial response")
                return
        self._wait_penalty(request, params, data)

    def _wait_penalty(self, request: _Request, params: dict, data: bytes | None) -> None:
        """Before a request is looked at, its address waits out its penalty
        (auth_penalty_lookup): 4, 8, 15 s after 1, 2, 3+ recent failures."""
        request.rip = params.get("rip") or None
        request.no_penalty = "no-penalty" in params
        penalty = 0 if request.no_penalty else self.factory.penalty.lookup(request.rip)
        request.last_penalty = penalty
        if penalty:
            request.penalty_timer = self.factory.reactor.callLater(
                to_secs(penalty), self._begin, request, data)
        else:
            self._begin(request, data)

    def _begin(self, request: _Request, data: bytes | None) -> None:
        request.penalty_timer = None
        if request.removed:
            return
        if request.mech == "PLAIN":
            self._plain(request, data)
        else:
            self._login(request, data, initial=True)

    def _cont(self, line: str) -> None:
        _, _, rest = line.partition("\t")
        id_text, tab, data_text = rest.partition("\t")
        request_id = _uint(id_text)
        if not tab or request_id is None:
            self._drop("BUG: Authentication client sent broken CONT request")
            return
        request = self.requests.get(request_id)
        if request is None:
            self.send(f"FAIL\t{request_id}\treason=Authentication request timed out")
            return
        if not request.accept_cont:
            self._fail_now(request, "Unexpected continuation")
            return
        request.accept_cont = False
        data = _b64decode(data_text)
        if data is None:
            self._fail_now(request, "Invalid base64 data in continued response")
            return
        if request.mech == "PLAIN":
            self._plain(request, data)
        else:
            self._login(request, data)

    def _cancel(self, line: str) -> None:
        request_id = _uint(line[7:])
        if request_id is None:
            self._drop("BUG: Authentication client sent broken CANCEL")
            return
        request = self.requests.get(request_id)
        if request is not None:
            self._remove(request)

    def _timed_out(self, request: _Request) -> None:
        # Dovecot drops the request silently; a later CONT gets
        # "Authentication request timed out".
        request.timer = None
        log.info("auth: request %s.%s timed out", self.cpid, request.id)
        self._remove(request)

    def _remove(self, request: _Request) -> None:
        request.removed = True
        for timer in (request.timer, request.penalty_timer):
            if timer is not None and timer.active():
                timer.cancel()
        request.timer = request.penalty_timer = None
        if self.requests.get(request.id) is request:
            del self.requests[request.id]

    # ------------------------------------------------------------- mechanisms

    def _challenge(self, request: _Request, challenge: bytes) -> None:
        request.accept_cont = True
        self.send(f"CONT\t{request.id}\t{base64.b64encode(challenge).decode('ascii')}")

    def _verbose(self, request: _Request, text: str) -> None:
        """auth_verbose = yes: why the mechanism refused the request
        (``auth: plain(?,<rip>,<session>): Empty username``)."""
        if not self.factory.verbose:
            return
        where = ",".join(x for x in (request.user or "?", request.rip) if x)
        if request.session:
            where += f",<{request.session}>"
        self.factory.log(f"auth: {request.mech.lower()}({where}): {text}")

    def _set_username(self, request: _Request, raw: bytes) -> bool:
        original = raw.decode("utf-8", "replace")
        if original:
            request.original = original
        if not original:
            self._verbose(request, "Empty username")
            return False
        bad = next((ch for ch in original if ch not in USERNAME_CHARS), None)
        if bad is not None:
            self._verbose(request, "Username character disallowed by auth_username_chars: "
                                   f"0x{ord(bad):02x} (username: {original})")
            return False
        request.user = original.lower()          # auth_username_format = %Lu
        return True

    def _plain(self, request: _Request, data: bytes | None) -> None:
        if data is None:
            self._challenge(request, b"")        # client answers "334 " + creds
            return
        parts = data.split(b"\0", 2)
        if len(parts) != 3:
            self._verbose(request, "invalid input")
            self._fail(request)
            return
        authzid, authcid, password = parts
        if not self._set_username(request, authcid):
            self._fail(request)
            return
        if authzid and authzid != authcid:
            # master-user login; the lab has no master passdb
            self._verbose(request, "login user: Master user login attempted without "
                                   "master passdbs")
            self._fail(request)
            return
        self._verify(request, password.split(b"\0", 1)[0])

    def _login(self, request: _Request, data: bytes | None, initial: bool = False) -> None:
        if initial and not data:
            self._challenge(request, _PROMPT_USER)
            return
        if request.user is None:
            if not self._set_username(request, data or b""):
                self._fail(request)
                return
            self._challenge(request, _PROMPT_PASS)
            return
        self._verify(request, (data or b"").split(b"\0", 1)[0])

    # ------------------------------------------------------------- results

    def _verify(self, request: _Request, password: bytes) -> None:
        request.checksum = checksum(request.user, password)
        reactor = self.factory.reactor
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                      self.factory.users.verify, request.user, password)
        d.addCallbacks(self._verified, self._verify_error,
                       callbackArgs=(request,), errbackArgs=(request,))

    def _verified(self, ok: bool, request: _Request) -> None:
        if request.removed:                      # cancelled, timed out or gone
            return
        if ok:
            self._remove(request)
            if request.last_penalty and not request.no_penalty:
                self.factory.penalty.update(request.rip, 0)      # forgiven
            self.send(f"OK\t{request.id}\tuser={escape(request.user)}{self._extra(request)}")
        else:
            if self.factory.verbose:
                # auth_verbose = yes: the passdb says why (db-passwd-file.c)
                why = ("Password mismatch" if self.factory.users.exists(request.user)
                       else "unknown user")
                where = ",".join(x for x in (request.user, request.rip) if x)
                if request.session:
                    where += f",<{request.session}>"
                self.factory.log(f"auth: passwd-file({where}): {why}")
            self._fail(request)

    def _verify_error(self, failure, request: _Request) -> None:
        log.error("auth: passwd-file lookup failed: %s", failure.getErrorMessage())
        if request.removed:
            return
        self._fail(request, code="temp_fail")

    def _extra(self, request: _Request) -> str:
        if request.original is not None and request.user is not None \
                and request.original != request.user:
            return f"\toriginal_user={escape(request.original)}"
        return ""

    def _fail(self, request: _Request, code: str | None = None) -> None:
        """Authentication failed: answer after auth_failure_delay; the
        client's address gets one more point of penalty."""
        self._remove(request)
        if not request.no_penalty:
            self.factory.penalty.update(request.rip, request.last_penalty + 1, request.checksum)
        line = f"FAIL\t{request.id}"
        if request.user is not None:
            line += f"\tuser={escape(request.user)}"
        elif request.original is not None:
            line += f"\tuser={escape(request.original)}"
        if code:
            line += f"\tcode={code}"
        line += self._extra(request)
        call = self.factory.reactor.callLater(self.factory.failure_delay, self._send_delayed, line)
        self._delayed.append(call)

    def _send_delayed(self, line: str) -> None:
        self._delayed = [c for c in self._delayed if c.active()]
        self.send(line)

    def _fail_now(self, request: _Request, reason: str) -> None:
        """A protocol error: answered at once, with a reason."""
        self._remove(request)
        self.send(f"FAIL\t{request.id}\treason={escape(reason)}")


class AuthServer(Factory):
    """Listens on the auth socket; one :class:`AuthConnection` per client."""

    protocol = AuthConnection

    def __init__(self, users: Users, *, mechanisms: Sequence[str] = ("PLAIN", "LOGIN"),
                 emit: Emit = null_emit, failure_delay: float = FAILURE_DELAY,
                 request_timeout: float = REQUEST_TIMEOUT, reactor=None,
                 verbose: bool = False, log: Callable[[str], None] = lambda text: None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        #: auth_verbose: failed logins explained in mail.log (``log`` writes them)
        self.verbose = verbose
        self.log = log
        self.users = users
        self.mechanisms = [m.upper() for m in mechanisms]
        unknown = [m for m in self.mechanisms if m not in MECH_FLAGS]
        if unknown or not self.mechanisms:
            raise ValueError(f"unsupported auth mechanisms: {unknown or 'none given'}")
        self.emit: Callable[[Step], object] = emit
        self.failure_delay = failure_delay
        self.request_timeout = request_timeout
        #: Dovecot's auth penalty per client address (gponsim.server.dovecot.penalty)
        self.penalty = AuthPenalty(self.reactor.seconds)
        self.port = None
        self._cuid = 0
        self.connections: set[AuthConnection] = set()

    def next_cuid(self) -> int:
        self._cuid += 1
        return self._cuid

    def listen(self, path: str | os.PathLike, mode: int = 0o666, user: str = "postfix",
               group: str = "postfix"):
        """Create the socket and listen: the lab's ``unix_listener
        /var/spool/postfix/private/auth { mode = 0666, user = postfix, group =
        postfix }``, inside Postfix's ``private/`` folder (0700, the postfix
        user's: only Postfix's smtpd and root reach it)."""
        path = Path(path)
        socket_folder(path)
        _clear_stale_socket(path)
        self.port = self.reactor.listenUNIX(socket_address(path), self, mode=mode)
        give_socket(path, mode, user, group)
        return self.port

    def stop(self):
        """Stop listening (the socket file is removed) and close connections."""
        for conn in list(self.connections):
            conn.transport.loseConnection()
        port, self.port = self.port, None
        if port is None:
            from twisted.internet.defer import succeed
            return succeed(None)
        return port.stopListening()


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a crashed run; refuse to steal a live one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AuthSocketError(f"{path} exists and is not a socket; "
                              "remove it or choose another lab root")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(socket_address(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise AuthSocketError(f"{path}: cannot check the existing socket: "
                                  f"{exc.strerror}") from None
        os.unlink(path)                       # stale: nobody is listening
    else:
        raise AuthSocketError(f"{path} is in use: another auth server (a running "
                              "gponsim lab or Dovecot) is listening there")
    finally:
        probe.close()
