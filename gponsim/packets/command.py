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
    from gponsim.capture.words import word as say
    from gponsim.packets.facts import collect
    from gponsim.packets.view import Renderer, Selection, parse_range, row_dict, rows, word

    def error(key: str, **values) -> int:
        click.echo("gponsim: " + say(key, lang, **values), err=True)
        return 2

    select = Selection(session=session, proto=proto)
    if packet:
        try:
            select.first, select.last = parse_range(packet)
        except ValueError:
            return error("bad_range", text=packet)
    if layers and (select.last is None or select.first != select.last):
        return error("layers_one")
    try:
        facts = collect(file, keylog)
    except CaptureError as exc:
        click.echo(f"gponsim: {exc.text(lang)}", err=True)
        return 2
    total = facts.analysis.report.packets
    if select.first > total and facts.analysis.readable:
        return error("no_packet", file=file, number=select.first, total=total)
    if session is not None:
        if not facts.analysis.connections:
            return error("no_connections", file=file, session=session)
        if facts.analysis.connection(session) is None:
            return error("no_connection", file=file, session=session,
                         known=facts.analysis.connections_text())
    out = sys.stdout
    if hasattr(out, "reconfigure"):
        out.reconfigure(errors="backslashreplace")
    if layers:
        from gponsim.packets.layers import layer_view, render_layers

        found = next(rows(file, facts, select=select), None)
        if found is None:
            return error("no_packet", file=file, number=select.first, total=total)
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
    for problem in facts.analysis.report.problems_in(lang):
        click.echo("gponsim: " + say("warning", lang, file=file, problem=problem), err=True)
    if not facts.analysis.readable:
        return error("nothing_read", file=file)
    return 0
