"""Record the captures that stand in for a live one when a lesson cannot capture.

For each lesson with a ``capture`` action (or the ids given), run it with
``--capture namespace`` (no root needed: a user + network namespace of its
own, see gponsim/capture/userns.py) and keep here, as lesson-ID.pcapng and
lesson-ID.keys, the capture it made and the lab's TLS key log. Run from the
project folder after changing such a lesson:

    .venv/bin/python captures/make_lesson_captures.py [ID...]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gponsim.lessons.capturing import RECORDINGS, captures
from gponsim.lessons.model import find_lesson, lesson_files, load_lesson


def main(ids: list[str]) -> None:
    lessons = [find_lesson(i) for i in ids] or [load_lesson(p) for p in lesson_files()]
    for lesson in lessons:
        if not captures(lesson):
            continue
        with tempfile.TemporaryDirectory(prefix=f"gponsim-{lesson.id}-") as tmp:
            out = Path(tmp) / "run"
            done = subprocess.run([sys.executable, "-m", "gponsim", "lesson", lesson.id, "--capture", "namespace",
                                   "--lang", "en", "--quiet", "--out", str(out)], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the lesson {lesson.id} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            shutil.copyfile(out / "capture.pcapng", RECORDINGS / f"lesson-{lesson.id}.pcapng")
            shutil.copyfile(out / "gponlab" / "keys.log", RECORDINGS / f"lesson-{lesson.id}.keys")
            print(f"{lesson.id}: {RECORDINGS / f'lesson-{lesson.id}.pcapng'} and .keys")


if __name__ == "__main__":
    main(sys.argv[1:])
