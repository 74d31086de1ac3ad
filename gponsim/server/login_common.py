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
