"""PowerPoint decks with python-pptx: 16:9, editable text, diagrams as images, speaker notes."""

from __future__ import annotations

from pathlib import Path

from gponsim.slides.deck import Deck

SPEAKER_COLORS = {"client": (0x00, 0x6D, 0x77), "server": (0x2E, 0x7D, 0x32), "internal": (0x8A, 0x6D, 0x00)}
ACCENT = (0x1F, 0x4F, 0xA8)
FAIL = (0xB0, 0x00, 0x20)


def _png_of(svg: Path) -> Path:
    """A high-resolution PNG of a diagram, from the Graphviz source beside its SVG."""
    import graphviz

    png = svg.with_suffix(".png")
    if png.exists() and png.stat().st_mtime >= svg.stat().st_mtime:
        return png
    dot = svg.with_suffix(".dot")
    if not dot.exists():
        raise FileNotFoundError(f"{dot}: the diagram's Graphviz source is needed for the PPTX")
    source = dot.read_text(encoding="utf-8").replace("{\n", "{\n  graph [dpi=170];\n", 1)
    png.write_bytes(graphviz.Source(source).pipe(format="png"))
    return png


def write_pptx(deck: Deck, out: Path) -> Path:
    from pptx import Presentation
    from pptx.dml.color import RGBColor
    from pptx.util import Emu, Inches, Pt

    prs = Presentation()
    prs.slide_width, prs.slide_height = Emu(12192000), Emu(6858000)     # 13.333 × 7.5 in, 16:9
    blank = prs.slide_layouts[6]
    width, height = prs.slide_width, prs.slide_height
    margin = Inches(0.5)

    def textbox(slide, left, top, w, h, lines, size, color=None, bold=False, font=None):
        box = slide.shapes.add_textbox(left, top, w, h)
        frame = box.text_frame
        frame.word_wrap = True
        for i, item in enumerate(lines):
            text, rgb, strong = item if isinstance(item, tuple) else (item, color, bold)
            para = frame.paragraphs[0] if i == 0 else frame.add_paragraph()
            run = para.add_run()
            run.text = text
            run.font.size = Pt(size)
            run.font.bold = strong
            if font:
                run.font.name = font
            if rgb:
                run.font.color.rgb = RGBColor(*rgb)
        return box

    for s in deck.slides:
        slide = prs.slides.add_slide(blank)
        top = Inches(0.35)
        title_size = 40 if s.kind == "title" else (28 if len(s.title) <= 48 else 24)
        if s.kind == "title":
            top = Inches(2.4)
        textbox(slide, margin, top, width - 2 * margin, Inches(1.0), [s.title], title_size, ACCENT, True)
        y = top + Inches(1.0)
        if s.kind == "title":
            textbox(slide, margin, y, width - 2 * margin, Inches(0.8), [s.body], 20, (0x44, 0x44, 0x44))
        elif s.body:
            textbox(slide, margin, y, width - 2 * margin, Inches(1.2), [s.body], 15)
            y += Inches(1.25) if len(s.body) > 220 else Inches(0.8)
        if s.bullets:
            textbox(slide, margin, y, width - 2 * margin, Inches(4.5), [f"• {b}" for b in s.bullets], 18)
            y += Inches(0.5) * min(len(s.bullets), 8)
        if s.transcript:
            lines = [(line.text, FAIL if line.failed else SPEAKER_COLORS[line.speaker], line.highlight)
                     for line in s.transcript]
            rows = len(lines)
            textbox(slide, margin, y, width - 2 * margin, Inches(0.26) * rows, lines, 11,
                    font="DejaVu Sans Mono")
            y += Inches(0.24) * rows + Inches(0.1)
        if s.marks:
            textbox(slide, margin, y, width - 2 * margin, Inches(0.4) * len(s.marks),
                    [(("✔ " if ok else "✘ ") + says, (0x2E, 0x7D, 0x32) if ok else FAIL, False)
                     for says, ok in s.marks], 14)
        if s.diagram is not None and s.diagram.exists():
            png = _png_of(s.diagram)
            from PIL import Image  # python-pptx depends on Pillow

            with Image.open(png) as img:
                w, h = img.size
            avail_w, avail_h = width - 2 * margin, height - y - Inches(0.3)
            scale = min(avail_w / w, avail_h / h)
            pic_w, pic_h = Emu(int(w * scale)), Emu(int(h * scale))
            slide.shapes.add_picture(str(png), int((width - pic_w) / 2), int(y), pic_w, pic_h)
        if s.notes:
            slide.notes_slide.notes_text_frame.text = s.notes
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prs.save(str(out))
    return out
