"""The class's web view in headless Chromium (Selenium), against `gponsim class start`
and real mail clients: the dashboard, the projector, a student's page, the replay, and
who may see what."""

from __future__ import annotations

import json
import shutil
import smtplib
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from classproc import ClassProcess, chromium, page_errors
from labproc import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="headless Chromium (Debian packages chromium, chromium-driver) is not installed")]


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    proc = ClassProcess(tmp_path_factory.mktemp("web") / "run", students=3).start()
    yield proc
    proc.stop()


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path / "chrome")
    yield driver
    driver.quit()


def _status(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _smtp(cls, number: int) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", cls.ports["submission"], timeout=20,
                        source_address=(f"127.0.0.{10 + number}", 0))


def _accept_any() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# ---------------------------------------------------------------------- who may see what


def test_teacher_pages_and_streams_refuse_without_the_token(cls):
    for path in ("/teacher", "/teacher/events", "/teacher/state.json", "/projector", "/projector/events",
                 "/replay", "/replay/run.json?run=class"):
        code, body = _status(cls.base + path)
        assert code == 401, (path, code)
        assert "token" in json.loads(body)["error"]
        code, _ = _status(cls.base + path + ("&" if "?" in path else "?") + "token=not-the-token")
        assert code == 403, (path, code)
    code, body = _status(cls.base + "/teacher/state.json", {"Authorization": f"Bearer {cls.token}"})
    assert code == 200 and json.loads(body)["plan"]["lesson"] == "thunderbird"
    # a student's data wants a student's login
    assert _status(cls.base + "/me/state.json")[0] == 401
    assert _status(cls.base + "/me/events")[0] == 401


def test_the_teacher_page_refuses_in_the_browser_too(cls, browser):
    browser.get(cls.base + "/teacher")
    assert "token" in browser.find_element("tag name", "body").text
    assert not browser.find_elements("id", "grid")


# ---------------------------------------------------------------------- the dashboard


def test_the_dashboard_updates_when_a_students_client_logs_in(cls, browser):
    browser.get(f"{cls.base}/teacher?token={cls.token}&lang=en")
    cell = 'tr[data-student="student01"] td[data-check="auth-ok"]'
    wait_until(lambda: browser.find_elements("css selector", cell), 15, "the grid")
    assert browser.find_element("css selector", cell).get_attribute("data-state") == "pending"
    assert browser.find_element("css selector", "#status").text == "live"
    password = cls.roster().passwords["student01"]
    smtp = _smtp(cls, 1)
    smtp.starttls(context=_accept_any())
    smtp.login("student01", password)
    wait_until(lambda: browser.find_element("css selector", cell).get_attribute("data-state") == "pass",
               10, "student01's AUTH mark to turn green")
    row = browser.find_element("css selector", 'tr[data-student="student01"]')
    assert row.find_element("css selector", 'td[data-check="starttls-before-auth"]').text == "✓"
    assert row.find_element("css selector", 'td[data-check="queued"]').get_attribute("data-state") == "pending"
    assert "235 2.7.0 Authentication successful" in (
        row.find_element("css selector", 'td[data-check="auth-ok"]').get_attribute("title"))
    # the login shows in the latest lines, named with its student; nobody else moved
    wait_until(lambda: any("235 2.7.0" in li.text and "student01" in li.text
                           for li in browser.find_elements("css selector", "#lines li")), 10, "the line")
    for other in ("student02", "student03"):
        marks = browser.find_elements("css selector", f'tr[data-student="{other}"] td.mark')
        assert {m.get_attribute("data-state") for m in marks} == {"pending"}
    smtp.quit()
    # the class's counters on the architecture diagram
    wait_until(lambda: browser.find_element("css selector", '#diagram text.counter[data-node="SASL"]').text,
               10, "the SASL counter")
    assert int(browser.find_element("css selector",
                                    '#diagram text.counter[data-node="Postfix"]').text.split()[0]) > 5
    assert page_errors(browser) == []


def test_a_wrong_password_shows_as_the_students_error(cls, browser):
    browser.get(f"{cls.base}/teacher?token={cls.token}&lang=en")
    error = 'tr[data-student="student03"] td.error'
    wait_until(lambda: browser.find_elements("css selector", error), 15, "the grid")
    smtp = _smtp(cls, 3)
    smtp.starttls(context=_accept_any())
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.login("student03", "not-my-password")
    smtp.quit()
    wait_until(lambda: "535 5.7.8" in browser.find_element("css selector", error).text, 15, "the 535")


# ---------------------------------------------------------------------- the projector


def test_the_projector_ladder_grows_line_by_line(cls, browser):
    browser.get(f"{cls.base}/projector?token={cls.token}&follow=latest&lang=es")
    wait_until(lambda: _text(browser, "status") == "en directo", 15, "the stream")
    rows = lambda: browser.find_elements("css selector", "#ladder .row")  # noqa: E731
    smtp = _smtp(cls, 2)                       # CONNECT and the 220 banner
    wait_until(lambda: len(rows()) == 2, 10, "the banner")
    assert "220 mail.gponlab.local ESMTP" in rows()[1].text
    assert rows()[1].get_attribute("class").split() == ["row", "s2c"]
    seen = [r.text for r in rows()]
    smtp.ehlo("pc-de-estudiante")
    wait_until(lambda: len(rows()) == 4, 10, "EHLO and its reply")
    assert [r.text for r in rows()[:2]] == seen          # it grows: what was there stays
    assert "ehlo pc-de-estudiante" in rows()[2].text and "250-STARTTLS" in rows()[3].text
    # each line comes with its explanation, in the page's language
    assert "EHLO" in rows()[2].find_element("css selector", ".ex").text
    assert "cliente" in rows()[2].text
    smtp.starttls(context=_accept_any())
    wait_until(lambda: any("tls" in r.get_attribute("class").split() for r in rows()), 10, "TLS")
    count = len(rows())
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.login("student02", "wrong")
    wait_until(lambda: any("535" in r.text for r in rows()[count:]), 15, "the 535")
    failed = [r for r in rows() if "fail" in r.get_attribute("class").split()]
    # red: the 535 replies and the auth service's FAIL behind each of them
    assert failed and all("535 5.7.8" in r.text or "FAIL" in r.text for r in failed)
    assert any("FAIL" in r.text for r in failed) and any("535" in r.text for r in failed)
    # the client's lines after STARTTLS are marked TLS (the auth socket's are not: it is local)
    after = rows()[count:]
    assert all("tls" in r.get_attribute("class").split() for r in after
               if r.get_attribute("data-proto") == "smtp")
    assert not any("tls" in r.get_attribute("class").split() for r in after
                   if r.get_attribute("data-proto") == "sasl")
    assert "********" in " ".join(r.text for r in rows()) and "wrong" not in browser.page_source
    smtp.quit()
    title = browser.find_element("id", "session-title").text
    assert "submission" in title
    assert page_errors(browser) == []


# ---------------------------------------------------------------------- a student's page


def _text(browser, element_id: str) -> str:
    """An element's text, "" while the page that shows it is still loading
    (the element of the page before may have gone meanwhile)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return browser.find_element("id", element_id).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _log_in(cls, browser, account: str, password: str) -> None:
    browser.get(cls.base + "/login?lang=en")
    browser.find_element("id", "user").send_keys(account)
    browser.find_element("id", "password").send_keys(password)
    browser.find_element("id", "submit").click()


def test_a_student_page_shows_their_sessions_and_nothing_of_anothers(cls, browser):
    roster = cls.roster()
    # student01 sends a message; student02 reads their (empty) mailbox with the receiver account
    one = cls.practice("student01", 1)
    one.send(roster.passwords["student01"])
    two = cls.practice("student02", 2)
    assert two.read("not-the-password", want=0) == -1          # NO [AUTHENTICATIONFAILED]: a hint
    assert two.read(roster.passwords["student02b"], want=0) == 0
    # a wrong password stays on the login page, with a 401
    _log_in(cls, browser, "student02b", "guess")
    wait_until(lambda: _text(browser, "error"), 10, "the refusal")
    assert browser.current_url.endswith("/login")
    # the receiver account is theirs too
    _log_in(cls, browser, "student02b", roster.passwords["student02b"])
    wait_until(lambda: browser.current_url.endswith("/me"), 10, "the student's page")
    wait_until(lambda: browser.find_elements("css selector", "#sessions li"), 10, "their sessions")
    state = json.loads(browser.execute_async_script(
        "fetch('/me/state.json').then(r => r.text()).then(arguments[0])"))
    mine = {s["session"] for s in state["sessions"]}
    assert mine and all(s["student"] == "student02" for s in state["sessions"])
    listed = {li.get_attribute("data-session") for li in browser.find_elements("css selector", "#sessions li")}
    assert listed == mine
    # the hint meant for them, in the page's language
    wait_until(lambda: browser.find_elements("css selector", '#hints li[data-hint="imap-auth"]'), 10, "the hint")
    hint = browser.find_element("css selector", '#hints li[data-hint="imap-auth"]').text
    assert "AUTHENTICATIONFAILED" in hint and "student02 / student02b" in hint
    # their task text names their own accounts; the page shows no password, no other student
    text = browser.find_element("tag name", "body").text
    assert "student02b@gponlab.local" in text and "student01" not in browser.page_source
    for password in roster.passwords.values():
        assert password not in browser.page_source
    # trying: another student's session, the teacher's data
    others = [s for s in json.loads(_status(cls.base + "/teacher/sessions.json?student=student01",
                                            {"Authorization": f"Bearer {cls.token}"})[1])]
    assert others
    code = browser.execute_async_script(
        "fetch('/me/session.json?id=' + encodeURIComponent(arguments[0])).then(r => arguments[1](r.status))",
        others[0]["session"])
    assert code == 403
    code = browser.execute_async_script(
        "fetch('/teacher/state.json').then(r => arguments[0](r.status))")
    assert code == 401
    own = browser.execute_async_script(
        "fetch('/me/session.json?id=' + encodeURIComponent(arguments[0])).then(r => r.json()).then(arguments[1])",
        sorted(mine)[0])
    assert own and all(r["s"] == sorted(mine)[0] for r in own)
    # its live stream: a new login by this student appears, another student's does not
    before = len(browser.find_elements("css selector", "#sessions li"))
    smtp = _smtp(cls, 1)
    smtp.starttls(context=_accept_any())
    smtp.login("student01", roster.passwords["student01"])
    smtp.quit()
    smtp = _smtp(cls, 2)
    smtp.starttls(context=_accept_any())
    smtp.login("student02", roster.passwords["student02"])
    smtp.quit()
    wait_until(lambda: len(browser.find_elements("css selector", "#sessions li")) == before + 1, 10,
               "their new session")
    assert "student01" not in browser.page_source
    # (the refusals asked for above are in the console; nothing else is)
    assert [e for e in page_errors(browser) if "status of 401" not in e and "status of 403" not in e] == []


# ---------------------------------------------------------------------- the replay


@pytest.fixture(scope="module")
def lesson_run(tmp_path_factory):
    """A recorded run: the send-mail lesson, scripted, as a student would run it."""
    out = tmp_path_factory.mktemp("lesson") / "send-mail"
    done = subprocess.run([sys.executable, "-m", "gponsim", "lesson", "send-mail", "--out", str(out),
                           "--quiet", "--lang", "en"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


@pytest.fixture
def replay(lesson_run, tmp_path):
    ready = tmp_path / "replay.ready"
    proc = subprocess.Popen([sys.executable, "-m", "gponsim", "class", "replay", str(lesson_run),
                             "--web-port", "0", "--ready-file", str(ready), "--lang", "en"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, 30, "the replay page")
        assert proc.poll() is None, proc.stderr.read().decode()
        yield json.loads(ready.read_text())
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_replay_steps_forward_and_back_through_a_recorded_run(replay, lesson_run, browser):
    steps = [json.loads(line) for line in (lesson_run / "steps.jsonl").read_text().splitlines() if line]
    code, _ = _status(f"http://127.0.0.1:{replay['web_port']}/replay?run=send-mail")
    assert code == 401
    browser.get(replay["url"])
    wait_until(lambda: browser.find_element("tag name", "body").get_attribute("data-loaded"), 15, "the run")
    position = lambda: int(browser.find_element("tag name", "body").get_attribute("data-position"))  # noqa: E731
    rows = lambda: browser.find_elements("css selector", "#ladder .row")  # noqa: E731
    assert position() == 0 and rows() == []
    forward, back = browser.find_element("id", "forward"), browser.find_element("id", "back")
    for n in range(1, 4):
        forward.click()
        assert position() == n and len(rows()) == n
    text = lambda node: node.get_attribute("textContent")  # noqa: E731  (as on the wire: tabs too)
    assert [text(r.find_element("css selector", ".text")) for r in rows()] == [s["line"] for s in steps[:3]]
    assert "current" in rows()[-1].get_attribute("class").split()
    assert text(browser.find_element("css selector", "#explain code")) == steps[2]["line"]
    back.click()
    assert position() == 2 and len(rows()) == 2
    assert text(browser.find_element("css selector", "#explain code")) == steps[1]["line"]
    # jump to a checkpoint: the lesson step "submit" (its first Step is the last one shown)
    summary = json.loads((lesson_run / "summary.json").read_text())
    first, end = summary["ranges"]["submit"]
    assert end - first > 10
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "checkpoint")).select_by_visible_text("submit")
    assert position() == first + 1
    assert text(rows()[-1].find_element("css selector", ".text")) == steps[first]["line"]
    # filter by protocol: no SASL lines, the position counts what is shown
    before = position()
    browser.find_element("css selector", 'input[data-proto="sasl"]').click()
    assert not browser.find_elements("css selector", '#ladder .row[data-proto="sasl"]')
    shown = [s for s in steps[:first + 1] if s["proto"] != "sasl"]
    assert position() == len(shown) < before
    # play, then pause: it moves on by itself and stops when asked
    Select(browser.find_element("id", "speed")).select_by_value("20")
    browser.find_element("id", "play").click()
    wait_until(lambda: position() > len(shown) + 2, 10, "playing")
    browser.find_element("id", "pause").click()
    stopped = position()
    # paused: no next line is scheduled (the player's timer is cleared), so none comes
    wait_until(lambda: browser.execute_script("return document.body.dataset.playing") == "no", 5, "pause")
    assert browser.execute_script("return timer") is None
    assert position() == stopped
    assert page_errors(browser) == []


def test_the_replay_of_a_capture_asks_the_packets_view_for_a_packets_layers(tmp_path, browser):
    """A capture with its keys replays like a run; a line read from packets asks
    /replay/packet.json for the first one's layers (the packets view: 501 where this
    gponsim has none)."""
    import importlib.util
    from pathlib import Path

    capture = Path(__file__).resolve().parents[1] / "captures" / "swaks-submission-starttls-plain-auth.pcap"
    ready = tmp_path / "replay.ready"
    proc = subprocess.Popen([sys.executable, "-m", "gponsim", "class", "replay", str(capture),
                             "--web-port", "0", "--ready-file", str(ready), "--lang", "en"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, 30, "the replay page")
        assert proc.poll() is None, proc.stderr.read().decode()
        info = json.loads(ready.read_text())
        base, auth = f"http://127.0.0.1:{info['web_port']}", {"Authorization": f"Bearer {info['token']}"}
        code, body = _status(f"{base}/replay/run.json?run={capture.name}", auth)
        run = json.loads(body)
        assert code == 200 and run["capture"] is True and run["kind"] == "capture"
        lines = [r["line"] for r in run["lines"]]
        assert "STARTTLS" in lines and any(line.startswith("AUTH PLAIN ") for line in lines)
        assert "AUTH PLAIN ********" in lines and "AHVzZXIxAHBhc3M=" not in body     # decrypted, masked
        assert run["checkpoints"] and all(run["lines"][c["n"]]["v"] == "CONNECT" for c in run["checkpoints"])
        with_packet = [r for r in run["lines"] if r.get("pkt")]
        assert with_packet
        code, body = _status(f"{base}/replay/packet.json?run={capture.name}&n={with_packet[0]['pkt']}", auth)
        answer = json.loads(body)
        if importlib.util.find_spec("gponsim.packets") is None:
            assert code == 501 and answer["available"] is False and "packets view" in answer["reason"]
        else:
            assert code == 200 and answer["available"] is True and answer["layers"]
        # the page shows it for the line with a packet
        browser.get(info["url"])
        wait_until(lambda: browser.find_element("tag name", "body").get_attribute("data-loaded"), 15, "the run")
        browser.find_element("id", "forward").click()
        wait_until(lambda: browser.find_element("id", "packet").text, 10, "the packet panel")
        panel = browser.find_element("id", "packet").text
        assert ("packets view" in panel) if code == 501 else (
            browser.find_elements("css selector", "#packet section.layer[data-layer=\"Ethernet\"] table tr"))
    finally:
        proc.terminate()
        proc.wait(10)
