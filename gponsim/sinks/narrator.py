"""The terminal narrator: Steps as colour-coded lines with commentary.

    23:40:46 submission-1 client → smtpd  EHLO [127.0.0.1]
    23:40:46 submission-1 smtpd → client  250-mail.gponlab.local ...
             ↳ The server lists its extensions ... (RFC 5321 §4.1.1.1)

Client lines are cyan, server replies green (2xx/3xx, OK) or red (failures),
internal events (queue, delivery, auth) yellow, TLS milestones magenta, and
commentary dim. Everything is wrapped to the console's width (a terminal's,
or ``COLUMNS``) with the text kept in its column.

Explanations (``explain``): ``first`` shows each one the first time it comes
up in this run, ``session`` the first time in each session, ``all`` every
time, ``none`` never. ``compact`` drops the clock and the session from each
line and names a session once, when it changes (lessons use it).

Rendering is rich's look without rich's per-line cost: a big capture has
hundreds of thousands of Steps. The styles are rendered by rich once into
ANSI prefixes (none when the output is not a terminal), the parts of a line
that repeat (clock, head) are kept, only a line longer than the width goes
through rich's wrapping, and all of it goes to one buffered writer.
"""

from __future__ import annotations

import re
import textwrap
import threading
import time
from typing import IO

from rich.cells import cell_len
from rich.color import ColorSystem
from rich.console import Console
from rich.style import Style
from rich.text import Text

from gponsim.commentary import catalog
from gponsim.sinks.escape import visible
from gponsim.sinks.phrases import localize
from gponsim.steps import Step

EXPLAIN = ("first", "session", "all", "none")
_FAILURES = frozenset({"NO", "BAD", "-ERR", "FAIL"})     # Step.failed's status words
_SYSTEMS = {"standard": ColorSystem.STANDARD, "256": ColorSystem.EIGHT_BIT,
            "truecolor": ColorSystem.TRUECOLOR, "windows": ColorSystem.WINDOWS}
_CACHE_LIMIT = 20000
MIN_TEXT = 24          # narrower than this next to the head: wrapped lines start further left


class Painter:
    """Styles as text: rich renders each style once into an ANSI prefix and suffix."""

    def __init__(self, console: Console) -> None:
        self._system = _SYSTEMS.get(console.color_system or "")
        self._codes: dict[str, tuple[str, str]] = {}

    @property
    def plain(self) -> bool:
        """No colours: every style paints nothing."""
        return self._system is None

    def __call__(self, text: str, style: str) -> str:
        if self._system is None or not text:
            return text
        codes = self._codes.get(style)
        if codes is None:
            before, _, after = Style.parse(style).render("\0", color_system=self._system).partition("\0")
            codes = self._codes[style] = (before, after)
        return codes[0] + text + codes[1]


#: Below U+2300 (Latin, Greek, Cyrillic, arrows, punctuation) one character is one cell,
#: but for these: combining marks, Hangul jamo, zero-width spaces and joiners.
_NOT_ONE_CELL = re.compile("[\u0300-\u036f\u1100-\u115f\u200b-\u200f\u2060-\u2064]")


def cells(text: str) -> int:
    """Terminal cells of ``text``; rich counts the rare wide or zero-width characters."""
    if text.isascii() or (max(text) < "\u2300" and not _NOT_ONE_CELL.search(text)):
        return len(text)
    return cell_len(text)


def _narrow(text: str) -> bool:
    """Every character takes one cell on a terminal (ASCII, or Latin text like "lección")."""
    return cells(text) == len(text)


def packet_numbers(packets: list[int]) -> str:
    """Packet numbers, compactly: ``#5``, ``#5,6``, ``#22–25,36,38–45``; of more than
    three runs, the first three and the last number (``#49,51,53–58…64``: not a range
    that would claim the packets between, which may carry other Steps)."""
    runs: list[list[int]] = []
    for p in packets:
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    text = "#" + ",".join(str(a) if a == b else f"{a},{b}" if b == a + 1 else f"{a}–{b}"
                          for a, b in runs[:3])
    return text if len(runs) <= 3 else f"{text}…{max(packets)}"


class Narrator:
    """A sink that narrates Steps on a terminal (or into a file or pipe).

    ``console`` gives the width and the colours (rich decides: a terminal, or
    ``COLUMNS`` / ``NO_COLOR`` / ``FORCE_COLOR``); ``stream`` is where the text
    goes (default: the console's file). ``flush_each``: flush after every Step
    (default: when the stream is a terminal or the narration is live).
    """

    def __init__(self, console: Console | None = None, lang: str = "en", explain: str = "first",
                 reveal: bool = False, *, stream: IO[str] | None = None, compact: bool = False,
                 flush_each: bool = True) -> None:
        if explain not in EXPLAIN:
            raise ValueError(f"explain must be one of {', '.join(EXPLAIN)}")
        self.console = console or Console(highlight=False)
        self.lang = lang
        self.explain = explain
        self.reveal = reveal
        self.compact = compact
        self.width = max(self.console.width, 40)
        self.terminal = self.console.is_terminal
        self.out: IO[str] = stream if stream is not None else self.console.file
        self.flush_each = flush_each
        self.paint = Painter(self.console)
        self._catalog = catalog()
        self._seen: set = set()
        self._heads: dict[tuple, tuple[str, int]] = {}
        self._comments: dict[tuple, str] = {}
        self._wrapped: dict[tuple, list[str]] = {}
        self._bodies: dict[tuple, str] = {}
        self._explained: set[tuple] = set()
        self._second = -1
        self._stamp = ""
        self._session = None          # compact: the session named last
        self._parts: list[str] = []
        self._pending: list[Step] = []   # offline: Steps waiting for a batch
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ Steps

    def step(self, step: Step) -> None:
        if self.flush_each:
            with self._lock:
                self._render((step,))
                self.flush()
            return
        # Offline (a capture into a file): Steps are rendered a batch at a time.
        pending = self._pending
        pending.append(step)
        if len(pending) >= 512:
            with self._lock:
                self._pending = []
                self._render(pending)
                self.flush()

    def _render(self, steps) -> None:
        """Render Steps into the output buffer: one tight loop, everything that repeats
        (a session's head, a line's painted and wrapped text, an explanation already
        given) looked up rather than made again."""
        add = self._parts.append
        heads, bodies, explained = self._heads, self._bodies, self._explained
        dim, terminal = self._dim, self.terminal
        plain = not terminal and self.paint.plain
        explain, compact, reveal = self.explain, self.compact, self.reveal
        first_only = explain == "first"
        limit = self.width - MIN_TEXT
        for step in steps:
            proto, kind = step.proto, step.kind
            if proto == "tls":
                style = "magenta"
            elif kind == "event":
                style = "red" if step.failed or step.meta.get("status") in ("bounced", "deferred") else "yellow"
            elif step.dir == "c2s":
                style = "cyan"
            else:
                code = step.code
                failed = code >= 400 if code is not None else step.status in _FAILURES
                style = "red" if failed else "green"
            if compact:
                if step.session != self._session:
                    self._session = step.session
                    add(self.paint(f"── {step.session} ──", "dim") + "\n")
                head, indent = self._head(step, style)
            else:
                second = int(step.t)
                if second != self._second:
                    self._new_second(step.t)
                rest = heads.get((step.session, step.src, step.dst, step.tls, style))
                if rest is None:
                    rest = self._head(step, style)
                    head, indent = rest
                else:
                    head, indent = self._stamp + rest[0], rest[1]
            line = step.line if step.secret is None else step.shown_line(reveal)
            line = localize(line, self.lang)      # gponsim's own words, in its language
            body = bodies.get((line, style, indent))
            if body is None:
                if len(bodies) > _CACHE_LIMIT:
                    bodies.clear()
                body = bodies[(line, style, indent)] = self._body(line, style, indent)
            packets = step.packets
            if packets is None or kind == "event":
                add(head + body[0] + "\n")
            elif plain:                          # into a file: no colours, no width
                add(f"{head}{body[0]}  #{packets[0]}\n" if len(packets) == 1 else
                    f"{head}{body[0]}  {packet_numbers(packets)}\n")
            else:
                # From a capture: the packets it was read from, as Wireshark numbers them,
                # at the end of its text (on a terminal, on a line of their own when they do
                # not fit there; a file has no width to keep).
                tag = f"#{packets[0]}" if len(packets) == 1 else packet_numbers(packets)
                if len(tag) + 1 < body[1] or not terminal:
                    add(head + body[0] + dim("  " + tag) + "\n")
                else:
                    add(head + body[0] + "\n" + " " * indent + dim(tag) + "\n")
            if explain == "none":
                continue
            if first_only and (step.key, proto, kind, step.verb, step.code, step.enhanced,
                               step.status) in explained:
                continue
            self._comment(step, indent if indent < limit else 4)

    def _new_second(self, t: float) -> None:
        self._second = int(t)
        self._stamp = self.paint(time.strftime("%H:%M:%S", time.localtime(t)), "dim")
        if len(self._heads) > _CACHE_LIMIT:
            self._heads.clear()

    def _dim(self, text: str) -> str:
        return self.paint(text, "dim")

    def _body(self, line: str, style: str, indent: int) -> tuple[str, int]:
        """A Step's text after its head, painted and wrapped in its column (without the
        last newline), and the cells left free on its last line."""
        line = visible(line)          # control bytes and bytes that were not text, escaped
        if "\t" in line:
            # A TAB separates the fields of Dovecot's auth protocol: make it visible.
            line = line.replace("\t", " ␉ ")
        room = self.width - indent
        if room < MIN_TEXT:       # a long session name: wrapped lines start near the left
            first_room, indent, room = room, 4, self.width - 4
        else:
            first_room = room
        pad = " " * indent
        paint = self.paint
        out = []
        free = first_room
        for n, text in enumerate(line.split("\n")):
            size = cells(text)
            limit = first_room if n == 0 else room
            pieces = [text] if size <= limit else self._wrap(text, limit, room)
            for m, piece in enumerate(pieces):
                out.append(("" if n == 0 and m == 0 else pad) + paint(piece, style))
                free = (first_room if n == 0 and m == 0 else room) - cells(piece)
        return "\n".join(out), free

    def _head(self, step: Step, style: str) -> tuple[str, int]:
        """The text before a Step's line (clock, session, who → whom) and its width."""
        if self.compact:
            key = (step.src, step.dst, step.tls, style)
            head = self._heads.get(key)
            if head is None:
                who = f"{step.src} → {step.dst}"
                lock = "🔒" if step.tls else "  "
                text = "  " + self.paint(who, f"bold {style}") + " " * max(1, 17 - len(who)) + lock + " "
                head = self._heads[key] = (text, 2 + max(len(who) + 1, 17) + 3)
            return head
        if int(step.t) != self._second:
            self._new_second(step.t)
        key = (step.session, step.src, step.dst, step.tls, style)
        rest = self._heads.get(key)
        if rest is None:
            who = f"{step.src} → {step.dst}"
            lock = " 🔒" if step.tls else ""
            text = " " + self.paint(step.session, "dim") + " " + self.paint(who, f"bold {style}") + lock + "  "
            size = 9 + len(step.session) + 1 + len(who) + (3 if lock else 0) + 2
            rest = self._heads[key] = (text, size)
        return self._stamp + rest[0], rest[1]

    def _wrap(self, text: str, first: int, rest: int) -> list[str]:
        """``text`` cut into lines of ``first`` cells, then ``rest`` cells (rich's wrapping).

        Long lines repeat (a capture's ``[message: 2048 bytes, …]``): each is wrapped once."""
        key = (text, first, rest)
        lines = self._wrapped.get(key)
        if lines is not None:
            return lines
        if _narrow(text) and "  " not in text and "\t" not in text:
            # One cell per character, words one space apart (a capture's "connection a → b"
            # for every connection): greedy wrapping at the last space that fits.
            lines, limit = [], first
            while len(text) > limit:
                cut = text.rfind(" ", 0, limit + 1)
                if cut <= 0:                       # a word longer than the line: folded
                    lines.append(text[:limit])
                    text = text[limit:]
                else:
                    lines.append(text[:cut])
                    text = text[cut + 1:]
                limit = rest
            lines.append(text)
        elif _narrow(text):
            # One cell per character: the standard library's wrapper gives the same lines, faster.
            lines = textwrap.wrap(text, first, break_on_hyphens=False) or [""]
            if len(lines) > 1 and rest != first:
                lines = lines[:1] + textwrap.wrap(" ".join(lines[1:]), rest, break_on_hyphens=False)
        else:
            lines = [line.plain.rstrip() for line in Text(text).wrap(self.console, first, overflow="fold")]
            if len(lines) > 1 and rest != first:
                tail = " ".join(lines[1:])
                lines = lines[:1] + [line.plain.rstrip() for line in
                                     Text(tail).wrap(self.console, rest, overflow="fold")]
        if len(self._wrapped) > _CACHE_LIMIT:
            self._wrapped.clear()
        lines = self._wrapped[key] = lines or [""]
        return lines

    def _comment(self, step: Step, indent: int) -> None:
        first = self.explain == "first"
        if first:
            # A kind of Step whose explanation was given needs no look-up any more.
            signature = (step.key, step.proto, step.kind, step.verb, step.code, step.enhanced, step.status)
            if signature in self._explained:
                return
        entry, fixed = self._catalog.explain(step)
        if first and fixed and len(self._explained) < _CACHE_LIMIT:
            self._explained.add(signature)
        if entry is None:
            return
        if first:
            marker = (entry.key, entry.match)        # one explanation (keys may have several)
        elif self.explain == "session":
            marker = (step.session, entry.key, entry.match)
        else:
            marker = None
        if marker is not None:
            if marker in self._seen:
                return
            self._seen.add(marker)
        said = visible(entry.render(self.lang, step))   # the template, filled from this Step
        cache = (entry.key, entry.match, indent, said)
        text = self._comments.get(cache)
        if text is None:
            if len(self._comments) > _CACHE_LIMIT:
                self._comments.clear()
            text = self._comments[cache] = self.comment_text(entry, indent, said)
        self._parts.append(text)

    def comment_text(self, entry, indent: int, said: str | None = None) -> str:
        """An explanation under its Step: ``↳ text (RFC)``, wrapped in its column."""
        body = Text("↳ ", style="dim")
        body.append(said if said is not None else entry.text(self.lang), style="italic dim")
        if entry.rfc:
            body.append(f" ({entry.rfc})", style="dim")
        pad = " " * indent
        out = []
        for paragraph in body.split("\n"):
            for line in paragraph.wrap(self.console, self.width - indent - 2, overflow="fold"):
                line.rstrip()
                out.append(pad + self._styled(line))
        # Lines after the first start under the text, not under the arrow.
        return "\n".join(out[:1] + ["  " + o for o in out[1:]]) + "\n"

    def _styled(self, text: Text) -> str:
        """A rich Text as ANSI (its spans painted), without a console round trip."""
        plain = text.plain
        if not text.spans:
            return self.paint(plain, str(text.style)) if text.style else plain
        pieces, at = [], 0
        for span in sorted(text.spans, key=lambda s: s.start):
            if span.start > at:
                pieces.append(plain[at:span.start])
            pieces.append(self.paint(plain[span.start:span.end], str(span.style)))
            at = max(at, span.end)
        pieces.append(plain[at:])
        return "".join(pieces)

    # ------------------------------------------------------------------ output

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                pending, self._pending = self._pending, []
                self._render(pending)
            if self._parts:
                self.out.write("".join(self._parts))
                self._parts.clear()
            try:
                self.out.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.flush()
