"""TCP listeners whose connections send a reply at once.

Twisted's TCP transport never writes in ``write()``: it keeps the bytes,
asks the reactor to watch the socket for writability (an ``epoll_ctl``), and
sends them at the next turn of the loop, then stops watching (another
``epoll_ctl``). A lab session answers every command with a short reply to a
socket whose send buffer is empty, so each reply paid two extra system calls
and a loop turn; Postfix's smtpd and Dovecot simply write.

:class:`SendNowServer` sends a reply in ``write()`` when Twisted holds
nothing else for the connection (no TLS layer, no producer, not closing) and
hands whatever the kernel did not take (or an error) to Twisted's own
``write``, which keeps the order and reports errors its usual way. Whether
Twisted holds data is known from its public ``startWriting``/``stopWriting``
calls (a write that buffers starts watching; the buffer running dry stops
it), not from its private buffers. Nothing a client or a student sees
changes: the same bytes, in the same order, each reply's Step emitted first.

``bench/smtp_throughput.py`` measures what it saves (bench/README).
"""

from __future__ import annotations

from twisted.internet import posixbase, tcp


class SendNowServer(tcp.Server):
    """A server connection that writes at once when nothing is waiting."""

    #: Twisted holds bytes of this connection (it is watching for writability).
    _waiting = False

    def startWriting(self) -> None:
        self._waiting = True
        super().startWriting()

    def stopWriting(self) -> None:
        self._waiting = False
        super().stopWriting()

    def abortConnection(self) -> None:
        super().abortConnection()
        self._waiting = True        # Twisted drops what is written after an abort

    def write(self, data: bytes) -> None:
        if (self._waiting or self.TLS or self.producer is not None or self.disconnecting
                or not self.connected or not data or type(data) is not bytes):
            super().write(data)
            return
        try:
            sent = self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            super().write(data)     # Twisted meets the error again and closes its way
            return
        if sent < len(data):
            super().write(data[sent:])


class SendNowPort(tcp.Port):
    """``reactor.listenTCP``'s port, with :class:`SendNowServer` connections."""

    transport = SendNowServer


def listen_tcp(reactor, port: int, factory, interface: str = "", backlog: int = 50):
    """``reactor.listenTCP(port, factory, interface=...)`` with send-now
    connections on Twisted's socket reactors; any other reactor (the tests'
    memory reactors) listens its own way."""
    if not isinstance(reactor, posixbase.PosixReactorBase):
        return reactor.listenTCP(port, factory, backlog=backlog, interface=interface)
    listener = SendNowPort(port, factory, backlog, interface, reactor)
    listener.startListening()
    return listener
