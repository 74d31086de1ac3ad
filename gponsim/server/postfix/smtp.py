"""Postfix's SMTP client, smtp(8): mail for other domains goes to ``relayhost``.

In the lab profile ``relayhost = [smtp.gmail.com]:587``: the brackets mean
"no MX lookup, connect to this host" and ``:587`` is the submission port.
For each message qmgr hands over (:class:`~gponsim.server.postfix.transport.DeliveryRequest`)
the client does what ``src/smtp/smtp_proto.c`` does (lab-facts §3)::

    connect → 220 → EHLO mail.gponlab.local → STARTTLS → TLS handshake
    → EHLO mail.gponlab.local → AUTH PLAIN <b64> (sasl_passwd)
    → MAIL FROM:<a> SIZE=n [BODY=8BITMIME] / RCPT TO:<b>... / DATA (pipelined)
    → the message → QUIT

Every command and reply is a Step (``proto smtp``, ``smtp`` → ``relay``,
built by :mod:`gponsim.wire.smtp`); milestones (connection, TLS trust, the
verdict) are Steps of ``proto relay``. The verdict of each recipient goes
back to qmgr and into mail.log exactly as Postfix logs it::

    postfix/smtp[pid]: Trusted TLS connection established to smtp.gmail.com[127.0.0.1]:587: TLSv1.3 with cipher ...
    postfix/smtp[pid]: QID: to=<bob@gmail.com>, relay=smtp.gmail.com[127.0.0.1]:587, delay=.., delays=a/b/c/d, dsn=2.0.0, status=sent (250 2.0.0 OK  ... - gsmtp)

Name resolution never uses DNS (the lab has none): the relay host name is
looked up in the lab root's ``etc/hosts`` (:func:`read_hosts`), which the lab
writes with ``127.0.0.1 smtp.gmail.com``. With the built-in Gmail simulator
the lab also maps the relay's *port* to the simulator's loopback port
(``connect_port``), because the simulator cannot take 587 (the lab's own
submission port); logs and Steps still say ``:587``, as on the real server.

Security (main.cf): ``smtp_tls_security_level = encrypt`` — no STARTTLS
offered means deferral; the server certificate is checked against
``smtp_tls_CAfile`` and logged as ``Trusted`` (chain verified) or
``Untrusted`` (encrypt does not require a trusted certificate, so delivery
goes on). ``smtp_sasl_auth_soft_bounce = yes`` (the default): an AUTH
rejection defers the mail (5.x.x becomes 4.x.x) instead of bouncing it.
"""

from __future__ import annotations

import base64
import errno
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from gponsim.commentary import catalog
from gponsim.server.maillog import MailLog
from gponsim.server.postfix.transport import DeliveryRequest, RecipientStatus, Verdicts
from gponsim.server.tls import describe_connection, key_exchange_summary, like_debian_openssl
from gponsim.steps import Emit, Step, new_session, null_emit
from gponsim.wire import smtp as wire


class RelayError(Exception):
    """The conversation cannot go on: every remaining recipient gets ``status``."""

    def __init__(self, dsn: str, reason: str, status: str = "deferred") -> None:
        super().__init__(reason)
        self.dsn = dsn
        self.reason = reason
        self.status = status


def read_hosts(path: Path) -> dict[str, str]:
    """``/etc/hosts`` as a dict name → first address (lower-case names)."""
    table: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return table
    for line in text.splitlines():
        fields_ = line.split("#", 1)[0].split()
        if len(fields_) < 2:
            continue
        for name in fields_[1:]:
            table.setdefault(name.lower(), fields_[0])
    return table


HOSTS_TEMPLATE = """\
# The lab server's /etc/hosts (gponsim).
# gponsim never asks DNS: smtp(8) finds the relay host's address here.
# With the built-in Gmail simulator, smtp.gmail.com is this machine.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
127.0.1.1\tmail.gponlab.local mail
127.0.0.1\tsmtp.gmail.com
"""


def ensure_hosts(path: Path) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HOSTS_TEMPLATE)


def dns_resolver(resolv_conf: Path, reactor) -> Callable[[str], Any]:
    """Look host names up as Postfix does with ``smtp_host_lookup = dns``: A records
    from the servers of ``resolv_conf`` (the lab root's /etc/resolv.conf), never
    /etc/hosts. A failure is Postfix's ``Host or domain name not found`` (4.4.3)."""
    from twisted.names import client, dns

    resolver = client.Resolver(resolv=str(resolv_conf), reactor=reactor)

    async def lookup(host: str) -> str:
        try:
            answers, _authority, _additional = await resolver.lookupAddress(host)
        except Exception:  # noqa: BLE001 - any DNS failure defers the mail
            answers = []
        for rr in answers:
            if rr.type == dns.A:
                return rr.payload.dottedQuad()
        raise RelayError("4.4.3", f"Host or domain name not found. Name service error for "
                                  f"name={host} type=A: Host not found, try again")
    return lambda host: defer.ensureDeferred(lookup(host))


def enhanced_or_default(code: int, enhanced: str | None) -> str:
    """The DSN of a reply: its enhanced status, else derived from the code."""
    if enhanced:
        return enhanced
    return {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "4.0.0")


def joined(lines: list[str]) -> str:
    """A multi-line reply as Postfix logs it: lines joined by '?'."""
    return "?".join(lines)


@dataclass
class RelaySettings:
    host: str                              #: smtp.gmail.com
    port: int                              #: 587 (what logs show)
    nexthop: str                           #: [smtp.gmail.com]:587
    helo_name: str = "mail.gponlab.local"  #: smtp_helo_name = $myhostname
    tls_level: str = "encrypt"             #: smtp_tls_security_level
    cafile: Path | None = None             #: smtp_tls_CAfile under the lab root
    capath: Path | None = None             #: smtp_tls_CApath (c_rehash-style folder)
    sasl_enabled: bool = True              #: smtp_sasl_auth_enable
    soft_bounce_auth: bool = True          #: smtp_sasl_auth_soft_bounce
    connect_timeout: float = 30.0          #: smtp_connect_timeout
    reply_timeout: float = 300.0           #: smtp_helo/mail/rcpt/data_done timeouts
    hosts_file: Path | None = None         #: <lab root>/etc/hosts
    connect_host: str | None = None        #: override (simulator): address to connect to
    connect_port: int | None = None        #: override (simulator): port to connect to
    #: called just before each connection (simulator: bring its listener in line
    #: with ``gponsim gmail fault`` first, so a change is seen at once)
    before_connect: Callable[[], None] = lambda: None
    allow_system_resolver: bool = False    #: --relay real: getaddrinfo (not in tests)
    #: --relay dns (the lab network): name -> Deferred address, from the lab's DNS
    resolver: Callable[[str], Any] | None = None
    credentials: Callable[[], tuple[str, str] | None] = lambda: None
    syslog_name: str = "postfix"
    tls_loglevel: int = 0                  #: smtp_tls_loglevel


class _Lost(Exception):
    pass


@implementer(IHandshakeListener)
class ReplyReader(LineOnlyReceiver):
    """Reads replies (possibly multi-line) and hands them out in order."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._replies: deque[list[str]] = deque()
        self._waiting: deque[defer.Deferred] = deque()
        self._handshake: defer.Deferred | None = None
        self.lost: Any = None
        self.connected_d: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        d, self.connected_d = self.connected_d, None
        if d is not None:
            d.callback(self)

    def lineReceived(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        self._lines.append(line)
        if len(line) >= 4 and line[3] == "-":
            return
        reply, self._lines = self._lines, []
        if self._waiting:
            self._waiting.popleft().callback(reply)
        else:
            self._replies.append(reply)

    def next_reply(self) -> defer.Deferred:
        if self._replies:
            return defer.succeed(self._replies.popleft())
        if self.lost is not None:
            return defer.fail(_Lost(self.lost))
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def send(self, line: str) -> None:
        self.transport.write(line.encode("utf-8", "surrogateescape") + b"\r\n")

    def start_tls(self, creator) -> defer.Deferred:
        self._handshake = defer.Deferred()
        self.transport.startTLS(creator)
        return self._handshake

    def handshakeCompleted(self) -> None:
        d, self._handshake = self._handshake, None
        if d is not None:
            d.callback(None)

    def connectionLost(self, reason=None) -> None:
        self.lost = reason.getErrorMessage() if reason is not None else "connection lost"
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(_Lost(self.lost))
        if self._handshake is not None:
            d, self._handshake = self._handshake, None
            d.errback(_Lost(self.lost))


def reply_code(lines: list[str]) -> int:
    """A reply's code (0 when its last line has none)."""
    return int(lines[-1][:3]) if lines and lines[-1][:3].isdigit() else 0


def reply_dsn(lines: list[str]) -> str:
    """A reply's enhanced status code, or the one Postfix makes of its code."""
    c, enh, _ = wire.parse_reply(lines)
    return enhanced_or_default(c or 400, enh)


class ConnectFactory(protocol.ClientFactory):
    """Connects a :class:`ReplyReader`: ``connected`` fires with it; a
    failed connect appends the kernel's words to ``failed`` and errbacks
    ``connected``. (smtp(8) and lmtp(8) are one program in Postfix: this and
    :func:`read_reply` are what they share here.)"""

    def __init__(self, connected: defer.Deferred, failed: list[str]) -> None:
        self.connected, self.failed = connected, failed

    def buildProtocol(self, addr):
        p = ReplyReader()
        p.factory = self
        p.connected_d.addCallback(lambda proto: self.connected.called
                                  or self.connected.callback(proto))
        return p

    def clientConnectionFailed(self, connector, reason) -> None:
        if not self.connected.called:
            self.failed.append(connect_error(reason))
            self.connected.errback(reason)


def connect_error(reason) -> str:
    """The text after ``connect to host[address]:``, as the kernel says it."""
    exc = reason.value
    code = getattr(exc, "osError", None)
    if isinstance(code, int):
        return os.strerror(code)
    if isinstance(exc, error.ConnectionRefusedError):
        return os.strerror(errno.ECONNREFUSED)
    if isinstance(exc, (error.TimeoutError, error.TCPTimedOutError)):
        return "Connection timed out"
    if isinstance(exc, error.NoRouteError):
        return "No route to host"
    return reason.getErrorMessage() or "Connection failed"


async def read_reply(proto: ReplyReader, reactor, timeout: float,
                     lost: Callable[[], Exception]) -> list[str]:
    """The next reply's lines; without one for ``timeout`` seconds the
    connection is aborted, and a lost connection raises ``lost()``."""
    d = proto.next_reply()
    timer = reactor.callLater(timeout, lambda: proto.transport.abortConnection())
    try:
        return await d
    except _Lost:
        raise lost() from None
    finally:
        if timer.active():
            timer.cancel()


def _client_tls_creator(server_name: str, keylog=None):
    """A TLS client connection creator that verifies nothing during the
    handshake (``encrypt`` does not require it); trust is judged afterwards
    against smtp_tls_CAfile (:func:`verify_chain`)."""
    from OpenSSL import SSL
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    like_debian_openssl(ctx)
    if keylog is not None:
        ctx.set_keylog_callback(keylog)

    @implementer(IOpenSSLClientConnectionCreator)
    class Creator:
        def clientConnectionForTLS(self, tls_protocol):
            conn = SSL.Connection(ctx, None)
            conn.set_app_data(tls_protocol)
            conn.set_tlsext_host_name(server_name.encode("idna"))
            conn.set_connect_state()
            return conn

    return Creator()


def verify_chain(transport, cafile: Path | None, capath: Path | None = None) -> tuple[bool, str]:
    """(trusted, why) for the peer's certificate chain against ``cafile``
    (and the hashed certificates of ``capath``)."""
    from OpenSSL import crypto

    try:
        conn = transport.getHandle()
        leaf = conn.get_peer_certificate()
        chain = conn.get_peer_cert_chain() or []
    except Exception as exc:  # noqa: BLE001
        return False, f"no peer certificate: {exc}"
    if leaf is None:
        return False, "no peer certificate"
    cafile = cafile if cafile is not None and cafile.is_file() else None
    capath = capath if capath is not None and capath.is_dir() else None
    if cafile is None and capath is None:
        return False, "untrusted issuer (no smtp_tls_CAfile or smtp_tls_CApath)"
    store = crypto.X509Store()
    try:
        store.load_locations(str(cafile) if cafile else None, str(capath) if capath else None)
    except crypto.Error as exc:
        return False, f"cannot load CA file {cafile}: {exc}"
    try:
        crypto.X509StoreContext(store, leaf, chain[1:] or None).verify_certificate()
    except crypto.X509StoreContextError as exc:
        return False, f"certificate verification failed: {exc}"
    return True, "certificate chain verified against smtp_tls_CAfile"


def prefer_relay_key(step: Step) -> Step:
    """Prefer a ``relay.*`` commentary key (the relay leg: Gmail's replies,
    the lab's smtp as a client) over the generic ``smtp.*`` one when
    relay.toml has it and it is at least as specific."""
    cat = catalog()
    step.key = None
    for key in cat.candidates(step):
        if key.startswith("smtp."):
            alt = "relay." + key[len("smtp."):]
            if cat.get(alt, step.line) is not None:
                step.key = alt
                return step
        if cat.get(key, step.line) is not None:
            step.key = key       # a more specific generic entry wins
            return step
    return step


def name_matches(transport, host: str) -> bool:
    """Does the peer certificate name ``host`` (subjectAltName DNS, else CN)?"""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = transport.getHandle().get_peer_certificate().to_cryptography()
    except Exception:  # noqa: BLE001
        return False
    try:
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    host = host.lower().rstrip(".")
    for name in names:
        name = str(name).lower().rstrip(".")
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


class DeliveryClient:
    """What smtp(8) and lmtp(8) share (one program in Postfix): the settings,
    where Steps and log lines go, and how a conversation ends: its error (or a
    bug) settles every recipient still pending, and the connection is closed.
    A subclass's ``_deliver`` makes the session and runs :meth:`_converse`."""

    #: the program's name in mail.log (``postfix/smtp``, ``postfix/lmtp``)
    program = "smtp"
    #: the error that ends a conversation with a verdict for the rest
    Error: type[Exception] = RelayError

    def __init__(self, settings, *, emit: Emit = null_emit, log: MailLog | None = None,
                 reactor: Any = None, clock: Callable[[], float] = time.time) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.settings = settings
        self.emit = emit
        self.log = log
        self.reactor = reactor
        self.clock = clock

    def _log(self, text: str) -> None:
        if self.log is not None:
            self.log.postfix(self.program, text, self.settings.syslog_name)

    def deliver(self, request: DeliveryRequest) -> defer.Deferred:
        return defer.ensureDeferred(self._deliver(request))

    async def _deliver(self, req: DeliveryRequest) -> list[RecipientStatus]:
        raise NotImplementedError

    async def _converse(self, req: DeliveryRequest, verdicts: Verdicts, state: dict,
                        conversation) -> None:
        """Await ``conversation``; ``state["proto"]`` is its connection."""
        try:
            await conversation
        except self.Error as exc:
            verdicts.finish_rest(exc.status, exc.dsn, exc.reason)
        except Exception as exc:  # noqa: BLE001 - a bug must not strand the mail
            self._log(f"warning: {req.qid}: {self.program} client error: {exc!r}")
            verdicts.finish_rest("deferred", "4.3.0", f"mail system configuration error ({exc})")
        finally:
            proto = state.get("proto")
            if proto is not None and proto.transport is not None and proto.lost is None:
                proto.transport.loseConnection()


class SmtpRelayClient(DeliveryClient):
    """The queue's ``relay_transport``: one SMTP conversation per message."""

    def __init__(self, settings: RelaySettings, *, emit: Emit = null_emit,
                 log: MailLog | None = None, reactor: Any = None, keylog=None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(settings, emit=emit, log=log, reactor=reactor, clock=clock)
        self.keylog = keylog

    # ------------------------------------------------------------- helpers

    def _relay_key(self, step: Step) -> Step:
        return prefer_relay_key(step)

    def _event(self, session: str, verb: str, line: str, *, proto: str = "relay",
               tls: bool = False, **meta: Any) -> None:
        step = wire.event_step(verb, line, session=session, src="smtp", dst="relay", tls=tls,
                               proto=proto, meta={k: v for k, v in meta.items() if v is not None})
        if proto == "relay":
            step.key = f"relay.event.{verb}" if catalog().get(f"relay.event.{verb}", line) \
                else step.key
        self.emit(step)

    def resolve(self) -> str:
        """The relay's address: the lab's /etc/hosts, never DNS."""
        s = self.settings
        hosts = read_hosts(s.hosts_file) if s.hosts_file else {}
        address = hosts.get(s.host.lower())
        if address:
            return address
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in s.host else socket.AF_INET, s.host)
            return s.host
        except OSError:
            pass
        if s.allow_system_resolver:
            info = socket.getaddrinfo(s.host, s.port, type=socket.SOCK_STREAM)
            return info[0][4][0]
        raise RelayError("4.4.3", f"Host or domain name not found. Name service error for "
                                  f"name={s.host} type=A: Host not found, try again")

    # ------------------------------------------------------------- deliver

    async def _deliver(self, req: DeliveryRequest) -> list[RecipientStatus]:
        session = new_session("relay")
        state: dict[str, Any] = {"proto": None, "tls": False}

        def logged(line: str, addr: str, status: str, dsn: str) -> None:
            self._log(line)
            self._event(session, status.upper(), line, qid=req.qid, recipient=addr,
                        status=status, dsn=dsn, tls=state["tls"])
        verdicts = Verdicts(req, clock=self.clock, logged=logged)
        await self._converse(req, verdicts, state,
                             self._conversation(req, session, state, verdicts))
        verdicts.finish_rest("deferred", "4.3.0", "no status from the SMTP client")
        return verdicts.statuses()

    async def _conversation(self, req, session, state, verdicts: Verdicts) -> None:
        pending, finish = verdicts.pending, verdicts.finish
        s = self.settings
        address = await s.resolver(s.host) if s.resolver is not None else self.resolve()
        peer = f"{s.host}[{address}]"
        peer_port = f"{peer}:{s.port}"
        target = (s.connect_host or address, s.connect_port or s.port)
        self._event(session, "CONNECT", f"connect to {peer_port}", qid=req.qid,
                    address=address, port=s.port, actual_port=target[1],
                    nexthop=s.nexthop)
        connected: defer.Deferred = defer.Deferred()
        failed_reason: list[str] = []
        s.before_connect()
        self.reactor.connectTCP(target[0], target[1], ConnectFactory(connected, failed_reason),
                                timeout=s.connect_timeout)
        try:
            proto: ReplyReader = await connected
        except Exception:  # noqa: BLE001
            why = failed_reason[0] if failed_reason else "Connection refused"
            text = f"connect to {peer_port}: {why}"
            self._log(text)
            self._event(session, "CONNECT_FAILED", text, qid=req.qid)
            raise RelayError("4.4.1", text)
        state["proto"] = proto
        verdicts.relay = peer_port

        async def reply(answers: str) -> list[str]:
            lines = await read_reply(proto, self.reactor, s.reply_timeout, lambda: RelayError(
                "4.4.2", f"lost connection with {peer} while {_while(answers)}"))
            self.emit(self._relay_key(wire.reply_step(
                lines, session=session, answers=answers, src="relay", dst="smtp",
                tls=state["tls"])))
            return lines

        def send(line: str) -> str:
            step = wire.command_step(line, session=session, src="smtp", dst="relay",
                                     tls=state["tls"])
            self.emit(self._relay_key(step))
            proto.send(line)
            return step.verb or "UNKNOWN"

        def said(lines: list[str], command: str | None = None) -> str:
            text = f"host {peer} said: {joined(lines)}"
            return text + (f" (in reply to {command} command)" if command else "")


        def fail(lines: list[str], command: str) -> RelayError:
            c = reply_code(lines)
            status = "bounced" if c >= 500 else "deferred"
            return RelayError(reply_dsn(lines), said(lines, command), status)

        async def quit_() -> None:
            if proto.lost is None:
                send("QUIT")
                try:
                    await reply("QUIT")
                except RelayError:
                    pass

        # --- greeting and EHLO
        greeting = await reply("CONNECT")
        if reply_code(greeting) != 220:
            await quit_()
            err = RelayError(reply_dsn(greeting), f"host {peer} refused to talk to me: "
                                               f"{joined(greeting)}")
            if reply_code(greeting) >= 500:
                err.status = "bounced"
            raise err

        async def ehlo() -> dict[str, str]:
            send(f"EHLO {s.helo_name}")
            lines = await reply("EHLO")
            if reply_code(lines) != 250:
                await quit_()
                raise fail(lines, "EHLO")
            ext = {}
            for line in lines[1:]:
                word, _, rest = line[4:].partition(" ")
                ext[word.upper()] = rest
            return ext

        ext = await ehlo()
        if s.tls_level in ("encrypt", "verify", "secure", "may", "dane"):
            if "STARTTLS" not in ext:
                if s.tls_level != "may":
                    await quit_()
                    raise RelayError("4.7.4", f"TLS is required, but was not offered by host {peer}")
            else:
                send("STARTTLS")
                lines = await reply("STARTTLS")
                if reply_code(lines) != 220:
                    await quit_()
                    raise fail(lines, "STARTTLS")
                try:
                    await proto.start_tls(_client_tls_creator(s.host, self.keylog))
                except _Lost as exc:
                    raise RelayError("4.7.5", f"Cannot start TLS: handshake failure "
                                              f"({exc})") from exc
                state["tls"] = True
                trusted, why = verify_chain(proto.transport, s.cafile, s.capath)
                info = describe_connection(proto.transport)
                version, cipher, used, alg = info or ("TLS", "unknown", 0, 0)
                verified = (trusted and s.tls_level in ("verify", "secure")
                            and name_matches(proto.transport, s.host))
                label = "Verified" if verified else "Trusted" if trusted else "Untrusted"
                text = (f"{label} TLS connection established "
                        f"to {peer_port}: {version} with cipher {cipher} ({used}/{alg} bits)")
                # logged only from smtp_tls_loglevel = 1 on (0 in the lab's main.cf)
                logged = s.tls_loglevel >= 1
                if logged:
                    text += key_exchange_summary(proto.transport, server_side=False)
                    self._log(text)
                self._event(session, label.upper(), text, proto="tls", logged=logged,
                            tls=True, version=version, cipher=cipher, trusted=trusted,
                            verification=why, cafile=str(s.cafile) if s.cafile else None)
                if s.tls_level in ("verify", "secure") and not verified:
                    await quit_()
                    raise RelayError("4.7.5", f"Server certificate not "
                                              f"{'verified' if trusted else 'trusted'} ({why})")
                ext = await ehlo()

        # --- AUTH
        creds = s.credentials() if s.sasl_enabled else None
        if creds is not None and "AUTH" in ext:
            user, password = creds
            mechs = ext["AUTH"].upper().split()
            if "PLAIN" not in mechs:
                await quit_()
                raise RelayError("4.7.0", f"SASL authentication failed; cannot authenticate to "
                                          f"server {peer}: no mechanism available")
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            send(f"AUTH PLAIN {token}")
            lines = await reply("AUTH")
            if reply_code(lines) != 235:
                dsn = reply_dsn(lines)
                if reply_code(lines) >= 500 and s.soft_bounce_auth:
                    dsn = "4" + dsn[1:]
                status = "bounced" if dsn.startswith("5") else "deferred"
                await quit_()
                raise RelayError(dsn, f"SASL authentication failed; server {peer} said: "
                                      f"{joined(lines)}", status)
        verdicts.setup = self.clock()

        # --- the transaction (pipelined when the server allows it)
        env = req.envelope
        size = len(req.content)
        mail = f"MAIL FROM:<{env.sender}>"
        if "SIZE" in ext:
            mail += f" SIZE={size}"
        if "8BITMIME" in ext and any(b > 127 for b in req.content):
            mail += " BODY=8BITMIME"
        order = [(mail, "MAIL", None)]
        order += [(f"RCPT TO:<{addr}>", "RCPT", index) for index, (addr, _o) in pending.items()]
        order.append(("DATA", "DATA", None))
        pipelining = "PIPELINING" in ext
        replies: list[list[str]] = []
        if pipelining:
            for line, _verb, _i in order:
                send(line)
            for _line, verb, _i in order:
                replies.append(await reply(verb))
        else:
            for line, verb, _i in order:
                send(line)
                replies.append(await reply(verb))
                if verb == "MAIL" and reply_code(replies[-1]) != 250:
                    break
        mail_reply = replies[0]
        if reply_code(mail_reply) != 250:
            await quit_()
            raise fail(mail_reply, "MAIL FROM")
        accepted = []
        for (_line, verb, index), lines in zip(order[1:-1], replies[1:-1]):
            if reply_code(lines) in (250, 251):
                accepted.append(index)
            else:
                err = fail(lines, "RCPT TO")
                finish(index, err.status, err.dsn, err.reason)
        data_reply = replies[-1] if len(replies) == len(order) else None
        if not accepted:
            await quit_()
            return
        if data_reply is None or reply_code(data_reply) != 354:
            await quit_()
            raise fail(data_reply or ["451 4.3.0 no reply"], "DATA")
        self.emit(self._relay_key(wire.message_step(req.content, session=session, src="smtp",
                                                    dst="relay", tls=state["tls"],
                                                    size=wire.wire_size(req.content))))
        proto.transport.write(wire.dot_stuffed(req.content) + b".\r\n")
        final = await reply("DATA")
        if reply_code(final) == 250:
            dsn = reply_dsn(final)
            for index in accepted:
                finish(index, "sent", dsn, joined(final))
        else:
            err = fail(final, "end of DATA")
            for index in accepted:
                finish(index, err.status, err.dsn, err.reason)
        await quit_()


def _while(verb: str) -> str:
    return {
        "CONNECT": "receiving the initial server greeting",
        "EHLO": "performing the EHLO handshake",
        "STARTTLS": "sending STARTTLS",
        "AUTH": "performing SASL authentication",
        "MAIL": "sending MAIL FROM",
        "RCPT": "sending RCPT TO",
        "DATA": "sending message body",
        "QUIT": "sending QUIT",
    }.get(verb, f"sending {verb}")


def settings_from_profile(profile, lab_root: Path, *, connect_host: str | None = None,
                          connect_port: int | None = None, real: bool = False) -> RelaySettings | None:
    """The SMTP client's settings from main.cf (None without a relayhost)."""
    relay = profile.relayhost()
    if relay is None:
        return None
    p = profile.main
    cafile_value = p("smtp_tls_CAfile").strip()
    cafile = profile.path(cafile_value, lab_root) if cafile_value else None
    capath_value = p("smtp_tls_CApath").strip()
    capath = profile.path(capath_value, lab_root) if capath_value else None

    def timeout(name: str, default: float) -> float:
        try:
            return profile.time(name)
        except Exception:  # noqa: BLE001 - unknown to the catalog
            return default

    def credentials():
        return profile.sasl_credentials(relay.host, relay.nexthop)

    level = (p("smtp_tls_security_level").strip() or "none").lower()
    soft = True
    try:
        soft = profile.bool("smtp_sasl_auth_soft_bounce")
    except Exception:  # noqa: BLE001
        soft = True
    return RelaySettings(
        host=relay.host, port=relay.port, nexthop=relay.nexthop,
        helo_name=(p("smtp_helo_name") if profile.is_known("smtp_helo_name") else "")
        or p("myhostname"),
        tls_level=level, cafile=cafile, capath=capath,
        sasl_enabled=p("smtp_sasl_auth_enable").strip().lower() == "yes",
        soft_bounce_auth=soft,
        connect_timeout=timeout("smtp_connect_timeout", 30.0),
        reply_timeout=timeout("smtp_helo_timeout", 300.0),
        # the lab's /etc/hosts maps smtp.gmail.com to the simulator; the real
        # relay is looked up by the system's resolver instead
        hosts_file=None if real else lab_root / "etc" / "hosts",
        connect_host=connect_host, connect_port=connect_port,
        allow_system_resolver=real, credentials=credentials,
        tls_loglevel=int(p("smtp_tls_loglevel") or 0))
