"""The SMTP server engine: what every SMTP-speaking service of the lab shares.

Postfix's smtpd (:mod:`gponsim.server.postfix.smtpd`), the Gmail simulator
(:mod:`gponsim.server.sims.gmail`) and Dovecot's LMTP service are each this
engine plus a *policy*: their own ``cmd_<VERB>`` handlers, replies and
hooks. The engine, on Twisted's :class:`~twisted.mail.smtp.ESMTP` (its
``mode``, idle timeout and ``startTLS``), does the part that must not differ:

- **Input, in order.** Bytes are split into lines (CRLF or a bare LF, as
  Postfix accepts) and handled one at a time; while a command waits on
  something slow (the auth server, the queue's fsync) later pipelined lines
  wait in the buffer, so replies always come out in command order (stock
  Twisted can reorder them, twisted #8126). ``state_<MODE>(line)`` of the
  policy gets each line (``COMMAND``, ``AUTH``...).
- **The message.** After ``354`` (:meth:`start_data`) the engine reads the
  message a block of whole lines at a time (a leading dot removed, a line
  holding only a dot ends it) and hands it to :meth:`message_received`.
  After ``BDAT n`` (:meth:`read_chunk`) it reads exactly *n* bytes. Both are
  held to ``size_limit`` *while reading*: past the limit the rest is read
  and dropped, never buffered (a line without an end, a ``BDAT 1000000000``).
- **Steps.** Every command, reply and message is a Step (built by
  :mod:`gponsim.wire.smtp`) between :attr:`client_actor` and
  :attr:`server_actor`, in protocol :attr:`proto`, emitted by :meth:`emit`.
- **TLS.** :meth:`start_tls` after the policy's ``220``: anything the client
  pipelined in clear after STARTTLS is discarded (CVE-2011-0411), as Postfix
  does. :meth:`tls_established` is called when the handshake is done.
"""

from __future__ import annotations

import re
from typing import Callable

from twisted.internet import defer, interfaces
from zope.interface import implementer

from gponsim.server.offline import smtp
from gponsim.server.tls import describe_connection
from gponsim.steps import Step, new_session
from gponsim.wire import smtp as wire

COMMAND, DATA, AUTH = smtp.COMMAND, smtp.DATA, smtp.AUTH

_DOT_STUFFED = re.compile(rb"^\.", re.M)


def data_end(buf: bytes) -> tuple[int, int] | None:
    """Where the line holding only "." starts and ends in ``buf`` (at a line start)."""
    for start_marker, length in ((b".\r\n", 3), (b".\n", 2)):
        if buf.startswith(start_marker):
            return 0, length
    found = [(i + 1, i + 1 + length) for marker, length in ((b"\n.\r\n", 3), (b"\n.\n", 2))
             if (i := buf.find(marker)) >= 0]
    return min(found) if found else None


@implementer(interfaces.IHandshakeListener)
class SmtpServer(smtp.ESMTP):
    """One session of an SMTP (or LMTP) server. Subclass it with a policy."""

    delimiter = b"\n"
    #: A command line longer than this is not held: it is answered as too long.
    MAX_LENGTH = 1 << 24
    proto = "smtp"
    server_actor = "smtpd"
    client_actor = "client"

    def __init__(self, session_kind: str, *, tls_options=None, implicit_tls: bool = False,
                 timeout: float = 300.0, size_limit: int = 0) -> None:
        super().__init__(chal={}, contextFactory=tls_options)
        self.session = new_session(session_kind)
        self.timeout = timeout
        #: message bytes kept at most (0: no limit); see :attr:`too_big`
        self.size_limit = size_limit
        self.tls = implicit_tls
        self.starttls_used = False
        self._inbuf = b""
        self._busy = False
        self._closed = False
        self._client_ip: str | None = None
        self._host = None
        self._raw_remaining = 0
        self._chunk_done: Callable[[], None] | None = None
        self.reset_message()

    # ----------------------------------------------------------- addresses

    @property
    def client_ip(self) -> str:
        if self._client_ip is None:     # asked once: getPeer() builds a new address each time
            self._client_ip = getattr(self.transport.getPeer(), "host", "127.0.0.1")
        return self._client_ip

    @property
    def server_ip(self) -> str:
        return getattr(self.local_address(), "host", "127.0.0.1")

    def local_address(self):
        if self._host is None:          # getHost() is a getsockname() system call
            self._host = self.transport.getHost()
        return self._host

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------- the policy
    # What a policy overrides (besides its cmd_<VERB> handlers and state_<MODE>).

    def emit(self, step: Step) -> None:
        """Hand a Step to the lab's bus."""
        raise NotImplementedError

    def greet(self) -> None:
        """The connection is open: log it, send the greeting."""

    def tls_established(self, version: str, cipher: str, used: int, alg: int) -> None:
        """The TLS handshake finished (after STARTTLS, or at once on an implicit-TLS port)."""

    def lost(self) -> None:
        """The connection is gone (called once)."""

    def message_received(self, message: bytes, verb: str) -> None:
        """The whole message after DATA (LF line ends); :attr:`too_big` tells
        whether it was cut at ``size_limit``."""

    def step_for_reply(self, step: Step) -> Step:
        """A reply's Step before it is emitted (a policy may choose its commentary)."""
        return step

    # -------------------------------------------------------------- output

    def reply(self, code: int, text: str | list[str], answers: str) -> None:
        """Send a (multi-line) reply; its Step says which command it ``answers``."""
        lines = text if isinstance(text, list) else [text]
        wire_lines = [f"{code}-{t}" for t in lines[:-1]] + [f"{code} {lines[-1]}"]
        self.emit(self.step_for_reply(wire.reply_step(
            wire_lines, session=self.session, answers=answers, src=self.server_actor,
            dst=self.client_actor, tls=self.tls, proto=self.proto)))
        if self.transport is not None:
            self.transport.write("".join(wl + "\r\n" for wl in wire_lines)
                                 .encode("utf-8", "surrogateescape"))

    def sendLine(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")

    def sendCode(self, code, message=b"") -> None:  # Twisted internals that reply
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        self.reply(code, text.splitlines() or [""], "UNKNOWN")

    def command_step(self, line: str) -> Step:
        return wire.command_step(line, session=self.session, src=self.client_actor,
                                 dst=self.server_actor, tls=self.tls, proto=self.proto)

    def auth_data_step(self, line: str) -> Step:
        return wire.auth_data_step(line, session=self.session, src=self.client_actor,
                                   dst=self.server_actor, tls=self.tls)

    def event_step(self, verb: str, line: str, **kw) -> Step:
        return wire.event_step(verb, line, session=self.session, src=self.client_actor,
                               dst=self.server_actor, **kw)

    def dispatch(self, verb: str, args: str) -> bool:
        """Call ``cmd_<VERB>(args)``; False when there is no such handler."""
        handler = getattr(self, "cmd_" + verb, None) if verb.isalpha() else None
        if handler is None:
            return False
        handler(args)
        return True

    # ---------------------------------------------------------- connection

    def connectionMade(self) -> None:
        # Not ESMTP.connectionMade: the policy's greeting and Steps instead.
        self.canStartTLS = (interfaces.ITLSTransport.providedBy(self.transport)
                            and self.ctx is not None)
        self.handshaking = self.tls
        self.setTimeout(self.timeout)
        self.greet()

    #: why the connection ended (a Failure), for :meth:`lost`
    lost_reason = None
    #: STARTTLS was answered and the handshake has not finished yet
    handshaking = False

    def handshakeCompleted(self) -> None:
        """Called by Twisted's TLS layer once the handshake is done."""
        self.handshaking = False
        info = describe_connection(self.transport)
        if info is not None:
            self.tls_established(*info)

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)
        self.lost_reason = reason
        if not self._closed:
            self._closed = True
            self.lost()

    def start_tls(self) -> None:
        """Start the TLS handshake now (the policy sent its 220)."""
        self._inbuf = b""          # pipelined in clear after STARTTLS: discarded
        self.handshaking = True
        self.transport.startTLS(self.ctx)
        self.tls = self.starttls_used = True

    # --------------------------------------------------------------- input

    def dataReceived(self, data: bytes) -> None:
        self._inbuf += data
        self._drain()

    def _drain(self) -> None:
        while self._inbuf and not self._busy and not self._closed:
            if self.transport is None or self.transport.disconnecting:
                return
            if self._raw_remaining:
                self._take_raw()
                continue
            if self.mode == DATA:
                if not self._drain_data():
                    return
                continue
            nl = self._inbuf.find(b"\n")
            if nl < 0:
                if len(self._inbuf) > self.MAX_LENGTH:
                    self._inbuf = b""
                    self.line_too_long()
                return
            line, self._inbuf = self._inbuf[:nl], self._inbuf[nl + 1:]
            if line.endswith(b"\r"):
                line = line[:-1]
            self.resetTimeout()
            getattr(self, "state_" + self.mode)(line)

    def line_too_long(self) -> None:
        """A command line longer than MAX_LENGTH arrived without its end."""
        self.reply(500, "5.5.2 Error: line too long", "UNKNOWN")

    def wait_for(self, d: defer.Deferred) -> defer.Deferred:
        """Hold later input until ``d`` fires (add the reply callbacks first)."""
        self._busy = True

        def release(result):
            self._busy = False
            if not self._closed:
                self._drain()
            return result
        d.addBoth(release)
        return d

    # --------------------------------------------------------- the message

    def reset_message(self) -> None:
        """Forget the message being read (a new transaction)."""
        self.message_parts: list[bytes] = []
        self.message_size = 0
        #: bytes of the message as they came (CRLF, dots), for Postfix's
        #: "lost connection after DATA (N bytes)"
        self.raw_message_bytes = 0
        #: the message's size as it crossed the wire, dot-stuffing undone (its Step's size,
        #: what BDAT counts); ``message_parts`` hold it with LF line ends
        self.wire_size = 0
        #: the message went over ``size_limit``: what came after was dropped
        self.too_big = False

    def _keep(self, data: bytes) -> None:
        """Count ``data`` as message bytes; keep it while under the limit."""
        self.message_size += len(data)
        if self.too_big:
            return
        if self.size_limit and self.message_size > self.size_limit:
            self.too_big = True
            self.message_parts = []
            return
        self.message_parts.append(data)

    def start_data(self) -> None:
        """After the policy's ``354``: read the message (then :meth:`message_received`)."""
        self.mode = DATA
        self.reset_message()

    def _drain_data(self) -> bool:
        """The message after 354, taken a block of whole lines at a time.

        Same rules as line by line (a CRLF or a bare LF ends a line, a
        leading dot is removed, a line holding only a dot ends the message),
        without a Python call per line. False when no whole line is buffered
        (a partial line is counted against the size limit as it grows).
        """
        buf = self._inbuf
        end = data_end(buf)
        if end is not None:
            cut, after = end
            self.raw_message_bytes += cut
            self._inbuf = buf[after:]
            self._data_block(buf[:cut])
            self.resetTimeout()
            self.mode = COMMAND
            message = b"".join(self.message_parts)
            self.message_parts = []
            self.emit(wire.message_step(message, session=self.session, src=self.client_actor,
                                        dst=self.server_actor, tls=self.tls, proto=self.proto,
                                        size=self.wire_size))
            self.message_received(message, "DATA")
            return True
        last = buf.rfind(b"\n")
        if last < 0:
            if self.size_limit and len(buf) > self.size_limit + 2:
                # A line with no end, already past the limit: count it, drop it,
                # keep only its tail (where a line end may be split).
                self.message_size += len(buf) - 2
                self.raw_message_bytes += len(buf) - 2
                self.too_big, self.message_parts = True, []
                self._inbuf = buf[-2:]
                self.resetTimeout()
                return True
            return False
        self._inbuf = buf[last + 1:]
        self.raw_message_bytes += last + 1
        self._data_block(buf[:last + 1])
        self.resetTimeout()
        return True

    def _data_block(self, block: bytes) -> None:
        if not block:
            return
        data = block.replace(b"\r\n", b"\n")
        stuffed = 0
        if data.startswith(b".") or b"\n." in data:
            data, stuffed = _DOT_STUFFED.subn(b"", data)
        self.wire_size += len(block) - stuffed
        self._keep(data)

    def read_chunk(self, size: int, done: Callable[[], None]) -> None:
        """BDAT: read exactly ``size`` bytes into the message, then call ``done()``."""
        self._chunk_done = done
        self._raw_remaining = size
        if size == 0:
            self._chunk_finished()

    def _take_raw(self) -> None:
        chunk = self._inbuf[:self._raw_remaining]
        self._inbuf = self._inbuf[len(chunk):]
        self._raw_remaining -= len(chunk)
        self.raw_message_bytes += len(chunk)
        self.wire_size += len(chunk)
        self._keep(chunk)
        self.resetTimeout()
        if self._raw_remaining == 0:
            self._chunk_finished()

    def _chunk_finished(self) -> None:
        done, self._chunk_done = self._chunk_done, None
        if done is not None:
            done()

    def chunked_message(self) -> bytes:
        """The BDAT chunks read so far, as one message with LF line ends."""
        message = b"".join(self.message_parts).replace(b"\r\n", b"\n")
        self.message_parts = []
        return message
