"""Diagrams drawn by Graphviz from observed Steps (a live lab session and synthetic runs)."""

from __future__ import annotations

import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from gponsim.diagrams import DotMissing, build_sequence, draw_architecture, draw_sequence, load_steps
from gponsim.diagrams.mermaid import sequence_mermaid
from gponsim.steps import Step
from labproc import wait_until

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def session_steps(tmp_path_factory):
    """Steps of a real submission through a running lab."""
    from labproc import LabProcess

    lab = LabProcess(tmp_path_factory.mktemp("diag") / "gponlab").start()
    try:
        with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
            c.starttls(context=ssl._create_unverified_context())
            c.login("user1", "pass")
            c.sendmail("user1@gponlab.local", ["user2@gponlab.local"], b"Subject: d\r\n\r\nx\r\n")
        wait_until(lambda: any(s.verb == "REMOVED" for s in lab.steps()), what="the delivery")
        return lab.steps()
    finally:
        lab.stop()


def svg_edges(path):
    """(row, src, dst, label) of every message arrow in a sequence SVG, in drawing order."""
    root = ET.parse(path).getroot()
    out = []
    for g in root.iter(f"{SVG}g"):
        if g.get("class") != "edge":
            continue
        title = g.find(f"{SVG}title").text
        m = re.fullmatch(r"(\w+)_(\d+)->(\w+)_(\d+)", title)
        texts = [t.text for t in g.iter(f"{SVG}text") if t.text]
        if m and texts and m.group(2) == m.group(4):
            out.append((int(m.group(2)), m.group(1), m.group(3), " ".join(texts)))
    return sorted(out)


@pytest.mark.slow          # end to end: the Steps of a `gponsim serve` session
@needs_dot
def test_sequence_svg_has_participants_and_arrows_in_order(session_steps, tmp_path):
    [svg] = draw_sequence(session_steps, tmp_path / "send.svg", flow="send", lang="en")
    text = svg.read_text()
    for name in ("Email Client", "Postfix SMTPD", "Dovecot SASL", "Mail Queue", "Local Delivery"):
        assert name in text, name
    edges = svg_edges(svg)
    labels = [label for _, _, _, label in edges]
    expected = ["220 mail.gponlab.local ESMTP", "STARTTLS", "[TLS] AUTH PLAIN ********",
                "AUTH 1 PLAIN service=smtp", "OK 1 user=user1", "[TLS] 235 2.7.0",
                "FROM:<user1@gponlab.local>", "[TLS] 250 2.0.0 Ok: queued as", "status=sent (delivered to mailbox)"]
    pos = 0
    for want in expected:
        hits = [i for i, label in enumerate(labels) if i >= pos and want in label]
        assert hits, f"{want!r} not found after arrow {pos} in {labels}"
        pos = hits[0] + 1
    auth = next(e for e in edges if "AUTH 1 PLAIN" in e[3])
    assert (auth[1], auth[2]) == ("smtpd", "auth")
    assert "AHVzZXIx" not in text  # credentials stay masked


@pytest.mark.slow          # end to end: the Steps of a `gponsim serve` session
@needs_dot
def test_architecture_marks_what_was_observed(session_steps, tmp_path):
    svg = draw_architecture(session_steps, tmp_path / "arch.svg", lang="es")
    text = svg.read_text()
    assert "Servidor SMTP Postfix" in text and "Relay SMTP de Gmail" in text
    assert "1 sesión(es)" in text and "587" in text and "TLS" in text
    # Nothing read mail over IMAP in this session: that edge is faded (dashed grey).
    root = ET.parse(svg).getroot()
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "edge" and g.find(f"{SVG}title").text == "Client->Dovecot":
            assert g.find(f"{SVG}path").get("stroke-dasharray")
            break
    else:
        raise AssertionError("no Client->Dovecot edge")


def step(src, dst, kind, verb, line, code=None, status=None):
    return Step(t=0, session="pop3-1", proto="pop3" if "pop3" in (src, dst) else "smtp", src=src,
                dst=dst, dir="c2s" if src == "client" else "s2c", kind=kind, verb=verb, line=line,
                code=code, status=status)


def test_repeated_runs_collapse_with_a_count():
    steps = [step("client", "pop3", "command", "USER", "USER u"),
             step("pop3", "client", "reply", "USER", "+OK", status="+OK")]
    for n in range(49):
        steps += [step("client", "pop3", "command", "TOP", f"TOP {n + 1} 0"),
                  step("pop3", "client", "reply", "TOP", "+OK", status="+OK")]
    steps.append(step("client", "pop3", "command", "QUIT", "QUIT"))
    [page] = build_sequence(steps)
    assert [(r.label, r.repeat) for r in page.rows] == [
        ("USER u", 1), ("+OK", 1), ("TOP 1 0", 49), ("+OK", 49), ("QUIT", 1)]
    assert page.participants == ["client", "pop3"]


def test_long_sessions_paginate():
    steps = [step("client", "smtpd", "command", "NOOP", f"NOOP {i}") if i % 2 == 0 else
             step("smtpd", "client", "reply", "MAIL", f"250 {i}", code=250) for i in range(5000)]
    pages = build_sequence(steps, collapse_runs=False, page_rows=200)
    assert len(pages) == 25 and pages[-1].total == 25 and pages[-1].number == 25


@pytest.mark.slow          # end to end: the Steps of a `gponsim serve` session
def test_mermaid_is_well_formed(session_steps):
    [page] = build_sequence(session_steps, flow="send")
    text = sequence_mermaid(page, "es")
    lines = text.splitlines()
    assert lines[0] == "sequenceDiagram"
    declared = set()
    depth = 0
    for line in lines[1:]:
        stripped = line.strip()
        if not stripped:
            continue
        if m := re.fullmatch(r"participant (\w+) as .+", stripped):
            declared.add(m.group(1))
        elif stripped.startswith("rect "):
            depth += 1
        elif stripped == "end":
            depth -= 1
            assert depth >= 0
        elif stripped.startswith("Note over "):
            continue
        else:
            m = re.fullmatch(r"(\w+)(->>|-->>|-x)(\w+): (.+)", stripped)
            assert m, line
            assert m.group(1) in declared and m.group(3) in declared
    assert depth == 0
    assert "rect rgb(" in text  # the TLS part is shaded


@pytest.mark.slow          # end to end: the Steps of a `gponsim serve` session
def test_missing_dot_is_explained_and_sources_are_kept(session_steps, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DotMissing, match="apt-get install graphviz"):
        draw_sequence(session_steps, tmp_path / "out.svg")
    assert (tmp_path / "out.dot").read_text().startswith("digraph sequence")
    assert (tmp_path / "out.mmd").read_text().startswith("sequenceDiagram")


@pytest.mark.slow          # end to end: the Steps of a `gponsim serve` session
@needs_dot
def test_cli_draws_and_rejects_bad_input(session_steps, tmp_path):
    steps_file = tmp_path / "s.jsonl"
    steps_file.write_text("".join(s.to_json() + "\n" for s in session_steps))
    out = subprocess.run([sys.executable, "-m", "gponsim", "diagram", "sequence", "--from", str(steps_file),
                          "--flow", "sasl", "-o", str(tmp_path / "sasl.png"), "--format", "png"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "sasl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    out = subprocess.run([sys.executable, "-m", "gponsim", "diagram", "sequence", "--from", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "bad.jsonl:1" in out.stderr
    assert load_steps(steps_file) == session_steps


def test_diagrams_from_a_real_capture(tmp_path):
    """Thunderbird-era capture: Postfix relay on 25, then IMAP with STARTTLS (no keys)."""
    from conftest import SHARED

    pcap = SHARED / "pcaps" / "chrissanders-packets" / "mail_receiver_server_3.pcapng"
    if not pcap.exists():
        pytest.skip(f"{pcap} is absent (the shared captures are not beside the project)")
    steps = load_steps(pcap)
    arch = architecture_text = None
    if shutil.which("dot"):
        arch = draw_architecture(steps, tmp_path / "arch.svg")
        architecture_text = arch.read_text()
        assert "Receive Incoming" in architecture_text and "IMAP Port 143/993" in architecture_text
    [page] = build_sequence(steps, flow="receive")
    labels = [r.label for r in page.rows]
    assert any(label.startswith("EHLO") or label.startswith("HELO") for label in labels)
    assert any("STARTTLS" in label for label in labels)
    assert {"client", "smtpd", "imap"} <= set(page.participants)


def test_the_lmtp_leg_belongs_to_its_message_flow():
    """With mailbox_transport = lmtp:..., the LMTP session to Dovecot is drawn in
    the flow of the message it delivers (its CONNECT names the queue id)."""
    def ev(session, proto, src, dst, verb, **meta):
        return Step(t=0, session=session, proto=proto, src=src, dst=dst, dir="internal",
                    kind="event", line=verb, verb=verb, meta=meta)
    steps = [
        ev("sub-1", "smtp", "client", "smtpd", "CONNECT", service="submission"),
        ev("sub-1", "queue", "cleanup", "qmgr", "QUEUED", qid="AAA"),
        ev("sub-1", "delivery", "local", "lmtp", "PASS", qid="AAA"),
        ev("lmtp-2", "lmtp", "lmtp", "dovecot-lmtp", "CONNECT", qid="AAA"),
        Step(t=0, session="lmtp-2", proto="lmtp", src="lmtp", dst="dovecot-lmtp", dir="c2s",
             kind="command", line="LHLO mail.gponlab.local", verb="LHLO"),
        ev("lmtp-2", "lmtp", "dovecot-lmtp", "mailbox", "SAVED"),
        ev("in-3", "smtp", "internet", "smtpd", "CONNECT", service="smtp"),
        ev("lmtp-4", "lmtp", "lmtp", "dovecot-lmtp", "CONNECT", qid="BBB"),
    ]
    [page] = build_sequence(steps, flow="send")
    assert page.participants == ["client", "smtpd", "cleanup", "qmgr", "local", "lmtp",
                                 "dovecot-lmtp", "mailbox"]
    assert [r.label for r in page.rows].count("LHLO mail.gponlab.local") == 1
    assert all("lmtp-4" not in r.label for r in page.rows)
    assert "LMTP" in sequence_mermaid(page)
