"""Graphviz (DOT) source for sequence pages.

Lifelines are columns of point nodes, one per row, chained top to bottom;
each row is a rank of its own and its message is an edge between two nodes
of that rank. Replies are dashed, messages inside TLS blue, failures red,
a collapsed run says ×N.
"""

from __future__ import annotations

import textwrap

from gponsim.diagrams.labels import caption, participant_name
from gponsim.diagrams.sequence import Page

TLS_COLOR = "#1f5fbf"
FAIL_COLOR = "#c62828"
PLAIN_COLOR = "#222222"
FONT = "Helvetica"


def q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def sequence_dot(page: Page, lang: str = "en", title: str | None = None) -> str:
    parts = page.participants
    n = len(page.rows)
    out = ["digraph sequence {",
           f'  graph [rankdir=TB, nodesep=1.2, ranksep=0.3, splines=true, fontname="{FONT}", '
           f'labelloc=t, fontsize=16, newrank=true];',
           f'  node [fontname="{FONT}", fontsize=11];',
           f'  edge [fontname="{FONT}", fontsize=10, arrowsize=0.7];']
    heading = title or ""
    if page.total > 1:
        heading = (heading + " — " if heading else "") + caption("page", lang, n=page.number, total=page.total)
    if heading:
        out.append(f"  label={q(heading)};")
    # Participant boxes, top and bottom, kept in the lab document's order.
    for where in ("top", "bottom"):
        for p in parts:
            out.append(f'  "{p}_{where}" [shape=box, style="rounded,filled", fillcolor="#eef3fb", '
                       f'label={q(participant_name(p, lang))}];')
        out.append("  { rank=same; " + " ".join(f'"{p}_{where}";' for p in parts) + " }")
        for a, b in zip(parts, parts[1:]):
            out.append(f'  "{a}_{where}" -> "{b}_{where}" [style=invis];')
    for r in range(n):
        row = page.rows[r]
        out.append("  { rank=same; " + " ".join(f'"{p}_{r}";' for p in parts)
                   + (f' "note_{r}";' if row.note else "") + " }")
        for p in parts:
            out.append(f'  "{p}_{r}" [shape=point, width=0.01, height=0.01, label=""];')
        for a, b in zip(parts, parts[1:]):
            out.append(f'  "{a}_{r}" -> "{b}_{r}" [style=invis];')
        if row.note:
            note = "\n".join(textwrap.wrap(row.note, 48)[:6])
            out.append(f'  "note_{r}" [shape=note, fontsize=9, style=filled, fillcolor="#fffbe6", '
                       f'label={q(note)}];')
            out.append(f'  "{parts[-1]}_{r}" -> "note_{r}" [style=invis];')
    # Lifelines.
    for p in parts:
        chain = [f'"{p}_top"'] + [f'"{p}_{r}"' for r in range(n)] + [f'"{p}_bottom"']
        out.append("  " + " -> ".join(chain) + ' [style=dashed, color="#9e9e9e", arrowhead=none, weight=100];')
    # Messages.
    for r, row in enumerate(page.rows):
        color = FAIL_COLOR if row.failed else (TLS_COLOR if row.tls else PLAIN_COLOR)
        label = row.label + (f"  (×{row.repeat})" if row.repeat > 1 else "")
        if row.tls:
            label = "[TLS] " + label
        style = "dashed" if row.kind == "reply" else ("bold" if row.repeat > 1 else "solid")
        attrs = (f'label={q(label)}, color="{color}", fontcolor="{color}", style={style}, '
                 f'constraint=false')
        out.append(f'  "{row.src}_{r}" -> "{row.dst}_{r}" [{attrs}];')
    out.append("}")
    return "\n".join(out) + "\n"
