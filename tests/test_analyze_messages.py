"""`gponsim analyze`'s own messages: bad options, bad files, in Spanish and English.

Run through the CLI on real captures (the project's and ../shared/pcaps) and on
files built byte by byte (tests/pcapgen.py)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from pcapgen import Conversation, smtp_session, write_pcap  # noqa: E402

from gponsim.cli import main  # noqa: E402

CAPTURE = Path(__file__).resolve().parents[1] / "captures" / "swaks-smtp25-plain.pcap"
PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"


def analyze(*args: str):
    return CliRunner().invoke(main, ["analyze", *map(str, args)])


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
