"""IMAP SORT and THREAD (RFC 5256, SORT=DISPLAY of RFC 5957) over the lab's messages.

Pure functions on ``(number, StoredMessage)`` pairs, where the number is what
the reply lists (sequence number, or UID for ``UID SORT`` / ``UID THREAD``):

- :func:`base_subject`: RFC 5256 §2.1, the subject without ``Re:``,
  ``Fwd:``, ``[list]`` blobs and ``(fwd)`` trailers, for sorting and threading;
- :func:`sort`: the SORT keys ARRIVAL CC DATE FROM SIZE SUBJECT TO (and
  DISPLAYFROM DISPLAYTO), each may be preceded by REVERSE; ties are broken by
  mailbox order;
- :func:`thread_orderedsubject` and :func:`thread_references`: the two
  threading algorithms, returning nested lists that :func:`format_threads`
  writes as ``(1 2 (3)(4 5))``.

Strings are compared with the ``i;unicode-casemap`` comparator as Dovecot
does: upper-cased and decomposed. ``tests/test_dovecot_interop.py`` runs the
same commands against Dovecot's own imap binary.
"""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import email.utils
import re
import unicodedata
from dataclasses import dataclass, field

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES", "REFS")

_parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
_MSGID = re.compile(r"<([^<>\s]+)>")


class SortError(ValueError):
    """A SORT or THREAD argument that is not understood."""


# --------------------------------------------------------------------------
# Header values

def _decoded(value) -> str:
    """An unstructured header as text: RFC 2047 encoded words decoded."""
    if value is None:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        return str(value)


def _casemap(text: str) -> str:
    """i;unicode-casemap as Dovecot does it: upper (title) case, decomposed
    (Á is A + U+0301), compared code point by code point."""
    return unicodedata.normalize("NFKD", text.upper())


@dataclass
class Info:
    """What sorting and threading read of one message."""

    number: int
    order: int                      # position in the mailbox (tie breaker)
    arrival: float
    size: int
    subject: str
    sent: float
    from_: list = field(default_factory=list)     # [(display name, address)]
    to: list = field(default_factory=list)
    cc: list = field(default_factory=list)
    message_id: str | None = None
    references: list = field(default_factory=list)


def info(number: int, order: int, msg) -> Info:
    headers = _parser.parsebytes(msg.headers)
    arrival = msg.internal_date
    sent = arrival
    date = headers.get("Date")
    if date:
        try:
            parsed = email.utils.parsedate_to_datetime(str(date))
            if parsed.tzinfo is not None:
                sent = parsed.timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass

    def addresses(name: str) -> list:
        values = [_decoded(v) for v in headers.get_all(name) or []]
        return [(n, a) for n, a in email.utils.getaddresses(values) if n or a]

    ids = _MSGID.findall(str(headers.get("Message-ID") or ""))
    refs = _MSGID.findall(" ".join(str(v) for v in headers.get_all("References") or []))
    if not refs:
        reply = _MSGID.findall(str(headers.get("In-Reply-To") or ""))
        refs = reply[:1]
    return Info(number=number, order=order, arrival=arrival, size=msg.size,
                subject=_decoded(headers.get("Subject")), sent=sent,
                from_=addresses("From"), to=addresses("To"), cc=addresses("Cc"),
                message_id=ids[0] if ids else None, references=refs)


# --------------------------------------------------------------------------
# RFC 5256 §2.1: the base subject

_TRAILER = re.compile(r"(\s*\(fwd\))+\s*$|\s+$", re.I)
_BLOB = r"\[[^\[\]]*\]\s*"
_LEADER = re.compile(r"^\s*(?:" + _BLOB + r")*(?:re|fwd?)\s*(?:" + _BLOB + r")?:\s*", re.I)
_LEADING_BLOB = re.compile(r"^\s*" + _BLOB)


def base_subject(subject: str) -> tuple[str, bool]:
    """(base subject upper-cased, whether it was a reply or forward)."""
    text = re.sub(r"[ \t\r\n]+", " ", subject)
    is_reply = False
    while True:
        # (2) remove trailers: "(fwd)" and white space at the end
        stripped = _TRAILER.sub("", text)
        if stripped != text:
            text = stripped
            if "(fwd)" in subject.lower():
                is_reply = True
        # (3)-(4) remove leaders "Re:", "Fwd:", "[blob] Re:", and a leading
        # "[blob]" when something is left after it; until nothing changes
        while True:
            before = text
            m = _LEADER.match(text)
            if m:
                text = text[m.end():]
                is_reply = True
            m = _LEADING_BLOB.match(text)
            if m and text[m.end():].strip():
                text = text[m.end():]
            text = text.lstrip(" ")
            if text == before:
                break
        # (5) "[fwd: ...]" wrapper
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            is_reply = True
            continue
        break
    return _casemap(text.strip(" ")), is_reply


# --------------------------------------------------------------------------
# SORT

def parse_sort_criteria(words: list) -> list[tuple[str, bool]]:
    """``["REVERSE", "DATE", "SUBJECT"]`` → ``[("DATE", True), ("SUBJECT", False)]``."""
    out, reverse = [], False
    for word in words:
        if isinstance(word, list):
            raise SortError("Invalid sort criteria")
        key = str(word).upper()
        if key == "REVERSE":
            if reverse:
                raise SortError("Invalid sort criteria: REVERSE REVERSE")
            reverse = True
            continue
        if key not in SORT_KEYS:
            raise SortError(f"Unknown sort argument: {word}")
        out.append((key, reverse))
        reverse = False
    if reverse or not out:
        raise SortError("Missing sort criteria")
    return out


def _mailbox(addresses: list) -> str:
    if not addresses:
        return ""
    return _casemap(addresses[0][1].split("@")[0])


def _display(addresses: list) -> str:
    if not addresses:
        return ""
    name, addr = addresses[0]
    return _casemap(name or addr)


def _key(item: Info, key: str):
    if key == "ARRIVAL":
        return item.arrival
    if key == "DATE":
        return item.sent
    if key == "SIZE":
        return item.size
    if key == "SUBJECT":
        return base_subject(item.subject)[0]
    if key == "FROM":
        return _mailbox(item.from_)
    if key == "TO":
        return _mailbox(item.to)
    if key == "CC":
        return _mailbox(item.cc)
    if key == "DISPLAYFROM":
        return _display(item.from_)
    return _display(item.to)


def sort(items: list[Info], criteria: list[tuple[str, bool]]) -> list[int]:
    """The numbers of ``items`` in SORT order."""
    ordered = sorted(items, key=lambda i: i.order)          # the final tie breaker
    for key, reverse in reversed(criteria):                 # stable: least significant first
        ordered.sort(key=lambda i, k=key: _key(i, k), reverse=reverse)
    return [i.number for i in ordered]


# --------------------------------------------------------------------------
# THREAD

def _by_date(item: Info):
    return (item.sent, item.order)


def thread_orderedsubject(items: list[Info]) -> list:
    """RFC 5256 ORDEREDSUBJECT: messages grouped by base subject; the first
    (by sent date) is the parent, the others its children in date order;
    threads in the order of their first message's date."""
    groups: dict[str, list[Info]] = {}
    for item in sorted(items, key=lambda i: (base_subject(i.subject)[0],) + _by_date(i)):
        groups.setdefault(base_subject(item.subject)[0], []).append(item)
    threads = sorted(groups.values(), key=lambda g: _by_date(g[0]))
    return [[_Node(g[0], [_Node(c) for c in g[1:]])] for g in threads]


class _Node:
    """A thread tree node; ``item`` is None for a dummy (a referenced message
    that is not in the mailbox)."""

    def __init__(self, item: Info | None = None, children=None) -> None:
        self.item = item
        self.children: list[_Node] = list(children or [])
        self.parent: _Node | None = None

    def date_key(self):
        if self.item is not None:
            return _by_date(self.item)
        return self.children[0].date_key() if self.children else (0.0, 0)

    def is_ancestor_of(self, other: "_Node") -> bool:
        node = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def subject_item(self) -> Info | None:
        if self.item is not None:
            return self.item
        return self.children[0].item if self.children else None


def _link(parent: _Node, child: _Node) -> None:
    if child.parent is parent:
        return
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _unlink(child: _Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def thread_refs(items: list[Info]) -> list:
    """Dovecot's THREAD=REFS: REFERENCES without merging threads by subject,
    each thread's messages ordered by sent date, and the threads ordered by
    their newest message (the thread with the latest activity comes last)."""
    roots = thread_references(items, by_subject=False)

    def newest(node: _Node):
        keys = [newest(child) for child in node.children]
        if node.item is not None:
            keys.append(_by_date(node.item))
        return max(keys) if keys else (0.0, 0)
    roots.sort(key=newest)
    return roots


def thread_references(items: list[Info], by_subject: bool = True) -> list:
    """RFC 5256 REFERENCES (Jamie Zawinski's algorithm)."""
    table: dict[str, _Node] = {}
    unique = 0
    # (1) containers, linked by References (or In-Reply-To)
    for item in sorted(items, key=lambda i: i.order):
        mid = item.message_id
        node = table.get(mid) if mid else None
        if node is None or node.item is not None:       # missing or duplicate Message-ID
            if node is not None or mid is None:
                unique += 1
                mid = f"\0unique-{unique}"
            node = _Node(item)
            table[mid] = node
        else:
            node.item = item
        previous: _Node | None = None
        for ref in item.references:
            ref_node = table.get(ref)
            if ref_node is None:
                ref_node = table[ref] = _Node()
            if (previous is not None and ref_node.parent is None
                    and not ref_node.is_ancestor_of(previous)):
                _link(previous, ref_node)
            previous = ref_node
        if previous is not None and previous is not node and not node.is_ancestor_of(previous):
            _link(previous, node)
        elif previous is None or previous is node:
            _unlink(node)
    # (2) the root set
    roots = [n for n in table.values() if n.parent is None]
    # (4) prune dummies
    roots = _prune(roots, is_root=True)
    for node in roots:
        node.parent = None
    # (4) sort the root set by sent date (a dummy: by its first child)
    for node in roots:
        if node.item is None:
            node.children.sort(key=lambda n: n.date_key())
    roots.sort(key=lambda n: n.date_key())
    # (5) gather threads whose roots have the same base subject
    subjects: dict[str, _Node] = {}
    for node in (roots if by_subject else []):
        item = node.subject_item()
        base, reply = base_subject(item.subject) if item else ("", False)
        if not base:
            continue
        old = subjects.get(base)
        if (old is None or (node.item is None and old.item is not None)
                or (base_subject(old.subject_item().subject)[1] and not reply)):
            subjects[base] = node
    for node in (roots if by_subject else []):
        if node.parent is not None:
            continue                                   # already merged under another
        item = node.subject_item()
        base, reply = base_subject(item.subject) if item else ("", False)
        other = subjects.get(base) if base else None
        if other is None or other is node:
            continue
        other_reply = base_subject(other.subject_item().subject)[1]
        if other.item is None and node.item is None:
            for child in list(node.children):
                _link(other, child)                    # node is left empty: dropped below
        elif other.item is None:
            _link(other, node)
        elif reply and not other_reply:
            _link(other, node)
        else:
            dummy = _Node()
            _link(dummy, other)
            _link(dummy, node)
            subjects[base] = dummy
    tops: list[_Node] = []
    for node in roots:
        while node.parent is not None:
            node = node.parent
        if node not in tops and (node.item is not None or node.children):
            tops.append(node)
    roots = tops
    # (6) sort siblings by sent date, depth first; then the threads
    for node in roots:
        _sort_tree(node)
    roots.sort(key=lambda n: n.date_key())
    return roots


def _prune(nodes: list[_Node], is_root: bool) -> list[_Node]:
    out: list[_Node] = []
    for node in nodes:
        node.children = _prune(node.children, is_root=False)
        for child in node.children:
            child.parent = node
        if node.item is None:
            if not node.children:
                continue                                   # an empty dummy: gone
            if not is_root or len(node.children) == 1:
                out.extend(node.children)                  # children promoted
                continue
        out.append(node)
    return out


def _sort_tree(node: _Node) -> None:
    for child in node.children:
        _sort_tree(child)
    node.children.sort(key=lambda n: n.date_key())


def format_threads(roots: list) -> str:
    """The ``* THREAD`` data: ``(1 2 (3)(4 5))``."""
    out = []
    for root in roots:
        node = root[0] if isinstance(root, list) else root
        out.append("(" + _format(node) + ")")
    return "".join(out)


def _format(node: _Node) -> str:
    parts = []
    if node.item is not None:
        parts.append(str(node.item.number))
    children = node.children
    while len(children) == 1 and (node.item is not None or parts):
        node = children[0]
        if node.item is not None:
            parts.append(str(node.item.number))
        children = node.children
    text = " ".join(parts)
    if children:
        sub = "".join("(" + _format(c) + ")" for c in children)
        text = f"{text} {sub}" if text else sub
    return text
