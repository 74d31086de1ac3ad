"""Instructor slides: every lesson, both languages, both formats, checked in real viewers."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from gponsim.lessons.model import find_lesson, lesson_files

pytestmark = pytest.mark.slow          # end to end: LibreOffice and Chromium

from netlab import CANNOT  # noqa: E402

# The network lesson needs namespaces (root or user namespaces); without them it gets no deck.
LESSONS = [p.stem for p in lesson_files() if not (CANNOT and p.stem == "network")]
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
    # The course's order (each lesson's `order`), as `gponsim lesson list` gives it.
    positions = [index.index(f'href="{lesson}.{lang}.html"') for lesson in LESSONS]
    assert positions == sorted(positions) and LESSONS[0] == "send-mail"


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


def _pdf_lines(pdf):
    """Per page: (width, height, [(x0, y0, x1, y1, text) of every text line]) from pdftotext."""
    import xml.etree.ElementTree as ET

    xml = subprocess.run(["pdftotext", "-bbox-layout", str(pdf), "-"], capture_output=True, text=True,
                         check=True).stdout
    xml = xml[xml.index("<doc"):xml.index("</doc>") + 6]
    pages = []
    for page in ET.fromstring(xml.replace("xmlns=", "x=")).iter("page"):
        lines = []
        for line in page.iter("line"):
            words = " ".join(w.text or "" for w in line.iter("word"))
            lines.append(tuple(float(line.get(k)) for k in ("xMin", "yMin", "xMax", "yMax")) + (words,))
        pages.append((float(page.get("width")), float(page.get("height")), lines))
    return pages


@needs_soffice
@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (Debian package poppler-utils) is not installed")
@pytest.mark.parametrize("lesson", ["send-mail", "relay-gmail", "mbox"])
def test_libreoffice_renders_the_pptx_without_overlaps(decks, tmp_path, lesson):
    """LibreOffice renders every slide (one PDF page each) with no text line on top of
    another (a title over its subtitle, say) and none outside the slide."""
    from pptx import Presentation

    lang, out = decks
    deck = out / f"{lesson}.{lang}.pptx"
    result = subprocess.run(["soffice", "--headless", f"-env:UserInstallation=file://{tmp_path}/lo",
                             "--convert-to", "pdf", "--outdir", str(tmp_path), str(deck)],
                            capture_output=True, text=True, timeout=300)
    pdf = tmp_path / f"{lesson}.{lang}.pdf"
    assert pdf.exists(), result.stdout + result.stderr
    pages = _pdf_lines(pdf)
    assert len(pages) == len(Presentation(str(deck)).slides)
    for n, (width, height, lines) in enumerate(pages, 1):
        assert lines, f"slide {n} shows no text"
        for x0, y0, x1, y1, words in lines:
            assert 0 <= x0 and x1 <= width + 0.5 and 0 <= y0 and y1 <= height + 0.5, (n, words)
        for i, a in enumerate(lines):
            for b in lines[i + 1:]:
                dx = min(a[2], b[2]) - max(a[0], b[0])
                dy = min(a[3], b[3]) - max(a[1], b[1])
                # Lines of one paragraph touch (leading); text on top of text overlaps for real.
                assert not (dx > 2 and dy > 0.25 * min(a[3] - a[1], b[3] - b[1])), (n, a[4], b[4])
    if shutil.which("pdftoppm"):                     # and it draws: the first slide is not blank
        subprocess.run(["pdftoppm", "-r", "40", "-png", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "p")],
                       check=True, timeout=120)
        from PIL import Image

        [png] = tmp_path.glob("p-*1.png")
        assert sum(Image.open(png).convert("L").histogram()[:200]) > 500


@needs_chromium
@pytest.mark.parametrize("lesson", ["send-mail", "relay-gmail", "mbox", "troubleshooting"])
def test_html_slides_measured_at_1920x1080(decks, tmp_path, lesson):
    """Every slide at 1920x1080 in headless Chromium: body text >= 28 px, transcripts >= 20 px,
    nothing outside its slide, no text box overflowing, every slide with content."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    lang, out = decks
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path}/chrome", "--window-size=1920,1080", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": False})
        driver.get((out / f"{lesson}.{lang}.html").as_uri())
        assert driver.execute_script("return [innerWidth, innerHeight]") == [1920, 1080]
        count = driver.execute_script("return document.querySelectorAll('.slide').length")
        assert count >= 8
        for n in range(count):
            report = driver.execute_script("""
                show(arguments[0]);
                const slide = document.querySelector('.slide.active');
                const box = slide.getBoundingClientRect();
                const out = {w: box.width, h: box.height, scrollH: slide.scrollHeight, clientH: slide.clientHeight,
                             small: [], outside: [], overflow: [], content: 0, title: ''};
                const h1 = slide.querySelector('h1');
                out.title = h1.textContent;
                for (const el of slide.querySelectorAll('h1, p, li, pre, .value, .what, .figure')) {
                  const r = el.getBoundingClientRect();
                  if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1)
                    out.outside.push(el.tagName + ': ' + el.textContent.slice(0, 60));
                  if (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1)
                    if (el.tagName !== 'DIV') out.overflow.push(el.tagName + ': ' + el.textContent.slice(0, 60));
                  const size = parseFloat(getComputedStyle(el).fontSize);
                  const need = el.tagName === 'PRE' ? 20 : 28;
                  if (el.tagName !== 'DIV' && size < need) out.small.push(el.tagName + ' ' + size + ': ' + el.textContent.slice(0, 40));
                  if (el !== h1 && (el.textContent.trim() || el.querySelector('svg'))) out.content += 1;
                }
                return out;""", n)
            where = f"{lesson} slide {n + 1} ({report['title']})"
            assert (report["w"], report["h"]) == (1920, 1080), where
            assert not report["small"], (where, report["small"])
            assert not report["outside"], (where, report["outside"])
            assert not report["overflow"], (where, report["overflow"])
            assert report["scrollH"] <= report["clientH"] + 1, where
            assert report["content"] >= 1, f"{where} has nothing but its title"
            assert not report["title"].rstrip().endswith("…"), f"{where}: a cut title"
    finally:
        driver.quit()


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
        for expected in range(2, 8):
            body.send_keys(Keys.ARROW_RIGHT)
            assert driver.execute_script("return document.body.dataset.slide") == str(expected)
            if driver.find_elements("css selector", ".slide.active pre.transcript"):
                break
        # send-mail's first step only draws the architecture: its slide shows text and picture.
        first_step = driver.find_element("css selector", "#s4")
        assert first_step.get_attribute("class").endswith("kind-step")
        assert len(first_step.find_elements("css selector", ".figure svg")) == 1
        # The first transcript slide of send-mail (the submission): monospace and visible.
        active = driver.find_element("css selector", ".slide.active pre.transcript")
        assert "AUTH PLAIN ********" in active.text
        for kept in ("MAIL FROM:<user1@gponlab.local>", "RCPT TO:<user2@gponlab.local>", "DATA"):
            assert kept in active.text, kept            # the lines the step is about are kept
        assert not_blank()
        body.send_keys(Keys.ARROW_LEFT)
        assert driver.execute_script("return document.body.dataset.slide") == str(expected - 1)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
