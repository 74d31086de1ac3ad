"""Diagrams of the lab, drawn from what was observed (library API).

    from gponsim.diagrams import draw_architecture, draw_sequence, load_steps
    steps = load_steps("session.steps.jsonl")
    draw_architecture(steps, "arch.svg")
    draw_sequence(steps, "send.svg", flow="send", lang="es")

Lessons and slides call these directly; the CLI (`gponsim diagram`) is a thin
shell over them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from gponsim.diagrams.architecture import architecture_dot, architecture_mermaid
from gponsim.diagrams.dot import sequence_dot
from gponsim.diagrams.mermaid import sequence_mermaid
from gponsim.diagrams.render import FORMATS, DotMissing, render
from gponsim.diagrams.sequence import FLOWS, MAX_ROWS, Page, build_sequence
from gponsim.steps import Step, read_jsonl

__all__ = ["FORMATS", "FLOWS", "DotMissing", "Page", "build_sequence", "draw_architecture",
           "draw_ladder", "draw_sequence", "load_steps"]


def load_steps(path: str | Path) -> list[Step]:
    """Steps from a ``*.steps.jsonl`` file (captures: see gponsim.capture)."""
    path = Path(path)
    if path.suffix in (".pcap", ".pcapng", ".cap"):
        from gponsim import capture

        analyze = getattr(capture, "steps_from_capture", None)
        if analyze is None:
            raise ValueError(f"{path}: reading captures needs the capture analyzer (gponsim analyze)")
        return list(analyze(path))
    return list(read_jsonl(path))


def _write(text_dot: str, text_mermaid: str, out: Path, fmt: str) -> Path:
    if fmt == "mermaid":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text_mermaid, encoding="utf-8")
        return out
    try:
        return render(text_dot, out, fmt)
    except DotMissing:
        # Keep the source so nothing is lost; the caller tells the user.
        out.with_suffix(".dot").write_text(text_dot, encoding="utf-8")
        out.with_suffix(".mmd").write_text(text_mermaid, encoding="utf-8")
        raise


def draw_architecture(steps: Iterable[Step] | None, out: str | Path, *, fmt: str = "svg",
                      lang: str = "en", highlight: set[str] | None = None) -> Path:
    steps = list(steps) if steps is not None else None
    return _write(architecture_dot(steps, lang, highlight), architecture_mermaid(lang), Path(out), fmt)


def draw_sequence(steps: Iterable[Step], out: str | Path, *, fmt: str = "svg", lang: str = "en",
                  flow: str = "all", session: str | None = None, notes: bool = False,
                  collapse: bool = True, page_rows: int = MAX_ROWS, title: str | None = None,
                  label_width: int = 80) -> list[Path]:
    """One file per page: ``out`` itself for one page, ``name-2.svg``... after it.

    ``label_width`` shortens the arrows' texts (narrower columns, e.g. for slides)."""
    pages = build_sequence(steps, flow=flow, session=session, lang=lang, notes=notes,
                           collapse_runs=collapse, page_rows=page_rows, label_width=label_width)
    return _draw_pages(pages, Path(out), fmt, lang, title)


def draw_ladder(capture: str | Path, out: str | Path, *, session: str | None = None,
                keylog: str | Path | None = None, fmt: str = "svg", lang: str = "en",
                notes: bool = False, page_rows: int = MAX_ROWS, title: str | None = None) -> list[Path]:
    """The TCP ladder of one connection of a capture (:mod:`.ladder`): one file per page,
    as :func:`draw_sequence` writes them. Raises :class:`~.ladder.NoConnection`."""
    from gponsim.diagrams.ladder import build_ladder

    pages, _conn = build_ladder(capture, session=session, keylog=keylog, lang=lang, notes=notes,
                                page_rows=page_rows)
    return _draw_pages(pages, Path(out), fmt, lang, title)


def _draw_pages(pages: list[Page], out: Path, fmt: str, lang: str, title: str | None) -> list[Path]:
    def one(page: Page) -> Path:
        target = out if page.number == 1 else out.with_name(f"{out.stem}-{page.number}{out.suffix}")
        return _write(sequence_dot(page, lang, title), sequence_mermaid(page, lang), target, fmt)

    if len(pages) == 1:
        return [one(pages[0])]
    # Each page is its own `dot` process: draw them side by side.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(one, pages))
