"""What the lab withstands: hostile and broken clients in a classroom.

Each test sends one kind of abuse (bounded in count and time, loopback only)
to a running `gponsim serve` and checks that another client is still served
within 1 s, that the lab's memory stays bounded, that nothing is written
outside the lab root, and that every message acknowledged with 250 is
delivered exactly once.
"""

from __future__ import annotations

import os
import resource
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labproc import LabProcess, wait_until
from pcapgen import Conversation, write_pcap
from test_lab_behaviour import profile_with

pytestmark = pytest.mark.slow

#: How much a lab may grow while it is abused (its RSS, in MB).
MEMORY_BOUND_MB = 64


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def still_serves(lab: LabProcess) -> None:
    """Another client gets the greeting and a NOOP answered within 1 s."""
    with socket.create_connection(("127.0.0.1", lab.ports["submission"]), timeout=1) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"NOOP\r\n")
        assert f.readline() == b"250 2.0.0 Ok\r\n"


def send(lab: LabProcess, subject: str, rcpts=("user2@gponlab.local",)) -> str:
    with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=30) as c:
        c.ehlo("pc1")
        c.mail("alice@example.org")
        for r in rcpts:
            c.rcpt(r)
        code, reply = c.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        assert code == 250
        return reply.decode().rsplit(" ", 1)[1]


@pytest.fixture
def lab(tmp_path):
    """A lab whose temporary files (TMPDIR) would show in its own folder."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    proc = LabProcess(tmp_path / "gponlab")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    try:
        proc.start()
    finally:
        if old is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old
    proc.tmpdir = tmp
    yield proc
    proc.stop()


# -- port 25, no authentication

def test_bdat_of_a_gigabyte_before_mail_is_read_and_dropped(lab):
    before = rss_mb(lab.proc.pid)
    with socket.create_connection(("127.0.0.1", lab.ports["smtp"]), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO attacker\r\nBDAT 1048576000 LAST\r\n")
        while f.readline()[3:4] == b"-":
            pass
        block = b"A" * (1 << 20)
        for _ in range(200):                      # 200 MB of the announced 1000
            s.sendall(block)
        assert rss_mb(lab.proc.pid) - before < MEMORY_BOUND_MB
        still_serves(lab)


def test_a_data_line_that_never_ends_is_held_to_the_size_limit(lab):
    before = rss_mb(lab.proc.pid)
    with socket.create_connection(("127.0.0.1", lab.ports["smtp"]), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO attacker\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user2@gponlab.local>\r\n"
                  b"DATA\r\n")
        while not f.readline().startswith(b"354"):
            pass
        block = b"B" * (1 << 20)
        for _ in range(100):                      # 100 MB, no line end
            s.sendall(block)
        assert rss_mb(lab.proc.pid) - before < MEMORY_BOUND_MB
        still_serves(lab)
        s.sendall(b"\r\n.\r\n")
        assert f.readline() == b"552 5.3.4 Error: message file too big\r\n"
    assert not lab.mbox("user2")


# -- the autoconfig web service

def test_a_huge_http_body_is_refused_and_never_spooled(lab):
    before = rss_mb(lab.proc.pid)
    with socket.create_connection(("127.0.0.1", lab.ports["autoconfig"]), timeout=10) as s:
        s.sendall(b"POST /mail/config-v1.1.xml HTTP/1.1\r\nHost: autoconfig.gponlab.local\r\n"
                  b"Content-Length: 314572800\r\n\r\n")
        sent = 0
        try:
            for _ in range(300):
                s.sendall(b"C" * (1 << 20))
                sent += 1
        except OSError:
            pass                                   # closed by the lab: what we want
        reply = s.recv(200)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert sent < 300
    assert list(lab.tmpdir.iterdir()) == []        # nothing spooled
    assert rss_mb(lab.proc.pid) - before < MEMORY_BOUND_MB
    still_serves(lab)


# -- the Gmail simulator

def test_recipient_domains_made_of_dots_stay_inside_internet(lab):
    qid = send(lab, "dots", rcpts=("x@..", "y@.", "bob@example.com"))
    wait_until(lambda: f"{qid}: removed" in lab.log_text(), 30, "the relay to finish")
    internet = lab.root / "internet"
    files = sorted(str(p.relative_to(internet)) for p in internet.rglob("*") if p.is_file())
    assert files == ["_../x", "_./y", "example.com/bob"]
    outside = [p for p in lab.root.iterdir() if p.name not in
               ("etc", "var", "home", "internet")]
    assert outside == []
    assert (internet / "example.com/bob").read_text().count("Subject: dots") == 1


# -- out of file descriptors

def test_running_out_of_file_descriptors_delays_but_loses_nothing(tmp_path):
    conf = profile_with(tmp_path, minimal_backoff_time="1s", maximal_backoff_time="2s",
                        queue_run_delay="1s")
    lab = LabProcess(tmp_path / "gponlab", config_dir=conf)
    limit = 200

    def start_limited():
        real = subprocess.Popen

        def popen(cmd, **kw):
            kw["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return real(cmd, **kw)
        subprocess.Popen = popen
        try:
            lab.start()
        finally:
            subprocess.Popen = real
    start_limited()
    idle: list[socket.socket] = []
    try:
        acked = [send(lab, f"before {i}") for i in range(3)]
        for _ in range(limit + 20):               # more than the lab can hold
            try:
                idle.append(socket.create_connection(("127.0.0.1", lab.ports["smtp"]), timeout=2))
            except OSError:
                break
        time.sleep(0.5)
        for s in idle:
            s.close()
        idle.clear()
        acked += [send(lab, f"after {i}") for i in range(3)]
        msgs = wait_until(lambda: len(m := lab.mbox("user2")) >= 6 and m, 60,
                          "every acknowledged message delivered")
        subjects = sorted(m["Subject"] for m in msgs)
        assert subjects == sorted([f"before {i}" for i in range(3)] + [f"after {i}" for i in range(3)])
        for qid in acked:
            wait_until(lambda q=qid: f"{q}: removed" in lab.log_text(), 30, f"{qid} removed")
    finally:
        for s in idle:
            s.close()
        lab.stop()


# -- gponsim analyze

def test_many_tiny_out_of_order_segments_reassemble_in_n_log_n(tmp_path, monkeypatch):
    """40,000 one-byte segments, the second half first: reassembly looks at
    each waiting segment a bounded number of times (it used to rescan every
    waiting segment for each one delivered: 164 s for this capture)."""
    from gponsim.capture import tcp
    from gponsim.capture.analyze import analyze

    conv = Conversation()
    conv.s("220 mail.gponlab.local ESMTP Postfix (Debian/GNU)\r\n")
    data = b"EHLO pc1\r\n" + b"NOOP " + b"x" * 39_980 + b"\r\n" + b"QUIT\r\n"
    start = len(conv.packets)
    packets = conv.c(data, mss=1)
    del conv.packets[start:]
    half = len(packets) // 2
    conv.packets.extend(packets[half:] + packets[:half])
    conv.close()
    path = write_pcap(tmp_path / "tiny.pcap", conv.frames())
    calls = [0]
    real = tcp._rel

    def counted(a, b):
        calls[0] += 1
        return real(a, b)
    monkeypatch.setattr(tcp, "_rel", counted)
    from gponsim.sinks.memory import ListSink
    sink = ListSink()
    analyze(path, sink.step)
    commands = [s.line[:20] for s in sink.steps if s.kind == "command"]
    assert commands == ["EHLO pc1", "NOOP " + "x" * 15, "QUIT"]
    assert calls[0] < 10 * len(packets), calls[0]


# -- the classroom default with the real relay

def test_the_real_relay_is_not_opened_to_a_whole_classroom(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gponsim", "serve", "--lab-root",
                          str(tmp_path / "gponlab"), "--relay", "real", "--listen", "0.0.0.0",
                          "--port-offset", "20000", "--quiet"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr        # click's error exit
    assert "mynetworks (192.168.0.0/16) could send mail to the Internet" in out.stderr
    assert "--allow-mynetworks-relay" in out.stderr
    assert not (tmp_path / "gponlab" / "var" / "log" / "mail.log").exists()
