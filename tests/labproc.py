"""Run `gponsim serve` as a real process on free loopback ports, for tests."""

from __future__ import annotations

import json
import mailbox
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gponsim.steps import Step, read_jsonl

SMTPD_SERVICES = ("smtp", "submission")
DOVECOT_SERVICES = ("imap", "imaps", "pop3", "pop3s")
OTHER_SERVICES = ("autoconfig",)


def poll_until(predicate, timeout: float):
    """``predicate()``'s first true value within ``timeout`` seconds, else None.

    This waits on a real event with a bound; the short poll interval only
    paces the checks.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def wait_until(predicate, timeout: float = 15.0, what: str = "condition"):
    """Poll ``predicate`` (a file appearing, a mailbox filling) until true."""
    value = poll_until(predicate, timeout)
    if value is None:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value


class LabProcess:
    def __init__(self, root: Path, *, config_dir: Path | None = None, extra: list[str] | None = None,
                 narration: Path | None = None):
        """``narration``: narrate (no --quiet) in English into this file."""
        self.root = Path(root)
        self.narration = narration
        self.config_dir = config_dir
        self.extra = extra or []
        self.steps_file = self.root.parent / f"{self.root.name}.steps.jsonl"
        self.ready_file = self.root.parent / f"{self.root.name}.ready.json"
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gponsim", "serve", "--lab-root", str(self.root),
               "--quiet", "--steps", str(self.steps_file), "--ready-file", str(self.ready_file)]
        for svc in SMTPD_SERVICES + DOVECOT_SERVICES + OTHER_SERVICES:
            cmd += ["--port", f"{svc}=0"]
        if self.config_dir:
            cmd += ["--config", str(self.config_dir)]
        if self.narration is not None:
            cmd = [arg for arg in cmd if arg != "--quiet"] + ["--lang", "en"]
        return cmd + self.extra

    def start(self, timeout: float = 30.0) -> "LabProcess":
        if self.ready_file.exists():
            self.ready_file.unlink()
        self.stderr_path = self.root.parent / f"{self.root.name}.stderr"
        self._stderr = open(self.stderr_path, "ab")
        stdout = open(self.narration, "wb") if self.narration else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), stdout=stdout, stderr=self._stderr,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"})
        if self.narration:
            stdout.close()          # the child has its own copy

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"gponsim serve exited with {self.proc.returncode}:\n{self.stderr()}")
            return self.ready_file.exists()
        wait_until(ready, timeout, "gponsim serve to listen")
        self.ports = json.loads(self.ready_file.read_text())["ports"]
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, sig=signal.SIGINT, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._stderr.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._stderr.close()

    # -------------------------------------------------------------- reading

    def steps(self) -> list[Step]:
        """The lab's Steps so far. Its recorder writes them at most 0.1 s after
        they happen, so wait (bounded) until the file has stopped growing."""
        if not self.steps_file.exists():
            return []
        deadline = time.monotonic() + 5
        size = -1
        while size != self.steps_file.stat().st_size and time.monotonic() < deadline:
            size = self.steps_file.stat().st_size
            time.sleep(0.15)
        return list(read_jsonl(self.steps_file))

    def mbox_path(self, user: str) -> Path:
        return self.root / "var" / "mail" / user

    def mbox(self, user: str) -> list:
        path = self.mbox_path(user)
        if not path.exists():
            return []
        box = mailbox.mbox(str(path), create=False)
        try:
            # not Dovecot's "FOLDER INTERNAL DATA" pseudo message (X-IMAP header)
            return [m for m in box if m["X-IMAP"] is None]
        finally:
            box.close()

    def wait_for_mail(self, user: str, count: int = 1, timeout: float = 15.0) -> list:
        return wait_until(lambda: (m := self.mbox(user)) and len(m) >= count and m,
                          timeout, f"{count} message(s) in var/mail/{user}")

    def wait_queue_empty(self, timeout: float = 15.0) -> None:
        """Until nothing is waiting in the incoming or active queue (all delivered)."""
        spool = self.root / "var" / "spool" / "postfix"

        def empty() -> bool:
            return all(not any(p.is_file() for p in (spool / q).rglob("*"))
                       for q in ("incoming", "active") if (spool / q).exists())
        wait_until(empty, timeout, "the queue to be empty")

    def log_text(self) -> str:
        path = self.root / "var" / "log" / "mail.log"
        return path.read_text() if path.exists() else ""
