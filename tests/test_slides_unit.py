"""A deck from a recorded run, in memory: it is the run's own lesson, and every text is
in the deck's language whatever language the run was made in."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gponsim.cli import main
from gponsim.lessons.model import find_lesson
from gponsim.slides import SlidesError
from gponsim.slides.deck import build_deck
from gponsim.steps import Step


def _run(tmp_path, lesson_id: str, lang: str):
    """A run folder as `gponsim lesson ID --lang LANG` writes it (two Steps of it)."""
    lesson = find_lesson(lesson_id)
    run = tmp_path / f"run-{lesson_id}-{lang}"
    run.mkdir()
    steps = [Step(t=1.0, session="s-1", proto="smtp", src="client", dst="smtpd", dir="c2s",
                  kind="command", line="EHLO pc", verb="EHLO", key="smtp.cmd.EHLO"),
             Step(t=1.1, session="s-1", proto="smtp", src="smtpd", dir="s2c", dst="client",
                  kind="reply", line="250 mail.gponlab.local", verb="EHLO", code=250),
             Step(t=1.2, session="s-1", proto="smtp", src="client", dst="smtpd", dir="c2s",
                  kind="data", line="[message: 386 bytes, 13 lines, Subject: Hola]", verb="DATA")]
    (run / "steps.jsonl").write_text("".join(s.to_json() + "\n" for s in steps))
    first = lesson.steps[0]
    results = [{"step": first.id, "what": c.what, "says": c.says[lang], "passed": True, "detail": ""}
               for c in first.checks]
    (run / "summary.json").write_text(json.dumps({
        "lesson": lesson_id, "lang": lang, "seconds": 1.0, "checkpoints": results,
        "ranges": {first.id: [0, 3]}}))
    return run, lesson


def test_a_deck_in_spanish_from_a_run_made_in_english_speaks_spanish(tmp_path):
    run, lesson = _run(tmp_path, "sasl", "en")
    deck = build_deck(lesson, run, "es", work=tmp_path / "work")
    marks = [says for slide in deck.slides for says, _ok in slide.marks]
    spanish = [c.says["es"] for c in lesson.steps[0].checks]
    assert marks and all(m in spanish for m in marks), marks
    assert not any(m == c.says["en"] for m in marks for c in lesson.steps[0].checks)
    lines = [ln.text for slide in deck.slides for ln in slide.transcript]
    assert any(t.startswith("cliente → smtpd: EHLO pc") for t in lines), lines
    assert any(t.startswith("smtpd → cliente: 250") for t in lines), lines
    assert any(t.startswith("cliente → smtpd: [mensaje: 386 bytes, 13 líneas") for t in lines), lines
    english = build_deck(lesson, run, "en", work=tmp_path / "work-en")
    assert any(ln.text.startswith("client → smtpd") for s in english.slides for ln in s.transcript)


def test_a_run_of_another_lesson_is_refused_naming_both(tmp_path):
    run, _ = _run(tmp_path, "sasl", "en")
    with pytest.raises(SlidesError, match="is a run of the lesson 'sasl', not of 'send-mail'"):
        build_deck(find_lesson("send-mail"), run, "en", work=tmp_path / "work")
    result = CliRunner().invoke(main, ["slides", "send-mail", "--from", str(run), "-o", str(tmp_path / "out"),
                                       "--lang", "es"])
    assert result.exit_code == 1
    assert "de la lección «sasl», no de «send-mail»" in result.stderr
    assert not list(tmp_path.glob("out/*.html"))             # no deck built


def test_an_output_folder_that_cannot_be_made_is_named(tmp_path):
    run, _ = _run(tmp_path, "sasl", "en")
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(main, ["slides", "sasl", "--from", str(run), "-o", str(tmp_path / "afile" / "x"),
                                       "--lang", "en"])
    assert result.exit_code == 1
    assert f"cannot write the slides in {tmp_path / 'afile' / 'x'} (-o): Not a directory" in result.stderr
    assert "diagrams" not in result.stderr
