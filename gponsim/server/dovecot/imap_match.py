"""Mailbox name patterns of LIST and LSUB (RFC 3501 §6.3.8), in linear time.

``*`` matches any run of characters, ``%`` any run without the hierarchy
separator; everything else matches itself, case-sensitively, except the
``INBOX`` at the start of a name, which any case matches (what Dovecot's
``imap_match`` does with ``inboxcase``: ``LIST "" "in*"`` lists INBOX,
``LIST "" "s*"`` does not list Sent).

A regular expression with one lazy group per wildcard backtracks: a name of
24 characters against ten ``%`` and a ``Q`` took seconds, a 1 KB pattern
forever. Here a pattern is a small automaton whose states are the positions
in the pattern, all followed at once as the bits of one integer
("shift-and"): each character of the name is a handful of integer
operations, so a name is matched in time linear in its length (times the
pattern's length over the machine word), whatever the pattern.
"""

from __future__ import annotations

from functools import lru_cache

_INBOX = "INBOX"


class MailboxPattern:
    """One compiled pattern; :meth:`fullmatch` says whether a name matches it."""

    __slots__ = ("pattern", "separator", "_literal", "_any", "_nosep", "_wild", "_final")

    def __init__(self, pattern: str, separator: str = "/") -> None:
        self.pattern = pattern
        self.separator = separator
        # Runs of wildcards are one wildcard ("%*" and "*%" are "*", "%%" is "%"),
        # as Dovecot's imap_match_init folds them: then no two wildcards are
        # neighbours and one epsilon step closes a state set.
        items: list[str] = []
        for ch in pattern:
            if ch in "*%" and items and items[-1] in ("*", "%"):
                if ch == "*" or items[-1] == "*":
                    items[-1] = "*"
                continue
            items.append(ch)
        literal: dict[str, int] = {}
        any_mask = nosep_mask = 0
        for i, item in enumerate(items):
            bit = 1 << i
            if item == "*":
                any_mask |= bit
            elif item == "%":
                nosep_mask |= bit
            else:
                literal[item] = literal.get(item, 0) | bit
        self._literal = literal
        self._any = any_mask            # states that loop on any character
        self._nosep = nosep_mask        # states that loop on any but the separator
        self._wild = any_mask | nosep_mask
        self._final = 1 << len(items)

    def _close(self, states: int) -> int:
        """A wildcard may match nothing: from its state, the next one is reached too."""
        return states | ((states & self._wild) << 1)

    def fullmatch(self, name: str) -> bool:
        literal, sep = self._literal, self.separator
        loop_any, loop_nosep = self._any, self._nosep
        fold = 0                        # characters compared in any case (INBOX)
        if name[:5].upper() == _INBOX and (len(name) == 5 or name[5:6] == sep):
            fold = 5
        states = self._close(1)
        for i, ch in enumerate(name):
            if not states:
                return False
            step = literal.get(ch, 0)
            if i < fold:
                for other in {ch.lower(), ch.upper()} - {ch}:
                    step |= literal.get(other, 0)
            nxt = (states & step) << 1
            nxt |= states & loop_any
            if ch != sep:
                nxt |= states & loop_nosep
            states = self._close(nxt)
        return bool(states & self._final)

    # the interface of the regular expressions this replaces
    match = fullmatch

    def __repr__(self) -> str:
        return f"MailboxPattern({self.pattern!r})"


@lru_cache(maxsize=256)
def mailbox_pattern(pattern: str, separator: str = "/") -> MailboxPattern:
    """The compiled pattern (kept for the patterns a client repeats)."""
    return MailboxPattern(pattern, separator)
