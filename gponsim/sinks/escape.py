"""What crossed the wire, fit for a terminal: bytes that are not text shown escaped.

A Step's ``line`` keeps every byte as it came (bytes that were not UTF-8 as the
surrogates ``\\udc80``-``\\udcff``, as the lab decodes them). On a terminal, a
control byte would act (ESC starts a colour or moves the cursor, a form feed or
NUL garbles the screen) and a surrogate cannot be written at all, so the
terminal sinks show them as tshark does: ``\\x1b``, ``\\r``, ``\\x00``, ``\\xe4``.
JSON keeps the line as it is.
"""

from __future__ import annotations

import re

#: C0 controls but TAB and LF (a TAB is shown as ␉, LF joins a reply's lines), DEL, C1
#: controls, undecodable bytes, the line and paragraph separators, bidirectional overrides.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\udc80-\udcff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\r": "\\r", "\x0b": "\\v", "\x0c": "\\f"}


def _escape(m: re.Match) -> str:
    c = m.group(0)
    named = _NAMED.get(c)
    if named is not None:
        return named
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:          # a byte that was not UTF-8: the byte itself
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every unprintable character escaped (``\\x1b``, ``\\r``, ``\\xe4``)."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def visible_all(text: str) -> str:
    """``visible``, newlines and TABs escaped too: for a one-line field (a summary's)."""
    return visible(text).replace("\n", "\\n").replace("\t", "\\t")
