"""Instructor slides: every lesson, both languages, both formats, checked in real viewers."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from gponsim.lessons.model import find_lesson, lesson_files

pytestmark = pytest.mark.slow          # end to end: LibreOffice and Chromium

LESSONS = [p.stem for p in lesson_files()]
needs_soffice = pytest.mark.skipif(shutil.which("soffice") is None,
                                   reason="LibreOffice (Debian package libreoffice-impress) is not installed")
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                                    reason="headless Chromium (Debian packages chromium, chromium-driver) is not installed")


@pytest.fixture(scope="module", params=["es", "en"])
def decks(request, tmp_path_factory):
    """`gponsim slides --all --format both` in one language (each lesson runs first)."""
    lang = request.param
    out = tmp_path_factory.mktemp(f"slides-{lang}")
    result = subprocess.run([sys.executable, "-m", "gponsim", "slides", "--all", "--format", "both",
                             "--lang", lang, "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return lang, out


def test_every_lesson_has_both_decks_and_an_index(decks):
    lang, out = decks
    for lesson in LESSONS:
        assert (out / f"{lesson}.{lang}.html").stat().st_size > 10_000, lesson
        assert (out / f"{lesson}.{lang}.pptx").stat().st_size > 10_000, lesson
    index = (out / "index.html").read_text()
    assert all(f'href="{lesson}.{lang}.html"' in index for lesson in LESSONS)


def test_pptx_text_notes_and_pictures(decks):
    from pptx import Presentation

    lang, out = decks
    for lesson_id in LESSONS:
        lesson = find_lesson(lesson_id)
        prs = Presentation(str(out / f"{lesson_id}.{lang}.pptx"))
        assert prs.slide_width * 9 == prs.slide_height * 16           # 16:9
        texts = [" ".join(sh.text_frame.text for sh in slide.shapes if sh.has_text_frame)
                 for slide in prs.slides]
        assert lesson.title[lang] in texts[0]
        assert all(goal in texts[1] for goal in lesson.objectives[lang])
        pictures = sum(1 for slide in prs.slides for sh in slide.shapes if sh.shape_type == 13)
        assert pictures >= 1, lesson_id                                  # the architecture at least
        quiz_notes = [slide.notes_slide.notes_text_frame.text for slide in prs.slides
                      if slide.has_notes_slide and ("Respuesta:" in slide.notes_slide.notes_text_frame.text
                                                    or "Answer:" in slide.notes_slide.notes_text_frame.text)]
        assert len(quiz_notes) == len(lesson.quiz)                       # answers in the speaker notes
        assert not any("AHVzZXIxAHBhc3M" in t for t in texts)             # secrets stay masked


@needs_soffice
def test_libreoffice_opens_the_pptx_with_one_page_per_slide(decks, tmp_path):
    from pptx import Presentation

    lang, out = decks
    deck = out / f"send-mail.{lang}.pptx"
    result = subprocess.run(["soffice", "--headless", f"-env:UserInstallation=file://{tmp_path}/lo",
                             "--convert-to", "pdf", "--outdir", str(tmp_path), str(deck)],
                            capture_output=True, text=True, timeout=180)
    pdf = tmp_path / f"send-mail.{lang}.pdf"
    assert pdf.exists(), result.stdout + result.stderr
    pages = pdf.read_bytes().count(b"/Type /Page\n") + pdf.read_bytes().count(b"/Type/Page\n")
    if shutil.which("pdfinfo"):
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True).stdout
        pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
    assert pages == len(Presentation(str(deck)).slides)


@needs_chromium
def test_html_deck_in_headless_chromium(decks, tmp_path):
    from io import BytesIO

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.keys import Keys

    lang, out = decks
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path}/chrome", "--window-size=1600,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((out / f"send-mail.{lang}.html").as_uri())
        assert driver.execute_script("return document.body.dataset.slide") == "1"

        def not_blank() -> bool:
            img = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("L")
            dark = sum(img.histogram()[:200])
            return dark > 2000
        assert not_blank()
        body = driver.find_element("tag name", "body")
        for expected in range(2, 6):
            body.send_keys(Keys.ARROW_RIGHT)
            assert driver.execute_script("return document.body.dataset.slide") == str(expected)
        # Slide 5 is the first transcript slide of send-mail: monospace and visible.
        active = driver.find_element("css selector", ".slide.active pre.transcript")
        assert "AUTH PLAIN ********" in active.text
        assert not_blank()
        body.send_keys(Keys.ARROW_LEFT)
        assert driver.execute_script("return document.body.dataset.slide") == "4"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
