"""Steps as JSON lines, fast: the text of :meth:`gponsim.steps.Step.to_json`, built directly.

``analyze --steps`` writes one line per Step, hundreds of thousands for a big
capture, and a busy lab's ``--steps`` recorder about 17 per message; building
a dict per Step and handing it to :mod:`json` costs more than decoding the
Step did (4.1 µs a Step against 2.4 µs, on a lab's SMTP Steps). :func:`step_line` writes the same text (same keys,
same order, same escaping: the json module's own string encoder). Most of a
Step repeats from one to the next (the session's actors; a command's verb,
arguments and commentary key), so that text is made once and kept: only the
time, the session and TLS are written every time. ``tests/test_capture.py``
(a capture's Steps) and ``tests/test_steps.py`` (a lab's) check it against
``Step.to_json``.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import time
from typing import Callable
from json.encoder import encode_basestring as _quote   # ensure_ascii=False's encoder

from gponsim.steps import MASK, Step

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_value = _encoder.encode
try:
    # What JSONEncoder.encode builds for every call, built once (no cycle check:
    # Step meta is plain JSON data). Same text: the same C encoder does the work.
    from json.encoder import c_make_encoder as _c_make_encoder

    _c_meta = _c_make_encoder(None, _encoder.default, _quote, None, ":", ",", False, False, True)

    def _dict(value: dict) -> str:
        return "".join(_c_meta(value, 0))
except (ImportError, TypeError):           # no C accelerator: the plain encoder
    _dict = _value
_sessions: dict[str, str] = {}
_heads: dict[tuple, str] = {}
_tails: dict[tuple, tuple[str, str]] = {}
_LIMIT = 20000


def _start(t: float, session: str) -> str:
    """The text of a Step's first two fields, ``{"t":...,"session":...``."""
    text = _sessions.get(session)
    if text is None:
        if len(_sessions) > _LIMIT:
            _sessions.clear()
        text = _sessions[session] = ',"session":' + _quote(session)
    return '{"t":' + (repr(t) if type(t) is float else _value(t)) + text


def step_line(step: Step, reveal: bool = False) -> str:
    """``step.to_json(reveal)``, the same text, without the dict and the generic encoder."""
    head_key = (step.proto, step.src, step.dst, step.dir, step.kind)
    head = _heads.get(head_key)
    if head is None:
        if len(_heads) > _LIMIT:
            _heads.clear()
        head = _heads[head_key] = (
            f',"proto":{_quote(step.proto)},"src":{_quote(step.src)},"dst":{_quote(step.dst)},'
            f'"dir":{_quote(step.dir)},"kind":{_quote(step.kind)}')
    meta = step.meta
    tail_key = (step.line, step.verb, step.args, step.code, step.enhanced, step.status,
                step.tag, step.key, step.secret, reveal)
    tail = _tails.get(tail_key)
    if tail is None:
        tail = _fields(step, reveal)
        if len(_tails) > _LIMIT:
            _tails.clear()
        _tails[tail_key] = tail
    tls = step.tls
    return (_start(step.t, step.session) + head + tail[0]
            + ((',"tls":true' if tls is True else ',"tls":' + _value(tls)) if tls else "")
            + (tail[1] if not meta else _with_meta(tail[1], meta, step)))


#: Step's field names, in order: what :meth:`EncodedStep.packed` takes.
FIELDS = tuple(f.name for f in dataclasses.fields(Step))
#: A Step's field values, in FIELDS order.
field_values = operator.attrgetter(*FIELDS)


class EncodedStep(Step):
    """A Step that carries its JSON text (``step_line(step)``, masked), made
    where the Step was made (an smtpd process), so it is not encoded again.

    Its fields are unpacked on first use, from the tuple given to
    :meth:`packed` or, for :meth:`from_line`, from the JSON text itself (a
    Step without a secret loses nothing in its JSON form: empty fields are
    the defaults, ``meta`` is JSON data). A lab whose only sink records
    JSON lines never unpacks them: in the master, a Step from an smtpd
    process then costs a string and one small object."""

    __slots__ = ("jsonl", "_packed")

    @classmethod
    def packed(cls, values: tuple, jsonl: str) -> "EncodedStep":
        """A Step with the field ``values`` (in :data:`FIELDS` order) and its JSON text."""
        step = cls.__new__(cls)
        step.jsonl = jsonl
        step._packed = values
        return step

    @classmethod
    def from_line(cls, jsonl: str) -> "EncodedStep":
        """The Step whose ``step_line`` is ``jsonl`` (a Step without a secret)."""
        step = cls.__new__(cls)
        step.jsonl = jsonl
        step._packed = None
        return step

    def __getattr__(self, name: str):
        # Only called for a slot not set yet: a field still packed.
        if name in ("jsonl", "_packed"):
            raise AttributeError(name)
        try:
            values = self._packed
        except AttributeError:
            raise AttributeError(name) from None
        if values is None:
            values = field_values(Step.from_dict(json.loads(self.jsonl)))
        for field_name, value in zip(FIELDS, values):
            object.__setattr__(self, field_name, value)
        del self._packed
        return object.__getattribute__(self, name)


class StepTemplates:
    """Steps that differ only in their time and session, kept as JSON text.

    A busy smtpd sends the same replies and reads the same commands all day
    (``250 2.1.0 Ok`` to ``MAIL FROM:<user1@gponlab.local>``). The first
    time a ``key`` is seen, ``build()`` makes the Step (fields, commentary
    key) and its JSON line without time and session is kept; later, the
    Step is an :class:`EncodedStep` made from that text with the time now
    and the given session: nothing to build, annotate or encode, and its
    fields are read back from the text only if a sink asks for them. Steps
    with a secret or ``meta`` are never kept. The key must determine every
    field but ``t`` and ``session``.
    """

    def __init__(self, limit: int = 2048) -> None:
        self._rest: dict = {}
        self._limit = limit

    def step(self, key, session: str, build: Callable[[], Step]) -> Step:
        rest = self._rest.get(key)
        if rest is not None:
            return EncodedStep.from_line(_start(time.time(), session) + rest)
        step = build()
        if step.secret is None and not step.meta:
            if len(self._rest) >= self._limit:
                self._rest.clear()
            self._rest[key] = step_line(step)[len(_start(step.t, step.session)):]
        return step


def encoded(step: Step, reveal: bool = False) -> str:
    """``step_line(step, reveal)``, taken from an :class:`EncodedStep` when it can."""
    if type(step) is EncodedStep and (not reveal or step.secret is None):
        return step.jsonl
    return step_line(step, reveal)


def _with_meta(after: str, meta: dict, step: Step) -> str:
    """The text after ``tls`` with ``meta`` in its place (after ``key``, before ``secret``)."""
    at = len(_key(step))
    return after[:at] + ',"meta":' + _dict(meta) + after[at:]


def _key(step: Step) -> str:
    return ',"key":' + _quote(step.key) if step.key else ""


def _fields(step: Step, reveal: bool) -> tuple[str, str]:
    """The text of the fields before ``tls`` (line ... tag) and after it (key, secret,
    masked, and the closing brace), as Step.to_dict writes them; ``meta`` is not in it."""
    parts = []
    secret = step.secret
    masked = secret is not None and not reveal
    line = step.line
    if line:
        if masked:
            line = line[:secret[0]] + MASK + line[secret[1]:]
        parts.append(',"line":' + _quote(line))
    if step.verb:
        parts.append(',"verb":' + _value(step.verb))
    args = step.args
    if args:
        if masked:
            hidden = step.line[secret[0]:secret[1]]
            if hidden:
                args = args.replace(hidden, MASK)
        parts.append(',"args":' + _value(args))
    for name in ("code", "enhanced", "status", "tag"):
        value = getattr(step, name)
        if value is not None and value != "" and value is not False and value != {}:
            parts.append(f',"{name}":' + _value(value))
    after = [_key(step)]
    if secret is not None:
        start, end = secret
        after.append(f',"secret":[{start},{start + len(MASK) if masked else end}]')
    if masked:
        after.append(',"masked":true')
    after.append("}")
    return "".join(parts), "".join(after)
