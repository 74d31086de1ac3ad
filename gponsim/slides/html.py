"""One self-contained HTML file per deck: inline SVG, keyboard navigation, print CSS."""

from __future__ import annotations

import html
import re
from pathlib import Path

from gponsim.slides.deck import Deck, Slide

CSS = """
:root { --fg: #111; --bg: #fff; --accent: #1f4fa8; --client: #006d77; --server: #2e7d32;
        --internal: #8a6d00; --fail: #b00020; }
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; background: #222; font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; }
.slide { display: none; position: absolute; inset: 0; margin: auto; width: 100vw; height: 56.25vw;
         max-height: 100vh; max-width: 177.78vh; background: var(--bg); color: var(--fg);
         padding: 3.2vh 4vw; overflow: hidden; }
.slide.active { display: flex; flex-direction: column; }
h1 { color: var(--accent); font-size: 4.2vh; margin: 0 0 1.6vh 0; }
.kind-title h1 { font-size: 6.5vh; margin-top: 18vh; }
.subtitle { font-size: 3vh; color: #444; }
p, li { font-size: 2.7vh; line-height: 1.35; }
ul { margin: 0.5vh 0; }
.body { font-size: 2.4vh; margin-bottom: 1vh; }
pre.transcript { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 1.75vh;
                 line-height: 1.3; background: #f6f8fa; border: 1px solid #d0d7de; padding: 1vh 1vw;
                 margin: 0; white-space: pre; overflow: hidden; flex: 1 1 auto; }
.client { color: var(--client); } .server { color: var(--server); } .internal { color: var(--internal); }
.hl { background: #fff3b0; font-weight: bold; } .fail { color: var(--fail); font-weight: bold; }
.marks { margin-top: 1vh; } .marks li { list-style: none; font-size: 2.2vh; }
.ok::before { content: "✔ "; color: var(--server); } .ko::before { content: "✘ "; color: var(--fail); }
.figure { flex: 1 1 auto; min-height: 0; display: flex; }
.figure svg { width: 100%; height: 100%; }
.notes { display: none; }
.counter { position: absolute; right: 2vw; bottom: 1.5vh; font-size: 1.8vh; color: #777; }
@media print {
  html, body { background: #fff; height: auto; }
  @page { size: 16in 9in; margin: 0; }
  .slide { display: flex !important; flex-direction: column; position: relative; width: 16in;
           height: 9in; max-width: none; max-height: none; page-break-after: always; }
  .counter { display: none; }
}
"""

JS = """
const slides = Array.from(document.querySelectorAll('.slide'));
let current = 0;
function show(n) {
  current = Math.max(0, Math.min(slides.length - 1, n));
  slides.forEach((s, i) => s.classList.toggle('active', i === current));
  document.body.dataset.slide = String(current + 1);
  if (location.hash !== '#' + (current + 1)) history.replaceState(null, '', '#' + (current + 1));
}
document.addEventListener('keydown', (e) => {
  if (['ArrowRight', 'PageDown', ' ', 'Enter'].includes(e.key)) { show(current + 1); e.preventDefault(); }
  if (['ArrowLeft', 'PageUp', 'Backspace'].includes(e.key)) { show(current - 1); e.preventDefault(); }
  if (e.key === 'Home') show(0);
  if (e.key === 'End') show(slides.length - 1);
});
document.addEventListener('click', (e) => { if (e.target.tagName !== 'A') show(current + 1); });
show(parseInt((location.hash || '#1').slice(1), 10) - 1 || 0);
"""


def _svg(path: Path) -> str:
    """The SVG's own element, without its XML prolog (it goes inline)."""
    text = path.read_text(encoding="utf-8")
    start = text.find("<svg")
    svg = text[start:]
    # Let CSS size it: drop the fixed width/height, keep the viewBox.
    return re.sub(r'<svg width="[^"]*" height="[^"]*"', "<svg", svg, count=1)


def _slide(slide: Slide, n: int, total: int) -> str:
    e = html.escape
    parts = [f'<section class="slide kind-{slide.kind}" id="s{n}">', f"<h1>{e(slide.title)}</h1>"]
    if slide.kind == "title":
        parts.append(f'<p class="subtitle">{e(slide.body)}</p>')
    elif slide.body:
        parts.append(f'<p class="body">{e(slide.body)}</p>')
    if slide.bullets:
        parts.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in slide.bullets) + "</ul>")
    if slide.transcript:
        rows = []
        for line in slide.transcript:
            cls = [line.speaker] + (["hl"] if line.highlight else []) + (["fail"] if line.failed else [])
            rows.append(f'<span class="{" ".join(cls)}">{e(line.text)}</span>')
        parts.append('<pre class="transcript">' + "\n".join(rows) + "</pre>")
    if slide.marks:
        parts.append('<ul class="marks">' + "".join(
            f'<li class="{"ok" if ok else "ko"}">{e(says)}</li>' for says, ok in slide.marks) + "</ul>")
    if slide.diagram is not None and slide.diagram.exists():
        parts.append(f'<div class="figure">{_svg(slide.diagram)}</div>')
    if slide.notes:
        parts.append(f'<aside class="notes">{e(slide.notes)}</aside>')
    parts.append(f'<div class="counter">{n} / {total}</div></section>')
    return "\n".join(parts)


def write_html(deck: Deck, out: Path) -> Path:
    total = len(deck.slides)
    body = "\n".join(_slide(s, i, total) for i, s in enumerate(deck.slides, 1))
    title = html.escape(deck.slides[0].title)
    page = (f'<!DOCTYPE html>\n<html lang="{deck.lang}">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<script>{JS}</script>\n</body>\n</html>\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
