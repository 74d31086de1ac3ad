"""write_now: replies sent at once while nothing waits, queued behind what does."""

from __future__ import annotations

import socket
import time

from twisted.internet import protocol, reactor

from gponsim.server.directwrite import write_now
from reactor_thread import reactor_thread  # noqa: F401  (the fixture)

CHUNKS = 300
CHUNK = 1200


def chunk(i: int) -> bytes:
    return (f"{i:06d}" * (CHUNK // 6)).encode() + b"\n"


class Writer(protocol.Protocol):
    """Writes one chunk per millisecond through write_now, with a tiny send
    buffer, so the kernel's buffer fills and drains while chunks keep coming."""

    def connectionMade(self):
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.i = 0
        self.tick()

    def tick(self):
        if self.i == CHUNKS:
            self.transport.loseConnection()
            return
        write_now(self.transport, chunk(self.i))
        self.i += 1
        reactor.callLater(0.001, self.tick)


def test_bytes_arrive_complete_and_in_order_through_a_full_buffer(reactor_thread):  # noqa: F811
    factory = protocol.Factory.forProtocol(Writer)
    port = reactor_thread.call(lambda: reactor.listenTCP(0, factory, interface="127.0.0.1"))
    try:
        sock = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        got = bytearray()
        while True:
            data = sock.recv(2048)
            if not data:
                break
            got += data
            time.sleep(0.002)          # slower than the writer: its queue grows and drains
        sock.close()
    finally:
        reactor_thread.call(port.stopListening)
    lines = bytes(got).split(b"\n")[:-1]
    assert len(lines) == CHUNKS
    assert [ln + b"\n" for ln in lines] == [chunk(i) for i in range(CHUNKS)]
