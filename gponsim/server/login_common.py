"""What Dovecot's login processes share (``src/login-common``): who is talking
to whom, and whether the connection counts as secured."""

from __future__ import annotations


class LoginCommon:
    """Mixed into the IMAP and POP3 servers (before their Twisted base class).

    Expects ``self.lab`` (with ``emit``), ``self.tls`` and ``self.transport``.
    """

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
