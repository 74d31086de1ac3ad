"""A class run whose steps.jsonl was damaged (a class killed while writing, a stray line):
grading says so plainly, and a class that goes on starts on a line of its own."""

from __future__ import annotations

import json
import pytest
from click.testing import CliRunner

from gponsim.cli import main
from gponsim.classroom.roster import Roster
from gponsim.sinks.jsonl import JsonlRecorder, drop_cut_line
from gponsim.steps import Step, read_jsonl


def _step(t: float, line: str = "EHLO pc") -> Step:
    return Step(t=t, session="s-1", proto="smtp", src="client", dst="smtpd", dir="c2s",
                kind="command", line=line, verb=line.split()[0], key="smtp.cmd.EHLO")


def _run_folder(tmp_path, tail: str):
    """A class folder (accounts.csv, steps.jsonl) whose recording ends with ``tail``."""
    run = tmp_path / "run"
    run.mkdir()
    Roster.numbered(2).write_accounts(run / "accounts.csv")
    (run / "class.json").write_text(json.dumps({"lesson": "thunderbird"}))
    whole = "".join(_step(t).to_json() + "\n" for t in (1.0, 2.0, 3.0))
    (run / "steps.jsonl").write_text(whole + tail, encoding="utf-8")
    return run


class _Done:
    def __init__(self, result):
        self.returncode = result.exit_code
        self.stderr = result.stderr
        if result.exception and not isinstance(result.exception, SystemExit):
            self.stderr += "Traceback: " + repr(result.exception)


def _grade(run):
    return _Done(CliRunner().invoke(main, ["grade", str(run), "--lang", "en"]))


def test_a_last_line_cut_by_a_crash_is_skipped_with_a_warning(tmp_path):
    run = _run_folder(tmp_path, _step(4.0).to_json()[:-30])       # as after kill -9
    done = _grade(run)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "warning: skipping the last line, cut short" in done.stderr
    assert "steps.jsonl:4: not a Step" in done.stderr
    assert (run / "grades" / "grades.csv").exists()


def test_a_bad_line_in_the_middle_is_a_clear_error_naming_file_and_line(tmp_path):
    run = _run_folder(tmp_path, '{"t":"x"}\n' + _step(5.0).to_json() + "\n")
    done = _grade(run)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{run / 'steps.jsonl'}:4: not a Step" in done.stderr


def test_read_jsonl_skips_only_a_bad_last_line_when_asked(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(_step(1.0).to_json() + "\n" + '{"t":"x"}\n\n')
    told: list[str] = []
    assert list(read_jsonl(path, damaged_end=told.append)) == [_step(1.0)]
    assert told and told[0].startswith(f"{path}:2: not a Step")
    with pytest.raises(ValueError, match=r"s.jsonl:2: not a Step"):
        list(read_jsonl(path))


def test_appending_after_a_crash_starts_on_a_new_line(tmp_path):
    path = tmp_path / "steps.jsonl"
    cut = _step(2.0).to_json()[:-50]
    path.write_text(_step(1.0).to_json() + "\n" + cut, encoding="utf-8")
    rec = JsonlRecorder(path, append=True)
    assert rec.dropped == len(cut.encode())
    rec.step(_step(3.0))
    rec.close()
    assert list(read_jsonl(path)) == [_step(1.0), _step(3.0)]
    assert drop_cut_line(path) == 0                          # a whole file is left alone
    only = tmp_path / "only.jsonl"
    only.write_bytes(b'{"t":1.0,"sess')                     # killed during its first line
    assert drop_cut_line(only) == 14 and only.read_bytes() == b""


def test_a_class_start_that_fails_leaves_no_class_to_resume(tmp_path):
    roster = tmp_path / "r.csv"
    roster.write_text("login\nana\nluis\nana\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["class", "start", "--roster", str(roster), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "r.csv:4: ana is already on line 2" in result.stderr
    assert not out.exists()                            # the folder it made is gone
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["class", "start", "--roster", str(roster), "--out", str(kept)])
    assert result.exit_code == 1 and (kept / "notes.txt").read_text() == "mine"   # not its folder
