"""What Dovecot's login processes share (``src/login-common``): who is talking
to whom, and whether the connection counts as secured."""

from __future__ import annotations

from twisted.internet import protocol

from gponsim.server.tls import describe_connection
from gponsim.wire import smtp as smtp_wire


class LoginCommon:
    """Mixed into the IMAP and POP3 servers (before their Twisted base class).

    Expects ``self.lab`` (with ``emit``), ``self.tls``, ``self._starttls``,
    ``self.session`` and ``self.transport``; the class names its ``ACTOR``
    (imap, pop3) and its ``STARTTLS_VERB`` (STARTTLS, STLS).
    """

    ACTOR = "imap"
    STARTTLS_VERB = "STARTTLS"

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

    def _addr_text(self) -> str:
        """How Dovecot's login processes end a log line: addresses, TLS, session."""
        text = f"rip={self.client_ip}, lip={self.server_ip}"
        if self.tls:
            text += ", TLS"
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

    def _emit_all(self, steps) -> None:
        for step in steps:
            self.lab.emit(step)

    def handshakeCompleted(self) -> None:
        """Twisted's TLS layer says the handshake is done: a ``tls`` Step."""
        info = describe_connection(self.transport)
        if info is None:
            return
        version, cipher, used, alg = info
        self.lab.emit(smtp_wire.event_step(
            self.STARTTLS_VERB if self._starttls else "IMPLICIT",
            f"TLS connection established: {version} with cipher {cipher} ({used}/{alg} bits)",
            session=self.session, proto="tls", tls=True, src="client", dst=self.ACTOR,
            meta={"version": version, "cipher": cipher}))


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
