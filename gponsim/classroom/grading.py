"""Grades from protocol evidence: a class run, or captures students made on the real lab.

The Steps (a run's ``steps.jsonl``, or the Steps the capture analyzer reads
from each pcap with its TLS key log) go through the same :class:`ClassState`
as the live class, in the order they happened, so a grade is exactly what
the dashboard showed. Out of it:

- ``grades.csv``: one row per student, one column per graded check, ``pass``
  or ``fail``, and the score;
- ``grades.json``: the same with each check's evidence (the line as on the
  wire, passwords masked, its session and time), each student's mistakes
  and hints;
- ``moodle.csv``: what Moodle's "Import grades → CSV file" reads: a user
  column (username, email address or ID number, chosen when importing), a
  grade out of 100 and a feedback text;
- ``quiz.<lang>.gift``: the lesson's quiz as Moodle GIFT (:mod:`gift`).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from gponsim.classroom.plan import ClassPlan
from gponsim.classroom.roster import Roster
from gponsim.classroom.state import ClassState
from gponsim.classroom.words import word
from gponsim.steps import Step, read_jsonl


class GradingError(Exception):
    """A run or capture that cannot be graded, said plainly."""


@dataclass
class Grades:
    plan: ClassPlan
    roster: Roster
    state: ClassState
    source: str
    #: what was skipped to grade (a last line cut short by a crash), for the teacher to see
    skipped: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        out = []
        for s in self.roster.students:
            p = self.state.progress[s.login]
            ok, total = p.score
            out.append({"student": s, "progress": p, "ok": ok, "total": total,
                        "percent": round(100.0 * ok / total, 1) if total else 0.0})
        return out


def grade_steps(steps: Iterable[Step], roster: Roster, plan: ClassPlan, *, ports: dict | None = None,
                credentials: dict | None = None, log_lines: Iterable[tuple[float, str]] = (),
                source: str = "") -> Grades:
    state = ClassState(roster, plan, ports=ports, credentials=credentials)
    for step in steps:
        state.feed(step)
    for t, text in log_lines:
        state.log_line(text, t)
    return Grades(plan, roster, state, source)


def _log_lines(path: Path) -> list[tuple[float, str]]:
    """The lab's mail.log lines that a check reads (the autoconfig service's)."""
    if not path.exists():
        return []
    return [(0.0, line) for line in path.read_text(errors="replace").splitlines()
            if "autoconfig:" in line]


def grade_run(folder: Path, plan: ClassPlan) -> Grades:
    """A ``gponsim class start`` folder: its steps.jsonl, accounts and mail.log."""
    folder = Path(folder)
    accounts = folder / "accounts.csv"
    steps_file = folder / "steps.jsonl"
    for needed in (accounts, steps_file):
        if not needed.exists():
            raise GradingError(f"{folder} is not a class run: {needed.name} is missing "
                               f"(made by `gponsim class start`)")
    info = _class_info(folder)
    roster = _roster(accounts, info)
    skipped: list[str] = []
    try:     # a last line cut by a crash is skipped (and told); any other bad line is an error
        steps = list(read_jsonl(steps_file, damaged_end=skipped.append))
    except (OSError, ValueError) as exc:
        raise GradingError(str(exc)) from exc
    grades = grade_steps(steps, roster, plan, ports=info.get("ports"),
                         log_lines=_log_lines(folder / "gponlab" / "var" / "log" / "mail.log"),
                         source=str(folder))
    grades.skipped = skipped
    return grades


def _class_info(folder: Path) -> dict:
    path = folder / "class.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _roster(accounts: Path, info: dict) -> Roster:
    return Roster.read_accounts(accounts, info.get("domain", "gponlab.local"))


def grade_captures(captures: list[tuple[Path, Path | None]], roster: Roster, plan: ClassPlan,
                   ports: dict | None = None) -> Grades:
    """Captures (pcap/pcapng, each with its TLS key log or None) that students made with
    Wireshark on the real lab server: every mail connection in them, decoded, in time
    order; who logged in is what the analyzer read from the (decrypted) AUTH. A server
    port names its service (587: submission, 143: imap...); ``ports`` names others."""
    from gponsim.capture.analyze import CaptureError, analyze

    steps: list[Step] = []
    credentials: dict[str, tuple[str, bool]] = {}
    for path, keylog in captures:
        try:
            analysis = analyze(path, steps.append, keylog=keylog)
        except CaptureError as exc:
            raise GradingError(f"{path}: {exc}") from exc
        for cred in analysis.credentials:
            if cred.user and cred.result in ("ok", "failed"):
                ok = cred.result == "ok"
                if ok or cred.session not in credentials:
                    credentials[cred.session] = (cred.user, ok)
    steps.sort(key=lambda s: s.t)      # several captures: one class, in time order
    return grade_steps(steps, roster, plan, credentials=credentials, ports=ports,
                       source=", ".join(str(p) for p, _k in captures))


# ---------------------------------------------------------------------- output

def write_csv(grades: Grades, path: Path) -> Path:
    """One row per student, one column per graded check: pass / fail."""
    checks = grades.plan.graded
    with open(path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["student", "name"] + [e.id for e in checks] + ["passed", "total"])
        for row in grades.rows():
            marks = row["progress"].marks
            out.writerow([row["student"].login, row["student"].name]
                         + ["pass" if marks[e.id].passed is True else "fail" for e in checks]
                         + [row["ok"], row["total"]])
    return path


def grades_data(grades: Grades) -> dict:
    plan = grades.plan
    students = []
    for row in grades.rows():
        p = row["progress"]
        data = p.public()
        checks = {}
        for e in plan.evidence:
            m = data["marks"][e.id]
            checks[e.id] = {"passed": m["passed"] is True, "graded": e.graded,
                            "evidence": m["line"], "detail": m["detail"], "session": m["session"],
                            "account": m["account"], "t": m["t"] or None}
        students.append({"student": row["student"].public(), "score": [row["ok"], row["total"]],
                         "percent": row["percent"], "checks": checks,
                         "mistakes": [e for e in p.errors], "hints": [h["key"] for h in p.hints],
                         "attempts": p.attempts,
                         "sessions": [s["session"] for s in data["sessions"]]})
    mask = _mask(grades)
    text = json.dumps({"lesson": plan.lesson.id, "source": grades.source,
                       "graded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "checks": [e.public() for e in plan.evidence], "students": students},
                      ensure_ascii=False)
    return json.loads(mask(text))


def _mask(grades: Grades):
    from gponsim.classroom.hub import PasswordMask

    return PasswordMask(grades.roster.passwords.values())


def write_json(grades: Grades, path: Path) -> Path:
    Path(path).write_text(json.dumps(grades_data(grades), ensure_ascii=False, indent=1) + "\n",
                          encoding="utf-8")
    return path


def write_moodle(grades: Grades, path: Path, lang: str = "en", item: str | None = None) -> Path:
    """Moodle's gradebook CSV import: header, a user column to map (Username, Email
    address or ID number), the grade out of 100 (the share of graded checks passed)
    and its feedback; UTF-8, comma-separated, every row as wide as the header."""
    item = item or grades.plan.lesson.title[lang]
    checks = grades.plan.graded
    with open(path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["Username", "Email address", "ID number", item,
                      word("moodle_feedback_column", lang, item=item)])
        for row in grades.rows():
            s, marks = row["student"], row["progress"].marks
            missing = [e.title[lang] for e in checks if marks[e.id].passed is not True]
            feedback = (word("moodle_all_passed", lang, ok=row["ok"], total=row["total"]) if not missing
                        else word("moodle_missing", lang, ok=row["ok"], total=row["total"],
                                  missing="; ".join(missing)))
            out.writerow([s.login, s.email, s.idnumber, f"{row['percent']:.1f}", feedback])
    return path


def write_all(grades: Grades, folder: Path, lang: str = "en") -> dict[str, Path]:
    """grades.csv, grades.json, moodle.csv and the quiz in GIFT (es and en) into ``folder``."""
    from gponsim.classroom.gift import write_gift

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = {"csv": write_csv(grades, folder / "grades.csv"),
            "json": write_json(grades, folder / "grades.json"),
            "moodle": write_moodle(grades, folder / "moodle.csv", lang)}
    if grades.plan.lesson.quiz:
        for gift_lang in ("es", "en"):
            made[f"gift-{gift_lang}"] = write_gift([grades.plan.lesson], folder / f"quiz.{gift_lang}.gift",
                                                   gift_lang)
    return made
