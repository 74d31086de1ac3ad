"""`gponsim analyze`'s own messages: bad options, bad files, in Spanish and English.

Run through the CLI on real captures (the project's and ../shared/pcaps) and on
files built byte by byte (tests/pcapgen.py)."""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from pcapgen import Conversation, smtp_session, write_pcap  # noqa: E402

from conftest import PCAPS, needs_pcaps  # noqa: E402
from gponsim.cli import main  # noqa: E402

CAPTURE = Path(__file__).resolve().parents[1] / "captures" / "swaks-smtp25-plain.pcap"


def analyze(*args: str):
    # wide, so that no explanation is wrapped in the middle of what a test looks for
    return CliRunner().invoke(main, ["analyze", *map(str, args)], env={"COLUMNS": "1000"})


# ------------------------------------------------------------- --packet, --session

@pytest.mark.parametrize("value", ["abc", "5,7", "0", "5..2", "..", "3..x"])
def test_a_bad_packet_range_is_named(value):
    res = analyze(CAPTURE, "--packet", value, "--lang", "en")
    assert res.exit_code == 2
    assert f"--packet {value}: give a packet number or a range" in res.stderr
    assert "invalid literal" not in res.stderr
    es = analyze(CAPTURE, "--packet", value, "--lang", "es")
    assert es.exit_code == 2 and "da un número de paquete o un intervalo" in es.stderr


def test_a_good_packet_range_still_works():
    res = analyze(CAPTURE, "--packet", "2..4", "--lang", "en")
    assert res.exit_code == 0 and "3 of " in res.stdout


def test_a_packet_beyond_the_capture_is_an_error():
    total = analyze(CAPTURE, "--packets", "--json").stdout.rsplit('"total": ', 1)[1].split(",")[0]
    res = analyze(CAPTURE, "--packet", "999", "--lang", "en")
    assert res.exit_code == 2 and res.stdout == ""
    assert f"has no packet 999 (it has {total})" in res.stderr
    res = analyze(CAPTURE, "--packet", "999..", "--lang", "es")
    assert res.exit_code == 2 and f"no tiene el paquete 999 (tiene {total})" in res.stderr
    # the last packet is still there
    assert analyze(CAPTURE, "--packet", total, "--lang", "en").exit_code == 0


@pytest.mark.parametrize("session", ["99", "nosuch", "capture-00000-1"])
def test_a_session_that_matches_no_connection_is_an_error(session):
    res = analyze(CAPTURE, "--session", session, "--lang", "en")
    assert res.exit_code == 2 and res.stdout == ""
    assert f"no connection '{session}' (connections: 1 (capture-" in res.stderr
    # session ids change from run to run: the message says the number works
    assert "give a connection's number" in res.stderr
    es = analyze(CAPTURE, "--session", session, "--lang", "es")
    assert es.exit_code == 2 and "da el número de la conexión" in es.stderr


def test_a_session_by_number_still_works():
    res = analyze(CAPTURE, "--session", "1", "--lang", "en")
    assert res.exit_code == 0 and "packets shown" in res.stdout


# ------------------------------------------------------------------- bad files

def test_not_a_capture_names_the_magic_number_in_both_byte_orders(tmp_path):
    path = tmp_path / "junk.pcap"
    path.write_bytes(b"hello, this is text\n")
    res = analyze(path, "--lang", "en")
    assert res.exit_code == 2
    assert "starts with bytes 68 65 6c 6c" in res.stderr
    assert "a1 b2 c3 d4 or d4 c3 b2 a1" in res.stderr and "magic number" in res.stderr
    es = analyze(path, "--lang", "es")
    assert "no es un fichero pcap ni pcapng" in es.stderr and "número mágico" in es.stderr


def test_read_errors_in_spanish(tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    res = analyze(empty, "--lang", "es")
    assert res.exit_code == 2 and "fichero vacío (0 bytes): no es una captura" in res.stderr
    conv = smtp_session(Conversation())
    path = write_pcap(tmp_path / "t.pcap", conv.frames())
    path.write_bytes(path.read_bytes()[:-30])
    res = analyze(path, "--lang", "es")
    assert res.exit_code == 0
    problems = res.stdout.split("Problemas al leer el fichero:\n", 1)[1].splitlines()[0]
    assert problems.startswith(f"  paquete {len(conv.packets)}: cortado en el byte ")
    assert "el fichero termina ahí" in problems and "truncated" not in res.stdout
    assert "gponsim: " in res.stderr and " paquetes en " in res.stderr and "packets" not in res.stderr
    # --json keeps one language: the English text
    data = analyze(path, "--json", "--lang", "es").stdout
    assert f'"problems": ["packet {len(conv.packets)}: truncated at byte ' in data


def test_an_impossible_record_length_is_called_corrupt(tmp_path):
    conv = smtp_session(Conversation())
    path = write_pcap(tmp_path / "c.pcap", conv.frames())
    data = bytearray(path.read_bytes())
    # the third record's header: after the file header and two records
    at = 24
    for _ in range(2):
        at += 16 + struct.unpack_from("<I", data, at + 8)[0]
    struct.pack_into("<I", data, at + 8, 16_713_186)
    path.write_bytes(bytes(data))
    res = analyze(path, "--lang", "en")
    assert res.exit_code == 0
    assert f"packet 3: impossible record length 16713186 at byte {at}" in res.stdout
    assert "the record header is corrupt" in res.stdout and "the file ends there" not in res.stdout
    assert "longitud de registro imposible 16713186" in analyze(path, "--lang", "es").stdout


# -------------------------------------------------- a server that does not name itself

def test_a_server_that_does_not_name_itself_reads_naturally(tmp_path):
    conv = Conversation()
    conv.s("220 mx.example.net ESMTP ready\r\n")
    conv.c("EHLO pc.example.org\r\n")
    conv.s("250-mx.example.net\r\n250 PIPELINING\r\n")
    conv.c("QUIT\r\n")
    conv.s("221 bye\r\n")
    conv.close()
    path = write_pcap(tmp_path / "nameless.pcap", conv.frames())
    en = analyze(path, "--lang", "en", "--explain", "all").stdout
    assert "This server does not say which software it is" in en
    assert "The server answers EHLO" in en
    assert "This server is ," not in en and "()" not in en
    es = analyze(path, "--lang", "es", "--explain", "all").stdout
    assert "Este servidor no dice qué programa es" in es and "El servidor responde a EHLO" in es
    assert "Este servidor es ," not in es and "()" not in es


@needs_pcaps
def test_named_and_nameless_servers_of_real_captures():
    pop3 = analyze(PCAPS / "ndpi" / "pop3.pcap", "--lang", "en").stdout
    assert "This server is ," not in pop3 and "This server does not say which" in pop3
    smtp = analyze(PCAPS / "suricata-verify" / "smtp-errors-smtperr.pcap", "--lang", "en").stdout
    assert "server: CommuniGate Pro 6.1.16, not the lab's software" in smtp
    assert "The server ()" not in smtp and "The server (CommuniGate Pro 6.1.16)" in smtp


# ------------------------------------------------- bytes that are not text, on a terminal

_RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f\udc80-\udcff]")


def test_control_bytes_are_escaped_on_the_terminal_and_kept_in_json(tmp_path):
    bad = b"X\x1b[31mRED\x00NUL\x0cFF\xe4\r"
    conv = Conversation()
    conv.s("220 mx.example.net ESMTP Postfix\r\n")
    conv.c(b"EHLO " + bad + b"\r\n")
    conv.s(b"501 5.5.2 bad name: " + bad + b"\r\n")
    conv.close()
    path = write_pcap(tmp_path / "bytes.pcap", conv.frames())
    res = analyze(path, "--lang", "en", "--credentials", "--explain", "all")
    assert res.exit_code == 0
    out = res.stdout
    assert not _RAW.search(out), _RAW.search(out)
    assert "\\udc" not in out
    narrated = r"X\x1b[31mRED\x00NUL\fFF\xe4\r"
    assert f"EHLO {narrated}" in out                         # the narration
    failure = out.split("Failures:\n", 1)[1].splitlines()[0]
    assert r"501 5.5.2 bad name: X\x1b[31mRED\x00NUL\fFF" in failure  # the summary
    assert failure.endswith(r"\r")
    steps = tmp_path / "s.jsonl"
    data = analyze(path, "--json", "--steps", steps).stdout
    ehlo = [json.loads(line) for line in steps.read_text().splitlines()][2]
    assert ehlo["line"] == "EHLO " + bad.decode("utf-8", "surrogateescape")   # as it was
    assert "\\u001b[31mRED\\u0000NUL\\f" in data


@needs_pcaps
def test_a_real_capture_of_binary_junk_reaches_the_terminal_escaped():
    out = analyze(PCAPS / "suricata-verify" / "smtp-errors-smtperr.pcap", "--lang", "en").stdout
    assert not _RAW.search(out) and "\\udc" not in out
    assert r"\xe4Y\xe9XH\xcf\xfe?\x04Z\v\xa6z" in out


# ---------------------------------------------------------------------- smaller ones

def test_explain_none_leaves_the_failures_unexplained(tmp_path):
    conv = Conversation()
    conv.s("220 mx.example.net ESMTP Postfix\r\n")
    conv.c("MAIL FROM:<a@example.org>\r\n")
    conv.s("503 5.5.1 Error: send HELO/EHLO first\r\n")
    conv.close()
    path = write_pcap(tmp_path / "fail.pcap", conv.frames())
    said = analyze(path, "--lang", "en").stdout
    assert "Failures:" in said and "↳" in said.split("Failures:", 1)[1].split("\n\n", 1)[0]
    quiet = analyze(path, "--lang", "en", "--explain", "none").stdout
    assert "Failures:" in quiet and "↳" not in quiet and "503 5.5.1" in quiet


@pytest.mark.slow          # runs `gponsim` as a process
@pytest.mark.parametrize("view", [[], ["--packets"], ["--json"]])
def test_a_reader_that_goes_away_ends_it_quietly(tmp_path, view):
    import os
    import signal
    import subprocess

    # far more output than a pipe holds (64 KiB), so the writer meets the closed pipe
    frames = []
    for n in range(200):
        frames += smtp_session(Conversation(client=("10.0.0.1", 40000 + n))).frames()
    path = write_pcap(tmp_path / "many.pcap", frames)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "gponsim", "analyze", str(path), *view],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.readline()
    proc.stdout.close()                    # as `| head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert b"Traceback" not in err and b"Error" not in err, err


# ------------------------------------------------- a capture's own events, in Spanish

ENGLISH = ("SYN seen", "in the middle of", "from the client", "offers ", " with TLS",
           "[gap:", "decrypted with the key log", " packets in ")


def _narration(out: str) -> str:
    """The narration: what follows the summary."""
    return out.split("\n\n", 1)[1]


def test_capture_events_are_narrated_in_spanish_and_recorded_as_they_are(tmp_path):
    conv = Conversation(handshake=False)
    conv.s("220 mx.example.net ESMTP Postfix\r\n")
    conv.c("EHLO pc.example.org\r\n")
    conv.s("250-mx.example.net\r\n250 PIPELINING\r\n")
    conv.c("MAIL FROM:<a@example.org>\r\n")
    del conv.packets[-1]                          # the capture missed it: a gap
    conv.c("RCPT TO:<b@example.net>\r\n")
    conv.s("250 2.1.5 Ok\r\n")
    conv.close()
    path = write_pcap(tmp_path / "mid.pcap", conv.frames())
    steps = tmp_path / "s.jsonl"
    res = analyze(path, "--lang", "es", "--steps", steps)
    told = _narration(res.stdout)
    assert "conexión 10.0.0.1:40000 → 10.0.0.2:25 (paquete 1; la captura empieza a mitad de esta " \
           "conexión)" in told
    assert "[hueco: faltan en la captura 27 bytes de este sentido (antes del paquete 4); la " \
           "decodificación sigue tras ellos]" in " ".join(told.split())     # as wrapped
    assert not [w for w in ENGLISH if w in res.stdout + res.stderr]
    lines = [json.loads(line)["line"] for line in steps.read_text().splitlines()]
    assert lines[0].endswith("(packet 1; the capture starts in the middle of this connection)")
    assert any(line.startswith("[gap: 27 bytes of this direction") for line in lines)
    en = _narration(analyze(path, "--lang", "en").stdout)
    assert "(packet 1; the capture starts in the middle of this connection)" in en


def test_tls_events_are_narrated_in_spanish():
    capture = CAPTURE.parent / "lesson-tls.pcapng"
    closed = analyze(capture, "--lang", "es")
    told = _narration(closed.stdout)
    assert "ClientHello: ofrece TLSv1.3" in told and "ServerHello: TLSv1.3 con TLS_" in told
    assert "[TLS, datos de aplicación: " in told and "registro(s) del cliente" in told and "cifrados (sin descifrar: no hay key log)]" in told
    assert not [w for w in ENGLISH if w in closed.stdout + closed.stderr]
    opened = analyze(capture, "--lang", "es", "--keylog", capture.with_suffix(".keys"))
    assert "[TLS descifrado con el key log: lo que sigue viajó cifrado]" in _narration(opened.stdout)
    assert not [w for w in ENGLISH if w in opened.stdout + opened.stderr]


def test_a_refused_password_in_spanish(tmp_path):
    conv = Conversation(server=("10.0.0.2", 110))
    conv.s("+OK POP3 ready\r\n")
    conv.c("USER ana\r\n")
    conv.s("+OK\r\n")
    conv.c("PASS secreto\r\n")
    conv.s("-ERR [AUTH] Authentication failed.\r\n")
    conv.close()
    path = write_pcap(tmp_path / "pop3.pcap", conv.frames())
    es = analyze(path, "--lang", "es", "--credentials", "-q").stdout
    creds = es.split("Credenciales vistas (1):\n", 1)[1]
    assert "ana  secreto  en claro  rechazada" in creds and "failed" not in creds
    en = analyze(path, "--lang", "en", "--credentials", "-q").stdout
    assert "ana  secreto  in clear  failed" in en
