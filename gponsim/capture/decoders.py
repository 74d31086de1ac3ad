"""Reassembled TCP streams → Steps, one decoder per mail connection.

The line → Step grammar is not here: SMTP uses :mod:`gponsim.wire.smtp`,
IMAP :class:`gponsim.wire.imap.ImapConversation` and POP3
:class:`gponsim.wire.pop3.Pop3Conversation`, the same code the live lab
narrates with, so a capture gives the same Steps as the lab for the same
conversation. This module adds what only a capture needs: TLS switching
(STARTTLS/STLS accepted, implicit TLS, TLS records found by content), gaps,
packet times, credentials and client identification for the summary.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from gponsim.capture.servers import UNKNOWN, identify
from gponsim.capture.carry import Carrier
from gponsim.capture.tls import TlsObserver, looks_like_tls
from gponsim.commentary import annotate
from gponsim.steps import Step
from gponsim.wire import smtp as wire

_DOT_STUFFED = re.compile(rb"(?m)^\.")
_TLS_FIRST = frozenset((20, 21, 22, 23))
#: The largest message kept whole for --extract and the summary (the rest is counted).
MAX_MESSAGE = 64 << 20


@dataclass
class ConnInfo:
    """What the summary says about one connection."""

    number: int
    session: str
    proto: str
    endpoints: str
    server_port: int
    start: float
    first_packet: int
    midstream: bool = False
    client_name: str | None = None        # EHLO/HELO name
    software: list = field(default_factory=list)   # the client's: X-Mailer of what it sent, IMAP ID
    #: the server's software (capture.servers), None until it has spoken
    server: object = None
    tls: dict = field(default_factory=dict)
    steps: int = 0
    failures: int = 0
    gaps: int = 0
    directions: set = field(default_factory=set)
    messages: int = 0


@dataclass
class Credential:
    session: str
    proto: str
    mechanism: str
    user: str
    password: str
    inside_tls: bool
    t: float
    result: str = "?"


@dataclass
class Message:
    session: str
    proto: str
    verb: str
    data: bytes
    meta: dict
    t: float
    truncated: bool = False


class Context:
    """What a decoder reports to: where Steps go, the collectors, the counts.

    ``emit`` receives every Step; ``steps`` counts them and ``failures`` keeps
    the first :data:`MAX_FAILURES` failure replies (the summary's list).
    """

    def __init__(self, emit: Callable[[Step], object], on_message: Callable[[Message], None],
                 on_credential: Callable[[Credential], None], keylog=None,
                 failures: list | None = None, on_record=None) -> None:
        self.keylog = keylog
        #: ``on_record(session, direction, content_type, length, packets, handshake_type)``
        #: for every TLS record (the packets view); None: records are not followed.
        self.on_record = on_record
        self.emit = emit
        self.on_message = on_message
        self.on_credential = on_credential
        self.steps = 0
        self.failures = failures if failures is not None else []


#: Failure replies kept for the summary (the rest are counted per connection).
MAX_FAILURES = 200


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


#: Commentary that speaks of the capture itself or of TLS, true whatever the server.
_GENERIC = ("capture.", "tls.handshake.ClientHello", "tls.handshake.ServerHello",
            "tls.handshake.Certificate", "tls.handshake.Alert", "tls.data.",
            "tls.handshake.DECRYPTED", "tls.handshake.UNDECRYPTABLE")


#: The RFC that defines each ESMTP extension a server may offer in its EHLO reply.
_EXTENSION_RFC = {
    "SIZE": "RFC 1870", "PIPELINING": "RFC 2920", "AUTH": "RFC 4954", "STARTTLS": "RFC 3207",
    "8BITMIME": "RFC 6152", "ENHANCEDSTATUSCODES": "RFC 2034", "DSN": "RFC 3461",
    "SMTPUTF8": "RFC 6531", "CHUNKING": "RFC 3030", "BINARYMIME": "RFC 3030",
    "DELIVERBY": "RFC 2852", "ETRN": "RFC 1985", "VRFY": "RFC 5321", "EXPN": "RFC 5321",
    "HELP": "RFC 5321", "REQUIRETLS": "RFC 8689", "MT-PRIORITY": "RFC 6710",
    "FUTURERELEASE": "RFC 4865", "LIMITS": "RFC 9422", "NO-SOLICITING": "RFC 3865",
}


def offered_extensions(reply: str) -> str:
    """The extensions an EHLO reply offers (its lines after the first), each with its RFC:
    ``SIZE 52428800 (RFC 1870), PIPELINING (RFC 2920), HELP (RFC 5321)``; "" for none."""
    out = []
    for line in reply.split("\n")[1:]:
        text = line[4:].strip()
        if not text:
            continue
        rfc = _EXTENSION_RFC.get(text.split()[0].upper())
        out.append(f"{text} ({rfc})" if rfc else text)
    return ", ".join(out)


class Decoder:
    """Common part: TLS switching, gaps, Steps stamped with packet time and with the
    packets their bytes came in (``Step.packets``, see :mod:`gponsim.capture.carry`)."""

    proto = "smtp"
    server = "smtpd"

    def __init__(self, ctx: Context, info: ConnInfo, implicit_tls: bool = False) -> None:
        self.ctx = ctx
        self.info = info
        self.session = info.session
        self.tls = False                 # plaintext seen inside TLS (a decrypted capture)
        self.mode = {"c2s": "text", "s2c": "text"}
        self.observer: TlsObserver | None = None
        self._seen_events = 0
        self.implicit = implicit_tls
        self.t = 0.0
        self.pending_cred: Credential | None = None
        #: The server sent text after the client had started TLS (it did not take it up).
        self.clear_after_tls = False
        #: The decoded bytes of each direction not yet in a Step, by their packets.
        self.carry = {"c2s": Carrier(), "s2c": Carrier()}

    # ------------------------------------------------------------- plumbing

    def tail(self, direction: str) -> int:
        """Bytes of ``direction`` the decoder holds that belong to no Step yet."""
        return 0

    def emit(self, step: Step) -> None:
        step.t = self.t
        self._identify(step)
        if step.packets is None and step.kind != "event" and step.proto != "tls":
            d = step.dir
            if d == "c2s" or d == "s2c":
                packets = self.carry[d].keep(self.tail(d))
                if packets:
                    step.packets = packets
        info = self.info
        info.steps += 1
        ctx = self.ctx
        ctx.steps += 1
        if step.kind == "reply" and step.failed:
            info.failures += 1
            if len(ctx.failures) < MAX_FAILURES:
                ctx.failures.append(step)
        ctx.emit(step)

    def _identify(self, step: Step) -> None:
        """Tell the server's software by its first reply (an SMTP server that
        does not name itself: by its EHLO reply too). A server that is not
        the lab's software, or has not spoken yet, is explained by the RFCs
        (``meta["foreign"]``)."""
        info = self.info
        if step.kind == "reply" and step.src != "client":
            found = None
            if info.server is None or (info.server is UNKNOWN and step.verb in ("EHLO", "HELO")):
                found = identify(self.proto, step.line)
            if found is not None:
                info.server = found
            elif info.server is None:
                info.server = UNKNOWN
        server = info.server
        # Before the server has said what it is (a client that speaks first), it is not
        # known to be the lab's: the RFCs explain, never the lab's configuration.
        if (server is None or not server.lab) and not (step.key or "").startswith(_GENERIC):
            step.meta["foreign"] = True
            if server is not None and server.name:     # (a server that never named itself: none)
                step.meta["software"] = server.name
            if step.proto == "smtp" and step.kind == "reply" and step.verb == "EHLO" \
                    and step.code == 250:
                step.meta["extensions"] = offered_extensions(step.line)
            step.key = None
            annotate(step)

    def data(self, direction: str, data: bytes, t: float, packet: int = 0) -> None:
        """``data``, carried by the packet numbered ``packet``."""
        self.t = t
        self.info.directions.add(direction)
        if data[0] in _TLS_FIRST and self.mode[direction] == "text" and looks_like_tls(data) \
                and self.at_boundary(direction):
            self.start_tls("STARTTLS" if not self.implicit else "IMPLICIT", direction_only=direction)
        if self.mode[direction] == "tls":
            self._tls_data(direction, data, (packet,))
            return
        if direction == "s2c" and self.observer is not None and not self.tls:
            self.clear_after_tls = True       # the client speaks TLS, the server text
        self.carry[direction].add(len(data), (packet,))
        self.text(direction, data)

    def refeed(self, direction: str, data: bytes) -> None:
        """Bytes the decoder held (already carried) and must read again, now as TLS
        (after STARTTLS, or TLS found where text was expected)."""
        if self.mode[direction] == "tls":
            self.carry[direction].move_to(self.observer.raw[direction])
            self._tls_data(direction, data, None)
        else:
            self.text(direction, data)

    def _tls_data(self, direction: str, data: bytes, packets: tuple | None) -> None:
        obs = self.observer
        plain = obs.feed(direction, data, packets)
        if obs.not_tls[direction] and obs.dirs[direction].records == 0:
            # Plain text after STARTTLS: the capture was stored decrypted.
            self.mode[direction] = "text"
            obs.not_tls[direction] = False
            self.tls = True
            self.info.tls["decrypted"] = True
            obs.raw[direction].move_to(self.carry[direction])
            self.text(direction, data)
            return
        self._tls_events()
        carry = self.carry[direction]
        for chunk, packets in zip(plain, obs.plain_packets):
            self.tls = True
            carry.add(len(chunk), tuple(packets))
            self.text(direction, chunk)

    def at_boundary(self, direction: str) -> bool:
        return True

    def start_tls(self, how: str, direction_only: str | None = None) -> None:
        if self.observer is None:
            on_record = None
            if self.ctx.on_record is not None:
                session, report = self.session, self.ctx.on_record

                def on_record(direction, ctype, length, packets, handshake):
                    report(session, direction, ctype, length, packets, handshake)
            self.observer = TlsObserver(self.ctx.keylog, on_record)
            self.info.tls.setdefault("how", how)
        for d in ((direction_only,) if direction_only else ("c2s", "s2c")):
            self.mode[d] = "tls"

    def _tls_events(self) -> None:
        obs = self.observer
        while self._seen_events < len(obs.events):
            name, info = obs.events[self._seen_events]
            self._seen_events += 1
            self._tls_step(name, info)

    def _tls_step(self, name: str, info: dict) -> None:
        client, server = "client", self.server
        packets = info.get("packets") or None
        if name == "ClientHello":
            line = (f"ClientHello: offers {', '.join(info['versions'])}, "
                    f"{len(info['ciphers'])} cipher suites")
            if info.get("sni"):
                line += f", SNI {info['sni']}"
            self.info.tls.update({"offered": info["versions"], "sni": info.get("sni")})
            meta = {"versions": info["versions"], "ciphers": info["ciphers"][:60]}
            if info.get("alpn"):
                meta["alpn"] = info["alpn"]
            if info.get("sni"):
                meta["sni"] = info["sni"]
            step = Step(t=self.t, session=self.session, proto="tls", src=client, dst=server,
                        dir="c2s", kind="handshake", line=line, verb="ClientHello", meta=meta)
        elif name == "ServerHello":
            line = f"ServerHello: {info['version']} with {info['cipher']}"
            meta = {"version": info["version"], "cipher": info["cipher"]}
            if info.get("etm"):
                line += ", encrypt-then-MAC"
                meta["encrypt_then_mac"] = True
            self.info.tls.update(meta)
            step = Step(t=self.t, session=self.session, proto="tls", src=server, dst=client,
                        dir="s2c", kind="handshake", line=line, verb="ServerHello", meta=meta)
        elif name == "Certificate":
            self.info.tls["subject"] = info["subject"]
            step = Step(t=self.t, session=self.session, proto="tls", src=server, dst=client,
                        dir="s2c", kind="handshake", line=f"Certificate: {info['subject']}",
                        verb="Certificate", meta={"subject": info["subject"]})
        elif name == "Alert":
            d = info["direction"]
            src, dst = (client, server) if d == "c2s" else (server, client)
            level = "fatal" if info["level"] == 2 else "warning"
            step = Step(t=self.t, session=self.session, proto="tls", src=src, dst=dst, dir=d,
                        kind="handshake", line=f"Alert: {level}, description {info['description']}",
                        verb="Alert", meta={"level": level, "description": info["description"]})
            self.info.failures += 1
        elif name == "Decrypted":
            self.info.tls["decrypted"] = True
            step = Step(t=self.t, session=self.session, proto="tls", src=client, dst=server,
                        dir="c2s", kind="handshake", verb="DECRYPTED", tls=True,
                        line="[TLS decrypted with the key log: what follows was encrypted on the wire]")
        elif name == "DecryptFailed":
            self.info.tls["decrypt_error"] = info["reason"]
            step = Step(t=self.t, session=self.session, proto="tls", src=client, dst=server,
                        dir="c2s", kind="handshake", verb="UNDECRYPTABLE",
                        meta={k: v for k, v in info.items() if k != "packets"},
                        line=f"[TLS not decrypted: {info['reason']}]")
        else:
            return
        step.packets = packets
        self.emit(annotate(step))

    def gap(self, direction: str, nbytes: int, t: float, packet: int = 0) -> None:
        """``nbytes`` of ``direction`` are missing; ``packet`` came right after them."""
        self.t = t
        self.info.gaps += 1
        if self.mode[direction] == "text":
            self.carry[direction].clear()         # what waited before the hole is dropped
        elif self.observer is not None:
            self.observer.resync(direction)
        src, dst = ("client", self.server) if direction == "c2s" else (self.server, "client")
        step = Step(t=t, session=self.session, proto=self.proto, src=src, dst=dst, dir=direction,
                    kind="event", verb="GAP", key="capture.gap", meta={"bytes": nbytes},
                    packets=[packet] if packet else None,
                    line=f"[gap: {nbytes} bytes of this direction are missing from the capture"
                         + (f" (before packet {packet})" if packet else "")
                         + "; decoding resumes after them]")
        self.emit(annotate(step))
        if self.mode[direction] == "text":
            self.text_gap(direction)

    def close(self, t: float) -> None:
        self.t = t
        self.finish()
        obs = self.observer
        if obs is not None and not self.tls and not obs.dirs["s2c"].records:
            # TLS from the client only: the summary must not say this connection used TLS.
            self.info.tls["server_tls"] = False
            if self.clear_after_tls:
                self.info.tls["answered_in_clear"] = True
        if obs is not None and not self.tls:
            # The mail conversation inside TLS: its application data records (the rest of
            # the handshake, already told or encrypted, and closing alerts are not in it).
            c2s, s2c = obs.dirs["c2s"], obs.dirs["s2c"]
            if c2s.app_records or s2c.app_records:
                meta = {"c2s": c2s.app_bytes, "s2c": s2c.app_bytes,
                        "records": {"c2s": c2s.app_records, "s2c": s2c.app_records}}
                step = Step(t=t, session=self.session, proto="tls", src="client", dst=self.server,
                            dir="c2s", kind="data", verb="ENCRYPTED", meta=meta,
                            packets=sorted(set(c2s.app_packets) | set(s2c.app_packets)) or None,
                            line=f"[TLS application data: {c2s.app_bytes} bytes in "
                                 f"{c2s.app_records} record(s) from the client, {s2c.app_bytes} "
                                 f"in {s2c.app_records} from the server, encrypted (not "
                                 "decrypted: no key log)]")
                self.emit(annotate(step))
                self.info.tls["bytes"] = {"c2s": c2s.app_bytes, "s2c": s2c.app_bytes}

    # ------------------------------------------------------------- per protocol

    def text(self, direction: str, data: bytes) -> None:
        raise NotImplementedError

    def text_gap(self, direction: str) -> None:
        pass

    def finish(self) -> None:
        pass

    def credential(self, mechanism: str, user: str, password: str) -> None:
        cred = Credential(self.session, self.proto, mechanism, user, password,
                          inside_tls=self.tls, t=self.t)
        self.pending_cred = cred
        self.ctx.on_credential(cred)

    def credential_result(self, ok: bool) -> None:
        if self.pending_cred is not None:
            self.pending_cred.result = "ok" if ok else "failed"
            self.pending_cred = None

    def sasl(self, mech: str, responses: list[str]) -> None:
        """Decode PLAIN / LOGIN responses (base64) into a credential."""
        mech = mech.upper()
        decoded = [_b64(r) for r in responses]
        if mech == "PLAIN" and decoded and decoded[0] is not None:
            parts = decoded[0].split(b"\0")
            if len(parts) >= 3:
                self.credential("PLAIN", _text(parts[1]), _text(parts[2]))
        elif mech == "LOGIN" and len(decoded) >= 2 and None not in decoded[:2]:
            self.credential("LOGIN", _text(decoded[0]), _text(decoded[1]))
        elif decoded and decoded[0] is not None and mech in ("CRAM-MD5", "DIGEST-MD5"):
            self.credential(mech, _text(decoded[0]).split(" ")[0], "(challenge-response)")


#: SMTP lines seen before → the fields wire.command_step / wire.reply_step gave them
#: (verb, args, commentary key...): a busy capture repeats the same lines, and a Step
#: built from the template is the same Step, for less work. Lines with secrets are
#: not kept.
_COMMANDS: dict[str, tuple] = {}
_REPLIES: dict[tuple, tuple] = {}
_TEMPLATES = 4096
_LINES: dict[bytes, str] = {}


def _line_text(data: bytes, errors: str = "surrogateescape") -> str:
    """The text of one whole line (``data`` ends with its only LF), as _client and
    _server decode it (client bytes keep their non-UTF-8 bytes; server's are replaced)."""
    raw = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    line = raw.decode("utf-8", errors)
    if line.isascii():               # ASCII reads the same both ways: kept for both sides
        if len(_LINES) > _TEMPLATES:
            _LINES.clear()
        _LINES[data] = line
    return line


class SmtpDecoder(Decoder):
    proto = "smtp"
    server = "smtpd"

    def __init__(self, ctx: Context, info: ConnInfo, implicit_tls: bool = False) -> None:
        super().__init__(ctx, info, implicit_tls)
        self.cbuf = b""
        self.sbuf = b""
        self.state = "cmd"               # cmd, data, bdat
        self.pending: deque = deque()    # (verb, what) awaiting a reply
        self.banner = info.midstream      # mid-connection: the greeting is long gone
        self.reply_lines: list[str] = []
        self.msg: list[bytes] = []
        self.msg_packets: list[int] = []  # the packets of the message's bytes so far
        self.msg_size = 0
        self.msg_gap = False
        self.bdat_left = 0
        self.bdat_last = False
        self.auth: list | None = None    # [mech, responses] while AUTH is going on
        self.auth_cont = False           # the server asked (334) for more
        self.last_verb: str | None = None

    def at_boundary(self, direction: str) -> bool:
        return not (self.cbuf if direction == "c2s" else self.sbuf) and self.state == "cmd"

    def tail(self, direction: str) -> int:
        return len(self.cbuf) if direction == "c2s" else len(self.sbuf)

    def text(self, direction: str, data: bytes) -> None:
        # A segment that is exactly one whole line (most of them) skips the line
        # splitting; the text of lines seen before is kept (_LINES).
        if direction == "c2s":
            if not self.cbuf and self.state == "cmd" and data[0] not in _TLS_FIRST:
                line = _LINES.get(data)
                if line is None and data.find(b"\n") == len(data) - 1:
                    line = _line_text(data)
                if line is not None:
                    self._command(line)
                    return
            self.cbuf += data
            self._client()
        else:
            if not self.sbuf and not self.reply_lines:
                line = _LINES.get(data)
                if line is None and data.find(b"\n") == len(data) - 1:
                    line = _line_text(data, "replace")
                if line is not None and not (len(line) >= 4 and line[3] == "-"
                                             and line[:3].isdigit()):
                    self._reply([line])
                    return
            self.sbuf += data
            self._server()

    def text_gap(self, direction: str) -> None:
        if direction == "c2s":
            if self.state == "cmd":
                self.cbuf = b""
            else:
                self.msg_gap = True
                if self.state == "bdat":
                    self.cbuf = b""
        else:
            self.sbuf = b""
            self.reply_lines = []

    # --------------------------------------------------------------- client

    def _client(self) -> None:
        while self.cbuf:
            if self.state == "data":
                if not self._data_block():
                    return
                continue
            if self.state == "bdat":
                take = self.cbuf[:self.bdat_left]
                self.cbuf = self.cbuf[len(take):]
                self.bdat_left -= len(take)
                self._keep(take)
                if self.bdat_left:
                    return
                self.state = "cmd"
                if self.bdat_last:
                    self._message("BDAT")
                continue
            if not self.banner and not self.pending and looks_like_tls(self.cbuf) and not self.tls:
                self.start_tls("IMPLICIT" if self.implicit else "STARTTLS", "c2s")
                data, self.cbuf = self.cbuf, b""
                self.refeed("c2s", data)
                return
            nl = self.cbuf.find(b"\n")
            if nl < 0:
                if len(self.cbuf) > 1 << 16:
                    self.cbuf = b""
                return
            raw, self.cbuf = self.cbuf[:nl], self.cbuf[nl + 1:]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            self._command(raw.decode("utf-8", "surrogateescape"))

    def _command(self, line: str) -> None:
        if self.auth is not None and self.auth_cont:
            self.auth_cont = False
            self.emit(wire.auth_data_step(line, session=self.session, tls=self.tls, t=self.t))
            self.pending.append(("AUTH", "data"))
            if line.strip() != "*":
                self.auth[1].append(line.strip())
            return
        tpl = _COMMANDS.get(line)
        if tpl is None:
            step = wire.command_step(line, session=self.session, tls=self.tls, t=self.t)
            verb, args = wire.split_command(line)
            if step.secret is None:
                if len(_COMMANDS) > _TEMPLATES:
                    _COMMANDS.clear()
                _COMMANDS[line] = (step.verb, step.args, step.key, verb, args)
        else:
            known, known_args, key, verb, args = tpl
            step = Step(self.t, self.session, "smtp", "client", "smtpd", "c2s", "command", line,
                        known, known_args, None, None, None, None, self.tls, key)
        self.emit(step)
        self.last_verb = verb
        self.pending.append((step.verb or "UNKNOWN", "cmd"))
        if verb in ("EHLO", "HELO", "LHLO"):
            self.info.client_name = args.strip() or None
        elif verb == "DATA":
            self.state = "data"
            self.msg, self.msg_size, self.msg_gap, self.msg_packets = [], 0, False, []
        elif verb == "BDAT":
            parts = args.split()
            if parts and parts[0].isdigit():
                self.bdat_left = int(parts[0])
                self.bdat_last = len(parts) > 1 and parts[1].upper() == "LAST"
                self.state = "bdat"
                if self.bdat_left == 0:
                    self.state = "cmd"
                    if self.bdat_last:
                        self._message("BDAT")
        elif verb == "AUTH":
            words = args.split()
            self.auth = [words[0].upper() if words else "", words[1:2] if len(words) > 1 and words[1] != "=" else []]

    def _keep(self, block: bytes) -> None:
        if self.msg_size < MAX_MESSAGE:
            self.msg.append(block)
        self.msg_size += len(block)
        # The message's bytes are the next ones of the stream: their packets are its own
        # (not the next command's, as a BDAT chunk would otherwise be).
        packets = self.msg_packets
        for p in self.carry["c2s"].take(len(block)):
            if not packets or packets[-1] != p:
                packets.append(p)

    def _data_block(self) -> bool:
        buf = self.cbuf
        if buf.startswith(b".\r\n") or buf.startswith(b".\n"):
            cut, after = 0, (3 if buf[1:2] == b"\r" else 2)
        else:
            i = buf.find(b"\n.\r\n")
            j = buf.find(b"\n.\n")
            cands = [(i + 1, i + 4)] if i >= 0 else []
            if j >= 0:
                cands.append((j + 1, j + 3))
            if not cands:
                last = buf.rfind(b"\n")
                if last < 0:
                    return False
                self.cbuf = buf[last + 1:]
                self._keep(buf[:last + 1])
                return True
            cut, after = min(cands)
        # The end of data, CRLF.CRLF (RFC 5321 §4.1.1.4, and Wireshark's "EOM"), is no
        # Step's bytes: a packet that holds nothing else carried no part of the message.
        eom = 2 if buf[cut - 2:cut] == b"\r\n" else 1 if cut else 0
        self._keep(buf[:cut - eom])
        self.msg.append(buf[cut - eom:cut])
        self.carry["c2s"].take(after - cut + eom)
        self.cbuf = buf[after:]
        self.state = "cmd"
        self._message("DATA")
        return True

    def _message(self, verb: str) -> None:
        raw = b"".join(self.msg)
        self.msg = []
        # As it crossed the wire (CRLF line ends); DATA's dot-stuffing is undone, so the
        # size is the one BDAT would have announced.
        if verb == "DATA" and (raw.startswith(b".") or b"\n." in raw):
            raw = _DOT_STUFFED.sub(b"", raw)
        step = wire.message_step(raw, session=self.session, verb=verb, tls=self.tls, t=self.t)
        if self.msg_gap:
            step.meta["gap"] = True
        step.packets, self.msg_packets = self.msg_packets or None, []
        self.emit(step)
        if verb == "DATA":        # BDAT's reply answers the command and its chunk at once
            self.pending.append((verb, "msg"))
        self.info.messages += 1
        mailer = step.meta.get("mailer")          # User-Agent or X-Mailer, as the Step shows it
        if mailer and mailer not in self.info.software:
            self.info.software.append(mailer)
        self.ctx.on_message(Message(self.session, "smtp", verb, raw, step.meta, self.t,
                                    truncated=self.msg_size > MAX_MESSAGE or self.msg_gap))
        self.msg_size = 0

    # --------------------------------------------------------------- server

    def _server(self) -> None:
        while self.sbuf:
            nl = self.sbuf.find(b"\n")
            if nl < 0:
                if len(self.sbuf) > 1 << 16:
                    self.sbuf = b""
                return
            raw, self.sbuf = self.sbuf[:nl], self.sbuf[nl + 1:]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            line = raw.decode("utf-8", "replace")
            self.reply_lines.append(line)
            if len(line) >= 4 and line[3] == "-" and line[:3].isdigit() and len(self.reply_lines) < 1000:
                continue
            lines, self.reply_lines = self.reply_lines, []
            self._reply(lines)

    def _reply(self, lines: list[str]) -> None:
        if not self.banner:                     # a server speaks first: its greeting
            verb, what = "CONNECT", "banner"
        elif self.pending:
            verb, what = self.pending.popleft()
        else:
            verb, what = None, None
        self.banner = True
        text = lines[0] if len(lines) == 1 else "\n".join(lines)
        tpl = _REPLIES.get((verb, text))
        if tpl is None:
            step = wire.reply_step(lines, session=self.session, answers=verb, tls=self.tls, t=self.t)
            if len(_REPLIES) > _TEMPLATES:
                _REPLIES.clear()
            _REPLIES[(verb, text)] = (step.code, step.enhanced, step.key)
        else:
            code, enhanced, key = tpl
            step = Step(self.t, self.session, "smtp", "smtpd", "client", "s2c", "reply", text,
                        verb, None, code, enhanced, None, None, self.tls, key)
        self.emit(step)
        code = step.code or 0
        if verb == "STARTTLS" and code == 220:
            self.start_tls("STARTTLS")
            self.pending.clear()
            rest_c, rest_s = self.cbuf, self.sbuf
            self.cbuf = self.sbuf = b""
            if rest_s:
                self.refeed("s2c", rest_s)
            if rest_c:
                self.refeed("c2s", rest_c)
        elif verb == "DATA" and what == "cmd" and code != 354 and self.state == "data" \
                and not self.msg_size:
            self.state = "cmd"
        elif verb == "AUTH" and self.auth is not None:
            if code == 334:
                self.auth_cont = True
            else:
                self.auth_cont = False
                mech, responses = self.auth
                self.auth = None
                self.sasl(mech, responses)
                self.credential_result(200 <= code < 300)

    def finish(self) -> None:
        if self.reply_lines:
            lines, self.reply_lines = self.reply_lines, []
            self._reply(lines)
        if self.auth is not None and self.auth[1]:
            self.sasl(*self.auth)
            self.auth = None
        if self.state == "data" and self.msg_size:
            self.msg_gap = True
            self._message("DATA")


class _ConversationDecoder(Decoder):
    """IMAP and POP3: the wire module's conversation does the grammar."""

    def __init__(self, ctx: Context, info: ConnInfo, implicit_tls: bool = False) -> None:
        super().__init__(ctx, info, implicit_tls)
        self.conv = self.make(info.session)
        self.fresh = {"c2s": True, "s2c": True}

    def make(self, session: str):
        raise NotImplementedError

    def at_boundary(self, direction: str) -> bool:
        buf = self.conv._cin if direction == "c2s" else self.conv._sin
        return not buf

    def text(self, direction: str, data: bytes) -> None:
        conv = self.conv
        conv.tls = self.tls
        client = direction == "c2s"
        feed = conv.client_data if client else conv.server_data
        if data.count(b"\n") <= 1:
            steps = feed(data)
            self.stamp(steps, direction, 0)
        else:
            # A line at a time, so each Step learns its own packets.
            steps = []
            start, end = 0, len(data)
            while start < end:
                nl = data.find(b"\n", start)
                stop = end if nl < 0 else nl + 1
                new = feed(data[start:stop])
                start = stop
                if new:
                    self.stamp(new, direction, end - start)
                    steps += new
        for step in steps:
            self.emit(step)
            self.after(step)

    def stamp(self, steps: list[Step], direction: str, unfed: int) -> None:
        """Give Steps just decoded from ``direction`` their packets: every byte read so
        far except the ``unfed`` ones and those the conversation still buffers."""
        if not steps:
            return
        conv = self.conv
        held = len(conv._cin if direction == "c2s" else conv._sin)
        packets = self.carry[direction].keep(unfed + held) or None
        # Several Steps from the same bytes (a line that ends one response and is another)
        # share their packets.
        for step in steps:
            if step.packets is None:
                step.packets = packets

    def text_gap(self, direction: str) -> None:
        # Drop the partial line or literal of that direction (wire module internals).
        if direction == "c2s":
            self.conv._cin = b""
            for name in ("_c_literal",):
                if hasattr(self.conv, name):
                    setattr(self.conv, name, 0)
            if hasattr(self.conv, "_cmd"):
                self.conv._cmd = None
        else:
            self.conv._sin = b""
            for name in ("_s_literal",):
                if hasattr(self.conv, name):
                    setattr(self.conv, name, 0)
            if hasattr(self.conv, "_resp"):
                self.conv._resp = []
            if getattr(self.conv, "_body", None) is not None:
                self.conv._body = None

    def after(self, step: Step) -> None:
        pass


#: A FETCH response item whose literal is a whole message: BODY[] (or BODY.PEEK[] echoed
#: as BODY[]), BINARY[], RFC822; ``<origin>`` marks a partial fetch (a chunk).
_FETCH_MESSAGE = re.compile(r"(?:BODY\[\]|BINARY\[\]|RFC822)(?:<(\d+)>)? \{(\d+)\+?\}$", re.I)
_FETCH_UID = re.compile(r"\bUID (\d+)", re.I)
_APPEND = re.compile(r"^\S+ (?:UID )?APPEND ", re.I)


class _Literal:
    """A message-carrying literal being collected from one direction."""

    __slots__ = ("verb", "key", "origin", "size", "chunks", "have")

    def __init__(self, verb: str, key, origin: int, size: int) -> None:
        self.verb, self.key, self.origin, self.size = verb, key, origin, size
        self.chunks: list[bytes] = []
        self.have = 0

    def add(self, data: bytes) -> None:
        if self.have < MAX_MESSAGE:
            self.chunks.append(data)
        self.have += len(data)


class ImapDecoder(_ConversationDecoder):
    """IMAP, plus the messages in FETCH (BODY[], RFC822) and APPEND literals.

    The wire conversation summarises literals; to keep their bytes, each
    direction is fed to it a line at a time, and the bytes of a literal that
    carries a message (seen from the line that announced it) are collected as
    they pass.
    """

    proto = "imap"
    server = "imap"

    def make(self, session: str):
        from gponsim.wire.imap import ImapConversation

        self.auth: list | None = None
        self.lit: dict[str, _Literal | None] = {"c2s": None, "s2c": None}
        self.partial: dict = {}          # message number -> [chunks, size]: BODY[]<origin>
        return ImapConversation(session)

    def text(self, direction: str, data: bytes) -> None:
        conv = self.conv
        conv.tls = self.tls
        client = direction == "c2s"
        feed = conv.client_data if client else conv.server_data
        stamp = self.stamp
        steps: list[Step] = []
        while data:
            pending = conv._c_literal if client else conv._s_literal
            buffered = conv._cin if client else conv._sin
            lit = self.lit[direction]
            if pending and not buffered:
                chunk, data = data[:pending], data[pending:]
                if lit is not None:
                    lit.add(chunk)
                new = feed(chunk)
                if new:
                    stamp(new, direction, len(data))
                    steps += new
                if lit is not None and not (conv._c_literal if client else conv._s_literal):
                    self.lit[direction] = None
                    self._literal_done(lit)
                continue
            if lit is not None and not pending:
                self.lit[direction] = None         # refused before it was sent (NO to {n})
            nl = data.find(b"\n")
            if nl < 0:
                new = feed(data)
                if new:
                    stamp(new, direction, 0)
                    steps += new
                break
            line, data = data[:nl + 1], data[nl + 1:]
            new = feed(line)
            if new:
                stamp(new, direction, len(data))
                steps += new
            pending = conv._c_literal if client else conv._s_literal
            if pending and not (conv._cin if client else conv._sin):
                self.lit[direction] = self._literal_start(client, pending)
        for step in steps:
            self.emit(step)
            self.after(step)

    def _literal_start(self, client: bool, size: int) -> _Literal | None:
        """What the literal just announced carries (the line is whole in the conversation)."""
        if client:
            cmd = self.conv._cmd
            if cmd is None or not cmd.parts:
                return None
            head, text = cmd.parts[0], cmd.parts[-1]
            # The message is APPEND's literal that follows the mailbox (and flags, date).
            if _APPEND.match(head) and len(cmd.parts) > 1 or (
                    _APPEND.match(text) and not re.match(r"^\S+ (?:UID )?APPEND \{", text, re.I)):
                return _Literal("APPEND", None, 0, size)
            return None
        if not self.conv._resp:
            return None
        first, text = self.conv._resp[0], self.conv._resp[-1]
        m = _FETCH_MESSAGE.search(text)
        if not m or not first.startswith("* "):
            return None
        number = first.split(" ", 2)[1]
        uid = _FETCH_UID.search(first)
        return _Literal("FETCH", (number, uid.group(1) if uid else None),
                        int(m.group(1)) if m.group(1) is not None else -1, size)

    def _literal_done(self, lit: _Literal) -> None:
        data = b"".join(lit.chunks)
        if lit.origin < 0 or lit.verb == "APPEND":
            self._message(lit.verb, data, lit.have > MAX_MESSAGE)
            return
        key = lit.key[0]                               # a chunk of BODY[]<origin>
        have = self.partial.get(key)
        if lit.origin == 0 or have is None or have[1] != lit.origin:
            if have is not None:                      # fetched again from the start
                self._message("FETCH", b"".join(have[0]), False)
            if lit.origin != 0:
                self.partial.pop(key, None)
                return                                # the start of it is not in the capture
            have = self.partial[key] = [[], 0]
        have[0].append(data)
        have[1] += len(data)

    def _message(self, verb: str, data: bytes, truncated: bool) -> None:
        message = data                    # the literal, as it crossed the wire
        self.info.messages += 1
        meta = wire.message_summary(message)
        mailer = meta.get("mailer") if verb == "APPEND" else None   # not one it downloaded
        if mailer and mailer not in self.info.software:
            self.info.software.append(mailer)
        self.ctx.on_message(Message(self.session, "imap", verb, message, meta, self.t,
                                    truncated=truncated))

    def text_gap(self, direction: str) -> None:
        super().text_gap(direction)
        self.lit[direction] = None

    def finish(self) -> None:
        """Chunks of partial fetches (Thunderbird's BODY.PEEK[]<0.N>...) are joined at the end."""
        super().finish()
        for chunks, _size in self.partial.values():
            self._message("FETCH", b"".join(chunks), False)
        self.partial.clear()

    def after(self, step: Step) -> None:
        if step.kind == "command":
            if step.verb == "LOGIN" and step.secret:
                user = _imap_first_arg(step.line, step.args or "")
                password = step.line[step.secret[0]:step.secret[1]]
                self.credential("LOGIN", user, password)
            elif step.verb == "AUTHENTICATE":
                words = (step.args or "").split()
                self.auth = [words[0].upper() if words else "", words[1:2] if len(words) > 1 else []]
            elif step.verb == "ID" and step.args and step.args.upper() != "NIL":
                pairs = re.findall(r'"([^"]*)"', step.args)
                fields = dict(zip(pairs[::2], pairs[1::2]))
                name = " ".join(x for x in (fields.get("name"), fields.get("version")) if x)
                if name and name not in self.info.software:
                    self.info.software.append(name)
        elif step.kind == "data" and step.verb == "AUTHENTICATE" and self.auth is not None:
            if step.line.strip() != "*":
                self.auth[1].append(step.line.strip())
        elif step.kind == "reply" and step.tag:
            if step.verb == "STARTTLS" and step.status == "OK":
                self.start_tls("STARTTLS")
            elif step.verb == "AUTHENTICATE" and self.auth is not None:
                mech, responses = self.auth
                self.auth = None
                self.sasl(mech, responses)
                self.credential_result(step.status == "OK")
            elif step.verb == "LOGIN":
                self.credential_result(step.status == "OK")


def _imap_first_arg(line: str, args: str) -> str:
    args = args.lstrip()
    if args.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"', args)
        return m.group(1) if m else args
    if args.startswith("{") and "\n" in args:
        return args.split("\n", 1)[1].split(" ", 1)[0]
    return args.split(" ", 1)[0]


class Pop3Decoder(_ConversationDecoder):
    proto = "pop3"
    server = "pop3"

    def make(self, session: str):
        from gponsim.wire.pop3 import Pop3Conversation

        decoder = self
        self.user: str | None = None
        self.auth: list | None = None

        class Conversation(Pop3Conversation):
            def _finish_multi(self, body: bytes) -> Step:
                if self._verb in ("RETR", "TOP"):
                    decoder._retrieved(self._verb, body)
                return super()._finish_multi(body)

        conv = Conversation(session)
        if self.info.midstream:
            conv.pending.clear()      # no greeting to wait for
        return conv

    def _retrieved(self, verb: str, body: bytes) -> None:
        if verb != "RETR":
            return
        message = body.replace(b"\r\n..", b"\r\n.")       # as on the wire, unstuffed
        if message.startswith(b".."):
            message = message[1:]
        self.info.messages += 1
        from gponsim.wire.smtp import message_summary

        self.ctx.on_message(Message(self.session, "pop3", "RETR", message,
                                    message_summary(message), self.t))

    def after(self, step: Step) -> None:
        if step.kind == "command":
            args = step.args or ""
            if step.verb == "USER":
                self.user = args.strip()
            elif step.verb == "PASS":
                self.credential("USER/PASS", self.user or "?", args)
            elif step.verb == "APOP":
                self.credential("APOP", args.split(" ")[0], "(digest)")
            elif step.verb == "AUTH":
                words = args.split()
                if words:
                    self.auth = [words[0].upper(), words[1:2] if len(words) > 1 else []]
        elif step.kind == "data" and step.verb == "AUTH" and self.auth is not None:
            if step.line.strip() != "*":
                self.auth[1].append(step.line.strip())
        elif step.kind == "reply" and step.status in ("+OK", "-ERR"):
            if step.verb == "STLS" and step.status == "+OK":
                self.start_tls("STARTTLS")
            elif step.verb == "AUTH" and self.auth is not None:
                mech, responses = self.auth
                self.auth = None
                self.sasl(mech, responses)
                self.credential_result(step.status == "+OK")
            elif step.verb in ("PASS", "APOP"):
                self.credential_result(step.status == "+OK")


DECODERS = {"smtp": SmtpDecoder, "imap": ImapDecoder, "pop3": Pop3Decoder}
PORTS = {25: "smtp", 465: "smtp", 587: "smtp", 2525: "smtp", 143: "imap", 993: "imap",
         110: "pop3", 995: "pop3"}
IMPLICIT = frozenset({465, 993, 995})

_IMAP_CMD = re.compile(rb"^[A-Za-z0-9.]{1,20} (CAPABILITY|LOGIN|AUTHENTICATE|STARTTLS|ID|NOOP|SELECT|"
                       rb"EXAMINE|LIST|LSUB|STATUS|LOGOUT|ENABLE)\b", re.I)


def sniff(c2s: bytes, s2c: bytes) -> str | None:
    """The mail protocol these first bytes belong to, or None."""
    if s2c:
        if _SMTP_BANNER.match(s2c):
            return "smtp"
        if _IMAP_GREETING.match(s2c):
            return "imap"
        if s2c.startswith(b"+OK"):
            return "pop3"
    if c2s:
        if _SMTP_CMD.match(c2s):
            return "smtp"
        if _IMAP_CMD.match(c2s):
            return "imap"
        if _POP3_CMD.match(c2s) and len(c2s) < 512:
            return "pop3"
    return None


_SMTP_BANNER = re.compile(rb"^220[ -]")
_IMAP_GREETING = re.compile(rb"^\* (OK|PREAUTH)\b", re.I)
_SMTP_CMD = re.compile(rb"^(EHLO|HELO|LHLO|MAIL FROM:)", re.I)
_POP3_CMD = re.compile(rb"^(USER|CAPA|STLS|APOP|STAT|UIDL|RETR) ?", re.I)


def now() -> float:
    return time.time()
