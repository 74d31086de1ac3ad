"""A message's preview (RFC 8970 PREVIEW, Dovecot's SNIPPET=FUZZY), as Dovecot
makes it (``src/lib-mail/message-snippet.c``).

The text of the first MIME part that is text (``text/*``, or no
Content-Type), decoded to UTF-8: ``text/html`` turned to text (tags dropped,
entities decoded, ``<style>``, ``<script>`` and ``<blockquote>`` skipped); no
text part gives an empty preview. Lines that start with ``>`` (quoted text) are
skipped; every run of white space becomes one space; at most 200
characters.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
from html.parser import HTMLParser

MAX_CHARS = 200


class _Text(HTMLParser):
    """HTML to text, as Dovecot's mail-html2text does it for snippets."""

    SKIP = {"script", "style"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.quote = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "blockquote":
            self.quote += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.out.append(" ")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        elif tag == "blockquote" and self.quote:
            self.quote -= 1
        elif tag in ("p", "div", "tr", "li", "td"):
            self.out.append(" ")

    def handle_data(self, data):
        if not self.skip and not self.quote:
            self.out.append(data)


def _first_text(msg: email.message.Message) -> email.message.Message | None:
    """The first part without parts of its own that is text (in MIME order)."""
    for part in msg.walk():
        if part.is_multipart():
            continue
        if not part.get("Content-Type") or part.get_content_maintype() == "text":
            return part
    return None


def _decoded(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def preview(raw: bytes, max_chars: int = MAX_CHARS) -> str:
    """The preview text of a message (``raw``: the whole message)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    part = _first_text(msg)
    if part is None:
        return ""
    ctype = part.get_content_type() if part.get("Content-Type") else "text/plain"
    text = _decoded(part)
    is_html = ctype == "text/html"
    if is_html:
        parser = _Text()
        parser.feed(text)
        parser.close()
        text = html.unescape("".join(parser.out))
    out: list[str] = []
    left = max_chars
    pending_space = False
    state = "newline"
    for ch in text:
        if state == "quoted":
            if ch == "\n":
                state = "newline"
            continue
        if state == "newline":
            if ch == ">" and not is_html:
                state = "quoted"
                continue
            state = "normal"
        if ch in "\r\n\t ":
            pending_space = True
            if ch == "\n":
                state = "newline"
            continue
        if pending_space:
            pending_space = False
            if out:                         # no space before the first character
                if left == 0:
                    break
                out.append(" ")
                left -= 1
        if left == 0:
            break
        out.append(ch)
        left -= 1
    return "".join(out).rstrip(" ")


_ATOM_SAFE = re.compile(r"^[\x20-\x7e]*$")


def imap_string(text: str) -> bytes:
    """``"text"`` when it can be quoted, else a literal ``{n}\\r\\n...``
    (Dovecot's imap_append_string)."""
    if _ATOM_SAFE.match(text) and '"' not in text and "\\" not in text:
        return b'"' + text.encode("ascii") + b'"'
    data = text.encode("utf-8")
    return b"{%d}\r\n" % len(data) + data
