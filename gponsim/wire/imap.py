"""IMAP's wire grammar as Steps (RFC 3501/9051): one place that turns bytes into Steps.

The live IMAP server feeds every byte it reads and writes through an
:class:`ImapConversation`; the capture analyzer can feed a reassembled TCP
stream the same way, so both give the same Steps.

- A client command (with its literals, ``{n}`` and ``{n+}``) is one Step of
  kind ``command``: ``tag``, ``verb`` (upper-case; for ``UID FETCH`` the verb
  is ``UID FETCH``), ``args``. A literal appears in ``line`` as
  ``{n}`` followed by a summary: ``[literal: n bytes]`` (an APPENDed message:
  ``[message: n bytes, m lines, Subject: ...]``). LOGIN's password and
  AUTHENTICATE's initial response are marked as ``secret``.
- Lines the client sends during AUTHENTICATE are ``data`` Steps (secret);
  ``DONE`` ending IDLE is a ``command`` with verb ``DONE``.
- Every server response is one ``reply`` Step: untagged (``* 3 EXISTS``,
  ``* OK [UIDVALIDITY 1] UIDs valid``), continuation (``+ idling``), or
  tagged (``a1 OK Logged in``). ``status`` is OK/NO/BAD/BYE/PREAUTH (``+``
  for a continuation), ``verb`` the command answered, ``meta["code"]`` the
  response code (``AUTHENTICATIONFAILED``) and ``meta["response"]`` the
  untagged response name (``EXISTS``, ``FETCH``...).
"""

from __future__ import annotations

import re
import time

from gponsim.commentary import annotate, catalog
from gponsim.steps import Step
from gponsim.wire.smtp import message_summary

_LITERAL = re.compile(rb"\{(\d{1,20})(\+?)\}$")
_CODE = re.compile(r"^\[([A-Za-z0-9.-]+)")
STATUS_WORDS = ("OK", "NO", "BAD", "BYE", "PREAUTH")
#: A line longer than this without CRLF is cut in the Step (the server has its own limit).
MAX_LINE = 65536


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _astring_span(text: str, start: int) -> tuple[int, int, int]:
    """(start, end, next) of the astring at ``start`` (atom, "quoted" or {n}\\n...)."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return i, i, i
    if text[i] == '"':
        j = i + 1
        while j < len(text):
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == '"':
                return i + 1, j, j + 1
            j += 1
        return i + 1, len(text), len(text)
    j = i
    while j < len(text) and text[j] != " ":
        j += 1
    return i, j, j


def _skip_arg(line: str, at: int) -> int:
    """Index after the argument starting at ``at`` (a literal is ``{n}\\nvalue``)."""
    while at < len(line) and line[at] == " ":
        at += 1
    if line[at:at + 1] == "{" and "\n" in line[at:]:
        nl = line.index("\n", at)
        end = line.find(" ", nl + 1)
        return len(line) if end < 0 else end
    return _astring_span(line, at)[2]


def _login_secret(line: str, at: int) -> tuple[int, int] | None:
    after_user = _skip_arg(line, at)
    i = after_user
    while i < len(line) and line[i] == " ":
        i += 1
    if i >= len(line):
        return None
    if line[i] == "{" and "\n" in line[i:]:
        return (line.index("\n", i) + 1, len(line))
    s, e, _ = _astring_span(line, i)
    return (s, e) if e > s else None


#: How much of a FETCH literal is read for its headers (From, Subject, Message-ID).
HEAD_KEEP = 16384


class _Command:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.literals: list[bytes] = []     # kept only when small
        self.tls = False


class ImapConversation:
    """Both directions of one IMAP connection, turned into Steps."""

    def __init__(self, session: str, *, client: str = "client", server: str = "imap",
                 tls: bool = False) -> None:
        self.session = session
        self.client = client
        self.server = server
        self.tls = tls
        self._cin = b""
        self._sin = b""
        self._c_literal = 0           # literal bytes still to come, client side
        self._c_plus = False          # ...as a non-synchronizing literal (LITERAL+)
        self._lit_size = 0
        self._s_literal = 0
        self._cmd: _Command | None = None
        self._lit_buf = bytearray()
        self._resp: list[str] = []
        self._resp_lit = 0
        self._resp_head = bytearray()     # the start of a FETCH literal (its header block)
        self._resp_meta: dict = {}        # From/Subject/Message-ID seen in this response's literals
        self.pending: dict[str, str] = {}   # tag -> verb
        self.last_verb = "CONNECT"
        self.auth_tag: str | None = None
        self.idle_tag: str | None = None

    # ------------------------------------------------------------- helpers

    def _step(self, src: str, dst: str, kind: str, line: str, **fields) -> Step:
        d = "c2s" if src == self.client else "s2c"
        step = Step(t=time.time(), session=self.session, proto="imap", src=src, dst=dst,
                    dir=d, kind=kind, line=line, tls=self.tls, **fields)
        if step.key is None or step.key not in catalog():
            step.key = None
        return annotate(step)

    # --------------------------------------------------------------- client

    def client_data(self, data: bytes) -> list[Step]:
        steps: list[Step] = []
        self._cin += data
        while self._cin:
            if self._c_literal:
                take = self._cin[:self._c_literal]
                self._cin = self._cin[len(take):]
                self._c_literal -= len(take)
                if len(self._lit_buf) < 1 << 16:
                    self._lit_buf += take[: (1 << 16) - len(self._lit_buf)]
                self._lit_size += len(take)
                if self._c_literal == 0:
                    self._end_literal()
                continue
            nl = self._cin.find(b"\n")
            if nl < 0:
                if len(self._cin) > MAX_LINE:
                    steps.extend(self._client_line(self._cin[:MAX_LINE]))
                    self._cin = b""
                return steps
            raw, self._cin = self._cin[:nl], self._cin[nl + 1:]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            steps.extend(self._client_line(raw))
        return steps

    def _end_literal(self) -> None:
        cmd = self._cmd
        data = bytes(self._lit_buf)
        size = self._lit_size
        verb = cmd.parts[0].split(" ")[1].upper() if cmd and len(cmd.parts[0].split(" ")) > 1 else ""
        if verb == "LOGIN" and size <= 1024:
            cmd.parts.append("\n" + _text(data))
            cmd.literals.append(data)
        elif verb == "APPEND":
            meta = message_summary(data)
            text = f"[message: {size} bytes, {meta['lines']} lines"
            text += f", Subject: {meta['subject']}]" if meta.get("subject") else "]"
            cmd.parts.append(text)
        else:
            if size <= 200 and all(32 <= b < 127 for b in data):
                cmd.parts.append("\n" + _text(data))
            else:
                cmd.parts.append(f"[literal: {size} bytes]")
        self._lit_buf = bytearray()

    def _client_line(self, raw: bytes) -> list[Step]:
        m = _LITERAL.search(raw)
        if self._cmd is None:
            if self.auth_tag is not None:
                line = _text(raw)
                secret = None if line.strip() == "*" else (0, len(line))
                return [self._step(self.client, self.server, "data", line, verb="AUTHENTICATE",
                                   tag=self.auth_tag, secret=secret)]
            if self.idle_tag is not None:
                line = _text(raw)
                self.idle_tag = None        # any line ends IDLE (DONE well, others with BAD)
                self.last_verb = "DONE"
                return [self._step(self.client, self.server, "command", line, verb="DONE",
                                   key="imap.cmd.DONE")]
            self._cmd = _Command()
        self._cmd.parts.append(_text(raw))
        if m:
            self._c_plus = bool(m.group(2))
            self._c_literal = int(m.group(1))
            self._lit_size = 0
            if self._c_literal == 0:
                self._end_literal()
            return []
        cmd, self._cmd = self._cmd, None
        return [self._command_step("".join(cmd.parts))]

    def _command_step(self, line: str) -> Step:
        words = line.split(" ", 3)
        tag = words[0] if words and words[0] else None
        verb = words[1].upper() if len(words) > 1 else ""
        rest_at = len(words[0]) + 1 + len(words[1]) + 1 if len(words) > 1 else len(line)
        if verb == "UID" and len(words) > 2:
            verb = "UID " + words[2].upper()
            rest_at += len(words[2]) + 1
        args = line[rest_at:] if rest_at < len(line) else ""
        secret = None
        if verb == "LOGIN":
            secret = _login_secret(line, rest_at)
        elif verb == "AUTHENTICATE":
            parts = args.split()
            if len(parts) >= 2 and parts[1] != "=":
                start = line.rfind(parts[1])
                secret = (start, start + len(parts[1]))
            self.auth_tag = tag
        elif verb == "IDLE":
            self.idle_tag = tag
        if tag:
            self.pending[tag] = verb
        self.last_verb = verb or "UNKNOWN"
        known = verb if re.fullmatch(r"[A-Z][A-Z0-9-]{0,19}( [A-Z]+)?", verb or "") else None
        key = f"imap.cmd.{known.replace(' ', '_')}" if known else None
        return self._step(self.client, self.server, "command", line, tag=tag, verb=known,
                          args=args or None, secret=secret, key=key)

    # --------------------------------------------------------------- server

    def server_data(self, data: bytes) -> list[Step]:
        steps: list[Step] = []
        self._sin += data
        while self._sin:
            if self._s_literal:
                take = self._sin[:self._s_literal]
                self._sin = self._sin[len(take):]
                self._s_literal -= len(take)
                if len(self._resp_head) < HEAD_KEEP:
                    self._resp_head += take[:HEAD_KEEP - len(self._resp_head)]
                if self._s_literal == 0:
                    self._resp.append(f"[literal: {self._resp_lit} bytes]")
                    self._message_headers()
                continue
            nl = self._sin.find(b"\n")
            if nl < 0:
                if len(self._sin) > MAX_LINE:
                    self._sin = self._sin[-MAX_LINE:]
                return steps
            raw, self._sin = self._sin[:nl], self._sin[nl + 1:]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if (self._cmd is not None and self._c_literal and not self._c_plus
                    and not self._resp and not raw.startswith(b"+")):
                # A synchronizing literal the server refused before it was sent:
                # the command ends here (the client will not send the bytes).
                tag = self._cmd.parts[0].split(" ", 1)[0]
                if raw.startswith(tag.encode("utf-8", "replace") + b" "):
                    cmd, self._cmd = self._cmd, None
                    self._c_literal = 0
                    self._lit_buf = bytearray()
                    steps.append(self._command_step("".join(cmd.parts)))
            self._resp.append(_text(raw))
            m = _LITERAL.search(raw)
            if m:
                self._s_literal = self._resp_lit = int(m.group(1))
                if self._s_literal == 0:
                    self._resp.append("[literal: 0 bytes]")
                continue
            line = "".join(self._resp)
            self._resp = []
            step = self._response_step(line)
            if self._resp_meta:
                # Which message a FETCH delivered (the line keeps only the literal's size).
                step.meta.update(self._resp_meta)
                self._resp_meta = {}
            steps.append(step)
        return steps

    def _message_headers(self) -> None:
        """A FETCH literal holding a message's header block: keep who, what and which
        message (From, Subject, Message-ID) for the Step, as an SMTP DATA Step does."""
        head, self._resp_head = bytes(self._resp_head), bytearray()
        if " FETCH (" not in self._resp[0] or not head:
            return
        summary = message_summary(head)
        for name in ("from", "subject", "message_id"):
            if name in summary and name not in self._resp_meta:
                self._resp_meta[name] = summary[name]

    def _response_step(self, line: str) -> Step:
        src, dst = self.server, self.client
        if line.startswith("+"):
            verb = self._current()
            return self._step(src, dst, "reply", line, status="+", verb=verb,
                              key=f"imap.reply.{verb.replace(' ', '_')}.+" if verb else "imap.cont")
        tag, _, rest = line.partition(" ")
        word, _, text = rest.partition(" ")
        meta: dict = {}
        if tag == "*":
            if word.isdigit():
                number = word
                name, _, tail = text.partition(" ")
                meta["response"] = name.upper()
                meta["number"] = int(number)
                key = f"imap.untagged.{name.upper()}"
                return self._step(src, dst, "reply", line, verb=self._current(), meta=meta,
                                  key=key, args=tail or None)
            status = word.upper() if word.upper() in STATUS_WORDS else None
            if status:
                code = _CODE.match(text)
                if code:
                    meta["code"] = code.group(1).upper()
                key = (f"imap.code.{meta['code']}" if "code" in meta
                       else f"imap.untagged.{status}")
                if self._current() == "CONNECT" and status in ("OK", "PREAUTH", "BYE"):
                    key = "imap.greeting"
                if status == "BYE":
                    key = "imap.untagged.BYE"
                return self._step(src, dst, "reply", line, status=status, verb=self._current(),
                                  meta=meta, key=key)
            meta["response"] = word.upper()
            return self._step(src, dst, "reply", line, verb=self._current(), meta=meta,
                              key=f"imap.untagged.{word.upper()}", args=text or None)
        status = word.upper()
        verb = self.pending.pop(tag, None)
        if tag == self.auth_tag:
            self.auth_tag = None
        if tag == self.idle_tag:
            self.idle_tag = None
        code = _CODE.match(text)
        if code:
            meta["code"] = code.group(1).upper()
        key = None
        if "code" in meta and status in ("NO", "BAD"):
            key = f"imap.code.{meta['code']}"
        elif verb and status in STATUS_WORDS:
            key = f"imap.reply.{verb.replace(' ', '_')}.{status}"
        return self._step(src, dst, "reply", line, tag=tag,
                          status=status if status in STATUS_WORDS else None,
                          verb=verb, meta=meta, key=key)

    def _current(self) -> str:
        if self.idle_tag is not None:
            return "IDLE"
        if self.pending:
            return next(reversed(self.pending.values())) or "UNKNOWN"
        return self.last_verb if self.last_verb == "CONNECT" else "NOTIFY"
