"""A capture of real `gponsim serve` traffic on loopback gives the lab's own Steps.

The lab records its Steps (--steps); Scapy sniffs the same conversation on
`lo`; the analyzer's Steps for the capture must hold the same commands,
replies and messages, in the same order (actors may be coarser).
"""

from __future__ import annotations

import smtplib
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from labproc import wait_until  # noqa: E402

from gponsim.capture.analyze import analyze  # noqa: E402
from gponsim.sinks.memory import ListSink  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root("sniffing this computer's loopback needs root or CAP_NET_RAW (the lessons' "
                     "capture without root, in a namespace of their own, is in test_lesson_capture.py)"),
]


def _view(steps, proto):
    return [(s.kind, s.verb, s.code, s.status, s.tag, s.shown_line()) for s in steps
            if s.proto == proto and s.kind in ("command", "reply", "data")]


def LoopbackSniffer(ports, path):
    from gponsim.capture.live import Sniffer

    sniffer = Sniffer(path, ports, iface="lo")
    sniffer.watch(b"221 2.0.0 Bye", b"a3 OK")
    return sniffer


def test_capture_of_lab_session_matches_lab_steps(lab, tmp_path):
    sniffer = LoopbackSniffer({lab.ports["smtp"], lab.ports["imap"]}, tmp_path / "lab.pcap")
    try:
        with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=15) as c:
            c.ehlo("capture.test")
            c.mail("alice@example.org")
            c.rcpt("user2@gponlab.local")
            code, _ = c.rcpt("nadie@gponlab.local")          # unknown local user
            assert code >= 500
            c.data(b"Subject: captured\r\n\r\nhello\r\n.a line with a dot\r\n" + b"y" * 5000 + b"\r\n")
        with socket.create_connection(("127.0.0.1", lab.ports["imap"]), timeout=15) as s:
            f = s.makefile("rwb")
            f.readline()
            f.write(b"a1 CAPABILITY\r\na2 NOOP\r\n")
            f.flush()
            while not f.readline().startswith(b"a2 "):
                pass
            f.write(b"a3 LOGOUT\r\n")
            f.flush()
            while not f.readline().startswith(b"a3 "):
                pass
        wait_until(lambda: sniffer.seen(b"221 2.0.0 Bye") and sniffer.seen(b"a3 OK"),
                   what="the last replies on lo")
    finally:
        pcap = sniffer.stop()

    lab_steps = wait_until(lambda: (st := lab.steps()) and any(
        s.proto == "imap" and s.tag == "a3" and s.kind == "reply" for s in st) and st,
        what="the lab's Steps")
    sink = ListSink()
    analysis = analyze(pcap, sink.step)
    assert analysis.report.problems == []
    assert {c.proto for c in analysis.connections} == {"smtp", "imap"}
    for proto in ("smtp", "imap"):
        lab_sessions = [s.session for s in lab_steps if s.proto == proto and s.kind == "command"]
        lab_view = _view([s for s in lab_steps if s.session == lab_sessions[0]], proto)
        cap_view = _view(sink.steps, proto)
        assert len(cap_view) >= 6 and cap_view == lab_view, proto
    smtp = _view(sink.steps, "smtp")
    assert any(v[0] == "data" and "Subject: captured" in v[5] for v in smtp)
    assert any(v[2] == code for v in smtp)
    imap = _view(sink.steps, "imap")
    assert [v[1] for v in imap if v[0] == "command"] == ["CAPABILITY", "NOOP", "LOGOUT"]


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_tls_capture_of_lab_decrypted_with_its_key_log(lab_factory, tmp_path, version):
    """STARTTLS on 587 and implicit TLS on 993, decrypted with `gponsim serve --keylog`."""
    import imaplib
    import ssl

    keylog = tmp_path / "keys.log"
    lab = lab_factory(extra=["--keylog", str(keylog)]).start()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    sniffer = LoopbackSniffer({lab.ports["submission"], lab.ports["imaps"]}, tmp_path / "tls.pcap")
    try:
        with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
            c.starttls(context=ctx)
            c.login("user1", "pass")
            c.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                       b"Subject: secret\r\n\r\nhidden on the wire\r\n")
        m = imaplib.IMAP4_SSL("127.0.0.1", lab.ports["imaps"], ssl_context=ctx, timeout=15)
        m.login("user1", "pass")
        m.select("INBOX")
        m.logout()
        wait_until(sniffer.closed, what="both connections closed on lo")
    finally:
        pcap = sniffer.stop()
    lab_steps = wait_until(lambda: (st := lab.steps()) and any(
        s.proto == "imap" and s.verb == "LOGOUT" and s.kind == "reply" and s.tag for s in st) and st,
        what="the lab's Steps")

    plain = ListSink()
    analysis = analyze(pcap, plain.step)                  # without the keys: only the handshake
    assert not [s for s in plain.steps if s.proto == "smtp" and s.tls]
    assert any(s.verb == "ENCRYPTED" for s in plain.steps)
    assert analysis.credentials == []

    wrong = tmp_path / "other.keys"
    wrong.write_text("CLIENT_RANDOM " + "00" * 32 + " " + "11" * 48 + "\n"
                     "SERVER_HANDSHAKE_TRAFFIC_SECRET " + "00" * 32 + " " + "22" * 48 + "\n")
    other = ListSink()
    analyze(pcap, other.step, keylog=wrong)               # someone else's keys: said, not fatal
    # The STARTTLS session is reported undecryptable; TLS from the first byte on the lab's
    # random imaps port cannot be told from other TLS without the plaintext, so it is left out.
    assert len([s for s in other.steps if s.verb == "UNDECRYPTABLE"]) == 1
    assert not [s for s in other.steps if s.proto == "smtp" and s.tls]

    sink = ListSink()
    analysis = analyze(pcap, sink.step, keylog=keylog)
    assert analysis.report.problems == []
    assert not [s for s in sink.steps if s.verb == "UNDECRYPTABLE"]
    for proto in ("smtp", "imap"):
        lab_sessions = [s.session for s in lab_steps if s.proto == proto and s.kind == "command"]
        lab_view = _view([s for s in lab_steps if s.session == lab_sessions[0]], proto)
        cap_view = _view(sink.steps, proto)
        assert len(cap_view) >= 6 and cap_view == lab_view, proto
        lab_tls = [s.tls for s in lab_steps if s.session == lab_sessions[0] and s.proto == proto
                   and s.kind in ("command", "reply", "data")]
        assert [s.tls for s in sink.steps if s.proto == proto
                and s.kind in ("command", "reply", "data")] == lab_tls
    creds = [(c.proto, c.mechanism, c.user, c.password, c.inside_tls) for c in analysis.credentials]
    assert creds == [("smtp", "PLAIN", "user1", "pass", True), ("imap", "LOGIN", "user1", "pass", True)]
    assert any("Subject: secret" in s.line for s in sink.steps if s.kind == "data")
    assert {c.tls["version"] for c in analysis.connections} == {version.replace("_", ".")}


def test_the_kernel_hands_the_sniffer_only_the_ports_it_watches(lab, tmp_path):
    """Scapy's socket carries a BPF program for the watched ports: traffic to the lab's
    other ports never reaches the capture thread, and the kernel dropped nothing."""
    from gponsim.capture.live import SOL_PACKET, Sniffer

    sniffer = Sniffer(tmp_path / "only.pcapng", {lab.ports["smtp"]}, iface="lo")
    sniffer.watch(b"221 2.0.0 Bye")
    try:
        assert sniffer.filter == f"tcp port {lab.ports['smtp']}"
        for port in ("imap", "pop3", "submission"):                  # not watched
            with socket.create_connection(("127.0.0.1", lab.ports[port]), timeout=15) as s:
                s.recv(1024)
        with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=15) as c:
            c.ehlo("filter.test")
        wait_until(lambda: sniffer.seen(b"221 2.0.0 Bye"), what="the SMTP session's packets")
    finally:
        sniffer.stop()
    assert SOL_PACKET == 263 and sniffer.drops == 0
    assert sniffer.strays == 0 and sniffer.count >= 10
    steps = ListSink()
    analyze(tmp_path / "only.pcapng", steps.step)
    assert {s.proto for s in steps.steps} == {"smtp"}


def test_gponsim_capture_live_narrates_and_writes_the_file(lab, tmp_path):
    """`gponsim capture` on lo: narration as it happens, Ctrl-C ends it with the file complete."""
    import signal
    import subprocess

    out = tmp_path / "live.pcap"
    proc = subprocess.Popen([sys.executable, "-m", "gponsim", "capture", "-o", str(out), "--port",
                             str(lab.ports["smtp"]), "--lang", "en", "--explain", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "capturing on lo" in proc.stderr.readline()
        with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=15) as c:
            c.ehlo("live.test")
            c.sendmail("alice@example.org", ["user2@gponlab.local"], b"Subject: live\r\n\r\nhi\r\n")
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "221 2.0.0 Bye" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    text = "".join(seen) + rest
    assert "ehlo live.test" in text.lower() and "[message: " in text
    assert "1 mail connection(s)" in rest                  # the summary at the end
    sink = ListSink()
    a = analyze(out, sink.step)
    assert a.report.problems == [] and [c.client_name for c in a.connections] == ["live.test"]
    assert [s.verb for s in sink.steps if s.kind == "command"] == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


def test_gponsim_capture_without_permission_says_what_to_do(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import gponsim.capture.live as live
    from gponsim.cli import main

    def refuse(*a, **k):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(live.socket, "socket", refuse)
    res = CliRunner().invoke(main, ["capture", "-o", str(tmp_path / "x.pcap"), "--count", "1"])
    assert res.exit_code == 2 and "CAP_NET_RAW" in res.output


def _tshark(pcap, *args, ports=None):
    """tshark on a capture; the lab's random ports are told as submission and imaps."""
    import subprocess

    decode = []
    if ports:
        decode = ["-d", f"tcp.port=={ports['submission']},smtp",
                  "-d", f"tcp.port=={ports['imaps']},tls", "-d", f"tls.port=={ports['imaps']},imap"]
    res = subprocess.run(["tshark", "-n", "-r", str(pcap), *decode, *args], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_serve_capture_writes_pcapng_with_the_key_log_embedded(lab_factory, tmp_path, version):
    """`serve --keylog K --capture F`: F is pcapng whose Decryption Secrets Blocks let
    tshark and `gponsim analyze` (with no --keylog) read the SMTP and IMAP inside TLS."""
    import imaplib
    import shutil
    import ssl

    from gponsim.capture.pcap import read_packets, ReadReport

    keylog, pcap = tmp_path / "keys.log", tmp_path / "lab.pcapng"
    lab = lab_factory(extra=["--keylog", str(keylog), "--capture", str(pcap)]).start()
    wait_until(lambda: "capturing the lab's traffic" in lab.stderr(), what="the capture to start")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
        c.starttls(context=ctx)
        c.login("user1", "pass")
        c.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                   b"Subject: embedded\r\n\r\nread me with the DSB\r\n")
    m = imaplib.IMAP4_SSL("127.0.0.1", lab.ports["imaps"], ssl_context=ctx, timeout=15)
    m.login("user1", "pass")
    m.select("INBOX")
    m.logout()
    assert lab.stop() == 0
    assert "capture written to" in lab.stderr()

    report = ReadReport()
    frames = list(read_packets(pcap, report))
    assert report.format == "pcapng" and report.problems == [] and report.linktypes == {1}
    assert len(frames) > 20 and all(f[2] == 1 for f in frames)
    lines = keylog.read_text().splitlines()
    assert lines and set(report.keylog) == set(lines)      # every secret of the lab, embedded
    assert frames == sorted(frames, key=lambda f: f[1])     # nanosecond times, in order

    sink = ListSink()
    analysis = analyze(pcap, sink.step)                      # no --keylog: the file has the keys
    assert analysis.report.problems == []
    assert not [s for s in sink.steps if s.verb == "UNDECRYPTABLE"]
    creds = [(c.proto, c.mechanism, c.user, c.inside_tls) for c in analysis.credentials]
    assert creds == [("smtp", "PLAIN", "user1", True), ("imap", "LOGIN", "user1", True)]
    assert [s.verb for s in sink.steps if s.proto == "smtp" and s.kind == "command" and s.tls] \
        == ["EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]

    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed: the Wireshark side is not checked")
    ports = lab.ports
    smtp = _tshark(pcap, "-Y", "smtp.req", "-T", "fields", "-e", "smtp.req.command", ports=ports)
    # (Wireshark's smtp.req.command holds the first 4 letters: STARTTLS is "STAR".)
    assert smtp.upper().split() == ["EHLO", "STAR", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]
    imap = _tshark(pcap, "-Y", "imap.request", "-T", "fields", "-e", "imap.request.command",
                   ports=ports)
    ours = [s.verb for s in sink.steps if s.proto == "imap" and s.kind == "command"]
    assert imap.upper().split() == ours and ours[-3:] == ["LOGIN", "SELECT", "LOGOUT"]
    # Without the embedded secrets tshark sees only TLS records on those connections.
    bare = tmp_path / "bare.pcap"
    _tshark(pcap, "-F", "pcap", "-w", str(bare))
    assert _tshark(bare, "-Y", "imap.request", ports=ports).strip() == ""
    assert _tshark(bare, "-Y", "smtp.req", "-T", "fields", "-e", "smtp.req.command",
                   ports=ports).upper().split() == ["EHLO", "STAR"]


def test_gponsim_capture_count_keylog_embeds_secrets_and_stops(lab_factory, tmp_path):
    """`gponsim capture --keylog K --count N`: exactly N packets, the secrets in the file."""
    import ssl
    import subprocess

    from gponsim.capture.pcap import ReadReport, read_packets

    keylog, out = tmp_path / "keys.log", tmp_path / "c.pcapng"
    lab = lab_factory(extra=["--keylog", str(keylog)]).start()
    proc = subprocess.Popen([sys.executable, "-m", "gponsim", "capture", "-o", str(out), "--port",
                             str(lab.ports["submission"]), "--keylog", str(keylog), "--count", "30",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "capturing on lo" in proc.stderr.readline()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
            c.starttls(context=ctx)
            c.login("user1", "pass")
            for _ in range(20):                  # more packets than --count keeps
                c.noop()
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "30 packets written" in err and "key-log block(s) embedded" in err
    report = ReadReport()
    assert len(list(read_packets(out, report))) == 30 and report.problems == []
    assert report.keylog and set(report.keylog) <= set(keylog.read_text().splitlines())
    sink = ListSink()
    analyze(out, sink.step)
    assert [s.verb for s in sink.steps if s.kind == "command"][:3] == ["EHLO", "STARTTLS", "EHLO"]
    assert "AUTH" in [s.verb for s in sink.steps if s.kind == "command" and s.tls]
