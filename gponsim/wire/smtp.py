"""SMTP's wire grammar as Steps: one place that turns lines into Steps.

The live smtpd, the scripted clients and the capture analyzer all build their
SMTP Steps here, so the same conversation gives the same Steps whatever
observed it.

- A command line → :func:`command_step` (verb, args, the AUTH secret masked).
- A (possibly multi-line) reply → :func:`reply_step` (code, enhanced status,
  the command it answers in ``verb``; lines joined with ``\\n``).
- A SASL response line after ``334`` → :func:`auth_data_step`.
- The message after ``354`` (or a BDAT chunk) → :func:`message_step`.

LMTP (RFC 2033) is SMTP's grammar with LHLO and one reply per recipient
after DATA: the same functions build its Steps with ``proto="lmtp"``.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache

from gponsim.commentary import annotate
from gponsim.steps import Step

#: Actors that play the SMTP (or LMTP) client role (the others answer).
CLIENT_SIDE = frozenset({"client", "smtp", "lmtp", "internet"})

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


def _step(session: str, src: str, dst: str, kind: str, line: str, *, tls: bool,
          t: float | None, proto: str = "smtp", **fields) -> Step:
    d = "c2s" if src in CLIENT_SIDE else "s2c"
    return annotate(Step(t=time.time() if t is None else t, session=session, proto=proto,
                         src=src, dst=dst, dir=d, kind=kind, line=line, tls=tls, **fields))


def split_command(line: str) -> tuple[str, str]:
    """(VERB, args) as Postfix sees them: first word upper-cased."""
    stripped = line.strip()
    if not stripped:
        return "", ""
    parts = stripped.split(None, 1)
    return parts[0].upper(), (parts[1] if len(parts) > 1 else "")


def command_step(line: str, *, session: str, src: str = "client", dst: str = "smtpd",
                 tls: bool = False, t: float | None = None, proto: str = "smtp") -> Step:
    verb, args = split_command(line)
    secret = None
    if verb == "AUTH":
        # AUTH <mech> <initial-response>: the response is a credential.
        m = re.match(r"\s*\S+\s+\S+\s+(\S+)", line)
        if m and m.group(1) != "=":
            secret = (m.start(1), m.end(1))
    known = _known_verb(verb)
    return _step(session, src, dst, "command", line, tls=tls, t=t, proto=proto, verb=known,
                 args=args or None, secret=secret)


@lru_cache(maxsize=1024)
def _known_verb(verb: str) -> str | None:
    """``verb`` if it looks like a command word (what a Step's ``verb`` may hold)."""
    return verb if re.fullmatch(r"[A-Z][A-Z0-9-]{0,19}", verb) else None


def auth_data_step(line: str, *, session: str, src: str = "client", dst: str = "smtpd",
                   tls: bool = False, t: float | None = None) -> Step:
    secret = None if line.strip() == "*" else (0, len(line))
    return _step(session, src, dst, "data", line, tls=tls, t=t, verb="AUTH", secret=secret)


def parse_reply(lines: list[str]) -> tuple[int | None, str | None, str]:
    """(code, enhanced, text of the last line) of a reply's lines."""
    if not lines:
        return None, None, ""
    return _parse_reply(lines[0], lines[-1])


@lru_cache(maxsize=4096)
def _parse_reply(first: str, last: str) -> tuple[int | None, str | None, str]:
    code = int(first[:3]) if first[:3].isdigit() else None
    text = last[4:]
    m = _ENHANCED.match(text) or _ENHANCED.match(first[4:])
    enhanced = ".".join(m.groups()) if m else None
    return code, enhanced, text


def reply_step(lines: list[str], *, session: str, answers: str | None, src: str = "smtpd",
               dst: str = "client", tls: bool = False, t: float | None = None,
               proto: str = "smtp") -> Step:
    code, enhanced, _ = parse_reply(lines)
    return _step(session, src, dst, "reply", "\n".join(lines), tls=tls, t=t, proto=proto,
                 verb=answers, code=code, enhanced=enhanced)


#: The headers a message's Step keeps; ``mailer``: the program that wrote it (the mail
#: client a diagram of a capture names), whichever of the two comes first. Besides
#: them, ``received`` counts the Received: headers (the servers it went through).
_SUMMARY_HEADERS = {b"from": "from", b"to": "to", b"subject": "subject", b"message-id": "message_id",
                    b"user-agent": "mailer", b"x-mailer": "mailer"}


def header_end(message: bytes) -> int:
    """Where the header section of a message ends (its blank line, LF or CRLF), or -1."""
    crlf = message.find(b"\n\r\n")
    if crlf < 0:
        return message.find(b"\n\n")
    lf = message.find(b"\n\n", 0, crlf + 1)     # only an earlier blank line can come first
    return lf if lf >= 0 else crlf


def message_summary(message: bytes) -> dict:
    """Size, line count and the headers a student looks at first.

    A light scan of the header block (unfolding continuation lines), not a
    full MIME parse: it runs for every message the lab receives.
    """
    meta: dict = {"size": len(message), "lines": message.count(b"\n")}
    end = header_end(message)
    block = message[:end if end >= 0 else 65536].replace(b"\r\n", b"\n")
    current = None
    for raw in block.split(b"\n"):
        if raw[:1] in (b" ", b"\t") and current:
            meta[current] += " " + raw.strip().decode("utf-8", "replace")
            continue
        name, sep, value = raw.partition(b":")
        if sep and name.strip().lower() == b"received":      # a server it went through
            meta["received"] = meta.get("received", 0) + 1
        current = _SUMMARY_HEADERS.get(name.strip().lower()) if sep else None
        if current and current not in meta:
            meta[current] = value.strip().decode("utf-8", "replace")
        elif current:
            current = None          # keep the first occurrence only
    for name in ("from", "to", "subject"):
        if "=?" in meta.get(name, ""):
            meta[name] = decoded_header(meta[name])
    return meta


def crlf_lines(message: bytes) -> list[bytes]:
    """The message's lines, without their ends (CRLF or LF); a last line without an
    end counts as a line (a client ends it with CRLF before the final dot)."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def dot_stuffed(message: bytes) -> bytes:
    """The message as it goes after 354: CRLF lines, leading dots doubled (RFC 5321
    §4.5.2), without the final ``.``."""
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n"
                    for ln in crlf_lines(message))


def wire_size(message: bytes) -> int:
    """The message's size on the wire as a server counts it: CRLF line ends, dot-stuffing
    undone (what BDAT would announce for it)."""
    return sum(len(ln) + 2 for ln in crlf_lines(message))


def decoded_header(value: str) -> str:
    """A header's encoded words (RFC 2047, ``=?utf-8?q?lecci=C3=B3n?=``) as the text they
    stand for, as a mail client shows it; ``value`` as it is when they cannot be decoded."""
    from email.errors import HeaderParseError
    from email.header import decode_header, make_header

    try:
        text = str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, ValueError):
        return value
    # (an encoded word may hide a line break or a control character: not in a Step's line)
    return "".join(c if c.isprintable() else " " for c in text)


def message_step(message: bytes, *, session: str, verb: str = "DATA", src: str = "client",
                 dst: str = "smtpd", tls: bool = False, t: float | None = None,
                 proto: str = "smtp", size: int | None = None) -> Step:
    """The message itself, summarised. ``size``: its size on the wire (CRLF line ends,
    dot-stuffing removed, as BDAT counts it) when ``message`` is kept otherwise (LF)."""
    meta = message_summary(message)
    if size is not None:
        meta["size"] = size
    subject = meta.get("subject")
    line = f"[message: {meta['size']} bytes, {meta['lines']} lines"
    line += f", Subject: {subject}]" if subject else "]"
    return _step(session, src, dst, "data", line, tls=tls, t=t, proto=proto, verb=verb, meta=meta)


def event_step(verb: str, line: str, *, session: str, src: str = "client", dst: str = "smtpd",
               tls: bool = False, t: float | None = None, meta: dict | None = None,
               proto: str = "smtp") -> Step:
    step = Step(t=time.time() if t is None else t, session=session, proto=proto, src=src,
                dst=dst, dir="internal" if proto != "tls" else "c2s",
                kind="handshake" if proto == "tls" else "event", line=line, verb=verb,
                tls=tls, meta=meta or {})
    return annotate(step)
