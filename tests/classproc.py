"""Run `gponsim class start` as a real process on free loopback ports, for tests;
scripted students (real clients: urllib, smtplib, imaplib) from their own 127.0.0.x."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from labproc import DOVECOT_SERVICES, OTHER_SERVICES, SMTPD_SERVICES, wait_until

from gponsim.classroom.practice import Account, Practice
from gponsim.classroom.roster import Roster


class ClassProcess:
    def __init__(self, out: Path, *, students: int | None = 3, roster: Path | None = None,
                 extra: list[str] | None = None) -> None:
        self.out = Path(out)
        self.students = students
        self.roster_file = roster
        self.extra = extra or []
        self.ready_file = self.out.parent / f"{self.out.name}.ready.json"
        self.proc: subprocess.Popen | None = None
        self.ready: dict = {}

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gponsim", "class", "start", "--out", str(self.out),
               "--ready-file", str(self.ready_file), "--web-port", "0", "--lang", "en"]
        cmd += ["--roster", str(self.roster_file)] if self.roster_file else ["--students", str(self.students)]
        for svc in SMTPD_SERVICES + DOVECOT_SERVICES + OTHER_SERVICES:
            cmd += ["--port", f"{svc}=0"]
        return cmd + self.extra

    def start(self, timeout: float = 60.0) -> "ClassProcess":
        if self.ready_file.exists():
            self.ready_file.unlink()
        self.stderr_path = self.out.parent / f"{self.out.name}.stderr"
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"gponsim class start exited with {self.proc.returncode}:\n{self.stderr()}")
            return self.ready_file.exists()
        wait_until(ready, timeout, "gponsim class start to listen")
        self.ready = json.loads(self.ready_file.read_text())
        return self

    @property
    def ports(self) -> dict:
        return self.ready["ports"]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ready['web_port']}"

    @property
    def token(self) -> str:
        return self.ready["token"]

    def roster(self) -> Roster:
        return Roster.read_accounts(self.out / "accounts.csv")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._stderr.close()

    def practice(self, login: str, number: int, mistakes=(), pause: float = 0.0) -> Practice:
        """A scripted student on their own address 127.0.0.<10 + number>."""
        roster = self.roster()
        s = roster.student(login)
        return Practice(host="127.0.0.1", ports=self.ports,
                        sender=Account(s.login, roster.passwords[s.login]),
                        reader=Account(s.reader, roster.passwords[s.reader]),
                        send_to=roster.address(s.send_to), source=f"127.0.0.{10 + number}",
                        mistakes=tuple(mistakes), pause=pause)


def run_together(practices: list[Practice]) -> list[dict]:
    """Every scripted student at once (each in a thread); their results, in order."""
    results: list = [None] * len(practices)
    errors: list = []

    def go(i, p):
        try:
            results[i] = p.run()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{p.sender.user}: {exc!r} after {p.log}")
    threads = [threading.Thread(target=go, args=(i, p)) for i, p in enumerate(practices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def chromium(profile: Path, size: str = "1400,1000"):
    """Headless Chromium driven through Selenium, with a fresh profile (as tests/test_slides.py)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={profile}", f"--window-size={size}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def page_errors(driver) -> list[str]:
    """What the page's console said at level SEVERE (a script error, a refused asset)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
