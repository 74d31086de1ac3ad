"""What Postfix's smtpd and cleanup(8) do to a message on its way into the queue.

- smtpd prepends the ``Received:`` trace header (RFC 5321 §4.4, RFC 5322
  §3.6.7); :func:`received_header` formats it exactly like
  ``src/smtpd/smtpd.c`` (TAB-indented continuation lines, ``for <rcpt>``
  only when the transaction has exactly one recipient, protocol names from
  RFC 3848: ``ESMTP`` + ``S`` under TLS + ``A`` when authenticated).
- cleanup logs the ``Message-ID`` (``QID: message-id=<...>``, or
  ``message-id=<>`` when there is none), removes ``Return-Path:`` and
  ``Content-Length:`` headers (the delivery agent writes its own; a stale
  Content-Length would mislead mbox readers such as Dovecot), counts
  ``Received:`` hops (``hopcount_limit = 50``) and adds missing headers.

Missing headers (``src/cleanup/cleanup_message.c``): cleanup adds
``Message-Id: <YYYYMMDDhhmmss.QID@myhostname>`` (UTC time of the queue file),
``Date:`` (arrival time, local zone) and ``From: <sender>`` (``MAILER-DAEMON``
for the null sender), in that order at the end of the header block, but only
when the client matches ``local_header_rewrite_clients`` (default
``permit_inet_interfaces``: the client's IP is one of the server's own
addresses) or ``always_add_missing_headers = yes``. gponsim applies the same
rule literally: the client is "local" when its IP is one of the addresses
the lab listens on (see :func:`is_local_client`). A student sending from
another PC to the lab gets no added headers, exactly like on the real server;
a script on the lab machine itself (loopback) gets them.

When the header block is ended by a line that is not a header (no blank
separator line), gponsim inserts the blank line after the added headers,
as Postfix's MIME parser does, so the result is a valid RFC 5322 message.

Messages here are ``bytes`` with LF line endings (the queue stores them the
way Postfix's queue records do, without CR).

:class:`Cleanup` is the service smtpd and bounce(8) talk to: it creates the
queue file in ``incoming/`` at the first accepted recipient, processes the
message at the end of DATA (the rules above), writes and ``fsync``-s the
queue file in a worker thread, moves it to ``active/`` and hands it to qmgr;
only then does smtpd answer ``250 ... queued as QID``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from twisted.internet import defer

from gponsim.server import workpool
from gponsim.server.maillog import MailLog, pid_for
from gponsim.server.postfix import queuefile
from gponsim.server.postfix.address import quote_822_local
from gponsim.server.postfix.queuefile import Envelope, QueueWriteError
from gponsim.server.postfix.transport import event
from gponsim.steps import Emit

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: Postfix's mail_name, shown in ``by host (Postfix)``.
MAIL_NAME = "Postfix"
MAILER_DAEMON = "MAILER-DAEMON"
#: postconf(5) defaults.
HOPCOUNT_LIMIT = 50
LINE_LENGTH_LIMIT = 2048

_HEADER = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_RESENT = frozenset({
    b"resent-bcc", b"resent-cc", b"resent-date", b"resent-from",
    b"resent-message-id", b"resent-reply-to", b"resent-sender", b"resent-to",
})
#: Headers cleanup(8) removes (HDR_OPT_DROP in src/global/header_opts.c).
_DROPPED = frozenset({b"return-path", b"content-length"})


class CleanupRejected(Exception):
    """cleanup refused the message; ``reply`` is what smtpd answers DATA with."""

    def __init__(self, dsn: str, text: str) -> None:
        super().__init__(text)
        self.dsn = dsn
        self.text = text

    @property
    def reply(self) -> str:
        return f"554 {self.dsn} Error: {self.text}"


# --------------------------------------------------------------------------
# Dates

def mail_date(when: float) -> str:
    """RFC 5322 date as Postfix writes it: ``Mon,  1 Jan 2024 12:00:00 +0000 (UTC)``.

    ``%a, %e %b %Y %H:%M:%S`` in local time (``%e``: a single-digit day gets
    two spaces), the UTC offset, then the zone name in parentheses.
    English day/month names regardless of the process locale.
    """
    tm = time.localtime(when)
    offset = tm.tm_gmtoff // 60
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset), 60)
    zone = tm.tm_zone or "UTC"
    return (f"{_DAYS[tm.tm_wday]}, {tm.tm_mday:2d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year} "
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} "
            f"{sign}{hours:02d}{minutes:02d} ({zone})")


# --------------------------------------------------------------------------
# Addresses

def rfc_address_literal(ip: str) -> str:
    """The client address as smtpd writes it in brackets: ``IPv6:`` prefix for IPv6."""
    return f"IPv6:{ip}" if ":" in ip else ip


def is_local_client(client_ip: str, interface_addresses: Iterable[str]) -> bool:
    """``permit_inet_interfaces``: the client IP is one of the server's addresses.

    IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) compare as IPv4.
    """
    addresses = tuple(interface_addresses)
    if client_ip in addresses:
        return True
    client = _normalized_ip(client_ip)
    return any(_normalized_ip(a) == client for a in addresses)


@lru_cache(maxsize=256)
def _normalized_ip(value: str) -> object:
    try:
        addr = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return value
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


# --------------------------------------------------------------------------
# The Received: header (smtpd)

def received_header(helo: str | None, client_name: str, client_ip: str, protocol: str,
                    qid: str, recipients: list[str], when: float | None = None,
                    myhostname: str | None = None) -> str:
    """The ``Received:`` header smtpd prepends, with LF line ends and a final LF.

    ``when`` is the arrival time (default: now); ``myhostname`` is required.

    ::

        Received: from pc1 (unknown [192.168.1.50])
        \tby mail.gponlab.local (Postfix) with ESMTPSA id 4F1A2C0D9E
        \tfor <bob@gmail.com>; Mon,  1 Jan 2024 12:00:00 +0000 (UTC)

    With more than one recipient (or none) there is no ``for`` clause: the
    ``by`` line ends in ``;`` and the date goes on its own line. Without a
    HELO/EHLO the client name stands in for it.
    """
    if not myhostname:
        raise TypeError("received_header() needs myhostname")
    if when is None:
        when = time.time()
    client_name = client_name or "unknown"
    lines = [f"Received: from {helo or client_name} "
             f"({client_name} [{rfc_address_literal(client_ip)}])"]
    by = f"\tby {myhostname} ({MAIL_NAME}) with {protocol} id {qid}"
    if len(recipients) == 1:
        lines.append(by)
        lines.append(f"\tfor <{quote_822_local(recipients[0])}>; {mail_date(when)}")
    else:
        lines.append(by + ";")
        lines.append(f"\t{mail_date(when)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Message content

def normalize_newlines(message: bytes) -> bytes:
    """CRLF -> LF (queue files and mboxes store LF-terminated lines)."""
    return message.replace(b"\r\n", b"\n")


def message_size(content: bytes, line_limit: int = LINE_LENGTH_LIMIT) -> int:
    """The ``size=`` Postfix logs and ``mailq`` shows.

    Postfix counts the bytes of the message content *records* in its queue
    file: each line (split in pieces of ``line_length_limit``) is stored as
    a type byte, a 7-bit-per-byte length and the text. For ordinary lines
    that is the text plus two bytes, which is why it comes out close to the
    message size on the wire with CRLF line ends.
    """
    if not content:
        return 0
    lines = content.split(b"\n")
    if content.endswith(b"\n"):
        lines.pop()
    # Every line is at least one record: a type byte, one length byte, the text.
    total = len(content) - content.count(b"\n") + 2 * len(lines)
    if max(map(len, lines)) < 0x80:
        return total
    # Lines of 128 bytes or more need more length bytes, and lines longer
    # than line_length_limit are split into several records.
    for n in map(len, lines):
        if n < 0x80:
            continue
        total -= 2
        for start in range(0, n, line_limit):
            piece = min(line_limit, n - start)
            length_bytes = 1
            while piece >= 0x80:
                piece >>= 7
                length_bytes += 1
            total += 1 + length_bytes
    return total


@dataclass
class HeaderBlock:
    """The primary header block of a message, split into fields.

    ``fields`` holds each header field's raw lines (a field and its
    continuation lines, LF-terminated). ``body`` is everything after the
    block; ``separator`` tells whether a blank line ended the block.
    """

    fields: list[bytes] = field(default_factory=list)
    separator: bool = False
    body: bytes = b""

    @staticmethod
    def name_of(raw: bytes) -> bytes:
        m = _HEADER.match(raw)
        return m.group(1).lower() if m else b""

    @staticmethod
    def value_of(raw: bytes) -> str:
        m = _HEADER.match(raw)
        value = raw[m.end():] if m else raw
        value = value.replace(b"\n", b"").strip(b" \t")
        return value.decode("utf-8", "replace")

    def names(self) -> set[bytes]:
        return {self.name_of(f) for f in self.fields}

    def get(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for raw in self.fields:
            if self.name_of(raw) == wanted:
                return self.value_of(raw)
        return None


def split_headers(content: bytes) -> HeaderBlock:
    """Split ``content`` (LF line ends) into its primary header block and body."""
    block = HeaderBlock()
    pos = 0
    end = len(content)
    current: bytearray | None = None
    while pos < end:
        nl = content.find(b"\n", pos)
        stop = end if nl < 0 else nl + 1
        line = content[pos:stop]
        bare = line.rstrip(b"\n")
        if bare == b"":
            block.separator = True
            pos = stop
            break
        if current is not None and bare[:1] in (b" ", b"\t"):
            current += line
        elif _HEADER.match(bare):
            if current is not None:
                block.fields.append(bytes(current))
            current = bytearray(line)
        else:
            break  # not a header: the body starts here, without a separator
        pos = stop
    if current is not None:
        block.fields.append(bytes(current))
    block.body = content[pos:]
    return block


@dataclass
class CleanupResult:
    content: bytes            #: the message as queued (LF line ends)
    message_id: str           #: what cleanup logs after ``message-id=`` (``<>`` if none)
    added: list[str]          #: header lines cleanup added, in order
    size: int                 #: Postfix's ``size=`` (see :func:`message_size`)
    hops: int                 #: number of ``Received:`` headers
    log_lines: list[str]      #: cleanup's log texts after ``QID: ``


def cleanup_message(content: bytes, *, qid: str, sender: str, arrival: float, created: float,
                    myhostname: str, add_missing_headers: bool,
                    hopcount_limit: int = HOPCOUNT_LIMIT) -> CleanupResult:
    """Process a message as cleanup(8) does (see the module docstring).

    ``content`` already starts with smtpd's ``Received:`` header. ``created``
    is the queue file's creation time (the Message-Id timestamp, UTC);
    ``arrival`` the message arrival time (the added ``Date:``).
    Raises :class:`CleanupRejected` for too many hops.
    """
    content = normalize_newlines(content)
    block = split_headers(content)
    names = [HeaderBlock.name_of(f) for f in block.fields]
    hops = names.count(b"received")
    if hops >= hopcount_limit:
        raise CleanupRejected("5.4.0", "too many hops")

    kept = [f for f, n in zip(block.fields, names) if n not in _DROPPED]
    seen = set(names)
    resent = "Resent-" if seen & _RESENT else ""
    log_lines: list[str] = []
    for raw, name in zip(block.fields, names):
        if name == b"message-id":
            log_lines.append(f"message-id={HeaderBlock.value_of(raw)}")
        elif name == b"resent-message-id":
            log_lines.append(f"resent-message-id={HeaderBlock.value_of(raw)}")

    added: list[str] = []
    if add_missing_headers:
        if resent.lower().encode() + b"message-id" not in seen:
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(created))
            msgid = f"<{stamp}.{qid}@{myhostname}>"
            added.append(f"{resent}Message-Id: {msgid}")
            log_lines.append(f"{resent.lower()}message-id={msgid}")
            seen.add(resent.lower().encode() + b"message-id")
    if b"message-id" not in seen:
        log_lines.append("message-id=<>")
    if add_missing_headers:
        if resent.lower().encode() + b"date" not in seen:
            added.append(f"{resent}Date: {mail_date(arrival)}")
        if resent.lower().encode() + b"from" not in seen:
            added.append(f"{resent}From: {quote_822_local(sender) if sender else MAILER_DAEMON}")

    message_id = "<>"
    for text in log_lines:
        if text.startswith("message-id="):
            message_id = text[len("message-id="):]
            break

    missing_separator = bool(block.body) and not block.separator
    if len(kept) != len(block.fields) or added or missing_separator:
        parts = [f if f.endswith(b"\n") else f + b"\n" for f in kept]
        parts += [a.encode("utf-8") + b"\n" for a in added]
        if block.separator or missing_separator:
            parts.append(b"\n")
        parts.append(block.body)
        content = b"".join(parts)
    return CleanupResult(content=content, message_id=message_id, added=added,
                         size=message_size(content), hops=hops, log_lines=log_lines)


def partial_log_lines(content: bytes, **kw) -> list[str]:
    """What cleanup logs of a message whose client hung up in the middle of it.

    ``content``: the part of the message smtpd had passed on (LF line ends;
    its ``Received:`` header would change nothing here); ``kw`` as for
    :func:`cleanup_message`.
    cleanup reads whole lines only, and logs a header's ``message-id=`` once
    the header is complete, that is once the next line has come (another
    header, the blank line or the body): a Message-ID that is the last whole
    line is not logged. Once the header block is complete, it also logs what
    it logs for a missing Message-ID (the one it adds, or ``message-id=<>``).
    Then it sees the end of the stream and removes the queue file, without a
    ``removed`` line. With BDAT, smtpd passes on only the chunks it has read
    whole.
    """
    content = normalize_newlines(content)
    content = content[:content.rfind(b"\n") + 1]       # whole lines only
    block = split_headers(content)
    ended = block.separator or bool(block.body)
    if ended:
        try:
            return cleanup_message(content, **kw).log_lines
        except CleanupRejected:
            pass
    lines = []
    for raw in block.fields if ended else block.fields[:-1]:
        name = HeaderBlock.name_of(raw)
        if name in (b"message-id", b"resent-message-id"):
            lines.append(f"{name.decode()}={HeaderBlock.value_of(raw)}")
    return lines


# --------------------------------------------------------------------------
# The cleanup service: smtpd's (and bounce's) way into the queue

class QueueFile:
    """A queue file being filled by one SMTP transaction (:meth:`Cleanup.open`)."""

    def __init__(self, cleanup: "Cleanup", qid: str, fd: int, envelope: Envelope,
                 created: float) -> None:
        self._cleanup = cleanup
        self.qid = qid
        self._fd = fd
        self.envelope = envelope
        self.created = created
        self.path = cleanup.spool / "incoming" / qid     #: until committed
        self.state = "open"            # open | committing | committed | aborted

    def add_recipient(self, address: str, original: str | None = None) -> None:
        """Record one more accepted recipient (``original``: as given in RCPT TO)."""
        if self.state != "open":
            raise RuntimeError(f"queue file {self.qid} is {self.state}")
        self.envelope.recipients.append(address)
        self.envelope.orig_recipients.append(original or "")

    def abort(self) -> None:
        """RSET, QUIT, a lost connection or a failed DATA: remove the queue file."""
        if self.state != "open":
            return
        self.state = "aborted"
        os.close(self._fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def lost(self, content: bytes) -> None:
        """The client hung up after smtpd had passed on ``content`` (the
        message so far): cleanup logs what it logs of that
        (:func:`partial_log_lines`)."""
        self._cleanup.partial(self, content)

    def commit(self, message: bytes) -> defer.Deferred:
        """Queue ``message`` (smtpd's Received header already on top).

        Returns a Deferred that fires with the queue id once the message is
        durable in ``active/`` — smtpd answers ``250 2.0.0 Ok: queued as
        QID`` then — or fails with :class:`CleanupRejected` /
        :class:`~gponsim.server.postfix.queuefile.QueueWriteError`.
        """
        if self.state != "open":
            return defer.fail(RuntimeError(f"queue file {self.qid} is {self.state}"))
        if not self.envelope.recipients:
            self.abort()
            return defer.fail(ValueError("no recipients"))
        try:
            parsed = self._cleanup.process(self, message)
        except CleanupRejected as exc:
            self.abort()
            return defer.fail(exc)
        self.state = "committing"
        return self._cleanup.write(self, parsed)


class Cleanup:
    """cleanup(8): opens queue files, rewrites addresses and headers, writes
    the queue file durably and hands it to qmgr (``qmgr.queued``)."""

    def __init__(self, spool: Path, *, qmgr: Any, log: MailLog, emit: Emit,
                 myhostname: str, myorigin: str | None = None,
                 interface_addresses: Iterable[str] = ("127.0.0.1", "::1"),
                 always_add_missing_headers: bool = False, syslog_name: str = "postfix",
                 reactor: Any = None, clock: Callable[[], float] = time.time) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.spool = Path(spool)
        self.qmgr = qmgr
        self.log = log
        self.emit = emit
        self.myhostname = myhostname
        self.myorigin = myorigin or myhostname
        self.interface_addresses = tuple(interface_addresses)
        self.always_add_missing_headers = always_add_missing_headers
        self.syslog_name = syslog_name
        self.reactor = reactor
        self.clock = clock

    def in_thread(self, fn: Callable, *args, **kw) -> defer.Deferred:
        """Run ``fn`` in a worker thread (file system work stays off the reactor).
        In-memory tests, with no reactor running, replace it to run inline."""
        return workpool.run(self.reactor, "postfix-queue", fn, *args, **kw)

    def open(self, envelope: Envelope, *, log_tag: str = "postfix/smtpd",
             log_client: bool = True) -> defer.Deferred:
        """Create a queue file in ``incoming/`` (smtpd calls this at the first
        accepted RCPT TO and answers once it exists) and log
        ``QID: client=unknown[ip]``. Fires with the :class:`QueueFile`.

        ``log_tag`` is the smtpd's log name (``postfix/submission/smtpd``
        on port 587). Recipients already in ``envelope`` are kept; add the
        others with :meth:`QueueFile.add_recipient`. Fails with
        :class:`~gponsim.server.postfix.queuefile.QueueWriteError` when the
        file cannot be made.
        """
        created = self.clock()
        env = replace(envelope, recipients=list(envelope.recipients),
                      orig_recipients=list(envelope.orig_recipients))
        while len(env.orig_recipients) < len(env.recipients):
            env.orig_recipients.append("")

        def made(result: tuple[str, int]) -> QueueFile:
            qid, fd = result
            text = f"{qid}: client={env.client_name or 'unknown'}[{env.client_ip}]"
            if env.sasl_method:
                text += f", sasl_method={env.sasl_method}, sasl_username={env.sasl_username or ''}"
            if log_client:   # bounce(8) posts its notifications without this line
                self.log.write(log_tag, pid_for(log_tag), text)
                self.emit(event("queue", "smtpd", "cleanup", "CLIENT", text, env.session,
                                qid=qid, client=env.client_ip, sasl_username=env.sasl_username))
            return QueueFile(self, qid, fd, env, created)

        def failed(failure):
            failure.trap(OSError)
            self.log.postfix("cleanup", f"warning: cannot create a queue file: "
                             f"{failure.value.strerror}", self.syslog_name)
            raise QueueWriteError(str(failure.value))
        return self.in_thread(queuefile.create, self.spool, created).addCallbacks(made, failed)

    def _qualify(self, address: str) -> str:
        """``user`` -> ``user@$myorigin`` (trivial-rewrite's append_at_myorigin)."""
        return address if (not address or "@" in address) else f"{address}@{self.myorigin}"

    def process(self, qf: QueueFile, message: bytes) -> queuefile.Parsed:
        """Addresses, duplicate recipients, headers and cleanup's log line."""
        env = qf.envelope
        env.sender = self._qualify(env.sender)
        seen: set[tuple[str, str]] = set()
        recipients, origs = [], []
        for i, rcpt in enumerate(env.recipients):
            orig = env.original(i)
            final = self._qualify(rcpt)
            key = (final.lower(), orig.lower())
            if key in seen:       # cleanup's duplicate recipient filter
                continue
            seen.add(key)
            recipients.append(final)
            origs.append(orig if orig != final else "")
        env.recipients, env.orig_recipients = recipients, origs
        result = cleanup_message(message, **self._options(qf, env.sender))
        self._log_lines(qf, result.log_lines)
        self.emit(event("queue", "smtpd", "cleanup", "RECEIVED",
                        f"{qf.qid}: message-id={result.message_id}", env.session,
                        qid=qf.qid, message_id=result.message_id, size=result.size,
                        added_headers=result.added or None, hops=result.hops))
        return queuefile.Parsed(qf.qid, qf.created, result.size, env, result.content, {}, {},
                                0, 0)

    def partial(self, qf: QueueFile, content: bytes) -> None:
        """The client hung up in the middle of the message: log what cleanup
        logged of the part it had read (:func:`partial_log_lines`)."""
        self._log_lines(qf, partial_log_lines(
            content, **self._options(qf, self._qualify(qf.envelope.sender))))

    def _options(self, qf: QueueFile, sender: str) -> dict:
        """:func:`cleanup_message`'s arguments for this queue file's message."""
        env = qf.envelope
        local_client = is_local_client(env.client_ip, self.interface_addresses)
        return dict(qid=qf.qid, sender=sender, arrival=env.arrival, created=qf.created,
                    myhostname=self.myhostname,
                    add_missing_headers=local_client or self.always_add_missing_headers)

    def _log_lines(self, qf: QueueFile, lines: Iterable[str]) -> None:
        for text in lines:
            self.log.postfix("cleanup", f"{qf.qid}: {text}", self.syslog_name)

    def write(self, qf: QueueFile, parsed: queuefile.Parsed) -> defer.Deferred:
        """Write and fsync the queue file in a worker thread, then hand it to qmgr."""
        fd, qf._fd = qf._fd, -1
        d = self.in_thread(queuefile.commit, self.spool, qf.qid, fd, created=qf.created,
                           envelope=parsed.envelope, content=parsed.content, size=parsed.size)

        def committed(path: Path) -> str:
            qf.state = "committed"
            qf.path = path
            self.qmgr.queued(parsed, path)
            return qf.qid

        def failed(failure):
            qf.state = "aborted"
            exc = failure.value
            if isinstance(exc, OSError):
                self.log.postfix("cleanup", f"{qf.qid}: warning: queue file write error: "
                                 f"{os.strerror(exc.errno or 5)}", self.syslog_name)
                raise QueueWriteError(str(exc))
            return failure
        return d.addCallbacks(committed, failed)
