"""Lessons' quizzes as Moodle GIFT (the question bank's import format).

Each question is a multiple-choice question: ``::title::`` (the lesson and
its number), the question in ``[plain]`` format, then ``{`` the right choice
``=…`` and the others ``~…`` ``}``, with the lesson's explanation as the
general feedback (``####…``). In every text the characters GIFT gives a
meaning to — ``~ = # { } :`` and the backslash itself — are escaped with a
backslash; a line break inside a text is written as ``\\n``. Questions are
separated by a blank line, under a ``$CATEGORY:`` named after the course and
lesson.
"""

from __future__ import annotations

from pathlib import Path

from gponsim.lessons.model import Lesson

SPECIAL = "\\~=#{}:"


def escape(text: str) -> str:
    out = []
    for ch in " ".join(text.split("\n")).strip():
        out.append("\\" + ch if ch in SPECIAL else ch)
    return "".join(out)


def question(lesson: Lesson, number: int, lang: str) -> str:
    q = lesson.quiz[number - 1]
    lines = [f"::{escape(f'{lesson.id} {number}')}::[plain]{escape(q.question[lang])} {{"]
    for n, choice in enumerate(q.choices[lang], 1):
        lines.append(f"\t{'=' if n == q.answer else '~'}{escape(choice)}")
    lines.append(f"\t####{escape(q.explain[lang])}")
    lines.append("}")
    return "\n".join(lines)


def gift(lessons: list[Lesson], lang: str) -> str:
    parts = []
    for lesson in lessons:
        if not lesson.quiz:
            continue
        parts.append(f"// gponsim: {lesson.title[lang]}")
        parts.append(f"$CATEGORY: $course$/gponsim/{lesson.id}")
        parts.append("")
        for n in range(1, len(lesson.quiz) + 1):
            parts.append(question(lesson, n, lang))
            parts.append("")
    return "\n".join(parts)


def write_gift(lessons: list[Lesson], path: Path, lang: str) -> Path:
    Path(path).write_text(gift(lessons, lang), encoding="utf-8")
    return Path(path)
