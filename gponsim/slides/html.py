"""One self-contained HTML file per deck: inline SVG, keyboard navigation, print CSS."""

from __future__ import annotations

import html
import re
from pathlib import Path

from gponsim.slides.deck import Deck, Slide

CSS = """
:root { --fg: #111; --bg: #fff; --accent: #1f4fa8; --client: #006d77; --server: #2e7d32;
        --internal: #8a6d00; --fail: #b00020; --scale: 1; }
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; background: #222; overflow: hidden;
             font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; }
/* Every slide is a 1920x1080 stage, scaled to the window: the same layout on any screen. */
.slide { display: none; position: absolute; left: 50%; top: 50%; width: 1920px; height: 1080px;
         transform: translate(-50%, -50%) scale(var(--scale)); background: var(--bg); color: var(--fg);
         padding: 56px 80px 64px 80px; overflow: hidden; }
.slide.active { display: flex; flex-direction: column; }
h1 { color: var(--accent); font-size: 52px; line-height: 1.15; margin: 0 0 28px 0; }
.kind-title h1 { font-size: 76px; margin-top: 250px; }
.subtitle { font-size: 38px; color: #444; margin: 0 0 24px 0; }
p, li { font-size: 32px; line-height: 1.35; }
ul { margin: 8px 0; padding-left: 44px; }
li { margin: 0 0 10px 0; }
.body { font-size: 32px; line-height: 1.4; margin: 0 0 20px 0; }
pre.transcript { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 23px;
                 line-height: 1.3; background: #f6f8fa; border: 1px solid #d0d7de; padding: 16px 20px;
                 margin: 0; white-space: pre; overflow: hidden; }
.client { color: var(--client); } .server { color: var(--server); } .internal { color: var(--internal); }
.file { color: #333; } .gap { color: #777; font-style: italic; }
.hl { background: #fff3b0; font-weight: bold; } .fail { color: var(--fail); font-weight: bold; }
.marks { margin-top: 12px; padding-left: 0; } .marks li { list-style: none; font-size: 30px; }
.ok::before { content: "✔ "; color: var(--server); } .ko::before { content: "✘ "; color: var(--fail); }
.na::before { content: "– "; color: #8a6d00; }
.figures { display: grid; grid-template-columns: 200px 1fr; gap: 14px 28px; align-items: baseline; }
.figures .value { font-size: 48px; font-weight: bold; color: var(--accent); text-align: right; }
.figures .what { font-size: 32px; }
.figure { flex: 1 1 auto; min-height: 0; display: flex; justify-content: center; }
.figure svg { width: 100%; height: 100%; }
.notes { display: none; }
.counter { position: absolute; right: 40px; bottom: 20px; font-size: 22px; color: #777; }
@media print {
  html, body { background: #fff; height: auto; overflow: visible; }
  @page { size: 1920px 1080px; margin: 0; }
  .slide { display: flex !important; flex-direction: column; position: relative; left: 0; top: 0;
           transform: none; page-break-after: always; }
  .counter { display: none; }
}
"""

JS = """
const slides = Array.from(document.querySelectorAll('.slide'));
let current = 0;
function fit() {
  const scale = Math.min(window.innerWidth / 1920, window.innerHeight / 1080);
  document.documentElement.style.setProperty('--scale', String(scale));
}
function show(n) {
  current = Math.max(0, Math.min(slides.length - 1, n));
  slides.forEach((s, i) => s.classList.toggle('active', i === current));
  document.body.dataset.slide = String(current + 1);
  if (location.hash !== '#' + (current + 1)) history.replaceState(null, '', '#' + (current + 1));
}
window.addEventListener('resize', fit);
document.addEventListener('keydown', (e) => {
  if (['ArrowRight', 'PageDown', ' ', 'Enter'].includes(e.key)) { show(current + 1); e.preventDefault(); }
  if (['ArrowLeft', 'PageUp', 'Backspace'].includes(e.key)) { show(current - 1); e.preventDefault(); }
  if (e.key === 'Home') show(0);
  if (e.key === 'End') show(slides.length - 1);
});
document.addEventListener('click', (e) => { if (e.target.tagName !== 'A') show(current + 1); });
fit();
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
        parts.append("".join(f'<p class="body">{e(b)}</p>' for b in slide.bullets))
    elif slide.body:
        parts.append(f'<p class="body">{e(slide.body)}</p>')
    if slide.bullets and slide.kind != "title":
        parts.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in slide.bullets) + "</ul>")
    if slide.transcript:
        rows = []
        for line in slide.transcript:
            cls = [line.speaker] + (["hl"] if line.highlight else []) + (["fail"] if line.failed else [])
            rows.append(f'<span class="{" ".join(cls)}">{e(line.text)}</span>')
        parts.append('<pre class="transcript">' + "\n".join(rows) + "</pre>")
    if slide.marks:
        parts.append('<ul class="marks">' + "".join(
            f'<li class="{ {True: "ok", False: "ko"}.get(ok, "na") }">{e(says)}</li>'
            for says, ok in slide.marks) + "</ul>")
    if slide.figures:
        parts.append('<div class="figures">' + "".join(
            f'<div class="value">{e(value)}</div><div class="what">{e(what)}</div>'
            for value, what in slide.figures) + "</div>")
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
