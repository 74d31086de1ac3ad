"""The CLI's side of ``gponsim class start``, ``gponsim class replay`` and ``gponsim grade``:
run the reactor, print what the teacher needs, map errors to clear messages."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from gponsim.classroom.words import word


def start(options, ready_file: Path | None, lang: str) -> None:
    from twisted.internet import reactor

    from gponsim.classroom.run import ClassRun
    from gponsim.classroom.roster import RosterError
    from gponsim.config import ConfigError
    from gponsim.lessons.model import LessonError
    from gponsim.server.dovecot.passwd import UsersError
    from gponsim.server.foreground import run_in_foreground
    from gponsim.server.lab import LabError

    run = ClassRun(options, reactor=reactor)
    try:
        run.prepare()
    except (RosterError, LessonError, UsersError) as exc:
        run.discard()
        raise click.ClickException(str(exc))
    except ConfigError as exc:
        run.discard()
        err = click.ClickException(str(exc))
        err.exit_code = 2
        raise err
    except BaseException:
        run.discard()
        raise
    if run.resumed and (options.roster is not None or options.students):
        click.echo(word("cli_resumed_note", lang, path=run.out / "accounts.csv",
                        count=len(run.roster.students)), err=True)
    if run.dropped_bytes:
        click.echo(word("cli_dropped_cut_line", lang, path=run.out / "steps.jsonl",
                        count=run.dropped_bytes), err=True)
    def started(_port):
        out = run.out
        say = lambda key, **kw: click.echo(word(key, lang, **kw), err=True)  # noqa: E731
        ports = ", ".join(f"{k} {v}" for k, v in run.lab.ports.items() if k != "gmail")
        say("cli_lab", root=run.lab.root, listen=options.listen, ports=ports)
        say("cli_students", count=len(run.roster.students), lesson=run.plan.lesson.id,
            resumed=word("cli_resumed", lang) if run.resumed else "")
        say("cli_teacher", url=run.teacher_url())
        say("cli_student_page", url=run.lab_info["student_url"])
        if options.web_listen in ("127.0.0.1", "::1", "localhost"):
            say("cli_web_loopback")
        say("cli_accounts", path=out / "accounts.csv")
        say("cli_handouts", path=out / "handouts", files=", ".join(p.name for p in run.handouts.values()))
        say("cli_stop")
        if ready_file:
            run.write_ready_file(ready_file)

    exc = run_in_foreground(reactor, run.lab, run.start, run.stop, started)
    if exc is not None:
        run.discard()           # the class never ran: nothing of it to resume
        if isinstance(exc, ConfigError):
            err = click.ClickException(str(exc))
            err.exit_code = 2
            raise err
        if isinstance(exc, LabError):
            raise click.ClickException(str(exc))
        raise exc
    made = run.finish()
    if made:
        click.echo(word("cli_graded", lang, path=made["csv"].parent,
                        files=", ".join(p.name for p in made.values())), err=True)


def replay(paths: list[Path], keylog: Path | None, listen: str, port: int, lang: str,
           ready_file: Path | None) -> None:
    import json
    import os
    import secrets

    from twisted.internet import reactor

    from gponsim.classroom import web as webmod
    from gponsim.classroom.replay import Replays, validate_paths

    problems = validate_paths(paths)
    if problems:
        raise click.ClickException("; ".join(problems))
    token = secrets.token_urlsafe(24)
    replays = Replays(None, paths, keylog)
    web = webmod.ClassWeb(None, token, lang=lang, replays=replays, reactor=reactor)
    try:
        listener = reactor.listenTCP(port, webmod.site(web), interface=listen)
    except Exception as exc:  # noqa: BLE001
        raise click.ClickException(f"cannot listen on {listen} port {port}: {getattr(exc, 'socketError', exc)}")
    bound = listener.getHost().port
    host = "127.0.0.1" if listen in ("0.0.0.0", "") else listen
    first = replays.names()[0]["name"]
    from urllib.parse import quote

    url = f"http://{webmod._host(host)}:{bound}/replay?run={quote(first)}&token={quote(token)}"
    click.echo(word("cli_replay", lang, url=url), err=True)
    click.echo(word("cli_stop", lang), err=True)
    if ready_file:
        tmp = Path(str(ready_file) + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"web_port": bound, "token": token, "url": url, "pid": os.getpid()}))
        tmp.replace(ready_file)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()


def grade(run_dir: Path | None, captures: list[Path], keylogs: list[Path], roster_file: Path | None,
          lesson_id: str | None, out: Path | None, lang: str, ports: dict | None = None) -> None:
    import json

    from gponsim.classroom.grading import GradingError, grade_captures, grade_run, write_all
    from gponsim.classroom.plan import load_plan
    from gponsim.classroom.roster import Roster, RosterError
    from gponsim.lessons.model import LessonError, find_lesson

    try:
        if run_dir is not None:
            info_path = run_dir / "class.json"
            info = json.loads(info_path.read_text()) if info_path.exists() else {}
            plan = load_plan(find_lesson(lesson_id or info.get("lesson", "thunderbird")))
            grades = grade_run(run_dir, plan)
            out = out or run_dir / "grades"
        else:
            if not captures:
                raise click.UsageError("give a class run folder, or --capture FILE (with --keylog)")
            if roster_file is None:
                raise click.UsageError("grading captures needs --roster (who is who: login, partner)")
            if keylogs and len(keylogs) not in (1, len(captures)):
                raise click.UsageError("give one --keylog for all captures, or one per --capture")
            plan = load_plan(find_lesson(lesson_id or "thunderbird"))
            roster = (Roster.read_accounts(roster_file) if roster_file.name == "accounts.csv"
                      else Roster.from_csv(roster_file))
            pairs = [(c, keylogs[i] if len(keylogs) > 1 else (keylogs[0] if keylogs else None))
                     for i, c in enumerate(captures)]
            grades = grade_captures(pairs, roster, plan, ports=ports)
            out = out or Path("grades")
    except (GradingError, RosterError, LessonError) as exc:
        raise click.ClickException(str(exc))
    for problem in grades.skipped:
        click.echo(word("cli_skipped_last_line", lang, problem=problem), err=True)
    made = write_all(grades, out, lang)
    for row in grades.rows():
        click.echo(f"{row['student'].login:<14} {row['ok']}/{row['total']}  {row['percent']:5.1f}%")
    click.echo(word("cli_graded", lang, path=out, files=", ".join(p.name for p in made.values())), err=True)
