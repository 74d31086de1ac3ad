"""POP3's wire grammar as Steps (RFC 1939, 2449, 5034): bytes in, Steps out.

Used by the live POP3 server and reusable by the capture analyzer, like
:mod:`gponsim.wire.imap`:

- each client line is a ``command`` Step (``verb`` upper-case, ``args``;
  PASS's password and AUTH's initial response marked ``secret``); lines
  sent during AUTH are ``data`` Steps (secret);
- each response is one ``reply`` Step, ``status`` ``+OK``/``-ERR`` (``+``
  for a SASL challenge), ``verb`` the command answered, ``meta["code"]`` the
  RFC 3206 response code (``AUTH``, ``SYS/TEMP``...). A multi-line response
  (CAPA, LIST, UIDL, RETR, TOP) is one Step: its lines joined with ``\\n``,
  a message (RETR, TOP) summarised as ``[message: n bytes, m lines, Subject: ...]``.
"""

from __future__ import annotations

import re
import time
from collections import deque

from gponsim.commentary import annotate, catalog
from gponsim.steps import Step
from gponsim.wire.smtp import message_summary

_CODE = re.compile(r"^\[([A-Za-z/-]+)\]")


def multiline(verb: str, args: str) -> bool:
    """Whether a positive reply to this command has a body ending in ``.``."""
    if verb in ("CAPA", "RETR", "TOP"):
        return True
    if verb in ("LIST", "UIDL", "AUTH"):
        return not args.strip()
    return False


class Pop3Conversation:
    def __init__(self, session: str, *, client: str = "client", server: str = "pop3",
                 tls: bool = False) -> None:
        self.session = session
        self.client = client
        self.server = server
        self.tls = tls
        self._cin = b""
        self._sin = b""
        self.pending: deque = deque([("CONNECT", "")])
        self.in_auth = False
        self._body: list[bytes] | None = None
        self._first = ""

    def _step(self, src: str, dst: str, kind: str, line: str, **fields) -> Step:
        d = "c2s" if src == self.client else "s2c"
        step = Step(t=time.time(), session=self.session, proto="pop3", src=src, dst=dst,
                    dir=d, kind=kind, line=line, tls=self.tls, **fields)
        if step.key is not None and step.key not in catalog():
            step.key = None
        return annotate(step)

    # --------------------------------------------------------------- client

    def client_data(self, data: bytes) -> list[Step]:
        out = []
        self._cin += data
        while True:
            nl = self._cin.find(b"\n")
            if nl < 0:
                if len(self._cin) > 65536:
                    self._cin = b""
                return out
            raw, self._cin = self._cin[:nl], self._cin[nl + 1:]
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            out.append(self._client_line(line))

    def _client_line(self, line: str) -> Step:
        if self.in_auth:
            secret = None if line.strip() == "*" else (0, len(line))
            return self._step(self.client, self.server, "data", line, verb="AUTH", secret=secret)
        verb, _, args = line.strip().partition(" ")
        verb = verb.upper()
        secret = None
        if verb == "PASS" and args:
            start = line.find(args, line.upper().find("PASS") + 4)
            secret = (start, start + len(args))
        elif verb == "AUTH":
            words = args.split()
            if len(words) >= 2 and words[1] != "=":
                start = line.rfind(words[1])
                secret = (start, start + len(words[1]))
            if words:
                self.in_auth = True
        self.pending.append((verb, args))
        known = verb if re.fullmatch(r"[A-Z]{1,8}", verb) else None
        return self._step(self.client, self.server, "command", line, verb=known,
                          args=args or None, secret=secret,
                          key=f"pop3.cmd.{known}" if known else None)

    # --------------------------------------------------------------- server

    def server_data(self, data: bytes) -> list[Step]:
        out = []
        self._sin += data
        while True:
            if self._body is not None:
                end = -2 if self._sin.startswith(b".\r\n") else self._sin.find(b"\r\n.\r\n")
                if end == -2:
                    self._sin = self._sin[3:]
                    out.append(self._finish_multi(b""))
                    continue
                if end < 0:
                    return out
                body, self._sin = self._sin[:end + 2], self._sin[end + 5:]
                out.append(self._finish_multi(body))
                continue
            nl = self._sin.find(b"\n")
            if nl < 0:
                return out
            raw, self._sin = self._sin[:nl], self._sin[nl + 1:]
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            step = self._server_line(line)
            if step is not None:
                out.append(step)

    def _server_line(self, line: str) -> Step | None:
        if line.startswith("+ ") or line == "+":
            return self._step(self.server, self.client, "reply", line, status="+", verb="AUTH",
                              key="pop3.reply.AUTH.+")
        verb, args = self.pending.popleft() if self.pending else ("UNKNOWN", "")
        status = "+OK" if line.startswith("+OK") else "-ERR" if line.startswith("-ERR") else None
        if verb == "AUTH" and status:
            self.in_auth = False
        if status == "+OK" and multiline(verb, args):
            self._body = []
            self._first = line
            self._verb = verb
            return None
        meta = {}
        text = line.split(" ", 1)[1] if " " in line else ""
        m = _CODE.match(text)
        if m:
            meta["code"] = m.group(1).upper()
        key = None
        if "code" in meta:
            key = f"pop3.code.{meta['code']}"
        elif status:
            key = f"pop3.reply.{verb}.{status}"
        return self._step(self.server, self.client, "reply", line, status=status, verb=verb,
                          meta=meta, key=key)

    def _finish_multi(self, body: bytes) -> Step:
        self._body = None
        verb = self._verb
        meta: dict = {}
        if verb in ("RETR", "TOP"):
            message = body.replace(b"\r\n..", b"\r\n.")
            if message.startswith(b".."):
                message = message[1:]
            meta = message_summary(message)           # as on the wire: CRLF counted
            summary = f"[message: {len(message)} bytes, {meta['lines']} lines"
            summary += f", Subject: {meta['subject']}]" if meta.get("subject") else "]"
            lines = [self._first, summary, "."]
        else:
            lines = [self._first] + body.decode("utf-8", "replace").splitlines() + ["."]
        return self._step(self.server, self.client, "reply", "\n".join(lines), status="+OK",
                          verb=verb, meta=meta, key=f"pop3.reply.{verb}.+OK")
