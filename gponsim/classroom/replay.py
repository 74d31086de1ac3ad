"""Runs to replay in the browser: the class so far, a recorded run, a capture.

A run is given to the replay page as its lines (what the projector draws,
secrets masked), the explanations they refer to, and checkpoints to jump to:

- the running class: each student's evidence, where it was seen;
- a lesson's run folder (``steps.jsonl`` + ``summary.json``): the start of
  each lesson step, with its checkpoints;
- a class run folder (``steps.jsonl`` + ``accounts.csv``): each student's
  evidence, as ``gponsim grade`` finds it;
- a bare ``*.jsonl``: each session's start;
- a capture (pcap / pcapng, with its TLS key log ``<name>.keys`` or
  ``keys.log`` beside it, or embedded): each connection's start, and, for any
  line that names its packet, that packet's layers from the packets view
  (``gponsim analyze FILE --packet N --layers``), asked for at
  ``/replay/packet.json?run=…&n=N`` — answered 501 when this gponsim has no
  packets view.
"""

from __future__ import annotations

import json
from pathlib import Path

from gponsim.classroom.hub import PasswordMask, line_record
from gponsim.steps import Step, read_jsonl

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")


class Replays:
    def __init__(self, run=None, paths: list[Path] | None = None, keylog: Path | None = None) -> None:
        self.run = run                    # a ClassRun (the class so far), or None
        self.paths = {}
        for path in paths or []:
            path = Path(path)
            name = path.name if path.name not in self.paths else str(path)
            self.paths[name] = path
        self.keylog = keylog
        self._cache: dict[str, dict] = {}
        self._facts: dict[str, object] = {}

    def names(self) -> list[dict]:
        out = []
        if self.run is not None:
            out.append({"name": "class", "kind": "class"})
        for name, path in self.paths.items():
            out.append({"name": name, "kind": _kind(path)})
        return out

    # ------------------------------------------------------------------ loading

    def load(self, name: str) -> dict | None:
        if name in ("", "class") and self.run is not None:
            return self._class_so_far()
        path = self.paths.get(name)
        if path is None:
            return None
        if name not in self._cache:
            self._cache[name] = self._load_path(name, path)
        return self._cache[name]

    def _class_so_far(self) -> dict:
        hub = self.run.hub
        lines = [record for _n, record, _t in list(hub.lines)]
        first = lines[0]["n"] if lines else 0
        checkpoints = _passed_checkpoints(hub.state.progress, lines)
        used = {r["x"] for r in lines if r.get("x")}
        return {"name": "class", "kind": "class", "lines": [dict(r, i=r["n"] - first) for r in lines],
                "explanations": {k: v for k, v in hub.explanations.items() if k in used},
                "checkpoints": checkpoints, "capture": False,
                "plan": hub.state.plan.public()}

    def _load_path(self, name: str, path: Path) -> dict:
        kind = _kind(path)
        explanations: dict = {}
        checkpoints: list = []
        capture = False
        info_of = {}
        mask = PasswordMask(())
        if kind == "capture":
            steps = self._capture_steps(path)
            capture = True
        elif kind in ("lesson", "class-run", "folder"):
            steps = list(read_jsonl(path / "steps.jsonl"))
        else:
            steps = list(read_jsonl(path))
        if kind == "class-run":
            from gponsim.classroom.grading import grade_run
            from gponsim.classroom.plan import load_plan
            from gponsim.lessons.model import find_lesson

            info = json.loads((path / "class.json").read_text()) if (path / "class.json").exists() else {}
            grades = grade_run(path, load_plan(find_lesson(info.get("lesson", "thunderbird"))))
            info_of = grades.state.attributor.sessions
            mask = PasswordMask(grades.roster.passwords.values())
        lines = [line_record(step, i, info_of.get(step.session), mask, explanations)
                 for i, step in enumerate(steps)]
        for r in lines:
            r["i"] = r["n"]
        if kind == "lesson":
            checkpoints = _lesson_checkpoints(path / "summary.json", len(lines))
        elif kind == "class-run":
            checkpoints = _passed_checkpoints(grades.state.progress, lines)
        else:
            checkpoints = [{"n": r["n"], "label": f"{r['s']}: {r['line'][:60]}"} for r in lines
                           if r["k"] == "event" and r["v"] == "CONNECT"]
        return {"name": name, "kind": kind, "lines": lines, "explanations": explanations,
                "checkpoints": checkpoints, "capture": capture}

    def _keylog_for(self, path: Path) -> Path | None:
        if self.keylog is not None:
            return self.keylog
        for candidate in (path.with_suffix(".keys"), path.parent / "keys.log"):
            if candidate.exists():
                return candidate
        return None

    def _capture_steps(self, path: Path) -> list[Step]:
        from gponsim.capture.analyze import analyze

        steps: list[Step] = []
        analyze(path, steps.append, keylog=self._keylog_for(path))
        return steps

    # ------------------------------------------------------------------ packets

    def packet(self, name: str, number: int, lang: str) -> tuple[dict, int]:
        """One packet of a capture, layer by layer, from the packets view."""
        path = self.paths.get(name)
        if path is None or _kind(path) != "capture":
            return {"available": False, "reason": "this run has no capture"}, 404
        try:
            from gponsim.packets.facts import collect
            from gponsim.packets.layers import layer_view
            from gponsim.packets.view import Selection, rows
        except ImportError:
            return {"available": False,
                    "reason": "this gponsim has no packets view (gponsim analyze FILE --packet N --layers)"}, 501
        try:
            facts = self._facts.get(name)
            if facts is None:
                facts = self._facts[name] = collect(path, self._keylog_for(path))
            found = next(rows(path, facts, select=Selection(first=number, last=number)), None)
            if found is None:
                return {"available": False, "reason": f"no packet {number}"}, 404
            return {"available": True, "packet": number,
                    "layers": layer_view(found, facts, lang=lang, reveal=False)}, 200
        except Exception as exc:  # noqa: BLE001 - the packets view is another module's
            return {"available": False, "reason": f"the packets view failed: {exc}"}, 500


def _kind(path: Path) -> str:
    if path.is_dir():
        if (path / "accounts.csv").exists():
            return "class-run"
        if (path / "summary.json").exists():
            return "lesson"
        return "folder"
    if path.suffix.lower() in CAPTURE_SUFFIXES:
        return "capture"
    return "jsonl"


def _passed_checkpoints(progress_of: dict, lines: list[dict]) -> list[dict]:
    """Each student's passed checks, at the line that passed them (in line order)."""
    checkpoints = []
    for login, progress in progress_of.items():
        for mark in progress.marks.values():
            if mark.passed is True and mark.session:
                n = _index_of(lines, mark.session, mark.t, mark.line)
                if n is not None:
                    checkpoints.append({"n": n, "student": login, "check": mark.id,
                                        "label": f"{login}: {mark.id}"})
    checkpoints.sort(key=lambda c: c["n"])
    return checkpoints


def _index_of(lines: list[dict], session: str, t: float, text: str) -> int | None:
    for r in lines:
        if r["s"] == session and r["t"] >= round(t, 4) - 0.0002 and (not text or r["line"].split("\n")[0] == text):
            return r.get("i", r["n"])
    for r in lines:
        if r["s"] == session and r["t"] >= round(t, 4) - 0.0002:
            return r.get("i", r["n"])
    return None


def _lesson_checkpoints(summary_path: Path, count: int) -> list[dict]:
    if not summary_path.exists():
        return []
    summary = json.loads(summary_path.read_text())
    checks: dict[str, list] = {}
    for c in summary.get("checkpoints", []):
        checks.setdefault(c["step"], []).append(c)
    out = []
    for step_id, (first, end) in summary.get("ranges", {}).items():
        says = [c.get("says", "") for c in checks.get(step_id, [])]
        passed = [c.get("passed") for c in checks.get(step_id, [])]
        out.append({"n": min(first, max(count - 1, 0)), "end": end, "step": step_id,
                    "label": step_id, "checks": says, "passed": passed})
    return out


def validate_paths(paths: list[Path]) -> list[str]:
    """What is wrong with the runs asked for (missing files), said plainly."""
    problems = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            problems.append(f"{path}: no such file or folder")
        elif path.is_dir() and not (path / "steps.jsonl").exists():
            problems.append(f"{path}: a folder without steps.jsonl (not a lesson's or a class's run)")
        elif _kind(path) == "jsonl" and not _starts_with_a_step(path):
            problems.append(f"{path}: neither a run's folder, a steps.jsonl nor a capture "
                            f"({', '.join(CAPTURE_SUFFIXES)}): its first line is not a Step")
    return problems


def _starts_with_a_step(path: Path) -> bool:
    """Whether a file's first line is a recorded Step (a steps.jsonl, not any file)."""
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                if raw.strip():
                    Step.from_dict(json.loads(raw.decode("utf-8")))
                    return True
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    return False
