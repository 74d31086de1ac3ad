"""`gponsim analyze FILE --packets` (and `--packet N --layers`): the CLI side."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click


def run(file: Path, *, keylog: Path | None, as_json: bool, lang: str, explain: str,
        reveal: bool, packet: str | None, session: str | None, proto: str | None,
        layers: bool) -> int:
    from gponsim.capture.analyze import CaptureError
    from gponsim.packets.facts import collect
    from gponsim.packets.view import Renderer, Selection, parse_range, row_dict, rows, word

    select = Selection(session=session, proto=proto)
    if packet:
        try:
            select.first, select.last = parse_range(packet)
        except ValueError as exc:
            click.echo(f"gponsim: --packet {exc}", err=True)
            return 2
    if layers and (select.last is None or select.first != select.last):
        click.echo("gponsim: --layers shows one packet: give it with --packet N", err=True)
        return 2
    try:
        facts = collect(file, keylog)
    except CaptureError as exc:
        click.echo(f"gponsim: {exc}", err=True)
        return 2
    out = sys.stdout
    if hasattr(out, "reconfigure"):
        out.reconfigure(errors="backslashreplace")
    total = facts.analysis.report.packets
    if layers:
        from gponsim.packets.layers import layer_view, render_layers

        found = next(rows(file, facts, select=select), None)
        if found is None:
            click.echo(f"gponsim: {file} has no packet {select.first} (it has {total})", err=True)
            return 2
        view = layer_view(found, facts, lang=lang, reveal=reveal)
        if as_json:
            out.write(json.dumps(view, ensure_ascii=False, indent=1) + "\n")
        else:
            render_layers(view, out.write, lang=lang, color=out.isatty())
        return 0
    shown = 0
    if as_json:
        out.write('{"packets": [\n')
        for row in rows(file, facts, select=select):
            if shown:
                out.write(",\n")
            out.write(json.dumps(row_dict(row, reveal), ensure_ascii=False, separators=(",", ":")))
            shown += 1
        out.write("\n], " + json.dumps({"total": total, "shown": shown, "file": str(file)}) [1:] + "\n")
    else:
        width = shutil.get_terminal_size((120, 40)).columns
        renderer = Renderer(lambda text: out.write(text + "\n"), lang, explain=explain, reveal=reveal,
                            color=out.isatty(), width=width)
        renderer.header()
        for row in rows(file, facts, select=select):
            renderer.row(row)
            shown += 1
        out.write("\n" + word("shown", lang, shown=shown, total=total) + "\n")
    out.flush()
    for problem in facts.analysis.report.problems:
        click.echo(f"gponsim: warning: {file}: {problem}", err=True)
    if not facts.analysis.readable:
        click.echo(f"gponsim: {file}: nothing could be read from this capture", err=True)
        return 2
    return 0
