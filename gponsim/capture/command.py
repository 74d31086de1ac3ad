"""`gponsim analyze`: the library side of the command (cli.py only parses options)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click


def run(file: Path, *, keylog: Path | None, steps_file: Path | None, as_json: bool, lang: str,
        credentials: bool, extract: Path | None, quiet: bool, explain: str, reveal: bool) -> int:
    """Analyze ``file``; print summary, narration, tables. Returns the exit code."""
    import gc

    # One analysis, then the process ends: what survives it (connections, messages)
    # lives to the end, and the decoders make no reference cycles per packet, so the
    # cyclic collector would only walk the survivors again and again (and once more
    # at exit: frozen objects are left out of that last pass).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(file, keylog=keylog, steps_file=steps_file, as_json=as_json, lang=lang,
                    credentials=credentials, extract=extract, quiet=quiet, explain=explain,
                    reveal=reveal)
    finally:
        # What is alive now (the analysis) lives until the command ends: out of the
        # collector's sight, so switching it back on (and the interpreter's last
        # collection at exit) does not walk it all again.
        gc.freeze()
        if enabled:
            gc.enable()


def _run(file: Path, *, keylog: Path | None, steps_file: Path | None, as_json: bool, lang: str,
         credentials: bool, extract: Path | None, quiet: bool, explain: str, reveal: bool) -> int:
    from gponsim.capture.analyze import CaptureError, analyze
    from gponsim.capture.report import Extractor, credentials_text, messages_text, summary_text
    from gponsim.capture.words import word
    from gponsim.steps import Step

    sinks = []
    recorder = None
    if steps_file:
        # Offline: a plain buffered file is enough (no flusher thread as in the live lab).
        Path(steps_file).parent.mkdir(parents=True, exist_ok=True)
        # Bytes that were not UTF-8 on the wire (kept as surrogates, as the lab does)
        # are written as \udcXX escapes, so the file stays valid UTF-8 and JSON.
        recorder = open(steps_file, "w", encoding="utf-8", errors="backslashreplace")

        lines: list[str] = []

        def to_file(step: Step, add=lines.append) -> None:
            add(step.to_json(reveal))
            if len(lines) >= 512:
                write_lines()

        def write_lines() -> None:
            lines.append("")
            recorder.write("\n".join(lines))
            lines.clear()
        sinks.append(to_file)
    spool = None
    first_json = [True]
    if as_json:
        out = sys.stdout
        if hasattr(out, "reconfigure"):
            out.reconfigure(errors="backslashreplace")
        out.write('{"steps": [\n')

        def to_stdout(step: Step) -> None:
            if not first_json[0]:
                out.write(",\n")
            first_json[0] = False
            out.write(step.to_json(reveal))
        sinks.append(to_stdout)
    elif not quiet:
        # The summary comes first, so the narration is written (rendered once, for the
        # terminal or file that stdout is) into a spool file and copied out after it.
        from rich.console import Console

        from gponsim.sinks.narrator import Narrator

        fd, name = tempfile.mkstemp(prefix="gponsim-narration-", suffix=".txt")
        spool = (open(fd, "w", encoding="utf-8", errors="backslashreplace"), name)
        narrator = Narrator(Console(highlight=False), lang=lang, explain=explain, reveal=reveal,
                            stream=spool[0], flush_each=False)
        sinks.append(narrator.step)

    if len(sinks) == 1:
        emit = sinks[0]
    else:
        def emit(step: Step) -> None:
            for sink in sinks:
                sink(step)

    extractor = Extractor(extract) if extract else None
    try:
        analysis = analyze(file, emit, on_message=extractor, keylog=keylog)
    except CaptureError as exc:
        if spool:
            spool[0].close()
            os.unlink(spool[1])
        if as_json:
            sys.stdout.write("]}\n")
        click.echo(f"gponsim: {exc.text(lang)}", err=True)
        return 2
    finally:
        if recorder is not None:
            if lines:
                write_lines()
            recorder.close()
    if as_json:
        data = analysis.to_dict(reveal or credentials)
        if not credentials:
            data.pop("credentials", None)
        sys.stdout.write('\n], "summary": ' + json.dumps(data, ensure_ascii=False) + "}\n")
    else:
        click.echo(summary_text(analysis, lang, explain))
        if spool:
            narrator.flush()
            spool[0].close()
            try:
                if analysis.steps:
                    import shutil

                    click.echo("")
                    sys.stdout.flush()
                    binary = getattr(sys.stdout, "buffer", None)
                    if binary is not None:
                        with open(spool[1], "rb") as narration:
                            shutil.copyfileobj(narration, binary, 1 << 20)
                        binary.flush()
                    else:                        # a text-only stdout (an embedding program's)
                        with open(spool[1], encoding="utf-8") as narration:
                            shutil.copyfileobj(narration, sys.stdout, 1 << 20)
            finally:
                os.unlink(spool[1])
        if credentials:
            click.echo("")
            click.echo(credentials_text(analysis, lang, reveal=True))
        if analysis.messages and (extractor or not quiet):
            click.echo("")
            click.echo(messages_text(analysis, lang, extractor.saved if extractor else None))
        if not quiet:
            click.echo("")
            click.echo("gponsim: " + word("done", lang, steps=analysis.steps,
                                          packets=analysis.report.packets,
                                          seconds=analysis.elapsed), err=True)
    for problem in analysis.report.problems_in(lang) if as_json else ():
        click.echo("gponsim: " + word("warning", lang, file=file, problem=problem), err=True)
    if not analysis.readable:
        click.echo("gponsim: " + word("nothing_read", lang, file=file), err=True)
        return 2
    return 0


#: The lab's mail ports (master.cf and Dovecot's defaults), before --port-offset.
LAB_PORTS = (25, 587, 465, 143, 993, 110, 995)


def run_capture(out: Path, *, iface: str, ports: list[int], duration: float | None,
                count: int | None, keylog: Path | None, lang: str, quiet: bool,
                steps_file: Path | None, explain: str, reveal: bool) -> int:
    """Capture the lab's ports live into ``out`` (pcapng), narrating as it goes.

    With ``keylog`` (the lab's ``serve --keylog`` file) its secrets are embedded
    in the file as they appear. Ends at Ctrl-C (or SIGTERM), after ``duration``
    seconds or ``count`` packets, with the file complete; then prints the summary.
    """
    import signal
    import threading

    from gponsim.capture.analyze import Analyzer
    from gponsim.capture.live import CapturePermission, Sniffer
    from gponsim.capture.report import summary_text
    from gponsim.steps import StepBus
    from gponsim.sinks.jsonl import JsonlRecorder

    bus = StepBus()
    if not quiet:
        from gponsim.sinks.narrator import Narrator

        bus.add(Narrator(lang=lang, explain=explain, reveal=reveal))
    if steps_file:
        bus.add(JsonlRecorder(steps_file, reveal=reveal, append=False))
    analyzer = Analyzer(bus.emit, name=str(out), keylog=keylog)
    lock = threading.Lock()
    done = threading.Event()

    def on_frame(number, t, link, frame):
        with lock:
            analyzer.packet(number, t, link, frame)
        if count and number >= count:
            done.set()

    try:
        sniffer = Sniffer(out, ports, iface=iface, on_frame=on_frame, keylog=keylog, limit=count)
    except CapturePermission as exc:
        click.echo(f"gponsim: {exc}", err=True)
        return 2
    old = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    click.echo(f"gponsim: capturing on {iface}, TCP ports {', '.join(map(str, sorted(ports)))}, "
               f"into {out} (Ctrl-C to stop)", err=True)
    try:
        done.wait(duration)
    finally:
        sniffer.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    with lock:
        analysis = analyzer.finish()
    bus.close()
    click.echo("")
    click.echo(summary_text(analysis, lang, explain))
    embedded = f", {sniffer.writer.secrets} TLS key-log block(s) embedded" if sniffer.writer.secrets else ""
    dropped = (f"; {sniffer.drops} dropped by the kernel (the capture fell behind)"
               if sniffer.drops else "")
    click.echo(f"gponsim: {sniffer.count} packets written to {out}{embedded}{dropped}", err=True)
    return 0
