"""What a lesson shows on the terminal, in the order a student reads it.

One sink, :class:`LessonView`, owns the lesson's terminal: the runner's texts
(titles, a step's explanation, checkpoints, hints; rich renderables) and the
narration of the lab's Steps (a compact :class:`Narrator`) go through it, so
they never interleave mid-line and come out in teaching order:

- Steps emitted while the lab starts (Dovecot's auth handshake, the Gmail
  simulator's mapping) are kept back and folded into one quiet line, unless
  ``show_startup``; a lesson step about them can replay them (:meth:`replay_startup`).
- Between lesson steps the view is *held*: what the lab does meanwhile (a
  delivery finishing while the student reads) waits, and is shown after the
  next step's explanation, when the runner releases it.
- Within a step, the Steps of *deferred* protocols (the queue and delivery,
  while a later step explains them) wait too; everything else, the client's
  own session above all, is narrated as it happens.
"""

from __future__ import annotations

import threading

from rich.console import Console

from gponsim.lessons.words import word
from gponsim.sinks.narrator import Narrator
from gponsim.sinks.phrases import localize
from gponsim.steps import Step


class LessonView:
    def __init__(self, console: Console | None = None, lang: str = "en", explain: str = "first",
                 narrate: bool = True, show_startup: bool = False, reveal: bool = False) -> None:
        self.console = console or Console(highlight=False)
        self.lang = lang
        self.show_startup = show_startup
        self.narrator = Narrator(self.console, lang=lang, explain=explain, reveal=reveal,
                                 compact=True) if narrate else None
        self._lock = threading.RLock()
        self._starting = True
        self._held = False
        #: protocols whose Steps wait for a later step even while the view is live
        self._deferred: frozenset[str] = frozenset()
        self.startup: list[Step] = []
        self._waiting: list[Step] = []
        self._muted = False

    # ------------------------------------------------------------------ the sink

    def step(self, step: Step) -> None:
        with self._lock:
            if self._muted:
                return
            if self._starting:
                self.startup.append(step)
            elif self._held or step.proto in self._deferred:
                self._waiting.append(step)
            elif self.narrator is not None:     # (a client's session goes on past a delivery that waits)
                self.narrator.step(step)

    # ------------------------------------------------------------------ the runner's side

    def print(self, *renderables, **options) -> None:
        """Print the runner's own text (a rich renderable) after the narration so far."""
        options.setdefault("markup", False)
        with self._lock:
            if self._muted:
                return
            if self.narrator is not None:
                self.narrator.flush()
            self.console.print(*renderables, **options)

    def ask(self, prompt: str) -> str:
        """``input(prompt)`` after everything shown so far (EOFError once muted)."""
        with self._lock:
            if self._muted:
                raise EOFError("the lesson was interrupted")
            if self.narrator is not None:
                self.narrator.flush()
            self.console.file.flush()
        return input(prompt)

    def started(self) -> None:
        """The lab is up: what it said while starting is shown, or folded into one line."""
        with self._lock:
            self._starting = False
            if self.narrator is None:
                return
            if self.show_startup:
                for step in self.startup:
                    self.narrator.step(step)
                return
            self.print(self.startup_line(), style="dim")

    def startup_line(self) -> str:
        sessions: dict[str, list[Step]] = {}
        for step in self.startup:
            sessions.setdefault(step.session, []).append(step)
        parts = []
        for steps in sessions.values():
            if len(steps) == 1:
                # One line (the relay's mapping, say): its gist, before any aside in brackets.
                line = localize(steps[0].shown_line(), self.lang).split("\n")[0].split(" (")[0]
                parts.append(line if len(line) <= 80 else line[:79] + "…")
            else:
                from gponsim.diagrams.labels import participant_name
                from gponsim.diagrams.sequence import ORDER

                pair = sorted({steps[0].src, steps[0].dst}, key=lambda a: ORDER.index(a) if a in ORDER else 99)
                who = " ↔ ".join(participant_name(a, self.lang) for a in pair)
                parts.append(word("startup_session", self.lang, who=who, n=len(steps)))
        if not parts:
            return word("startup_none", self.lang)
        return word("startup", self.lang, parts="; ".join(parts))

    def replay_startup(self, proto: str | None = None) -> int:
        """Narrate the start-up Steps (of ``proto``) now, for a lesson step about them."""
        chosen = [s for s in self.startup if proto is None or s.proto == proto]
        with self._lock:
            if self.narrator is not None:
                for step in chosen:
                    self.narrator.step(step)
        return len(chosen)

    def hold(self) -> None:
        """From now on the lab's Steps wait (the student is reading)."""
        with self._lock:
            self._held = True

    def defer(self, protos) -> None:
        """Steps of these protocols wait (for the step that explains them) even
        while the view is live: a delivery finishing during the step that sends."""
        with self._lock:
            self._deferred = frozenset(protos)

    def release(self) -> None:
        """Show what waited, in order, but what is deferred (it goes on waiting), then
        narrate live again."""
        with self._lock:
            self._held = False
            waiting, self._waiting = self._waiting, []
            for step in waiting:
                if step.proto in self._deferred:
                    self._waiting.append(step)
                elif self.narrator is not None:
                    self.narrator.step(step)

    def mute(self) -> None:
        """The run was interrupted: nothing more is shown (what waits is dropped)."""
        with self._lock:
            self._muted = True
            self._waiting = []
            if self.narrator is not None:
                self.narrator.flush()

    def close(self) -> None:
        self._deferred = frozenset()
        self.release()
        if self.narrator is not None:
            self.narrator.flush()
