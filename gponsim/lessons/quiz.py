"""The lesson's quiz: asked on a terminal, re-asked on an answer that is not a choice,
graded, and kept for summary.json (every answer typed, the score, --min-score)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text

from gponsim.lessons.model import Lesson, text
from gponsim.lessons.words import word


@dataclass
class QuizResult:
    graded: bool                                  # asked on a terminal (else: answers only shown)
    answers: list[dict] = field(default_factory=list)
    min_score: float | None = None

    @property
    def right(self) -> int:
        return sum(1 for a in self.answers if a["right"])

    @property
    def total(self) -> int:
        return len(self.answers)

    @property
    def percent(self) -> float | None:
        if not self.graded:
            return None
        return round(100.0 * self.right / self.total, 1) if self.total else 100.0

    @property
    def passed(self) -> bool:
        """No minimum, or a graded quiz that reached it (an ungraded one cannot)."""
        if self.min_score is None:
            return True
        return self.graded and self.percent >= self.min_score

    def score_text(self, lang: str) -> str:
        return word("score", lang, right=self.right, total=self.total, percent=_number(self.percent))

    def failed_text(self, lang: str) -> str:
        if not self.graded:
            return word("not_graded", lang)
        return word("score_below", lang, min=_number(self.min_score), percent=_number(self.percent))

    def to_dict(self) -> dict:
        return {"graded": self.graded, "right": self.right if self.graded else None, "total": self.total,
                "percent": self.percent, "min_score": self.min_score, "passed": self.passed,
                "answers": self.answers}


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def ask_quiz(lesson: Lesson, lang: str, view, min_score: float | None = None,
             interactive: bool | None = None) -> QuizResult:
    """Ask on a terminal (``view.ask``); elsewhere print the questions with their answers."""
    if interactive is None:
        interactive = sys.stdin.isatty()
    result = QuizResult(graded=interactive, min_score=min_score)
    total = len(lesson.quiz)
    for n, q in enumerate(lesson.quiz, 1):
        choices = q.choices[lang]
        view.print(Text(f"{word('quiz', lang, n=n, total=total)}: {text(q.question, lang)}", style="bold"))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, justify="right")
        grid.add_column()
        for i, choice in enumerate(choices, 1):
            grid.add_row(f"  {i}.", choice)
        view.print(grid)
        typed: list[str] = []
        given = None
        if interactive:
            while given is None:
                try:
                    raw = view.ask(word("your_answer", lang, last=len(choices))).strip()
                except EOFError:               # the terminal closed: the rest goes unanswered
                    break
                typed.append(raw)
                if raw.isdigit() and 1 <= int(raw) <= len(choices):
                    given = int(raw)
                else:
                    view.print(Text(word("not_a_choice", lang, given=raw, last=len(choices)), style="yellow"))
            view.print(Text(word("right" if given == q.answer else "wrong", lang),
                            style="bold green" if given == q.answer else "bold red"))
        view.print(Text(word("answer", lang, choice=choices[q.answer - 1]), style="green"))
        view.print(Text(text(q.explain, lang), style="italic"))
        result.answers.append({"question": text(q.question, lang), "answer": q.answer, "given": given,
                               "typed": typed, "right": interactive and given == q.answer})
    if interactive:
        view.print(Text(result.score_text(lang), style="bold"))
    return result
