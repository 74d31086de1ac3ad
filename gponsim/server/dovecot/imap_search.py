"""SEARCH criteria (RFC 3501 §6.4.4, RFC 5032 WITHIN): compiled once, without recursion.

A client may nest criteria as deep as its 64 KB command line allows:
``(((...ALL...)))``, ``NOT NOT ... ALL``, ``OR ALL OR ALL ...``; Dovecot
answers them all (checked against Dovecot 2.3.19: 5,000 levels of each). A
recursive evaluator ran out of Python's stack (``RecursionError``) and
re-parsed the criteria for every message. Here the criteria are parsed once,
with an explicit stack, into a postfix program (each key a predicate, then
``not``, ``or``, ``and`` of n), folded where the answer is known (``NOT NOT x``
is x, ``OR ALL x`` and ``((ALL))`` are ALL, ALL drops out of an AND), and run
for each message with a stack of booleans.

Parse errors are Dovecot's texts (``Missing argument``, ``Unknown argument
FOO``, ``Missing parameter for search key (for search key: FROM)``...), raised
before any message is looked at.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
import time
from dataclasses import dataclass
from typing import Callable

from twisted.mail.imap4 import IllegalClientResponse

from gponsim.server.mailstore.interface import DELETED, SEEN, Message

_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
              "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}
_HEADER_KEYS = {"FROM", "TO", "CC", "BCC", "SUBJECT"}
_SEQUENCE = re.compile(r"[0-9*:,]+")


@dataclass
class Context:
    """What a predicate may look at besides the message."""

    count: int                   # messages in the view (``*`` of a sequence set)
    last_uid: int                # ``*`` of a UID set
    recent: set                  # UIDs still \\Recent for this session
    now: float
    saved: frozenset = frozenset()   # SEARCHRES (RFC 5182): the UIDs "$" stands for


#: A predicate: (sequence number, message, context) -> bool.
Predicate = Callable[[int, Message, Context], bool]

_TRUE = ("const", True)
_FALSE = ("const", False)


def _simple(key: str) -> Predicate | None:
    flags = {
        "ANSWERED": lambda m: "\\Answered" in m.flags, "DELETED": lambda m: DELETED in m.flags,
        "DRAFT": lambda m: "\\Draft" in m.flags, "FLAGGED": lambda m: "\\Flagged" in m.flags,
        "SEEN": lambda m: SEEN in m.flags,
        "UNANSWERED": lambda m: "\\Answered" not in m.flags,
        "UNDELETED": lambda m: DELETED not in m.flags,
        "UNDRAFT": lambda m: "\\Draft" not in m.flags,
        "UNFLAGGED": lambda m: "\\Flagged" not in m.flags,
        "UNSEEN": lambda m: SEEN not in m.flags,
    }.get(key)
    if flags is not None:
        return lambda seq, m, ctx: flags(m)
    if key == "RECENT":
        return lambda seq, m, ctx: m.uid in ctx.recent
    if key == "OLD":
        return lambda seq, m, ctx: m.uid not in ctx.recent
    if key == "NEW":
        return lambda seq, m, ctx: m.uid in ctx.recent and SEEN not in m.flags
    return None


class _Tokens:
    """One parenthesized list being read."""

    __slots__ = ("items", "pos", "keys", "start")

    def __init__(self, items: list, start: int) -> None:
        self.items, self.pos, self.keys, self.start = items, 0, [], start

    def more(self) -> bool:
        return self.pos < len(self.items)

    def take(self):
        item = self.items[self.pos]
        self.pos += 1
        return item


def _string(tokens: _Tokens, key: str) -> str:
    if not tokens.more():
        raise IllegalClientResponse(f"Missing parameter for search key (for search key: {key})")
    value = tokens.take()
    if isinstance(value, list):
        raise IllegalClientResponse(f"Unexpected ( (for search key: {key})")
    return value


def _predicate(key: str, tokens: _Tokens) -> tuple:
    """The program item for one search key (its arguments read from ``tokens``)."""
    from gponsim.server.dovecot.imap import (   # the message helpers IMAP shares
        _header_contains, _search_date, in_set, parse_set)

    k = key.upper()
    if k == "ALL":
        return _TRUE
    simple = _simple(k)
    if simple is not None:
        return ("pred", simple)
    if k == "$":                                 # SEARCHRES: the saved result
        return ("pred", lambda seq, m, ctx: m.uid in ctx.saved)
    if k == "SAVEDATESUPPORTED":                 # RFC 8514: mbox keeps no save dates
        return _FALSE
    if k in ("YOUNGER", "OLDER"):
        text = _string(tokens, k)
        if not text.isdigit():
            raise IllegalClientResponse("Invalid search interval parameter")
        limit = int(text)
        if k == "YOUNGER":
            return ("pred", lambda seq, m, ctx: (ctx.now or time.time()) - m.internal_date <= limit)
        return ("pred", lambda seq, m, ctx: (ctx.now or time.time()) - m.internal_date > limit)
    if k == "UID":
        text = _string(tokens, k)
        if text == "$":
            return ("pred", lambda seq, m, ctx: m.uid in ctx.saved)
        if not _SEQUENCE.fullmatch(text):
            raise IllegalClientResponse("Invalid UID messageset")
        parse_set(text, 1)                       # checked now, resolved per mailbox
        return ("pred", lambda seq, m, ctx: in_set(m.uid, parse_set(text, ctx.last_uid)))
    if k in ("KEYWORD", "UNKEYWORD"):
        word = _string(tokens, k)
        # the third item names the keyword: a search registers it (SearchProgram.keywords)
        if k == "KEYWORD":
            return ("pred", lambda seq, m, ctx: word in m.keywords, (word, False))
        return ("pred", lambda seq, m, ctx: word not in m.keywords, (word, True))
    if k in ("LARGER", "SMALLER"):
        text = _string(tokens, k)
        if not text.isdigit():
            raise IllegalClientResponse("Invalid search size parameter")
        n = int(text)
        if k == "LARGER":
            return ("pred", lambda seq, m, ctx: m.size > n)
        return ("pred", lambda seq, m, ctx: m.size < n)
    if k in _HEADER_KEYS:
        needle = _string(tokens, k)
        name = k.lower()
        return ("pred", lambda seq, m, ctx: _header_contains(m, name, needle))
    if k == "HEADER":
        name = _string(tokens, k).lower()
        needle = _string(tokens, k)
        return ("pred", lambda seq, m, ctx: _header_contains(m, name, needle))
    if k in ("BODY", "TEXT"):
        needle = _string(tokens, k).lower().encode()
        if k == "BODY":
            return ("pred", lambda seq, m, ctx: needle in m.body.lower())
        return ("pred", lambda seq, m, ctx: needle in m.content.lower())
    if k in _DATE_KEYS:
        wanted = time.strftime("%Y%m%d", time.localtime(_search_date(_string(tokens, k))))
        compare = {"BEFORE": lambda d: d < wanted, "ON": lambda d: d == wanted,
                   "SINCE": lambda d: d >= wanted}[k.removeprefix("SENT").removeprefix("SAVED")]
        if k.startswith("SAVED"):
            # RFC 8514 with mbox: no save date is kept; Dovecot compares the
            # time its index first saw the message (its imap binary: now)
            return ("pred", lambda seq, m, ctx: compare(_day(ctx.now or time.time())))
        if k.startswith("SENT"):
            return ("pred", lambda seq, m, ctx: compare(_day(_sent_date(m))))
        return ("pred", lambda seq, m, ctx: compare(_day(m.internal_date)))
    if key[:1].isdigit() or key[:1] == "*":
        if not _SEQUENCE.fullmatch(key):
            raise IllegalClientResponse("Invalid messageset")
        parse_set(key, 1)
        return ("pred", lambda seq, m, ctx: in_set(seq, parse_set(key, ctx.count)))
    raise IllegalClientResponse(f"Unknown argument {key}")


def _day(stamp: float) -> str:
    return time.strftime("%Y%m%d", time.localtime(stamp))


def _sent_date(m: Message) -> float:
    parsed = email.message_from_bytes(m.headers, policy=email.policy.compat32)
    try:
        return email.utils.parsedate_to_datetime(parsed.get("Date", "")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0               # no usable Date: as Dovecot, before any date


class SearchProgram:
    """Criteria compiled into a postfix program; :meth:`matches` runs it."""

    def __init__(self, program: list) -> None:
        self.program = program

    @property
    def keywords(self) -> list[str]:
        """The keywords KEYWORD and UNKEYWORD name, those left after folding:
        mail_search_args_init() registers each in the mailbox (a keyword it
        did not have is a new one, told to the client as new FLAGS)."""
        return [op[2][0] for op in self.program if op[0] == "pred" and len(op) > 2]

    @property
    def constant(self) -> bool | None:
        """True/False when the criteria match every message / none."""
        if len(self.program) == 1 and self.program[0][0] == "const":
            return self.program[0][1]
        return None

    def matches(self, seq: int, msg: Message, ctx: Context) -> bool:
        stack: list[bool] = []
        push, pop = stack.append, stack.pop
        for op in self.program:
            kind = op[0]
            if kind == "pred":
                push(op[1](seq, msg, ctx))
            elif kind == "const":
                push(op[1])
            elif kind == "not":
                push(not pop())
            elif kind == "or":
                b = pop()
                push(pop() or b)
            else:                               # ("and", n)
                values = stack[-op[1]:]
                del stack[-op[1]:]
                push(all(values))
        return stack[-1]


def compile_search(keys: list) -> SearchProgram:
    """Compile SEARCH criteria (the tokens of :func:`imap.tokenize`)."""
    if not keys:
        raise IllegalClientResponse("Missing search parameters")
    out: list = []
    lists = [_Tokens(keys, 0)]          # the lists being read, innermost last
    ops: list[list] = []                # pending NOT/OR: [name, keys still needed, list depth, starts]

    def done(start: int) -> None:
        """One key was emitted from ``start`` on: give it to whoever waits."""
        while True:
            if ops and ops[-1][2] == len(lists):
                op = ops[-1]
                op[3].append(start)
                op[1] -= 1
                if op[1]:
                    return
                ops.pop()
                start = _fold(out, op[0], op[3])
                continue
            lists[-1].keys.append(start)
            return

    while True:
        tokens = lists[-1]
        if not tokens.more():
            if ops and ops[-1][2] == len(lists):
                raise IllegalClientResponse("Missing argument")
            lists.pop()
            if not tokens.keys:
                raise IllegalClientResponse("No search parameters inside list")
            start = _fold(out, "and", tokens.keys)
            if not lists:
                break
            done(start)
            continue
        item = tokens.take()
        if isinstance(item, list):
            lists.append(_Tokens(item, len(out)))
            continue
        word = item.upper()
        if word in ("NOT", "OR"):
            ops.append([word.lower(), 1 if word == "NOT" else 2, len(lists), []])
            continue
        start = len(out)
        out.append(_predicate(item, tokens))
        done(start)
    return SearchProgram(out)


def _opposite_keywords(out: list, starts: list[int], ends: list[int]) -> bool:
    """Whether two operands are a keyword and its negation."""
    seen: dict[str, bool] = {}
    for start, end in zip(starts, ends):
        item = out[start]
        if item[0] != "pred" or len(item) < 3 or end - start > 2 or \
                (end - start == 2 and out[start + 1] != ("not",)):
            continue
        word, negated = item[2][0].lower(), item[2][1] != (end - start == 2)
        if seen.setdefault(word, negated) != negated:
            return True
    return False


def _fold(out: list, op: str, starts: list[int]) -> int:
    """Emit ``op`` over the operands that begin at ``starts`` (the end of
    ``out``), simplified when a value is known; returns where the result
    begins. Only what is replaced is copied: deep nesting stays linear."""
    begin = starts[0]
    ends = starts[1:] + [len(out)]

    def const(i: int):
        """The operand's value if it is a constant, else None."""
        if ends[i] - starts[i] == 1 and out[starts[i]][0] == "const":
            return out[starts[i]][1]
        return None

    if op == "not":
        value = const(0)
        if value is not None:
            out[begin] = _FALSE if value else _TRUE
        elif out[-1] == ("not",):
            del out[-1]                         # NOT NOT x is x
        else:
            out.append(("not",))
        return begin
    if _opposite_keywords(out, starts, ends):
        # Dovecot 2.3.19 (checked against its imap binary): KEYWORD k with
        # UNKEYWORD k (or NOT KEYWORD k) beside it makes the AND never match and
        # the OR always, and neither registers its keywords
        out[begin:] = [_TRUE if op == "or" else _FALSE]
        return begin
    if op == "or":
        a, b = const(0), const(1)
        if a is True or b is True:
            out[begin:] = [_TRUE]
        elif a is False:
            del out[starts[0]:ends[0]]          # the other one alone
        elif b is False:
            del out[starts[1]:]
        else:
            out.append(("or",))
        return begin
    # and
    if len(starts) == 1:
        return begin                            # one key: nothing to add
    values = [const(i) for i in range(len(starts))]
    if False in values:
        out[begin:] = [_FALSE]
        return begin
    if True not in values:
        out.append(("and", len(starts)))
        return begin
    kept = [i for i, v in enumerate(values) if v is None]
    if not kept:
        out[begin:] = [_TRUE]
        return begin
    items = [item for i in kept for item in out[starts[i]:ends[i]]]
    out[begin:] = items + ([("and", len(kept))] if len(kept) > 1 else [])
    return begin
