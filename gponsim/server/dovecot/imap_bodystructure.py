"""IMAP BODY and BODYSTRUCTURE (RFC 3501 §7.4.2) as Dovecot writes them.

Twisted's builder gets a few things differently from Dovecot (no defaults
for a message without Content-Type, parameter values lower-cased, a space
between the parts of a multipart, one line too many in a part's line count),
so the lab builds its own from the message bytes:

- a part without Content-Type is ``"text" "plain" ("charset" "us-ascii")``,
  without Content-Transfer-Encoding ``"7bit"``;
- sizes are bytes of the part's body as sent (CRLF line ends), lines the
  number of line feeds in it (text parts and message/rfc822);
- BODYSTRUCTURE adds the extension data: MD5, disposition, language and
  location for a leaf, parameters, disposition, language, location for a
  multipart.

``tests/test_dovecot_interop.py`` compares the result with Dovecot's own.
"""

from __future__ import annotations

import email
import email.policy
from email.message import Message

from twisted.mail import imap4


def _q(value) -> str:
    if value is None:
        return "NIL"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(items) -> str:
    return "(" + " ".join(items) + ")"


def _raw(part: Message) -> bytes:
    # The stored payload, not get_payload(): that one re-decodes 8-bit text
    # with the part's charset; this is the bytes as sent (surrogate-escaped).
    payload = part._payload
    if isinstance(payload, list) or payload is None:
        return b""
    return payload.encode("ascii", "surrogateescape") if isinstance(payload, str) else payload


def _params(part: Message, header: str = "content-type"):
    """The header's parameters as ("name" "value" ...), or NIL."""
    params = part.get_params(header=header, unquote=True)
    if not params:
        return "NIL"
    out = []
    for name, value in params[1:]:
        if isinstance(value, tuple):                  # RFC 2231
            value = email.utils.collapse_rfc2231_value(value)
        out += [_q(name.lower()), _q(value)]
    return _list(out) if out else "NIL"


def _disposition(part: Message) -> str:
    value = part.get("Content-Disposition")
    if value is None:
        return "NIL"
    kind = str(value).split(";", 1)[0].strip()
    return _list([_q(kind), _params(part, "content-disposition")])


def _language(part: Message) -> str:
    value = part.get("Content-Language")
    if value is None:
        return "NIL"
    langs = [v.strip() for v in str(value).split(",") if v.strip()]
    if len(langs) == 1:
        return _q(langs[0])
    return _list([_q(v) for v in langs]) if langs else "NIL"


def _opt(part: Message, name: str) -> str:
    value = part.get(name)
    return "NIL" if value is None else _q(str(value).strip())


def _is_message(part: Message) -> bool:
    return part.get_content_type() == "message/rfc822" and part.get("Content-Type") is not None


def structure(part: Message, extended: bool) -> str:
    if part.is_multipart() and not _is_message(part):
        subs = "".join(structure(p, extended) for p in part.get_payload())
        text = f"{subs} {_q(part.get_content_subtype())}"
        if extended:
            text += f" {_params(part)} {_disposition(part)} {_language(part)} " \
                    f"{_opt(part, 'Content-Location')}"
        return "(" + text + ")"
    if part.get("Content-Type") is None:
        maintype, subtype, params = "text", "plain", '("charset" "us-ascii")'
    else:
        maintype, subtype = part.get_content_maintype(), part.get_content_subtype()
        params = _params(part)
        if maintype == "text" and part.get_param("charset") is None:
            # Dovecot adds the default charset of a text part.
            params = (params[:-1] + ' "charset" "us-ascii")' if params != "NIL"
                      else '("charset" "us-ascii")')
    encoding = str(part.get("Content-Transfer-Encoding", "7bit")).strip() or "7bit"
    if _is_message(part):
        inner = part.get_payload(0)
        body = inner.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))
    else:
        body = _raw(part)
    fields = [_q(maintype), _q(subtype), params, _opt(part, "Content-ID"),
              _opt(part, "Content-Description"), _q(encoding), str(len(body))]
    if maintype.lower() == "message" and subtype.lower() == "rfc822":
        from gponsim.server.dovecot.imap import _Part      # Twisted's ENVELOPE builder
        envelope = imap4.collapseNestedLists([imap4.getEnvelope(_Part(inner, body))]).decode()
        fields += [envelope, structure(inner, extended), str(body.count(b"\n"))]
    elif maintype.lower() == "text":
        fields.append(str(body.count(b"\n")))
    if extended:
        fields += [_opt(part, "Content-MD5"), _disposition(part), _language(part),
                   _opt(part, "Content-Location")]
    return _list(fields)


def bodystructure(wire: bytes, extended: bool = True) -> bytes:
    """``BODYSTRUCTURE (...)`` (or, ``extended=False``, ``BODY (...)``) for a message."""
    msg = email.message_from_bytes(wire, policy=email.policy.compat32)
    if not msg.is_multipart() and msg.get_content_maintype() == "multipart":
        pass                                              # a broken multipart: as a leaf
    return structure(msg, extended).encode("utf-8", "surrogateescape")
