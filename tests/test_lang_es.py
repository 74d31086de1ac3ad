"""Under --lang es no English sentence of gponsim's own reaches the terminal
(issue #17, item 12): the relayhost -> simulator line, the message
summaries, the Gmail simulator's delivery, the client's errors and results.
Protocol lines (replies, log lines) stay as the servers send them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labproc import LabProcess, wait_until

pytestmark = pytest.mark.slow          # end to end: `gponsim serve`, `send` and a lesson as processes

ENGLISH = ["Gmail simulator on", "the real one cannot be reached", "delivered the message for",
           "[message:", "accepted by the server", "cannot connect", "Is `gponsim serve` running",
           "the lab accepted the mail", "the server answered"]


def _gponsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gponsim", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "400"})


def test_serve_and_send_speak_spanish(tmp_path):
    narration = tmp_path / "serve.txt"
    lab = LabProcess(tmp_path / "gponlab", narration=narration, extra=["--lang", "es"]).start()
    try:
        sent = _gponsim("send", "--as", "user1", "--to", "bob@gmail.com", "--subject", "Hola",
                        "--port", str(lab.ports["submission"]), "--lang", "es")
        assert sent.returncode == 0, sent.stderr
        refused = _gponsim("send", "--as", "user1", "--to", "user2@gponlab.local", "--no-tls",
                           "--port", str(lab.ports["submission"]), "--lang", "es")
        wait_until(lambda: "removed" in lab.log_text(), 15, "the relay to finish")
        wait_until(lambda: "entregó el mensaje para <bob@gmail.com>" in narration.read_text(),
                   15, "the simulator's delivery narrated")
    finally:
        lab.stop()
    nowhere = _gponsim("send", "--as", "user1", "--to", "user2@gponlab.local",
                       "--port", "1", "--lang", "es")
    terminal = narration.read_text() + sent.stdout + sent.stderr + refused.stdout + \
        refused.stderr + nowhere.stderr
    for english in ENGLISH:
        assert english not in terminal, english
    assert "simulador de Gmail en 127.0.0.1:" in terminal
    assert "[mensaje: " in sent.stdout
    assert "gponsim: el servidor lo aceptó, identificador de cola " in sent.stderr
    assert "el servidor respondió: 530 5.7.0 Must issue a STARTTLS command first" in refused.stderr
    assert "no se puede conectar a 127.0.0.1, puerto 1: conexión rechazada." in nowhere.stderr


def test_a_lesson_s_folded_start_up_speaks_spanish(tmp_path):
    """The lesson's one-line summary of the lab's start-up names the relay's
    mapping in the lesson's language too."""
    done = _gponsim("lesson", "send-mail", "--lang", "es", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "El laboratorio está listo (" in done.stdout
    assert "simulador de Gmail en 127.0.0.1:" in done.stdout
    for english in ENGLISH:
        assert english not in done.stdout, english
