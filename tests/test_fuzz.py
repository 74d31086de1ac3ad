"""Seeded fuzzing of every protocol parser of the lab and of `gponsim analyze`.

SMTP (Postfix's smtpd on 587, AUTH through the auth server), IMAP and POP3
(Dovecot's login processes and sessions on a real mbox store), LMTP
(Dovecot's LMTP service), the Dovecot auth protocol (the socket Postfix and
the login processes use), and `gponsim analyze` on mutated captures (the
real ones shipped in captures/, and conversations of mutated commands). How
the inputs are made and what counts as a traceback: tests/fuzzing.py.

Per target, all in memory: the first 1,000 inputs of its seed in the fast
layer (a few seconds in all, so a parser change meets the fuzz at once); in
the ``slow`` layer, which CI runs too, the first 10,000 of the same seed and
30,000 more with another. A failure names the seed and the input;
``fuzzing.run`` with them replays it.
"""

from __future__ import annotations

import shutil

import pytest

import fuzzing

QUICK = 1_000       # the fast layer
FULL = 10_000       # the same seed, in the slow layer
MORE = 30_000       # another seed, in the slow layer


def _fuzz(name: str, seed: str, count: int, tmp_path) -> None:
    root = fuzzing.scratch_folder(tmp_path)
    try:
        result = fuzzing.run(fuzzing.TARGETS[name](root), seed, count)
    finally:
        if root != tmp_path:
            shutil.rmtree(root, ignore_errors=True)
    assert result.inputs == count
    assert result.replies > 0                      # the target was reached at all
    assert result.tracebacks == [], (f"seed {seed!r}, input {result.tracebacks[0][0]}:\n"
                                     + result.tracebacks[0][1])


@pytest.mark.fuzz
@pytest.mark.parametrize("name", sorted(fuzzing.TARGETS))
def test_a_thousand_inputs_and_no_traceback(name, tmp_path, utc):
    _fuzz(name, f"gponsim-{name}", QUICK, tmp_path)


@pytest.mark.fuzz
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(fuzzing.TARGETS))
def test_ten_thousand_inputs_and_no_traceback(name, tmp_path, utc):
    _fuzz(name, f"gponsim-{name}", FULL, tmp_path)


@pytest.mark.fuzz
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(fuzzing.TARGETS))
def test_thirty_thousand_more_inputs_and_no_traceback(name, tmp_path, utc):
    _fuzz(name, f"gponsim-{name}-slow", MORE, tmp_path)


def test_the_inputs_are_the_same_for_a_seed():
    import random

    def inputs(seed):
        rnd = random.Random(seed)
        return [fuzzing.conversation(rnd, fuzzing.IMAP_CORPUS) for _ in range(50)]
    assert inputs("a") == inputs("a") != inputs("b")
