"""The terminal narrator: Steps as colour-coded lines with commentary (rich).

    23:40:46 submission-1 client → smtpd  EHLO [127.0.0.1]
    23:40:46 submission-1 smtpd → client  250-mail.gponlab.local ...
             ↳ The server lists its extensions ... (RFC 5321 §4.1.1.1)

Client lines are cyan, server replies green (2xx/3xx, OK) or red (failures),
internal events (queue, delivery, auth) yellow, TLS milestones magenta, and
commentary dim. By default each explanation is shown the first time its key
appears in a session; ``explain="all"`` repeats it, ``"none"`` hides it.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.text import Text

from gponsim.commentary import catalog
from gponsim.sinks.phrases import localize
from gponsim.steps import Step


class Narrator:
    def __init__(self, console: Console | None = None, lang: str = "en", explain: str = "first",
                 reveal: bool = False) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.lang = lang
        self.explain = explain
        self.reveal = reveal
        self._seen: set[tuple[str, str]] = set()
        self._catalog = catalog()

    def style_of(self, step: Step) -> str:
        if step.proto == "tls":
            return "magenta"
        if step.kind == "event":
            return "red" if step.failed or step.meta.get("status") in ("bounced", "deferred") else "yellow"
        if step.dir == "c2s":
            return "cyan"
        return "red" if step.failed else "green"

    def step(self, step: Step) -> None:
        style = self.style_of(step)
        stamp = time.strftime("%H:%M:%S", time.localtime(step.t))
        head = Text(f"{stamp} ", style="dim")
        head.append(f"{step.session} ", style="dim")
        head.append(f"{step.src} → {step.dst}", style=f"bold {style}")
        lock = " 🔒" if step.tls else ""
        head.append(f"{lock}  ")
        # A TAB separates the fields of Dovecot's auth protocol: make it visible.
        lines = localize(step.shown_line(self.reveal), self.lang).replace("\t", " ␉ ").split("\n")
        indent = " " * len(head.plain)
        head.append(lines[0], style=style)
        self.console.print(head)
        for more in lines[1:]:
            self.console.print(Text(indent + more, style=style))
        self._comment(step, indent)

    def _comment(self, step: Step, indent: str) -> None:
        if self.explain == "none":
            return
        entry = self._catalog.resolve(step)
        if entry is None:
            return
        marker = (step.session, entry.key)
        if self.explain == "first":
            if marker in self._seen:
                return
            self._seen.add(marker)
        text = Text(indent + "↳ ", style="dim")
        text.append(entry.render(self.lang, step), style="italic dim")
        if entry.rfc:
            text.append(f" ({entry.rfc})", style="dim")
        self.console.print(text)
