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


def svg_rows(path):
    """(row, kind, text) of every row of a sequence page SVG: an arrow's label or a note."""
    root = ET.parse(path).getroot()
    out = []
    for g in root.iter(f"{SVG}g"):
        if g.get("class") != "node":
            continue
        m = re.fullmatch(r"(label|note)_(\d+)", g.find(f"{SVG}title").text)
        if m:
            text = " ".join(x.text for x in g.iter(f"{SVG}text") if x.text)
            out.append((int(m.group(2)), m.group(1), text))
    return sorted(out)


def svg_metrics(path):
    """The page's size (viewBox), its smallest font, its lifelines' x and its texts' boxes."""
    root = ET.parse(path).getroot()
    _, _, width, height = (float(v) for v in root.get("viewBox").split())
    fonts, lifelines, boxes = [], {}, []
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title").text if g.find(f"{SVG}title") is not None else ""
        texts = list(g.iter(f"{SVG}text"))
        fonts += [float(x.get("font-size")) for x in texts]
        if g.get("class") == "node" and title.endswith("_top"):
            lifelines[title[:-4]] = float(texts[0].get("x"))
        m = re.fullmatch(r"(label|note)_(\d+)", title or "")
        if m and texts:
            from gponsim.diagrams.dot import CHAR_W

            size = float(texts[0].get("font-size"))
            half = max(len(x.text or "") for x in texts) * size * CHAR_W / 2
            boxes.append((m.group(1), int(m.group(2)), float(texts[0].get("x")) - half,
                          float(texts[0].get("x")) + half))
    return width, height, min(fonts), lifelines, boxes


@pytest.mark.slow          # end to end: the Steps of a `gponsim serve` session
@needs_dot
def test_sequence_svg_has_participants_and_arrows_in_order(session_steps, tmp_path):
    pages = draw_sequence(session_steps, tmp_path / "send.svg", flow="send", lang="en")
    assert len(pages) >= 4          # connection, authentication, envelope, data, delivery
    text = "".join(p.read_text() for p in pages)
    for name in ("Email Client", "Postfix SMTPD", "Dovecot SASL", "Mail Queue", "Local Delivery"):
        assert name in text, name
    rows = [(kind, label) for page in pages for _, kind, label in svg_rows(page)]
    labels = [label for kind, label in rows if kind == "label"]
    expected = ["220 mail.gponlab.local ESMTP", "STARTTLS", "AUTH PLAIN ********",
                "AUTH 1 PLAIN service=smtp", "OK 1 user=user1", "235 2.7.0",
                "FROM:<user1@gponlab.local>", "250 2.0.0 Ok: queued as", "status=sent (delivered to"]
    pos = 0
    for want in expected:
        hits = [i for i, label in enumerate(labels) if i >= pos and want in label]
        assert hits, f"{want!r} not found after arrow {pos} in {labels}"
        pos = hits[0] + 1
    # Log lines are notes on a lifeline, not messages from the client.
    notes = [label for kind, label in rows if kind == "note"]
    assert any("connect from" in n for n in notes) and any("disconnect from" in n for n in notes)
    assert not any("connect from" in label for label in labels)
    assert "Gmail simulator" not in text and "relayhost" not in text    # the lab's start-up is no message
    first_page = build_sequence(session_steps, flow="send")[0]
    assert first_page.rows[0].is_note and first_page.rows[0].src == "smtpd"
    auth = next(r for p in build_sequence(session_steps, flow="send") for r in p.rows
                if r.label.startswith("AUTH 1 PLAIN"))
    assert (auth.src, auth.dst) == ("smtpd", "auth")
    assert "AHVzZXIx" not in text  # credentials stay masked
    # Dovecot's answers are replies (dashed); only the TLS handshake is a double arrow.
    sasl = [r for p in build_sequence(session_steps, flow="sasl") for r in p.rows]
    assert sasl and all(r.kind == "reply" for r in sasl if r.src == "auth")
    assert any(r.kind == "command" and r.label.startswith("VERSION") for r in sasl if r.src == "smtpd")
    tls = [r for p in build_sequence(session_steps, flow="send") for r in p.rows if r.kind == "tls"]
    assert tls and all(r.label.startswith("TLS handshake: TLSv1.") for r in tls)


@pytest.mark.slow          # end to end: the Steps of a `gponsim serve` session
@needs_dot
@pytest.mark.parametrize("flow", ["send", "receive", "sasl", "all"])
def test_sequence_pages_are_projector_sized(session_steps, tmp_path, flow):
    """Shown full screen at 1920x1080, every text of every page is >= 18 px, no page has
    more than 14 rows, and no text sits across a lifeline it does not belong to."""
    from gponsim.diagrams.dot import CHAR_W  # noqa: F401  (the estimate the layout uses)

    pages = draw_sequence(session_steps, tmp_path / f"{flow}.svg", flow=flow, lang="es")
    model = build_sequence(session_steps, flow=flow, lang="es")
    assert len(pages) == len(model)
    for path, page in zip(pages, model):
        width, height, smallest, lifelines, boxes = svg_metrics(path)
        scale = min(1920 / width, 1080 / height)
        assert smallest * scale >= 18, (path.name, width, height, smallest)
        assert len(page.rows) <= 14 and len(boxes) == len(page.rows)
        if page.rows:                   # (an empty flow still makes one page, with no rows)
            assert set(lifelines) == set(page.participants)
        for kind, r, left, right in boxes:
            row = page.rows[r]
            own = {row.src} if kind == "note" else set()
            crossed = [p for p, x in lifelines.items() if left < x < right and p not in own]
            assert not crossed, (path.name, row.label, crossed)


def test_receive_flow_in_the_lab_documents_order():
    """Flujo de Recepción: External Server, SMTPD, Cleanup, Queue, Local, Mailbox, IMAP, Client."""
    def s(session, src, dst, kind, verb, line, proto="smtp", **kw):
        return Step(t=0, session=session, proto=proto, src=src, dst=dst,
                    dir="c2s" if src == "client" else ("internal" if kind == "event" else "s2c"),
                    kind=kind, verb=verb, line=line, **kw)
    steps = [s("smtp-1", "client", "smtpd", "event", "CONNECT", "connect from unknown[10.0.0.9]",
               meta={"service": "smtp"}),
             s("smtp-1", "client", "smtpd", "command", "MAIL", "MAIL FROM:<a@example.org>"),
             s("smtp-1", "smtpd", "client", "reply", "MAIL", "250 2.1.0 Ok", code=250),
             s("smtp-1", "qmgr", "local", "event", "DELIVER", "4F1A2C0D9E: qmgr -> local: to=<user2@x>",
               proto="queue"),
             s("smtp-1", "local", "mailbox", "event", "DELIVERED", "4F1A2C0D9E: to=<user2@x>, status=sent",
               proto="delivery"),
             s("imap-2", "client", "imap", "command", "SELECT", "a SELECT INBOX", proto="imap"),
             s("imap-2", "imap", "client", "reply", "SELECT", "a OK", proto="imap", status="OK"),
             s("imap-2", "client", "imap", "command", "FETCH", "b FETCH 1 (BODY[])", proto="imap")]
    pages = build_sequence(steps, flow="receive")
    order = [p for page in pages for p in page.participants]
    assert order.index("internet") < order.index("smtpd") < order.index("local") < order.index("mailbox")
    assert pages[-1].participants == ["imap", "client"]          # the client on the right, as drawn there
    assert pages[0].rows[0].is_note and pages[0].rows[0].src == "smtpd"   # smtpd logged the connection


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
    pages = build_sequence(steps)
    assert [(r.label, r.repeat) for p in pages for r in p.rows] == [
        ("USER u", 1), ("+OK", 1), ("TOP 1 0 … TOP 49 0", 49), ("+OK", 49), ("QUIT", 1)]
    assert all(p.participants == ["client", "pop3"] for p in pages)


def test_only_identical_smtp_lines_collapse():
    """Three RCPTs to three recipients are three rows; three identical NOOPs are one."""
    steps = [step("client", "smtpd", "command", "MAIL", "MAIL FROM:<a@x>"),
             step("smtpd", "client", "reply", "MAIL", "250 Ok", code=250)]
    for who in ("b1", "b2", "b3"):
        steps += [step("client", "smtpd", "command", "RCPT", f"RCPT TO:<{who}@x>"),
                  step("smtpd", "client", "reply", "RCPT", "250 Ok", code=250)]
    for _ in range(3):
        steps += [step("client", "smtpd", "command", "NOOP", "NOOP"),
                  step("smtpd", "client", "reply", "NOOP", "250 Ok", code=250)]
    rows = [(r.label, r.repeat) for p in build_sequence(steps) for r in p.rows]
    assert rows == [("MAIL FROM:<a@x>", 1), ("250 Ok", 1),
                    ("RCPT TO:<b1@x>", 1), ("250 Ok", 1), ("RCPT TO:<b2@x>", 1), ("250 Ok", 1),
                    ("RCPT TO:<b3@x>", 1), ("250 Ok", 1), ("NOOP", 3), ("250 Ok", 3)]


def test_long_sessions_paginate_evenly():
    steps = [step("client", "smtpd", "command", "NOOP", f"NOOP {i}") if i % 2 == 0 else
             step("smtpd", "client", "reply", "NOOP", f"250 {i}", code=250) for i in range(5000)]
    pages = build_sequence(steps, collapse_runs=False, page_rows=200)
    assert len(pages) == 25 and pages[-1].total == 25 and pages[-1].number == 25
    assert {len(p.rows) for p in pages} == {200}
    # The default page size: a phase of 20 rows is cut 10 + 10, never 14 + a lonely 6... or 1.
    pages = build_sequence(steps[:20], collapse_runs=False)
    assert [len(p.rows) for p in pages] == [10, 10]


@pytest.mark.slow          # end to end: the Steps of a `gponsim serve` session
def test_mermaid_is_well_formed(session_steps):
    pages = build_sequence(session_steps, flow="send")
    texts = [sequence_mermaid(page, "es") for page in pages]
    assert any("rect rgb(" in text for text in texts)  # the TLS part is shaded
    for text in texts:
        _check_mermaid(text)


def _check_mermaid(text):
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
    pages = build_sequence(steps, flow="receive")
    labels = [r.label for p in pages for r in p.rows]
    assert any(label.startswith("EHLO") or label.startswith("HELO") for label in labels)
    assert any("STARTTLS" in label for label in labels)
    # Port 25's client is another mail server ("External Server"); the IMAP client reads.
    assert {"internet", "smtpd", "imap", "client"} <= {a for p in pages for a in p.participants}


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
    pages = build_sequence(steps, flow="send")
    drawn = {a for page in pages for a in page.participants}
    # (the client's connection is a log line: a note on smtpd's lifeline, no arrow)
    assert drawn == {"smtpd", "cleanup", "qmgr", "local", "lmtp", "dovecot-lmtp", "mailbox"}
    for page in pages:                   # in the lab document's order on every page
        assert page.participants == [a for a in ["client", "smtpd", "cleanup", "qmgr", "local",
                                                  "lmtp", "dovecot-lmtp", "mailbox"]
                                     if a in page.participants]
    labels = [r.label for page in pages for r in page.rows]
    assert labels.count("LHLO mail.gponlab.local") == 1
    assert all("lmtp-4" not in label for label in labels)
    lmtp_page = next(page for page in pages if "dovecot-lmtp" in page.participants)
    assert "LMTP" in sequence_mermaid(lmtp_page)


# ------------------------------------------------------------------ the packet ladder

def _svg_arrows(path):
    """Every arrow of a ladder page: (label text, sender's x, its label's fill colour, dashed)."""
    root = ET.parse(path).getroot()
    nodes, labels, edges = {}, {}, {}
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        if title is None:
            continue
        if g.get("class") == "node":
            shape = g.find(f"{SVG}ellipse")
            if shape is not None:
                nodes[title.text] = float(shape.get("cx"))
            m = re.fullmatch(r"label_(\d+)", title.text)
            if m:
                texts = list(g.iter(f"{SVG}text"))
                labels[int(m.group(1))] = (" ".join(x.text for x in texts if x.text), texts[0].get("fill"))
        elif g.get("class") == "edge":
            m = re.fullmatch(r"a(\d+)->b\d+", title.text.replace("&#45;", "-").replace("&gt;", ">"))
            if m:
                edges[int(m.group(1))] = "stroke-dasharray" in ET.tostring(g, encoding="unicode")
    return [(labels[r][0], nodes[f"a{r}"], labels[r][1], edges[r]) for r in sorted(labels)]


def _tshark_stream(path, first_packet, keylog=None):
    """tshark's packets of the connection whose first packet is ``first_packet``:
    [(number, source port, flags, seq, ack, len, TLS records)]."""
    def fields(display, names, extra=()):
        out = subprocess.run(["tshark", "-r", str(path), *extra, "-Y", display, "-T", "fields",
                              *[x for n in names for x in ("-e", n)]],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        return [line.split("\t") for line in out.splitlines() if line]
    stream = fields(f"frame.number == {first_packet}", ["tcp.stream"])[0][0]
    extra = ["-o", f"tls.keylog_file:{keylog}"] if keylog else []
    rows = fields(f"tcp.stream == {stream} && !icmp && !icmpv6",
                  ["frame.number", "tcp.srcport", "tcp.flags", "tcp.seq", "tcp.ack", "tcp.len"], extra)
    return [(int(n), int(sport), int(flags, 16) & 0x1FF, int(seq), int(ack), int(length))
            for n, sport, flags, seq, ack, length in rows]


LADDERS = [("captures", "swaks-submission-starttls-plain-auth.pcap", True, None),   # STARTTLS, TLS 1.3
           ("captures", "swaks-smtp25-plain.pcap", False, None),
           ("captures", "curl-imaps-fetch.pcap", True, None),                       # IMAPS
           ("shared", "chrissanders-packets/mail_sender_client_1.pcapng", False, None),  # Thunderbird
           ("shared", "zeek/smtp.pcap", False, "1"),                   # retransmissions, background
           ("shared", "chrissanders-packets/mail_receiver_server_3.pcapng", False, "2")]  # IMAP STARTTLS


@pytest.mark.slow          # compared with tshark's reading
@needs_dot
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("where, name, keys, session", LADDERS)
def test_ladder_arrows_are_the_captures_packets(where, name, keys, session, tmp_path):
    """`diagram sequence --packets`: one arrow per packet of the connection, in capture
    order, each from the side that sent it, labelled with tshark's flags, relative seq/ack
    and length and with what it carries (passwords masked); pure ACKs dashed, packets
    inside TLS blue; every page fits a 1920x1080 projector with >= 18 px text and <= 14 rows."""
    from pathlib import Path

    from conftest import SHARED
    from gponsim.diagrams import draw_ladder
    from gponsim.diagrams.dot import TLS_COLOR
    from gponsim.diagrams.ladder import build_ladder
    from gponsim.packets.view import flag_text

    root = Path(__file__).resolve().parents[1] / "captures" if where == "captures" else SHARED / "pcaps"
    path = root / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared captures are not beside the project)")
    keylog = path.with_suffix(".keys") if keys else None
    pages = draw_ladder(path, tmp_path / "ladder.svg", session=session, keylog=keylog, lang="es")
    model, conn = build_ladder(path, session=session, keylog=keylog, lang="es")
    assert len(pages) == len(model) >= 2
    client_port = int(conn.endpoints.split(" → ")[0].rsplit(":", 1)[1])
    theirs = _tshark_stream(path, conn.first_packet, keylog)
    assert len(theirs) >= 8
    arrows = []
    for svg, page in zip(pages, model):
        width, height, smallest, lifelines, boxes = svg_metrics(svg)
        assert min(1920 / width, 1080 / height) * smallest >= 18, (svg.name, width, height)
        assert len(page.rows) <= 14 and len(boxes) == len(page.rows)
        assert set(lifelines) == set(page.participants) and len(lifelines) == 2
        for _kind, _r, left, right in boxes:
            assert not [p for p, x in lifelines.items() if left < x < right]
        client_x = lifelines[page.participants[0]]
        for text, sender_x, colour, dashed in _svg_arrows(svg):
            arrows.append((text, abs(sender_x - client_x) < 1, colour, dashed))
    assert len(arrows) == len(theirs)
    label = re.compile(r"#(\d+) \[([^\]]*)\] seq=(\d+)(?: ack=(\d+))? len=(\d+)")
    for (text, from_client, colour, dashed), (number, sport, flags, seq, ack, length) in zip(arrows, theirs):
        m = label.match(text)
        assert m, text
        assert int(m.group(1)) == number, (text, number)
        assert from_client == (sport == client_port), text
        assert m.group(2) == flag_text(flags), (text, flags)
        assert int(m.group(3)) == seq and int(m.group(5)) == length, (text, seq, length)
        assert (m.group(4) is not None) == bool(flags & 0x10) and int(m.group(4) or 0) == (ack if flags & 0x10 else 0)
        assert dashed == (not length and not flags & 0x07), text
    texts = " ".join(a[0] for a in arrows)
    if name.startswith("swaks-submission"):
        assert "AUTH PLAIN ********" in texts and "AHVzZXIx" not in texts
        assert "220 mail.gponlab.local ESMTP" in texts and "ClientHello" in texts
        auth = next(a for a in arrows if "AUTH PLAIN" in a[0])
        assert auth[2] == TLS_COLOR
        assert [p.phases[0] for p in model][0] == "handshake" and model[-1].phases[-1] == "teardown"
    if name == "zeek/smtp.pcap":
        assert "retransmisión" in texts


@pytest.mark.slow          # runs `gponsim` as a process
def test_ladder_cli_and_its_errors(tmp_path):
    from pathlib import Path

    capture = Path(__file__).resolve().parents[1] / "captures" / "swaks-smtp25-plain.pcap"
    base = [sys.executable, "-m", "gponsim", "diagram", "sequence", "--from"]
    out = subprocess.run(base + [str(capture), "--packets", "--format", "dot", "-o", str(tmp_path / "l.dot")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    written = out.stdout.split()
    assert written[0].endswith("l.dot") and len(written) >= 2
    assert "#1 [SYN] seq=0 len=0" in (tmp_path / "l.dot").read_text()
    bad = subprocess.run(base + [str(capture), "--packets", "--session", "9"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "no connection '9'" in bad.stderr
    steps = tmp_path / "s.jsonl"
    steps.write_text("")
    bad = subprocess.run(base + [str(steps), "--packets"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--packets draws a capture" in bad.stderr
    bad = subprocess.run(base + [str(capture), "--packets", "--flow", "send"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--flow" in bad.stderr
