"""Send a reply at once when nothing is waiting to go out.

Twisted's TCP transports queue every ``write`` and send it on the reactor's
next turn: each small reply costs two ``epoll_ctl`` calls (register for
writing, unregister) and a trip through the poll loop before ``send``.
asyncio sends at once when its buffer is empty and queues only what the
kernel did not take.  ``write_now`` does the same over a Twisted transport:
when the connection is plain TCP (not TLS, whose layer has its own buffer)
and has nothing queued, the bytes go straight to the socket and only the
rest, if any, is handed to ``transport.write``.  Order is kept because the
direct path is taken only when the queue is empty; errors are left for
Twisted to find on its own write, so a reset connection ends the usual way.
"""

from __future__ import annotations

from twisted.internet import tcp


def _queue_empty(transport) -> bool:
    return (not transport._tempDataBuffer
            and transport.offset >= len(transport.dataBuffer))


def write_now(transport, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending it immediately when possible."""
    if (isinstance(transport, tcp.Connection) and not transport.TLS
            and transport.connected and not transport.disconnecting
            and not transport._writeDisconnected and _queue_empty(transport)):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN, or an error Twisted reports on its own write
            sent = 0
        data = data[sent:]
    if data:
        transport.write(data)
