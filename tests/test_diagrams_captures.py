"""Diagrams of real captures of servers that are not the lab (shared pcaps, skipped
when /work/shared/pcaps is absent): Steps recorded by `gponsim analyze --steps`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gponsim.cli import main
from gponsim.diagrams import build_sequence, load_steps


def analyzed(tmp_path_factory, name):
    """The Steps `gponsim analyze` records for a shared capture, and their file."""
    from conftest import SHARED

    pcap = SHARED / "pcaps" / name
    if not pcap.exists():
        pytest.skip(f"{pcap} is absent (the shared captures are not beside the project)")
    out = tmp_path_factory.mktemp("cap") / "steps.jsonl"
    run = CliRunner().invoke(main, ["analyze", str(pcap), "-q", "--steps", str(out)])
    assert run.exit_code == 0, run.output
    return load_steps(out), out


@pytest.fixture(scope="module")
def zeek_smtp(tmp_path_factory):
    """Outlook 12 authenticating to Exim 4.69 on port 25; Apple Mail to SubEthaSMTP."""
    return analyzed(tmp_path_factory, "zeek/smtp.pcap")


def test_different_recipients_do_not_collapse(zeek_smtp):
    steps, _ = zeek_smtp
    rows = [r for p in build_sequence(steps) for r in p.rows]
    rcpts = [r.label for r in rows if r.label.startswith("RCPT")]
    assert rcpts == ["RCPT TO: <raj_deol2002in@yahoo.co.in>", "RCPT TO:<ericlim220@yahoo.com>",
                     "RCPT TO:<felica4uu@hotmail.com>", "RCPT TO:<davis_mark1@outlook.com>"]
    assert all(r.repeat == 1 for r in rows if r.label.startswith("RCPT"))
