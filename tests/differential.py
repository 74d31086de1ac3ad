"""Differential tests: the same client script against gponsim and the real programs.

What a student sees is compared line by line: every line a server sent to the
client (its replies) and every line written to mail.log, in order. Only what
must differ between two runs is normalised (:data:`REPLY_RULES`,
:data:`LOG_RULES`): times, queue ids, process ids, Dovecot's session ids and
``(x + y secs)``, and the Gmail simulator's random ids. Where gponsim
deliberately differs it is a :class:`Deliberate` entry, named in the test and
listed in ``docs/fidelity.md``.

mail.log is compared per program (``postfix/smtpd``, ``postfix/qmgr``,
``dovecot``...): each program's lines must be identical and in the same
order. How the lines of *different* processes interleave depends on the
scheduler in real Postfix, so it is not compared.

The clients are the real ones (swaks, curl, smtplib, imaplib, poplib); this
module only records what they received.
"""

from __future__ import annotations

import ast
import difflib
import imaplib
import poplib
import re
import smtplib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from labproc import poll_until

# ---------------------------------------------------------------- normalising

_QID = re.compile(r"(?<![\w.])[0-9A-F]{10,12}(?![\w])")
_DATE = re.compile(r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?[ \d]?\d "
                   r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                   r"\d\d:\d\d:\d\d [+-]\d{4}(?: \([A-Z]+\))?")


class Numbering:
    """Gives each distinct value its number in order of first appearance."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.seen: dict[str, int] = {}

    def __call__(self, value: str) -> str:
        return f"{self.label}{self.seen.setdefault(value, len(self.seen) + 1)}"


def _numbered(pattern: str, label: str, group: int = 0):
    """A rule replacing each match's ``group`` with LABELn (n per distinct value)."""
    regex = re.compile(pattern)

    def rule(line: str, state: dict) -> str:
        numbering = state.setdefault(label, Numbering(label))

        def sub(m: re.Match) -> str:
            whole, start = m.group(0), m.start(group) - m.start(0)
            end = start + len(m.group(group))
            return whole[:start] + numbering(m.group(group)) + whole[end:]
        return regex.sub(sub, line)
    return rule


def _fixed(pattern: str, replacement: str):
    regex = re.compile(pattern)
    return lambda line, state: regex.sub(replacement, line)


#: What may differ between two runs of the same script, in a server's replies.
REPLY_RULES = [
    _numbered(_QID.pattern, "QID"),                                  # queue ids
    _fixed(r"\(\d+\.\d{3} \+ \d+\.\d{3}(?: \+ \d+\.\d{3})? secs\)", "(T secs)"),  # Dovecot timing
    _numbered(r"^([A-Z]{4})(?=\d+ )", "TAG", 1),  # imaplib's random tag prefix
    _fixed(r"^(TAG\d+)(\d+) ", r"\1-\2 "),
    _fixed(r"UIDVALIDITY \d+", "UIDVALIDITY V"),
    # POP3 UIDL: %08Xu%08Xv, the UIDVALIDITY half is a time (lower case kept)
    _fixed(r"^(\+OK )?(\d+ [0-9a-f]{8})[0-9a-f]{8}$", r"\1\2vvvvvvvv"),
    _fixed(_DATE.pattern, "DATE"),
    _fixed(r'"\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"', '"INTERNALDATE"'),
    _fixed(r"\b\d{14}\.[0-9A-F]{10,12}@", "TIME.QID@"),              # bounce Message-IDs
]

#: What may differ between two runs of the same script, in mail.log.
LOG_RULES = [
    _fixed(r"^([\w/-]+)\[\d+\]", r"\1[PID]"),                        # process ids
    _numbered(_QID.pattern, "QID"),
    _fixed(r"delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+", "delay=D, delays=D/D/D/D"),
    _fixed(r"session=<[A-Za-z0-9+/]+>", "session=<S>"),
    _fixed(r"(auth: [\w-]+\([^)]*,)<[A-Za-z0-9+/]+>\)", r"\1<S>)"),   # auth_verbose
    _numbered(r"\((\w+)\)<(\d+)><[A-Za-z0-9+/]+>", "PID", 2),        # imap(user)<pid><session>
    _fixed(r"(\(\w+\)<PID\d+>)<[A-Za-z0-9+/]+>", r"\1<S>"),
    _numbered(r"mpid=(\d+)", "MPID", 1),
    _fixed(r"\b\d{14}\.[0-9A-F]{10,12}@", "TIME.QID@"),
    _fixed(_DATE.pattern, "DATE"),
    # the Gmail simulator's own random ids and clock (the same simulator for both)
    _fixed(r"OK  \d+ [\w-]+ - gsmtp", "OK  T ID - gsmtp"),
    _fixed(r"(?<=\s)[\w-]+ - gsmtp", "ID - gsmtp"),
]


def normalise(lines: Iterable[str], rules) -> list[str]:
    state: dict = {}
    out = []
    for line in lines:
        for rule in rules:
            line = rule(line, state)
        out.append(line)
    return out


# ----------------------------------------------------------- deliberate diffs

@dataclass(frozen=True)
class Deliberate:
    """A documented difference (docs/fidelity.md), told in the test that meets it.

    Lines of the real program matching ``real`` are expected where gponsim
    writes lines matching ``gponsim`` (either may be None: a line only one
    of them writes); both are left out of the comparison. ``rewrite``
    instead edits the real program's lines: ``(pattern, replacement)``
    pairs applied to each, turning what it says into what gponsim
    deliberately says; ``both`` pairs are applied to both sides (a value
    the difference changes, such as a byte count)."""

    name: str
    reason: str
    real: str | None = None
    gponsim: str | None = None
    rewrite: tuple = ()
    both: tuple = ()


def _drop(lines: list[str], pattern: str | None) -> tuple[list[str], int]:
    if pattern is None:
        return lines, 0
    regex = re.compile(pattern)
    kept = [line for line in lines if not regex.search(line)]
    return kept, len(lines) - len(kept)


def _rewrite(lines: list[str], pairs) -> tuple[list[str], int]:
    out, changed = [], 0
    for line in lines:
        new = line
        for pattern, replacement in pairs:
            new = re.sub(pattern, replacement, new)
        changed += new != line
        out.append(new)
    return out, changed


# --------------------------------------------------------------- comparing

@dataclass
class Comparison:
    """One kind of lines (replies or log) of one scenario, compared."""

    what: str
    gponsim: list[str]
    real: list[str]
    deliberate: list[tuple[Deliberate, int, int]] = field(default_factory=list)

    @property
    def compared(self) -> int:
        return max(len(self.real), len(self.gponsim))

    @property
    def identical(self) -> int:
        matcher = difflib.SequenceMatcher(a=self.real, b=self.gponsim, autojunk=False)
        return sum(block.size for block in matcher.get_matching_blocks())

    def diff(self) -> str:
        return "\n".join(difflib.unified_diff(self.real, self.gponsim, "real", "gponsim",
                                              lineterm="", n=3))

    def ok(self) -> bool:
        return self.real == self.gponsim


def compare_replies(gponsim: list[str], real: list[str],
                    deliberate: Iterable[Deliberate] = ()) -> Comparison:
    g, r = normalise(gponsim, REPLY_RULES), normalise(real, REPLY_RULES)
    return _with_deliberate(Comparison("replies", g, r), deliberate)


#: Delivery agents: Postfix runs one process per recipient of a message
#: (``local_destination_recipient_limit = 1``) and several at once, so the
#: order of their lines for one message is the scheduler's.
CONCURRENT = ("postfix/local", "postfix/smtp", "postfix/lmtp", "postfix/error",
              "postfix/retry", "postfix/virtual", "postfix/discard", "postfix/pipe")


def stream(line: str) -> tuple[str, str]:
    """Which sequence of the log a (normalised) line belongs to: its program,
    and the message it is about (``QIDn: ...``) if any."""
    m = re.match(r"^([\w/-]+)\[PID\]: (QID\d+: )?", line)
    if not m:
        return ("?", "")
    return (m.group(1), m.group(2) or "")


def streams(lines: list[str]) -> list[str]:
    """The lines regrouped stream by stream (streams sorted, each one in its
    own order; a delivery agent's lines sorted)."""
    keys = sorted({stream(line) for line in lines})
    out = []
    for key in keys:
        part = [line for line in lines if stream(line) == key]
        out += sorted(part) if key[0] in CONCURRENT else part
    return out


def compare_logs(gponsim: list[str], real: list[str],
                 deliberate: Iterable[Deliberate] = ()) -> Comparison:
    """mail.log, stream by stream (:func:`stream`): what one program logged
    about one message, or about its connections, must be identical and in
    the same order. How different processes' lines interleave is the
    scheduler's choice in real Postfix, so it is not compared."""
    g, r = normalise(gponsim, LOG_RULES), normalise(real, LOG_RULES)
    return _with_deliberate(Comparison("mail.log", streams(g), streams(r)), deliberate)


def _with_deliberate(c: Comparison, deliberate: Iterable[Deliberate]) -> Comparison:
    for d in deliberate:
        c.real, n_real = _drop(c.real, d.real)
        c.gponsim, n_g = _drop(c.gponsim, d.gponsim)
        c.real, r_real = _rewrite(c.real, d.rewrite + d.both)
        c.gponsim, r_g = _rewrite(c.gponsim, d.both)
        c.deliberate.append((d, n_real + r_real, n_g + r_g))
    return c


def assert_same(*comparisons: Comparison) -> None:
    bad = [c for c in comparisons if not c.ok()]
    if bad:
        raise AssertionError("gponsim differs from the real programs:\n" +
                             "\n".join(f"--- {c.what} ---\n{c.diff()}" for c in bad))


# ------------------------------------------------------------ recording clients

class RecordingSMTP(smtplib.SMTP):
    """smtplib, keeping every line the server sent (``reply:`` debug output)."""

    def __init__(self, *args, **kw) -> None:
        self.received: list[str] = []
        super().__init__(*args, **kw)

    def _print_debug(self, *args) -> None:     # smtplib's own debug hook
        # getreply() prints ("reply:", repr(line)) for every line it reads
        if len(args) == 2 and args[0] == "reply:" and args[1][:2] in ("b'", 'b"'):
            line = ast.literal_eval(args[1])
            self.received.append(line.decode("utf-8", "replace").rstrip("\r\n"))

    def connect(self, *args, **kw):
        self.set_debuglevel(1)
        return super().connect(*args, **kw)


class _ImapRecorder:
    def _get_line(self):
        line = super()._get_line()
        self.received.append(line.decode("utf-8", "replace"))
        return line

    def _get_response(self):
        return super()._get_response()


class RecordingIMAP4(_ImapRecorder, imaplib.IMAP4):
    def __init__(self, *args, **kw) -> None:
        self.received: list[str] = []
        super().__init__(*args, **kw)


class RecordingIMAP4_SSL(_ImapRecorder, imaplib.IMAP4_SSL):
    def __init__(self, *args, **kw) -> None:
        self.received: list[str] = []
        super().__init__(*args, **kw)


class _PopRecorder:
    def _getline(self):
        line, octets = super()._getline()
        self.received.append(line.decode("utf-8", "replace"))
        return line, octets


class RecordingPOP3(_PopRecorder, poplib.POP3):
    def __init__(self, *args, **kw) -> None:
        self.received: list[str] = []
        super().__init__(*args, **kw)


class RecordingPOP3_SSL(_PopRecorder, poplib.POP3_SSL):
    def __init__(self, *args, **kw) -> None:
        self.received: list[str] = []
        super().__init__(*args, **kw)


def swaks(*args: str, timeout: float = 60) -> list[str]:
    """Run swaks; the server's lines of its transcript (``<-`` in clear,
    ``<~`` inside TLS, ``<**`` for an error swaks reports)."""
    out = subprocess.run(["swaks", *args], capture_output=True, text=True, timeout=timeout)
    return [line for line in out.stdout.splitlines() if line.startswith(("<-", "<~", "<**"))]


def curl(*args: str, timeout: float = 60) -> list[str]:
    """Run ``curl -v``; the server's lines (``< ``) of its trace."""
    out = subprocess.run(["curl", "-v", "-s", "-o", "/dev/null", *args], capture_output=True,
                         text=True, timeout=timeout)
    return [line[2:] for line in out.stderr.splitlines() if line.startswith("< ")]


# -------------------------------------------------------------- waiting

def quiet(read: Callable[[], list[str]], settle: float = 1.0, timeout: float = 20.0,
          until: Callable[[list[str]], bool] | None = None) -> list[str]:
    """``read()`` once it has stopped growing for ``settle`` seconds (and
    ``until(lines)`` holds, when given)."""
    seen = {"lines": None, "since": time.monotonic()}

    def calm() -> bool:
        lines, now = read(), time.monotonic()
        if lines != seen["lines"]:
            seen["lines"], seen["since"] = lines, now
            return False
        return now - seen["since"] >= settle and (until is None or until(lines))
    poll_until(calm, timeout)
    return seen["lines"]            # (as they were when calm, or at the timeout)


def settled(lines: list[str]) -> bool:
    """Every message the log speaks of has left the queue (``QID: removed``),
    and every logged-in Dovecot session has been logged as disconnected.

    A message is in the queue once cleanup has read it (``message-id=``) or
    pickup has taken it (``uid=``); a queue id that smtpd opened for a
    transaction the client never finished (``client=`` alone: RSET, a hang-up,
    BDAT's errors) is removed without a ``removed`` line, by Postfix as by
    gponsim, so it is waited for no longer."""
    qids = {m.group(1) for line in lines
            if (m := re.search(r"\]: ([0-9A-F]{10,12}): (?:message-id=|uid=)", line))}
    removed = {m.group(1) for line in lines
               if (m := re.search(r"\]: ([0-9A-F]{10,12}): removed$", line))}
    logins = sum(1 for line in lines if "-login: Login: " in line)
    ends = sum(1 for line in lines if re.search(r"(imap|pop3)\([^)]*\)<\d+><[^>]*>: "
                                                 r"Disconnected", line))
    return qids <= removed and ends >= logins


def log_since(path: Path, mark: int) -> list[str]:
    """gponsim's mail.log lines after byte ``mark``, as ``program[pid]: text``."""
    if not path.exists():
        return []
    with open(path, "rb") as fh:
        fh.seek(mark)
        text = fh.read().decode("utf-8", "replace")
    return [m.group(1) for line in text.splitlines() if (m := _SYSLOG.match(line))]


#: rsyslog's traditional format: "Dec  7 05:11:16 mail program[pid]: text"
_SYSLOG = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ (.*)$")
