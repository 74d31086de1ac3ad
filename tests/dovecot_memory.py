"""Dovecot's IMAP and POP3 sessions in memory, for tests that take milliseconds.

What is real: the protocol classes (:class:`ImapServer`, :class:`Pop3Server`),
the auth server and the auth client (Dovecot's auth protocol, the passwd-file
with bcrypt hashes), the mbox store in a temporary lab root, and inotify.
What stands in, as in Twisted's own mail tests (``twisted.mail.test``):

- the client connection is a :class:`~twisted.internet.testing.StringTransport`
  (``startTLS`` only records that it was asked: TLS itself is tested end to end);
- the reactor is a :class:`~twisted.internet.testing.MemoryReactorClock`
  (time moves only when a test advances it), in which a UNIX connection
  reaches the listener at the same address through Twisted's in-memory
  pump (:mod:`twisted.test.iosim`) instead of a socket, and the thread pool
  (bcrypt) runs the work at once.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from gponsim.server.dovecot.auth import AuthServer, socket_path
from gponsim.server.dovecot.imap import ImapContext, ImapServer, ImapSettings
from gponsim.server.dovecot.login import LoginAuth
from gponsim.server.dovecot.passwd import Users
from gponsim.server.dovecot.pop3 import Pop3Server
from gponsim.server.mailstore.mailwatch import MailWatch
from gponsim.server.postfix.local import render_entry
from gponsim.server.postfix.xsasl import AuthClient
from gponsim.sinks.memory import ListSink

CLIENT = address.IPv4Address("TCP", "192.168.1.50", 50123)     # another host: not secured
SERVER = address.IPv4Address("TCP", "192.168.1.1", 143)
LOCAL = address.IPv4Address("TCP", "192.168.1.1", 50124)       # the server's own address


class _InlinePool:
    """A thread pool that runs the work at once (the reactor's answer still
    comes through ``callFromThread``, i.e. at the next :meth:`LabReactor.drive`)."""

    def callInThreadWithCallback(self, on_result, func, *args, **kwargs):
        try:
            result = func(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class LabReactor(MemoryReactorClock):
    """A memory reactor whose UNIX connections are made, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.pumps: list[iosim.IOPump] = []
        self._pool = _InlinePool()

    def getThreadPool(self):
        return self._pool

    def callFromThread(self, f, *args, **kwargs):
        self.callLater(0, f, *args, **kwargs)

    def connectUNIX(self, address, factory, timeout=30, checkPID=0):
        connector = super().connectUNIX(address, factory, timeout, checkPID)
        for path, server_factory, *_rest in self.unixServers:
            if path == address:
                self.unixClients.pop()
                client = factory.buildProtocol(None)
                server = server_factory.buildProtocol(None)
                self.pumps.append(iosim.connect(
                    server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                    greet=False, clock=self))
                break
        else:
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        return connector

    def drive(self, seconds: float = 0.0) -> None:
        """Run everything that is due (pending calls, bytes between the auth
        client and server, inotify events), then move the clock ``seconds``
        on and run what became due."""
        for _ in range(100):
            moved = False
            self.advance(0)
            for pump in self.pumps:
                moved = pump.flush(advanceClock=False) or moved
            for reader in list(self.readers):      # inotify: read what the kernel has
                reader.doRead()
            if not moved and not any(c.getTime() <= self.seconds() for c in self.getDelayedCalls()):
                break
        if seconds:
            self.advance(seconds)
            self.drive()


class _TLSHandle:
    """What :func:`gponsim.server.tls.describe_connection` asks of a TLS connection."""

    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"

    def get_cipher_name(self) -> str:
        return "TLS_AES_256_GCM_SHA384"

    def get_cipher_bits(self) -> int:
        return 256


class TLSStringTransport(StringTransport):
    """A StringTransport that records a STARTTLS/STLS request; once TLS is on
    (:attr:`tls_on`) it describes itself as a TLSv1.3 connection."""

    tls_started_with = None
    tls_on = False

    def startTLS(self, context_factory) -> None:
        self.tls_started_with = context_factory

    def getHandle(self):
        if not self.tls_on:
            raise AttributeError("no TLS on this connection")
        return _TLSHandle()


class MemoryLab:
    """One lab root with the default users, its auth server, and sessions."""

    def __init__(self, root: Path, *, settings: ImapSettings | None = None,
                 failure_delay: float = 2.0) -> None:
        self.root = root
        self.reactor = LabReactor()
        self.sink = ListSink()
        self.log_lines: list[str] = []
        self.users = Users.ensure_default(root / "etc/dovecot/users")
        self.auth_server = AuthServer(self.users, reactor=self.reactor, failure_delay=failure_delay)
        self.auth_server.listen(socket_path(root))
        self.auth_client = AuthClient(socket_path(root), reactor=self.reactor)
        self.ctx = ImapContext(lab_root=root, emit=self.sink.step, log=self.log_lines.append,
                               auth=LoginAuth(self.auth_client),
                               settings=settings or ImapSettings(),
                               reactor=self.reactor)

    def deliver(self, user: str, content: bytes, sender: str = "user1@gponlab.local",
                when: float = 1704110400.0) -> None:
        """Append a message to ``user``'s INBOX the way local(8) does."""
        path = self.root / "var/mail" / user
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as fh:
            fh.write(render_entry(content, sender=sender, orig_rcpt="",
                                  delivered_to=f"{user}@gponlab.local", when=when))

    def imap(self, *, local: bool = False, tls_options=None, implicit_tls: bool = False,
             handshake: bool = True) -> "Client":
        """A session; on an implicit-TLS port (993) the TLS handshake completes
        at once unless ``handshake`` is False (then call :meth:`Client.handshake`)."""
        return Client(self, ImapServer(self.ctx, tls_options, implicit_tls), local,
                      handshake=implicit_tls and handshake)

    def pop3(self, *, local: bool = False, tls_options=None, implicit_tls: bool = False,
             handshake: bool = True) -> "Client":
        return Client(self, Pop3Server(self.ctx, tls_options, implicit_tls), local,
                      handshake=implicit_tls and handshake)

    def close(self) -> None:
        self.auth_client.close()
        self.auth_server.stop()
        self.reactor.drive()
        MailWatch.release(self.reactor)


class Client:
    """The client end of one session: lines in, the server's bytes out."""

    def __init__(self, lab: MemoryLab, server, local: bool, handshake: bool = False) -> None:
        self.lab = lab
        self.server = server
        server.callLater = lab.reactor.callLater          # TimeoutMixin's idle timers
        self.transport = TLSStringTransport(SERVER, LOCAL if local else CLIENT)
        server.makeConnection(self.transport)
        lab.reactor.drive()
        if handshake:
            self.handshake()

    def handshake(self) -> None:
        """The TLS handshake completes, as Twisted's TLS layer reports it."""
        self.transport.tls_on = True
        self.server.handshakeCompleted()
        self.lab.reactor.drive()

    def read(self) -> bytes:
        """What the server sent since the last read."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def lines(self) -> list[str]:
        return self.read().decode("utf-8").split("\r\n")[:-1]

    def send(self, data: bytes | str, *, seconds: float = 0.0) -> list[str]:
        """Send one line (CRLF added) or raw bytes, let the lab answer, and
        return the reply lines."""
        if isinstance(data, str):
            data = data.encode("utf-8") + b"\r\n"
        self.server.dataReceived(data)
        self.lab.reactor.drive(seconds)
        return self.lines()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def drop(self, reason: BaseException | None = None) -> None:
        """The client goes away (``reason``: what Twisted reports, a lost connection by default)."""
        self.server.connectionLost(Failure(reason or ConnectionError("gone")))
        self.lab.reactor.drive()
