"""LIST/LSUB mailbox patterns: what Dovecot 2.3.19 answers (checked against
the real Dovecot of Debian 12, docs/hostile.md), matched in linear time."""

from __future__ import annotations

import pytest

from gponsim.server.dovecot.imap_match import MailboxPattern, mailbox_pattern

#: (pattern, name, listed by Dovecot) for the folders INBOX, Sent, a, a/b, a/b/c.
DOVECOT = [
    ("in*", "INBOX", True), ("IN*", "INBOX", True), ("inbox", "INBOX", True),
    ("s*", "Sent", False), ("S*", "Sent", True),
    ("%", "a", True), ("%", "Sent", True), ("%", "INBOX", True), ("%", "a/b", False),
    ("*", "a/b/c", True), ("a%", "a", True), ("a%", "a/b", False),
    ("a/%", "a/b", True), ("a/%", "a/b/c", False), ("%/%/c", "a/b/c", True),
    ("*%*", "a/b", True), ("*%*", "a/b/c", True),
    ("%" * 40 + "Q", "a/b/c", False), ("%" * 40 + "Q", "Sent", False),
]


@pytest.mark.parametrize("pattern,name,listed", DOVECOT)
def test_patterns_match_as_dovecot_lists(pattern, name, listed):
    assert mailbox_pattern(pattern).fullmatch(name) is listed


@pytest.mark.parametrize("pattern,name,listed", [
    ("INBOX/%", "inbox/x", True), ("inbox/%", "INBOX/x", True),   # INBOX's children
    ("inboxx", "INBOXX", False),            # only the name INBOX is in any case
    ("%%", "x/y", False), ("%*", "x/y", True), ("*%", "x/y", True),
    ("a*b", "axxb", True), ("a*b", "axxbx", False), ("a%b", "ax/b", False),
    ("", "", True), ("", "a", False), ("*", "", True),
])
def test_wildcard_runs_and_the_inbox_rule(pattern, name, listed):
    assert MailboxPattern(pattern).fullmatch(name) is listed


def test_the_patterns_that_froze_the_lab_answer_at_once():
    """Ten % and a Q against a 24-character name took 3 s with the regular
    expression; 1 KB of alternating wildcards never ended. Each character
    of the name is one step of the automaton, whatever the pattern."""
    name = "x" * 26
    assert not MailboxPattern("%" * 11 + "Q").fullmatch(name)
    assert not MailboxPattern("%x" * 512 + "Q").fullmatch(name)
    assert MailboxPattern("*x" * 26).fullmatch(name)
    assert not MailboxPattern("*x" * 27).fullmatch(name)
