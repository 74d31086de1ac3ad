"""Instructor slides (HTML and PowerPoint) from a lesson and a recorded run of it.

    from gponsim.slides import make_slides
    make_slides(lesson, run_dir, out_dir, formats=("html", "pptx"), lang="es")
"""

from __future__ import annotations

from pathlib import Path

from gponsim.lessons.model import Lesson


class SlidesError(Exception):
    """A deck that cannot be built from what was given, said plainly."""


def make_slides(lesson: Lesson, run_dir: Path, out_dir: Path, *, formats=("html",), lang: str = "en") -> list[Path]:
    from gponsim.slides.deck import build_deck
    from gponsim.slides.words import word

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlidesError(word("out_unwritable", lang, out=out_dir, why=exc.strerror or exc)) from exc
    deck = build_deck(lesson, Path(run_dir), lang, work=out_dir / f".{lesson.id}-{lang}-diagrams")
    written = []
    if "html" in formats:
        from gponsim.slides.html import write_html

        written.append(write_html(deck, out_dir / f"{lesson.id}.{lang}.html"))
    if "pptx" in formats:
        from gponsim.slides.pptx import write_pptx

        written.append(write_pptx(deck, out_dir / f"{lesson.id}.{lang}.pptx"))
    return written


def write_index(decks: list[tuple[Lesson, list[Path]]], out_dir: Path, lang: str) -> Path:
    """An index page of every deck built with --all."""
    import html

    rows = "".join(
        f"<li>{html.escape(lesson.title[lang])} — "
        + " · ".join(f'<a href="{p.name}">{p.suffix[1:].upper()}</a>' for p in paths) + "</li>"
        for lesson, paths in decks)
    from gponsim.slides.words import word

    title = word("index", lang)
    page = (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>'
            f'<style>body{{font-family:sans-serif;font-size:20px;margin:2em}}li{{margin:.5em 0}}</style>'
            f"</head><body><h1>{title}</h1><ul>{rows}</ul></body></html>\n")
    path = Path(out_dir) / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
