"""Wire grammar of the Dovecot auth protocol (what Postfix and Dovecot say).

One command per line, ended by a bare LF; fields separated by TAB::

    AUTH\\t1\\tPLAIN\\tservice=smtp\\tnologin\\tlip=...\\trip=...\\tresp=<base64>

Values are tab-escaped with 0x01 (``src/lib/strescape.c``). :func:`sasl_step`
turns one line into a :class:`~gponsim.steps.Step`, the common currency of
every gponsim source and sink.
"""

from __future__ import annotations

import time

from gponsim.commentary import annotate, catalog
from gponsim.steps import MASK, Step

#: Longest line either side accepts (``src/lib-auth/auth-client-interface.h``).
MAX_LINE = 16384

#: Lines exchanged while the connection is being set up.
HANDSHAKE = frozenset({"VERSION", "CPID", "MECH", "SPID", "CUID", "COOKIE", "DONE"})
#: How many leading fields after the command word are positional.
_POSITIONAL = {
    "VERSION": 2, "CPID": 1, "MECH": 1, "SPID": 1, "CUID": 1, "COOKIE": 1,
    "DONE": 0, "AUTH": 2, "CONT": 2, "OK": 1, "FAIL": 1, "CANCEL": 1,
}
_REPLY_STATUS = frozenset({"OK", "FAIL", "CONT"})

_ESCAPES = {"\x00": "\x010", "\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_UNESCAPES = {"0": "\x00", "1": "\x01", "t": "\t", "r": "\r", "n": "\n", "l": "\n"}


def escape(value: str) -> str:
    """Tab-escape a field value (0x01 + code)."""
    if not any(c in value for c in _ESCAPES):
        return value
    return "".join(_ESCAPES.get(c, c) for c in value)


def unescape(value: str) -> str:
    """Undo :func:`escape`; both ``n`` and ``l`` decode to LF."""
    if "\x01" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for c in chars:
        if c != "\x01":
            out.append(c)
            continue
        nxt = next(chars, None)
        if nxt is None:          # a lone 0x01 at the end is dropped
            break
        out.append(_UNESCAPES.get(nxt, nxt))
    return "".join(out)


def decode_line(raw: bytes) -> str:
    """Bytes of one line (without LF) as text; a trailing CR is dropped."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "replace")


def parse(line: str) -> tuple[str, list[str], dict[str, str], list[str]]:
    """Split a line into ``(command, positional args, name=value params, flags)``.

    ``AUTH\\t1\\tPLAIN\\tservice=smtp\\tnologin\\tresp=AGEAYg==`` gives
    ``("AUTH", ["1", "PLAIN"], {"service": "smtp", "resp": "AGEAYg=="}, ["nologin"])``.
    Values are unescaped. Fields of an unknown command are all positional
    unless they hold ``=``.
    """
    fields = line.split("\t")
    cmd = fields[0]
    rest = fields[1:]
    npos = _POSITIONAL.get(cmd)
    if npos is None:
        npos = 0
        while npos < len(rest) and "=" not in rest[npos]:
            npos += 1
    args = [unescape(f) for f in rest[:npos]]
    params: dict[str, str] = {}
    flags: list[str] = []
    for f in rest[npos:]:
        name, sep, value = f.partition("=")
        if sep:
            params[unescape(name)] = unescape(value)
        else:
            flags.append(unescape(f))
    return cmd, args, params, flags


def secret_span(line: str, direction: str) -> tuple[int, int] | None:
    """The ``(start, end)`` of the credential in ``line``, if it carries one.

    That is the value of ``resp=`` in AUTH, and the base64 payload of a
    client's CONT (the answer to a challenge: user name or password).
    """
    fields = line.split("\t")
    cmd = fields[0]
    if cmd == "AUTH":
        pos = len(cmd) + 1
        for f in fields[1:]:
            if f.startswith("resp=") and len(f) > 5:
                return (pos + 5, pos + len(f))
            pos += len(f) + 1
        return None
    if cmd == "CONT" and direction == "c2s" and len(fields) >= 3:
        start = len(fields[0]) + len(fields[1]) + 2
        if start < len(line):
            return (start, len(line))
    return None


#: Dovecot's login processes, clients of the auth server besides Postfix's smtpd.
LOGIN_ACTORS = ("imap", "pop3")


def _kind(cmd: str, direction: str) -> str:
    if cmd in HANDSHAKE:
        return "handshake"
    return "command" if direction == "c2s" else "reply"


def sasl_step(line: str, *, direction: str, session: str, src: str, dst: str,
              t: float | None = None) -> Step:
    """One Dovecot-auth line as a Step (commentary key resolved).

    ``direction`` is ``c2s`` for lines the client (Postfix smtpd) sends to
    the auth server, ``s2c`` for the server's lines.
    """
    cmd, args, params, flags = parse(line)
    kind = _kind(cmd, direction)
    secret = secret_span(line, direction)
    rest = line[len(cmd) + 1:] if len(line) > len(cmd) else ""
    meta: dict = {}
    if secret is not None:
        start, end = secret[0] - len(cmd) - 1, secret[1] - len(cmd) - 1
        rest = rest[:start] + MASK + rest[end:]
        if "resp" in params:
            params["resp"] = MASK
        elif cmd == "CONT" and len(args) > 1:
            args[1] = MASK
    if args:
        meta["args"] = args
    if params:
        meta["params"] = params
    if flags:
        meta["flags"] = flags
    status = cmd if kind == "reply" and cmd in _REPLY_STATUS else None
    step = annotate(Step(
        t=time.time() if t is None else t,
        session=session, proto="sasl", src=src, dst=dst, dir=direction,
        kind=kind, line=line, verb=cmd or None, args=rest or None,
        status=status, secret=secret, meta=meta,
    ))
    if kind == "reply" and dst in LOGIN_ACTORS:
        # The auth server answering Dovecot's imap-login / pop3-login, not
        # Postfix: their own texts (sasl.reply.OK.imap...), except for the
        # protocol errors that have a specific explanation whoever asked.
        alt = f"sasl.reply.{cmd}.{dst}"
        entry = catalog().get(step.key, line) if step.key else None
        if alt in catalog() and (cmd != "FAIL" or entry is None or not entry.match):
            step.key = alt
    return step
