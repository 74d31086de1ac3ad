"""The Step: one observed protocol unit, and the bus that carries Steps to sinks.

Every source (the live lab, a capture) produces Steps; every consumer (the
terminal narrator, the JSON-lines recorder, diagrams, lessons; in gponsim.sinks) is a sink that
receives them through a :class:`StepBus` and never cares where they came from.

The JSON-lines form (one object per line, see docs/steps.md) is
``Step.to_dict()``: fields whose value is empty (None, "", False, {}) are
left out, except the always-present ``t session proto src dst dir kind``.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

#: Actor names, taken from the components of the lab document. ``smtp`` and
#: ``lmtp`` are Postfix's clients (smtp(8), lmtp(8)); ``dovecot-lmtp`` is
#: Dovecot's LMTP service. On the lab network (``gponsim net``), ``dns`` is the
#: lab's DNS server and ``resolver`` whoever asks it (a PC, the server, the internet).
ACTORS = frozenset({
    "client", "smtpd", "cleanup", "qmgr", "local", "smtp", "lmtp", "auth",
    "imap", "pop3", "dovecot-lmtp", "mailbox", "relay", "internet", "resolver", "dns",
})
PROTOCOLS = frozenset({
    "smtp", "imap", "pop3", "lmtp", "sasl", "tls", "queue", "delivery", "relay", "dns",
})
DIRECTIONS = frozenset({"c2s", "s2c", "internal"})
KINDS = frozenset({"command", "reply", "data", "handshake", "event"})

#: What replaces a secret in ``line`` unless revealing was asked for.
MASK = "********"

_ALWAYS = ("t", "session", "proto", "src", "dst", "dir", "kind")


@dataclass(slots=True)
class Step:
    """One protocol unit as it crossed the wire (or happened inside the server).

    ``line`` holds the raw text, without the line terminator. ``secret`` is
    a ``(start, end)`` character span of ``line`` that holds a credential
    (a base64 SASL response, a password); sinks show it masked unless they
    were asked to reveal it. ``meta`` carries protocol extras (queue id,
    recipient, size, ...), always JSON-serialisable.
    """

    t: float
    session: str
    proto: str
    src: str
    dst: str
    dir: str
    kind: str
    line: str = ""
    verb: str | None = None
    args: str | None = None
    code: int | None = None
    enhanced: str | None = None
    status: str | None = None
    tag: str | None = None
    tls: bool = False
    key: str | None = None
    secret: tuple[int, int] | None = None
    meta: dict = field(default_factory=dict)
    #: From a capture: the numbers of the packets (frames, from 1, as Wireshark counts
    #: them) whose bytes this Step was read from.
    packets: list[int] | None = None

    def __post_init__(self) -> None:
        if self.src not in ACTORS or self.dst not in ACTORS:
            raise ValueError(f"unknown actor in step: {self.src!r} -> {self.dst!r}")
        if self.proto not in PROTOCOLS:
            raise ValueError(f"unknown protocol in step: {self.proto!r}")
        if self.dir not in DIRECTIONS:
            raise ValueError(f"unknown direction in step: {self.dir!r}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind in step: {self.kind!r}")
        if self.secret is not None:
            self.secret = (int(self.secret[0]), int(self.secret[1]))

    def shown_line(self, reveal: bool = False) -> str:
        """``line`` with the secret span masked, unless ``reveal``."""
        if reveal or self.secret is None:
            return self.line
        start, end = self.secret
        return self.line[:start] + MASK + self.line[end:]

    @property
    def failed(self) -> bool:
        """True for a failure reply: 4xx/5xx, NO/BAD, -ERR, FAIL."""
        if self.code is not None:
            return self.code >= 400
        return self.status in ("NO", "BAD", "-ERR", "FAIL")

    def to_dict(self, reveal: bool = False) -> dict:
        out = {name: getattr(self, name) for name in _ALWAYS}
        for name in _OPTIONAL:
            value = getattr(self, name)
            if _kept(value):
                out[name] = value
        masked = self.secret is not None and not reveal
        if "line" in out and masked:
            out["line"] = self.shown_line(False)
        if "args" in out and masked:
            secret = self.line[self.secret[0]:self.secret[1]]
            if secret:
                out["args"] = out["args"].replace(secret, MASK)
        if self.secret is not None:
            start, end = self.secret
            # Masked, the span points at the mask; keep it so readers know.
            out["secret"] = [start, start + len(MASK)] if masked else [start, end]
        if masked:
            out["masked"] = True
        return out

    def to_json(self, reveal: bool = False) -> str:
        """``to_dict(reveal)`` as compact JSON text (``ensure_ascii=False``), byte for
        byte what ``json.dumps(step.to_dict(reveal), ensure_ascii=False,
        separators=(",", ":"))`` gives (tests/test_steps.py compares them on every
        Step of real captures), for a fraction of the cost: the text of the fields
        around ``line`` is made once per distinct set of values (the same
        ``smtpd → client reply`` and the same ``250 2.1.0`` with its key in every
        session), the session's once per session; the time, ``line``, ``meta`` and
        ``packets`` go through the C encoder (a line is often new: a queue id, a
        connection's endpoints)."""
        code, tls = self.code, self.tls
        if self.secret is not None or not (code is None or type(code) is int) \
                or not (tls is False or tls is True):
            return _encode(self.to_dict(reveal))   # credentials, odd values: the long way
        head = (self.proto, self.src, self.dst, self.dir, self.kind)
        head_text = _HEADS.get(head)
        if head_text is None:
            if len(_HEADS) >= _CACHED:
                _HEADS.clear()
            head_text = _HEADS[head] = _fields_text(_HEAD, head)
        tail = (self.verb, self.args, code, self.enhanced, self.status, self.tag, tls, self.key)
        tail_text = _TAILS.get(tail)
        if tail_text is None:
            if len(_TAILS) >= _CACHED:
                _TAILS.clear()
            tail_text = _TAILS[tail] = _fields_text(_TAIL, tail)
        session = _SESSIONS.get(self.session)
        if session is None:
            if len(_SESSIONS) >= _CACHED:
                _SESSIONS.clear()
            session = _SESSIONS[self.session] = ',"session":' + _encode(self.session)
        t, line = self.t, self.line
        parts = ['{"t":', _FLOAT(t) if type(t) is float and _FINITE(t) else _encode(t), session,
                 head_text, ',"line":' + _STRING(line) if line else "", tail_text]
        meta = self.meta
        if meta is not None and meta != {}:
            parts.append(',"meta":')
            parts.append(_encode(meta))
        packets = self.packets
        if packets is not None:
            if type(packets) is list and len(packets) == 1 and type(packets[0]) is int:
                parts.append(',"packets":[' + _INT(packets[0]) + "]}")    # most Steps
            else:
                parts.append(',"packets":' + _encode(packets) + "}")
        else:
            parts.append("}")
        return "".join(parts)

    @classmethod
    def from_dict(cls, data: dict) -> "Step":
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        if known.get("secret") is not None:
            known["secret"] = tuple(known["secret"])
        return cls(**known)


_OPTIONAL = tuple(f.name for f in fields(Step) if f.name not in _ALWAYS and f.name != "secret")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))   # one, not one per call
#: The C encoder ``_ENCODER.encode`` makes anew at every call, made once (without its check
#: for circular references: a Step's fields hold none).
_C_ENCODER = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)


def _encode(value) -> str:
    """``_ENCODER.encode(value)``, faster."""
    if _C_ENCODER is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


#: What the encoder uses for finite floats and ints.
_FLOAT = float.__repr__
_INT = int.__repr__
_FINITE = math.isfinite
#: ``to_json``'s texts: the fields before ``line`` (``_HEAD``) and after it (``_TAIL``) by
#: their values, a session's field by its id (each cache emptied when it holds _CACHED texts).
_HEAD = ("proto", "src", "dst", "dir", "kind")
_TAIL = ("verb", "args", "code", "enhanced", "status", "tag", "tls", "key")
_HEADS: dict[tuple, str] = {}
_TAILS: dict[tuple, str] = {}
_SESSIONS: dict[str, str] = {}
#: A JSON string as the encoder writes it (``ensure_ascii=False``).
_STRING = json.encoder.encode_basestring
_CACHED = 4096


def _kept(value) -> bool:
    """Whether ``to_dict`` writes an optional field: not when None, "", False or {}."""
    return value is not None and value != "" and value is not False and value != {}


def _fields_text(names: tuple[str, ...], values: tuple) -> str:
    """``,"name":value`` for each field ``to_dict`` keeps."""
    kept = {name: value for name, value in zip(names, values) if _kept(value)}
    return "," + _encode(kept)[1:-1] if kept else ""


# --------------------------------------------------------------------------
# Session ids

_session_counter = itertools.count(1)
_session_lock = threading.Lock()
_run_prefix = format(int(time.time()) % 0x100000, "05x")


def new_session(kind: str) -> str:
    """A fresh session id, e.g. ``smtp-1a2b3-7``: one per connection.

    ``kind`` names the listener or client (smtp, submission, imap, sasl,
    relay, send, ...); the middle part tells runs of the lab apart, so ids
    in one JSONL file never collide across restarts.
    """
    with _session_lock:
        n = next(_session_counter)
    return f"{kind}-{_run_prefix}-{n}"


def run_prefix() -> str:
    """The middle part of this process's session ids."""
    return _run_prefix


# --------------------------------------------------------------------------
# The bus and sinks

class Sink(Protocol):
    """Anything that consumes Steps. ``close`` is optional."""

    def step(self, step: Step) -> None: ...


class StepBus:
    """Fan-out of Steps to sinks, in the order they were added.

    A sink that raises is reported once on stderr and dropped, so a broken
    add-on never takes the lab down. Thread-safe: scripted clients running
    in threads may emit too.
    """

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self._sinks: tuple[Sink, ...] = tuple(sinks)   # replaced, never changed in place
        self._lock = threading.RLock()

    def add(self, sink: Sink) -> Sink:
        with self._lock:
            self._sinks += (sink,)
        return sink

    def remove(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    def emit(self, step: Step) -> Step:
        with self._lock:
            for sink in self._sinks:
                try:
                    sink.step(step)
                except Exception as exc:  # noqa: BLE001 - isolate add-ons
                    import sys

                    print(f"gponsim: sink {type(sink).__name__} failed and was "
                          f"removed: {exc!r}", file=sys.stderr)
                    self.remove(sink)
        return step

    __call__ = emit

    def close(self) -> None:
        with self._lock:
            for sink in self._sinks:
                close = getattr(sink, "close", None)
                if close is not None:
                    close()


Emit = Callable[[Step], object]


def null_emit(step: Step) -> Step:
    """An ``emit`` for code run without any sink."""
    return step


# --------------------------------------------------------------------------
# JSON lines

def read_jsonl(path: str | Path, damaged_end: Callable[[str], object] | None = None) -> Iterator[Step]:
    """Read Steps back from a JSON-lines file; a bad line names file:line.

    With ``damaged_end``, a bad *last* line (cut short when the recorder was killed)
    is not an error: it is skipped and ``damaged_end`` is told why. A bad line with
    others after it is always an error."""
    bad: ValueError | None = None
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            raw = raw.strip()
            if not raw:
                continue
            if bad is not None:
                raise bad
            try:
                step = Step.from_dict(json.loads(raw.decode("utf-8")))
            except (ValueError, TypeError) as exc:
                bad = ValueError(f"{path}:{n}: not a Step: {exc}")
                if damaged_end is None:
                    raise bad from exc
                continue
            yield step
    if bad is not None:
        damaged_end(str(bad))
