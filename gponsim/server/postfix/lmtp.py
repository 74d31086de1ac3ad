"""Postfix's LMTP client, lmtp(8): local mail handed to Dovecot's LMTP service.

With ``mailbox_transport = lmtp:unix:private/dovecot-lmtp`` in main.cf,
Postfix's local(8) no longer writes ``/var/mail/<user>`` itself: it passes
each recipient, alone, to the ``lmtp`` transport (:class:`MailboxTransport`,
logged as ``postfix/local[pid]: QID: passing <user2@gponlab.local> to
transport=lmtp``), and lmtp(8) (:class:`LmtpClient`) speaks LMTP (RFC 2033)
to Dovecot over the Unix socket ``private/dovecot-lmtp``, relative to
``queue_directory`` (``/var/spool/postfix``, under the lab root here).

The conversation, as real Postfix 3.7 has it with Dovecot 2.3 (docs/lmtp.md)::

    220 mail.gponlab.local Dovecot (Debian) ready.
    LHLO mail.gponlab.local                         (lmtp_lhlo_name = $myhostname)
    250-mail.gponlab.local / 8BITMIME / CHUNKING / ENHANCEDSTATUSCODES / PIPELINING
    MAIL FROM:<user1@gponlab.local>                 (with PIPELINING: these three
    RCPT TO:<user2@gponlab.local>                    in one write)
    DATA
    250 2.1.0 OK / 250 2.1.5 OK / 354 OK
    <message> . QUIT                                (QUIT right after the dot)
    250 2.0.0 <user2@gponlab.local> <session id> Saved     (one per accepted RCPT)
    221 2.0.0 Bye

Every command and reply is a Step (proto ``lmtp``, ``lmtp`` ↔ ``dovecot-lmtp``).
Each recipient's verdict goes back to qmgr and into mail.log::

    postfix/lmtp[pid]: QID: to=<user2@gponlab.local>, relay=mail.gponlab.local[private/dovecot-lmtp], delay=0.11, delays=0.01/0.01/0.07/0.02, dsn=2.0.0, status=sent (250 2.0.0 <user2@gponlab.local> ALBYJFk8FmvMdgAAg+zDdQ Saved)

2xx is ``sent``, 4xx ``deferred``, 5xx ``bounced`` (``host ... said: <reply>
(in reply to RCPT TO command)``); a missing socket defers with ``connect to
mail.gponlab.local[private/dovecot-lmtp]: No such file or directory``.

When the lab's own Dovecot LMTP service is the other end, this client tells
it so before connecting (:mod:`gponsim.server.inprocess`): one connection is
one session, and each line is narrated once, here.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer

from gponsim.server import inprocess
from gponsim.server.maillog import MailLog
from gponsim.server.postfix.smtp import (ConnectFactory, DeliveryClient, RelayError,
                                         ReplyReader, joined, read_reply, reply_code,
                                         reply_dsn)
from gponsim.server.postfix.transport import DeliveryRequest, RecipientStatus, Verdicts, event
from gponsim.server.unixpath import socket_address
from gponsim.steps import Emit, new_session, null_emit
from gponsim.wire import smtp as wire

#: What lmtp(8) is waiting for when a connection is lost (smtp_proto.c's texts).
_WHILE = {
    "CONNECT": "receiving the initial server greeting",
    "LHLO": "performing the LHLO handshake",
    "MAIL": "sending MAIL FROM",
    "RCPT": "sending RCPT TO",
    "DATA": "sending DATA command",
    "DOT": "sending end of data -- message may be sent more than once",
    "RSET": "sending RSET",
    "QUIT": "sending QUIT",
}
#: What a failure reply was "in reply to".
_IN_REPLY_TO = {"LHLO": "LHLO", "MAIL": "MAIL FROM", "RCPT": "RCPT TO", "DATA": "DATA",
                "DOT": "end of DATA"}

_8BIT_CTE = re.compile(rb"^content-transfer-encoding:[ \t]*(8bit|binary)", re.I | re.M)


class LmtpError(RelayError):
    """The conversation cannot go on: every recipient still pending gets ``status``."""


@dataclass
class LmtpSettings:
    """main.cf's lmtp(8) parameters (postconf(5) defaults)."""

    lab_root: Path
    myhostname: str = "mail.gponlab.local"
    lhlo_name: str = "mail.gponlab.local"   #: lmtp_lhlo_name = $myhostname
    queue_directory: str = "/var/spool/postfix"
    connect_timeout: float = 0.0            #: lmtp_connect_timeout (0: the kernel's)
    reply_timeout: float = 300.0            #: lmtp_lhlo/mail/rcpt_timeout
    data_done_timeout: float = 600.0        #: lmtp_data_done_timeout
    syslog_name: str = "postfix"


def parse_nexthop(nexthop: str) -> tuple[str, str]:
    """``unix:private/dovecot-lmtp`` → (``unix``, ``private/dovecot-lmtp``);
    ``inet:host:port`` or a bare ``host`` → (``inet``, ...)."""
    kind, sep, rest = nexthop.partition(":")
    if sep and kind in ("unix", "inet"):
        return kind, rest
    return "inet", nexthop


def is_8bit(content: bytes, body_param: str | None = None) -> bool:
    """Does cleanup(8) see this message as 8-bit (BODY=8BITMIME, 8-bit bytes
    or a Content-Transfer-Encoding that says so)?"""
    if (body_param or "").upper() == "8BITMIME":
        return True
    if any(b > 127 for b in content):
        return True
    return _8BIT_CTE.search(content) is not None


class LmtpClient(DeliveryClient):
    """lmtp(8) behind qmgr: one LMTP conversation per delivery request."""

    name = program = "lmtp"
    Error = LmtpError
    settings: LmtpSettings

    # ------------------------------------------------------------- helpers

    def socket_path(self, address: str) -> Path:
        """The lab-root path of a ``unix:`` next hop (relative: to queue_directory)."""
        lab_path = address if address.startswith("/") else posixpath.join(
            self.settings.queue_directory, address)
        lab_path = posixpath.normpath(lab_path).lstrip("/")
        return Path(self.settings.lab_root).joinpath(*lab_path.split("/"))

    # ------------------------------------------------------------- deliver

    async def _deliver(self, req: DeliveryRequest) -> list[RecipientStatus]:
        session = new_session("lmtp")
        kind, address = parse_nexthop(req.nexthop)
        peer = f"{self.settings.myhostname}[{address}]"
        state: dict[str, Any] = {"proto": None}

        def logged(line: str, addr: str, status: str, dsn: str) -> None:
            self._log(line)
            self.emit(event("lmtp", "lmtp", "qmgr", status.upper(), line, session,
                            qid=req.qid, recipient=addr, status=status, dsn=dsn,
                            relay=verdicts.relay))
        verdicts = Verdicts(req, clock=self.clock, logged=logged)

        async def conversation() -> None:
            if kind != "unix":
                raise LmtpError("4.3.5", f"lmtp:{req.nexthop}: gponsim's lmtp(8) connects "
                                         f"to Unix sockets only (unix:PATH)")
            await self._conversation(req, session, peer, address, state, verdicts)
        try:
            await self._converse(req, verdicts, state, conversation())
        finally:
            if state.get("claim") is not None:
                inprocess.withdraw(state["claim"])
        return verdicts.statuses()

    async def _connect(self, req, session: str, peer: str, path: Path,
                       state: dict) -> ReplyReader:
        connected: defer.Deferred = defer.Deferred()
        failed: list[str] = []
        self.emit(event("lmtp", "lmtp", "dovecot-lmtp", "CONNECT", f"connect to {peer}",
                        session, qid=req.qid, path=str(path), logged=False))
        # Until the greeting comes, a server of this lab that accepts the
        # connection learns it is ours (and this session) from the announcement.
        claim = state["claim"] = inprocess.announce(path, session)
        timeout = self.settings.connect_timeout or 30
        try:
            try:
                address = socket_address(path)
            except OSError as exc:      # a long path whose folder does not exist
                failed.append(os.strerror(exc.errno or errno.ENOENT))
                raise
            self.reactor.connectUNIX(address, ConnectFactory(connected, failed), timeout=timeout)
            return await connected
        except Exception:  # noqa: BLE001 - told as Postfix tells it
            inprocess.withdraw(claim)
            state["claim"] = None
            text = f"connect to {peer}: {failed[0] if failed else 'Connection refused'}"
            self.emit(event("lmtp", "lmtp", "dovecot-lmtp", "CONNECT_FAILED", text, session,
                            qid=req.qid))
            raise LmtpError("4.4.1", text) from None

    async def _conversation(self, req, session, peer, address, state,
                            verdicts: Verdicts) -> None:
        pending, finish = verdicts.pending, verdicts.finish
        s = self.settings
        path = self.socket_path(address)
        proto = await self._connect(req, session, peer, path, state)
        state["proto"] = proto
        verdicts.relay = peer

        def send(*lines: str) -> None:
            """Commands in one write (pipelined when there are several)."""
            for line in lines:
                self.emit(wire.command_step(line, session=session, src="lmtp",
                                            dst="dovecot-lmtp", proto="lmtp"))
            proto.transport.write("".join(f"{line}\r\n" for line in lines)
                                  .encode("utf-8", "surrogateescape"))

        async def reply(answers: str, waiting: str | None = None,
                        timeout: float | None = None) -> list[str]:
            lines = await read_reply(proto, self.reactor, timeout or s.reply_timeout,
                                     lambda: LmtpError("4.4.2", f"lost connection with {peer} "
                                                       f"while {_WHILE[waiting or answers]}"))
            self.emit(wire.reply_step(lines, session=session, answers=answers,
                                      src="dovecot-lmtp", dst="lmtp", proto="lmtp"))
            return lines

        def failure(lines: list[str], command: str) -> LmtpError:
            return LmtpError(reply_dsn(lines),
                             f"host {peer} said: {joined(lines)} "
                             f"(in reply to {_IN_REPLY_TO[command]} command)",
                             "bounced" if reply_code(lines) >= 500 else "deferred")

        async def quit_(*before: str) -> None:
            """``RSET``/``QUIT`` at the end (replies read, errors ignored)."""
            if proto.lost is not None:
                return
            send(*before, "QUIT")
            try:
                for verb in (*before, "QUIT"):
                    await reply(verb)
            except LmtpError:
                pass

        # --- greeting and LHLO
        greeting = await reply("CONNECT")
        inprocess.withdraw(state.pop("claim"))      # claimed by now, if the server is ours
        if reply_code(greeting) != 220:
            await quit_()
            err = failure(greeting, "LHLO")
            err.reason = f"host {peer} refused to talk to me: {joined(greeting)}"
            raise err
        send(f"LHLO {s.lhlo_name}")
        lines = await reply("LHLO")
        if reply_code(lines) != 250:
            await quit_()
            raise failure(lines, "LHLO")
        ext = {line[4:].split(" ", 1)[0].upper() for line in lines[1:]}
        verdicts.setup = self.clock()

        # --- the transaction
        env = req.envelope
        mail = f"MAIL FROM:<{env.sender}>"
        if "8BITMIME" in ext and is_8bit(req.content, env.body_param):
            mail += " BODY=8BITMIME"
        order = [(mail, "MAIL", None)]
        order += [(f"RCPT TO:<{addr}>", "RCPT", index) for index, (addr, _o) in pending.items()]
        order.append(("DATA", "DATA", None))
        replies: list[list[str]] = []
        if "PIPELINING" in ext:
            send(*(line for line, _v, _i in order))
            for _line, verb, _i in order:
                replies.append(await reply(verb))
        else:
            for line, verb, _i in order:
                send(line)
                replies.append(await reply(verb))
                if verb == "MAIL" and reply_code(replies[-1]) // 100 != 2:
                    break
        if reply_code(replies[0]) // 100 != 2:
            await quit_("RSET")
            raise failure(replies[0], "MAIL")
        accepted: list[int] = []
        for (_line, _verb, index), lines in zip(order[1:-1], replies[1:-1]):
            if reply_code(lines) // 100 == 2:
                accepted.append(index)
            else:
                err = failure(lines, "RCPT")
                finish(index, err.status, err.dsn, err.reason)
        data_reply = replies[-1] if len(replies) == len(order) else None
        if not accepted:
            await quit_("RSET")
            return
        if data_reply is None or reply_code(data_reply) != 354:
            await quit_("RSET")
            raise failure(data_reply or ["451 4.3.0 no reply"], "DATA")

        # --- the message, the dot and QUIT in one write; one reply per recipient
        self.emit(wire.message_step(req.content, session=session, src="lmtp",
                                    dst="dovecot-lmtp", proto="lmtp",
                                    size=wire.wire_size(req.content)))
        self.emit(wire.command_step("QUIT", session=session, src="lmtp", dst="dovecot-lmtp",
                                    proto="lmtp"))
        proto.transport.write(wire.dot_stuffed(req.content) + b".\r\nQUIT\r\n")
        for index in accepted:
            final = await reply("DATA", "DOT", s.data_done_timeout)
            if reply_code(final) // 100 == 2:
                finish(index, "sent", reply_dsn(final), joined(final))
            else:
                err = failure(final, "DOT")
                finish(index, err.status, err.dsn, err.reason)
        try:
            await reply("QUIT")
        except LmtpError:
            pass


# --------------------------------------------------------------------------
# local(8) with mailbox_transport

@dataclass
class MailboxTransport:
    """local(8) when main.cf sets ``mailbox_transport``: it does not write the
    mailbox, it passes each recipient, one at a time
    (``local_destination_recipient_limit = 1``), to that transport::

        postfix/local[pid]: QID: passing <user2@gponlab.local> to transport=lmtp

    qmgr hands local-domain recipients to this; ``inner`` (lmtp(8)) delivers."""

    inner: Any
    transport_name: str = "lmtp"
    log: MailLog | None = None
    emit: Emit = null_emit
    syslog_name: str = "postfix"
    #: who qmgr hands the recipients to (qmgr's DELIVER Step): local(8)
    actor: str = "local"

    def deliver(self, request: DeliveryRequest) -> defer.Deferred:
        return defer.ensureDeferred(self._deliver(request))

    async def _deliver(self, request: DeliveryRequest) -> list[RecipientStatus]:
        out: list[RecipientStatus] = []
        for rcpt in request.recipients:      # one after another: the narration stays readable
            text = f"{request.qid}: passing <{rcpt[1]}> to transport={self.transport_name}"
            if self.log is not None:
                self.log.postfix("local", text, self.syslog_name)
            self.emit(event("delivery", "local", "lmtp", "PASS", text, request.envelope.session,
                            qid=request.qid, recipient=rcpt[1], transport=self.transport_name))
            one = DeliveryRequest(request.qid, request.envelope, [rcpt], request.content,
                                  request.active_arrival, nexthop=request.nexthop,
                                  recovered=request.recovered)
            out.extend(await defer.maybeDeferred(self.inner.deliver, one))
        return out


def settings_from_profile(profile, lab_root: Path, syslog_name: str = "postfix") -> LmtpSettings:
    """lmtp(8)'s settings from main.cf."""
    main = profile.main

    def seconds(name: str, default: float) -> float:
        try:
            return profile.time(name)
        except Exception:  # noqa: BLE001 - not in gponsim's catalog
            return default

    lhlo = main("lmtp_lhlo_name") if profile.is_known("lmtp_lhlo_name") else ""
    return LmtpSettings(lab_root=Path(lab_root), myhostname=main("myhostname"),
                        lhlo_name=lhlo or main("myhostname"),
                        queue_directory=main("queue_directory") or "/var/spool/postfix",
                        connect_timeout=seconds("lmtp_connect_timeout", 0.0),
                        reply_timeout=seconds("lmtp_lhlo_timeout", 300.0),
                        data_done_timeout=seconds("lmtp_data_done_timeout", 600.0),
                        syslog_name=syslog_name)
