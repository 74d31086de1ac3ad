"""The lab's TCP connections send a reply at once, and keep order and errors
Twisted's way when the kernel does not take everything (gponsim.server.sendnow);
the lab's file work runs in small pools of its own (gponsim.server.workpool)."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import protocol
from twisted.internet.testing import MemoryReactor

from gponsim.server import workpool
from gponsim.server.sendnow import SendNowServer, listen_tcp
from reactor_thread import reactor_thread  # noqa: F401  (the fixture)


class _Echo(protocol.Protocol):
    """Answers each line with its reply; ``big`` first sends 8 MB, then a marker."""

    seen: list = []

    def dataReceived(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            if line == b"big":
                self.transport.write(b"x" * (8 << 20))
                self.transport.write(b"END\n")
            elif line == b"abort":
                self.transport.abortConnection()
                self.transport.write(b"never sent\n")
            elif line:
                self.transport.write(b"ok " + line + b"\n")
                # Written in write(): Twisted was not asked to watch the socket.
                self.seen.append((line, self.transport in self.transport.reactor.getWriters()))


def _listen(reactor_thread):
    factory = protocol.Factory.forProtocol(_Echo)

    def start():
        port = listen_tcp(reactor_thread.reactor, 0, factory, interface="127.0.0.1")
        return port
    port = reactor_thread.call(start)
    return port, port.getHost().port


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return data


def test_a_reply_leaves_in_write_without_waiting_for_the_loop(reactor_thread):
    _Echo.seen = []
    port, number = _listen(reactor_thread)
    try:
        with socket.create_connection(("127.0.0.1", number), timeout=10) as sock:
            for word in (b"one", b"two", b"three"):
                sock.sendall(word + b"\n")
                assert _read_until(sock, b"\n") == b"ok " + word + b"\n"
        # read in the reactor thread, after its dataReceived calls are done
        assert reactor_thread.call(lambda: list(_Echo.seen)) == [
            (b"one", False), (b"two", False), (b"three", False)]
    finally:
        reactor_thread.call(port.stopListening)


def test_what_the_kernel_does_not_take_is_sent_later_in_order(reactor_thread):
    """8 MB do not fit a loopback socket's buffer: the rest waits in Twisted,
    and the next replies queue behind it instead of overtaking it."""
    _Echo.seen = []
    port, number = _listen(reactor_thread)
    try:
        with socket.create_connection(("127.0.0.1", number), timeout=20) as sock:
            sock.sendall(b"big\nafter\n")
            data = _read_until(sock, b"ok after\n")
        assert data == b"x" * (8 << 20) + b"END\n" + b"ok after\n"
        seen = reactor_thread.call(lambda: list(_Echo.seen))
        assert seen == [(b"after", True)]     # queued behind the 8 MB
    finally:
        reactor_thread.call(port.stopListening)


def test_nothing_leaves_after_an_abort_as_with_twisted(reactor_thread):
    port, number = _listen(reactor_thread)
    try:
        with socket.create_connection(("127.0.0.1", number), timeout=10) as sock:
            sock.sendall(b"abort\n")
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
        assert data == b""
    finally:
        reactor_thread.call(port.stopListening)


def test_lab_connections_are_send_now_ones(reactor_thread):
    port, _number = _listen(reactor_thread)
    try:
        assert port.transport is SendNowServer
    finally:
        reactor_thread.call(port.stopListening)


def test_a_memory_reactor_listens_its_own_way():
    reactor = MemoryReactor()
    listen_tcp(reactor, 2525, protocol.Factory.forProtocol(_Echo), interface="127.0.0.1")
    assert [(p, i) for p, _f, _b, i in reactor.tcpServers] == [(2525, "127.0.0.1")]


def test_one_pool_per_kind_of_work_and_reactor(reactor_thread):
    reactor = reactor_thread.reactor
    queue = workpool.pool_for(reactor, "postfix-queue", workpool.THREADS["postfix-queue"])
    assert workpool.pool_for(reactor, "postfix-queue", workpool.THREADS["postfix-queue"]) is queue
    local = workpool.pool_for(reactor, "postfix-local", workpool.THREADS["postfix-local"])
    assert local is not queue and local is not reactor.getThreadPool()
    assert (queue.max, local.max) == (2, 2)
    assert queue.started


def test_a_memory_reactor_keeps_its_own_pool():
    class Inline:
        pass
    reactor = MemoryReactor()
    reactor.getThreadPool = lambda pool=Inline(): pool
    assert workpool.pool_for(reactor, "postfix-queue", 2) is reactor.getThreadPool()


@pytest.mark.parametrize("name", ["postfix-queue", "postfix-local"])
def test_a_pool_stops_with_its_reactor(name):
    from twisted.internet import epollreactor

    reactor = epollreactor.EPollReactor()
    pool = workpool.pool_for(reactor, name, 2)
    assert pool.started
    reactor.fireSystemEvent("shutdown")
    assert not pool.started
    assert workpool.pool_for(reactor, name, 2) is not pool   # a new one if asked again
    reactor.fireSystemEvent("shutdown")
