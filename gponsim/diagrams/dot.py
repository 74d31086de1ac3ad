"""Graphviz (DOT) source for sequence pages, laid out for a 1920×1080 projector.

gponsim places everything itself and Graphviz only draws it (``layout=neato``
with every node pinned): lifelines are columns, each row a band across them.
A column gap is as wide as the widest label that sits in it, and a label
always sits in the gap next to its arrow's sender, so an arrow that crosses
other lifelines never crosses them through its own text. Log lines are notes
on the lifeline of the program that wrote them. Texts are wrapped (two lines
at most) and the page is kept within 1900×1060 units with 20-unit type, so
shown full screen at 1920×1080 no text is smaller than 20 px.

Replies are dashed, messages inside TLS blue, failures red, the TLS
handshake a double arrow, a collapsed run says ×N.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from gponsim.diagrams.labels import caption, participant_name, phase_name, service_name
from gponsim.diagrams.sequence import Page, Row, participant_labels

TLS_COLOR = "#1f5fbf"
FAIL_COLOR = "#c62828"
PLAIN_COLOR = "#222222"
NOTE_FILL = "#fff6cc"
FONT = "Helvetica"
FONT_SIZE = 20              # every text of the page: >= 18 px once fitted to 1920x1080
TITLE_SIZE = 24
CHAR_W = 0.62               # a character's width, in ems (generous for DejaVu Sans, Helvetica's stand-in)
LINE_H = 25                 # one line of text
MAX_W, MAX_H = 1900, 1060   # the page, in SVG units (px at 100 %)
BOX_H = 50                  # participant boxes
MARGIN = 30
COMMENT_W = 30              # characters per line of a commentary note (--notes)


def q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def text_width(text: str, size: int = FONT_SIZE) -> float:
    return max((len(line) for line in text.split("\n")), default=0) * size * CHAR_W


def _wrap(text: str, chars: int, lines: int = 2, *, keep_lines: bool = False) -> str:
    """``text`` in lines of at most ``chars``, ``lines`` of them at most (the last one cut
    with "…"); ``keep_lines``: a line break of the text starts a new line."""
    paragraphs = text.split("\n") if keep_lines else [text]
    parts = [line for paragraph in paragraphs
             for line in (textwrap.wrap(paragraph, chars, break_long_words=True,
                                        break_on_hyphens=False) or [""])]
    if len(parts) > lines:
        parts = parts[:lines]
        parts[-1] = parts[-1][:max(chars - 1, 1)].rstrip() + "…"
    return "\n".join(parts)


def page_title(page: Page, lang: str, title: str | None = None) -> str:
    phases = " · ".join(phase_name(p, lang) for p in page.phases if p)
    who = service_name(page.service, lang) if page.service else ""
    head = " — ".join(x for x in (title, phases, who) if x)
    if page.total > 1:
        head = f"{page.number}/{page.total}  " + head
    if any(r.tls for r in page.rows):
        head += "  (" + caption("in_tls", lang) + ")"
    return head


@dataclass
class Layout:
    """Where everything goes (top-down coordinates, in SVG units)."""

    width: float
    height: float
    x: dict[str, float]                          # lifeline of each participant
    rows: list[tuple[float, Row, str]] = field(default_factory=list)   # (y, row, its text)
    label_x: list[float] = field(default_factory=list)                  # centre of each row's text
    title: str = ""
    comment_x: float = 0.0
    names: dict[str, str] = field(default_factory=dict)             # each lifeline's name
    box_h: float = BOX_H                                                # its box's height


def _label_text(row: Row) -> str:
    label = row.label + (f"  (×{row.repeat})" if row.repeat > 1 else "")
    return label


def layout(page: Page, lang: str = "en", title: str | None = None) -> Layout:
    parts = page.participants or ["client"]
    index = {p: i for i, p in enumerate(parts)}
    names = participant_labels(page, lang) if page.participants else {"client": participant_name("client", lang)}
    box_w = {p: text_width(names[p]) + 40 for p in parts}
    comments = any(r.note for r in page.rows)
    budget = MAX_W - 2 * MARGIN - (text_width("x" * COMMENT_W, FONT_SIZE - 2) + 40 if comments else 0)
    chars = page.label_chars
    while True:
        texts = [_wrap(_label_text(r), chars, keep_lines=True) for r in page.rows]
        need = [0.0] * max(len(parts) - 1, 0)          # the width each gap needs
        left_edge = right_edge = max(box_w[parts[0]], box_w[parts[-1]]) / 2
        for p, (a, b) in enumerate(zip(parts, parts[1:])):
            need[p] = (box_w[a] + box_w[b]) / 2 + 24
        for row, label in zip(page.rows, texts):
            w = text_width(label) + 36
            i = index[row.src]
            if row.is_note or row.src == row.dst:
                # A note straddles its lifeline: half on each side.
                if i > 0:
                    need[i - 1] = max(need[i - 1], w / 2 + 16)
                else:
                    left_edge = max(left_edge, w / 2)
                if i < len(parts) - 1:
                    need[i] = max(need[i], w / 2 + 16)
                else:
                    right_edge = max(right_edge, w / 2)
                continue
            j = index[row.dst]
            gap = i if j > i else i - 1                  # the gap next to the sender
            need[gap] = max(need[gap], w)
        total = left_edge + sum(need) + right_edge
        if total <= budget or chars <= 16:
            break
        chars -= 4
    head = page_title(page, lang, title)
    # A title wider than the lifelines widens the page; the lifelines stay centred.
    spare = max(0.0, text_width(head, TITLE_SIZE) + 2 * MARGIN - (left_edge + sum(need) + right_edge + 2 * MARGIN))
    x, at = {}, MARGIN + left_edge + spare / 2
    for p, part in enumerate(parts):
        x[part] = at
        if p < len(need):
            at += need[p]
    width = at + right_edge + MARGIN + spare / 2
    comment_x = width
    if comments:
        width += text_width("x" * COMMENT_W, FONT_SIZE - 2) + 40
    box_h = BOX_H + LINE_H * max(n.count("\n") for n in names.values())   # a capture's: name + address
    y = MARGIN + (LINE_H + 16 if head else 0) + box_h + 20
    out = Layout(width=width, height=0, x=x, title=head, comment_x=comment_x, names=names, box_h=box_h)
    for row, label in zip(page.rows, texts):
        lines = label.count("\n") + 1
        comment_lines = min(len(textwrap.wrap(row.note, COMMENT_W)), 4) if row.note else 0
        height = max(lines * LINE_H + (14 if row.is_note else 22), comment_lines * 22 + 8)
        out.rows.append((y + height / 2, row, label))
        i, j = index[row.src], index[row.dst]
        if row.is_note or i == j:
            out.label_x.append(x[row.src])
        else:
            near = parts[i + 1] if j > i else parts[i - 1]
            out.label_x.append((x[row.src] + x[near]) / 2)
        y += height + 6
    out.height = y + 14 + box_h + MARGIN
    return out


def sequence_dot(page: Page, lang: str = "en", title: str | None = None) -> str:
    lay = layout(page, lang, title)
    parts = page.participants or ["client"]
    H = lay.height

    def pos(x: float, y: float) -> str:
        return f'"{x / 72:.3f},{(H - y) / 72:.3f}!"'     # inches, y upwards, pinned

    out = ["digraph sequence {",
           f'  graph [layout=neato, splines=line, overlap=true, outputorder=edgesfirst, '
           f'bgcolor=white, pad=0, bb="0,0,{lay.width:.0f},{H:.0f}"];',
           f'  node [fontname="{FONT}", fontsize={FONT_SIZE}, margin=0];',
           '  edge [arrowsize=1.1, penwidth=1.6];']
    top = MARGIN + (LINE_H + 16 if lay.title else 0)
    if lay.title:
        out.append(f'  "title" [shape=plaintext, fontsize={TITLE_SIZE}, fontname="{FONT} Bold", '
                   f'label={q(lay.title)}, pos={pos(lay.width / 2, MARGIN + LINE_H / 2)}];')
    bottom = H - MARGIN - lay.box_h / 2
    for p in parts:
        x = lay.x[p]
        name = lay.names[p]
        for where, y in (("top", top + lay.box_h / 2), ("bottom", bottom)):
            out.append(f'  "{p}_{where}" [shape=box, style="rounded,filled", fillcolor="#eef3fb", '
                       f'color="#5a7bb5", fontname="{FONT} Bold", label={q(name)}, '
                       f'width={(text_width(name) + 30) / 72:.3f}, height={lay.box_h / 72:.3f}, fixedsize=true, '
                       f'pos={pos(x, y)}];')
        out.append(f'  "{p}_top" -> "{p}_bottom" [style=dashed, color="#9e9e9e", arrowhead=none, penwidth=1.2];')
    for r, ((y, row, label), lx) in enumerate(zip(lay.rows, lay.label_x)):
        color = FAIL_COLOR if row.failed else (TLS_COLOR if row.tls else PLAIN_COLOR)
        lines = label.count("\n") + 1
        if row.is_note or row.src == row.dst:
            out.append(f'  "note_{r}" [shape=note, style=filled, fillcolor="{NOTE_FILL}", color="#b39b3c", '
                       f'fontcolor="{color}", label={q(label)}, '
                       f'width={(text_width(label) + 24) / 72:.3f}, height={(lines * LINE_H + 8) / 72:.3f}, '
                       f'fixedsize=true, pos={pos(lx, y)}];')
        else:
            ay = y + (lines * LINE_H) / 2 - 2              # the arrow under its text
            style = "dashed" if row.kind in ("reply", "ack") else ("bold" if row.repeat > 1 else "solid")
            extra = ", dir=both, penwidth=2.4" if row.kind == "tls" else ""
            out.append(f'  "a{r}" [shape=point, width=0.02, height=0.02, color="{color}", pos={pos(lay.x[row.src], ay)}];')
            out.append(f'  "b{r}" [shape=point, width=0.02, height=0.02, color="{color}", pos={pos(lay.x[row.dst], ay)}];')
            out.append(f'  "a{r}" -> "b{r}" [color="{color}", style={style}{extra}];')
            out.append(f'  "label_{r}" [shape=plaintext, fontcolor="{color}", label={q(label)}, '
                       f'pos={pos(lx, ay - 6 - lines * LINE_H / 2)}];')
        if row.note:
            comment = _wrap(row.note, COMMENT_W, 4)
            out.append(f'  "comment_{r}" [shape=plaintext, fontsize={FONT_SIZE - 2}, fontcolor="#555555", '
                       f'label={q(comment)}, pos={pos(lay.comment_x + text_width("x" * COMMENT_W, FONT_SIZE - 2) / 2 + 20, y)}];')
    out.append("}")
    return "\n".join(out) + "\n"
