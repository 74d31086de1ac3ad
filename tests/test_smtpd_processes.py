"""`gponsim serve --smtpd-processes N`: smtpd in child processes, as Postfix's master runs it."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
from email.message import EmailMessage

import pytest

from gponsim.server.maillog import pid_for
from gponsim.stepjson import EncodedStep, encoded, step_line
from gponsim.steps import Step
from tests.labproc import LabProcess, wait_until


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, ...; None when gone."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """Live smtpd processes started by ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(entry)
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        if stat and int(stat[1]) == pid and stat[0] != "Z" \
                and b"gponsim.server.smtpd_process" in cmdline:
            found.append(int(entry))
    return sorted(found)


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _send(port: int, n: int) -> None:
    msg = EmailMessage()
    msg["From"] = "user1@gponlab.local"
    msg["To"] = "user2@gponlab.local"
    msg["Subject"] = f"process test {n}"
    msg.set_content(f"body {n}\n")
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.gponlab.local", timeout=15) as s:
        s.send_message(msg)


def _smtpd_pids(log: str) -> set[int]:
    return {int(p) for p in re.findall(r" postfix/smtpd\[(\d+)\]: connect from ", log)}


@pytest.fixture
def lab2(tmp_path):
    lab = LabProcess(tmp_path / "lab", extra=["--smtpd-processes", "2"]).start()
    yield lab
    lab.stop()


def test_children_answer_and_the_master_delivers(lab2):
    children = _children(lab2.proc.pid)
    assert len(children) == 2
    for n in range(8):
        _send(lab2.ports["smtp"], n)
    got = lab2.wait_for_mail("user2", 8)
    assert sorted(m["Subject"] for m in got) == sorted(f"process test {n}" for n in range(8))
    log = lab2.log_text()
    pids = _smtpd_pids(log)
    base = pid_for("master", lab2.proc.pid)
    assert pids and pids <= {pid_for("smtpd", base + n * 100) for n in (1, 2)}, pids
    # no pid of a child's lines is also one of the master's
    master_pids = {int(p) for p in re.findall(r" (?:postfix/(?:qmgr|local|master)|dovecot)\[(\d+)\]", log)}
    assert master_pids and not master_pids & pids
    # qmgr and local(8) are the master's
    assert re.search(rf" postfix/local\[{pid_for('local', lab2.proc.pid)}\]: .*status=sent", log)

    steps = lab2.steps()
    smtp = [s for s in steps if s.proto == "smtp"]
    sessions = {s.session for s in smtp}
    assert len(sessions) == 8
    # child sessions carry their process number, and each arrives in order
    assert all(re.fullmatch(r"smtp-\w+\.[12]-\d+", s) for s in sessions), sessions
    for session in sessions:
        own = [s for s in smtp if s.session == session]
        assert own[0].key == "smtp.event.CONNECT"
        assert [s.code for s in own if s.code][0] == 220
        assert [s.code for s in own if s.code][-1] == 221
        assert [s.t for s in own] == sorted(s.t for s in own)
    queued = [s for s in steps if s.proto == "queue" and s.src == "cleanup"]
    assert len({s.session for s in queued}) >= 8


def test_a_killed_child_is_logged_and_the_master_answers_again(tmp_path):
    lab = LabProcess(tmp_path / "lab", extra=["--smtpd-processes", "1"]).start()
    try:
        (child,) = _children(lab.proc.pid)
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: f"warning: process /usr/lib/postfix/sbin/smtpd pid {pid_for('smtpd', lab.proc.pid + 100)} "
                           "killed by signal 9" in lab.log_text(), 10, "master's warning")
        _send(lab.ports["smtp"], 1)
        lab.wait_for_mail("user2", 1)
        assert _smtpd_pids(lab.log_text()) == {pid_for("smtpd", lab.proc.pid)}
    finally:
        lab.stop()


def test_children_end_with_a_killed_master_and_a_restart_delivers(tmp_path):
    lab = LabProcess(tmp_path / "lab", extra=["--smtpd-processes", "2"]).start()
    children = _children(lab.proc.pid)
    assert len(children) == 2
    _send(lab.ports["smtp"], 1)
    lab.kill9()
    wait_until(lambda: not any(_alive(p) for p in children), 15, "the smtpd processes to end")
    # nothing holds the port any more
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", lab.ports["smtp"]))
    lab.start()
    lab.wait_for_mail("user2", 1)
    lab.stop()
    assert len(lab.mbox("user2")) == 1


def test_zero_processes_the_master_answers(tmp_path):
    lab = LabProcess(tmp_path / "lab", extra=["--smtpd-processes", "0"]).start()
    try:
        assert _children(lab.proc.pid) == []
        _send(lab.ports["smtp"], 1)
        lab.wait_for_mail("user2", 1)
        assert _smtpd_pids(lab.log_text()) == {pid_for("smtpd", lab.proc.pid)}
    finally:
        lab.stop()


@pytest.mark.parametrize("value", ["-1", "65", "many"])
def test_bad_process_count_exits_2(tmp_path, value):
    out = subprocess.run([sys.executable, "-m", "gponsim", "serve", "--lab-root", str(tmp_path / "lab"),
                          "--smtpd-processes", value], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--smtpd-processes" in out.stderr


def test_encoded_step_is_the_step_line():
    step = Step(t=1.5, session="smtp-x.1-3", proto="smtp", src="client", dst="smtpd",
                dir="c2s", kind="command", verb="AUTH", line="AUTH PLAIN AHVzZXIxAHBhc3M=",
                key="smtp.auth", secret=(11, 27))
    copy = EncodedStep(*(getattr(step, f.name) for f in dataclasses.fields(Step)))
    copy.jsonl = step_line(step)
    assert encoded(copy) == step_line(step)
    # revealing secrets needs the Step itself: the carried text is masked
    assert encoded(copy, reveal=True) == step_line(step, reveal=True) != step_line(step)
