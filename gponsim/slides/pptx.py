"""PowerPoint decks with python-pptx: 16:9, editable text, diagrams as images, speaker notes.

Boxes are stacked top to bottom, each as tall as its text needs: the height is
estimated from the text's length at its size with a wide font's metrics
(DejaVu Sans, what LibreOffice uses here; PowerPoint's substitutes are
narrower), so no text box runs into the next one in either program. Sizes
match the HTML deck at 1920×1080 (1 pt = 2 px on a 13.33-inch slide).
"""

from __future__ import annotations

import math
from pathlib import Path

from gponsim.slides.deck import Deck

SPEAKER_COLORS = {"client": (0x00, 0x6D, 0x77), "server": (0x2E, 0x7D, 0x32), "internal": (0x8A, 0x6D, 0x00),
                  "file": (0x33, 0x33, 0x33), "gap": (0x77, 0x77, 0x77)}
ACCENT = (0x1F, 0x4F, 0xA8)
FAIL = (0xB0, 0x00, 0x20)
OK = (0x2E, 0x7D, 0x32)
GREY = (0x44, 0x44, 0x44)
SANS, MONO = "DejaVu Sans", "DejaVu Sans Mono"
EM_SANS, EM_MONO = 0.58, 0.61        # average character width, in ems (generous)
LEADING = 1.22                       # line height, in ems
INSET = 0.05                         # text frame margins, inches

SIZES = {"title": 28, "big_title": 40, "subtitle": 20, "body": 17, "bullet": 17, "mark": 15,
         "transcript": 11.5, "figure": 24, "figure_text": 16}


def _png_of(svg: Path) -> Path | None:
    """A high-resolution PNG of a diagram, from the Graphviz source beside its SVG."""
    import graphviz

    png = svg.with_suffix(".png")
    if png.exists() and png.stat().st_mtime >= svg.stat().st_mtime:
        return png
    dot = svg.with_suffix(".dot")
    if not dot.exists():
        return None
    source = dot.read_text(encoding="utf-8").replace("{\n", "{\n  graph [dpi=150];\n", 1)
    png.write_bytes(graphviz.Source(source).pipe(format="png"))
    return png


def text_height(paragraphs: list[str], size: float, width_in: float, mono: bool = False) -> float:
    """Inches a text needs at ``size`` points in a box ``width_in`` wide (wrapped by words)."""
    per_line = max(1, int((width_in - 2 * INSET) * 72 / (size * (EM_MONO if mono else EM_SANS))))
    lines = 0
    for paragraph in paragraphs:
        if mono:
            lines += max(1, math.ceil(len(paragraph) / per_line))
            continue
        count, used = 1, 0
        for w in paragraph.split():
            need = len(w) + (1 if used else 0)
            if used and used + need > per_line:
                count += 1
                used = len(w)
            else:
                used += need
        lines += count
    return lines * size * LEADING / 72 + 2 * INSET + 0.04


def write_pptx(deck: Deck, out: Path) -> Path:
    from pptx import Presentation
    from pptx.dml.color import RGBColor
    from pptx.enum.text import MSO_AUTO_SIZE
    from pptx.util import Emu, Inches, Pt

    prs = Presentation()
    prs.slide_width, prs.slide_height = Emu(12192000), Emu(6858000)     # 13.333 × 7.5 in, 16:9
    blank = prs.slide_layouts[6]
    slide_w, slide_h = 13.333, 7.5
    margin = 0.55
    width = slide_w - 2 * margin

    def textbox(slide, top: float, items, size: float, *, color=None, bold=False, mono=False,
                left: float = margin, box_w: float = width) -> float:
        """A text box at ``top`` (inches) as tall as its text; returns its bottom."""
        items = [i if isinstance(i, tuple) else (i, color, bold) for i in items]
        height = text_height([t for t, _, _ in items], size, box_w, mono)
        box = slide.shapes.add_textbox(Inches(left), Inches(top), Inches(box_w), Inches(height))
        frame = box.text_frame
        frame.word_wrap = True
        frame.auto_size = MSO_AUTO_SIZE.NONE
        frame.margin_left = frame.margin_right = frame.margin_top = frame.margin_bottom = Inches(INSET)
        for n, (text, rgb, strong) in enumerate(items):
            para = frame.paragraphs[0] if n == 0 else frame.add_paragraph()
            para.line_spacing = LEADING * 0.98 if not mono else 1.0
            run = para.add_run()
            run.text = text
            run.font.size = Pt(size)
            run.font.bold = strong
            run.font.name = MONO if mono else SANS
            if rgb:
                run.font.color.rgb = RGBColor(*rgb)
        return top + height

    for s in deck.slides:
        slide = prs.slides.add_slide(blank)
        if s.kind == "title":
            y = textbox(slide, 2.0, [s.title], SIZES["big_title"], color=ACCENT, bold=True) + 0.2
            y = textbox(slide, y, [s.body], SIZES["subtitle"], color=GREY) + 0.1
            if s.bullets:
                textbox(slide, y, s.bullets, SIZES["body"], color=GREY)
        else:
            y = textbox(slide, 0.35, [s.title], SIZES["title"], color=ACCENT, bold=True) + 0.12
            if s.body:
                y = textbox(slide, y, [s.body], SIZES["body"]) + 0.1
            if s.bullets:
                y = textbox(slide, y, [f"• {b}" for b in s.bullets], SIZES["bullet"]) + 0.1
            if s.transcript:
                lines = [(line.text, FAIL if line.failed else SPEAKER_COLORS[line.speaker], line.highlight)
                         for line in s.transcript]
                y = textbox(slide, y, lines, SIZES["transcript"], mono=True) + 0.1
            if s.marks:
                y = textbox(slide, y, [({True: "✔ ", False: "✘ "}.get(ok, "– ") + says,
                                        {True: OK, False: FAIL}.get(ok, GREY), False)
                                       for says, ok in s.marks], SIZES["mark"]) + 0.1
            if s.figures:
                for value, what in s.figures:
                    bottom = textbox(slide, y, [value], SIZES["figure"], color=ACCENT, bold=True,
                                     box_w=2.2)
                    textbox(slide, y + 0.07, [what], SIZES["figure_text"], left=margin + 2.4,
                            box_w=width - 2.4)
                    y = bottom + 0.02
            if s.diagram is not None and s.diagram.exists():
                png = _png_of(s.diagram)
                if png is None:       # a diagram without its Graphviz source: name it instead
                    textbox(slide, y, [s.diagram.name], SIZES["body"], color=GREY)
                else:
                    from PIL import Image  # python-pptx depends on Pillow

                    with Image.open(png) as img:
                        w, h = img.size
                    avail_w, avail_h = Inches(width), Inches(slide_h - y - 0.3)
                    scale = min(avail_w / w, avail_h / h)
                    pic_w, pic_h = Emu(int(w * scale)), Emu(int(h * scale))
                    slide.shapes.add_picture(str(png), int((prs.slide_width - pic_w) / 2), Inches(y),
                                             pic_w, pic_h)
        if s.notes:
            slide.notes_slide.notes_text_frame.text = s.notes
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prs.save(str(out))
    return out
