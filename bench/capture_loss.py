#!/usr/bin/env python3
"""Does gponsim's live capture (Scapy, a kernel BPF filter) lose packets? (issue #20)

For each load and each way of capturing, in a fresh `gponsim serve` on free
loopback ports (imap_class.py's lab):

- the capture under test: ``serve --capture FILE --keylog KEYS`` (the lab captures
  its own traffic, in its own process) or a separate ``gponsim capture -o FILE
  --port ... --keylog KEYS`` narrating into a file, as an instructor projects it;
- the reference, at the same time: Wireshark's ``dumpcap -i lo -f FILTER -B 64``
  (libpcap's ring buffer, 64 MiB), with the same filter;
- the load:

  - ``lesson``: what a lesson does, ROUNDS times a second apart: a submission
    (STARTTLS, AUTH PLAIN, one message) and an IMAP session (STARTTLS, LOGIN,
    SELECT, FETCH of the flags and of the newest message, LOGOUT);
  - ``class``: imap_class.py's class of 40 Thunderbird-like clients (own accounts,
    each: STARTTLS, AUTHENTICATE, SELECT, two UID FETCH, IDLE; a delivery to all of
    them every second for DURATION s), then 8 workers doing login-fetch-logout
    sessions with STARTTLS for SESSIONS s (about 100 sessions a second);
  - ``flood``: beyond any class, Postfix's ``smtp-source`` with 40 sessions in
    parallel at full speed (MESSAGES messages of 2 KB to port 25).

Afterwards every frame of the reference is looked for in gponsim's file (the same
bytes; the time stamps differ): a frame of the reference that is not there is lost.
The figures: frames in the reference, lost, extra (in gponsim's file only: should
be none), what the kernel reported dropping on gponsim's socket and on dumpcap's,
and the reference's rate. Target: no frame lost at the lesson load. Exit 0 when
met, 1 when not, 2 on error. Needs root (or CAP_NET_RAW) and dumpcap.

    sudo .venv/bin/python bench/capture_loss.py                       # both loads, both ways
    sudo .venv/bin/python bench/capture_loss.py --load class --capturer serve --json out.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import imaplib
import os
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import write_json
from imap_class import REPO, Bench, BenchError, Lab, connect

LOADS = ("lesson", "class", "flood")
CAPTURERS = ("serve", "capture")


def frames(path: Path) -> collections.Counter:
    """Every frame of a capture file, by its bytes."""
    sys.path.insert(0, str(REPO))
    from gponsim.capture.pcap import read_packets

    return collections.Counter(bytes(frame) for _n, _t, _link, frame in read_packets(path))


class Reference:
    """dumpcap on lo with the lab's ports: what a capture should hold."""

    def __init__(self, path: Path, bpf: str) -> None:
        if not shutil.which("dumpcap"):
            raise BenchError("dumpcap is not installed (Debian package wireshark-common)")
        self.path = path
        self.proc = subprocess.Popen(["dumpcap", "-i", "lo", "-f", bpf, "-B", "64", "-s", "0", "-w", str(path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            line = self.proc.stderr.readline()
            if "Capturing on" in line:
                time.sleep(1.0)          # it says so a moment before its first packet is kept
                return
            if not line or time.monotonic() > deadline:
                raise BenchError(f"dumpcap did not start: {line.strip()}")

    def stop(self) -> int:
        """Stop it; the packets the kernel dropped on dumpcap's socket."""
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.communicate(timeout=60)[1]
        m = re.search(r"Packets received/dropped on interface '[^']*': (\d+)/(\d+)", err)
        return int(m.group(2)) if m else -1


class LiveCapture:
    """A separate ``gponsim capture`` narrating the lab into a file."""

    def __init__(self, python: str, path: Path, ports: list[int], keylog: Path, narration: Path) -> None:
        argv = [python, "-m", "gponsim", "capture", "-o", str(path), "--keylog", str(keylog),
                "--lang", "es", "--explain", "first"]
        for port in ports:
            argv += ["--port", str(port)]
        env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120")
        self.out = open(narration, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stderr.readline()
        if "capturing on" not in line:
            raise BenchError(f"gponsim capture did not start: {line.strip()} {self.proc.stderr.read()[-500:]}")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.communicate(timeout=120)[1]
        self.out.close()
        return err


def lesson_load(lab: Lab, args) -> int:
    """ROUNDS times, a second apart: a submission and an IMAP session, as a lesson does."""
    cert = lab.root / "etc" / "ssl" / "certs" / "ssl-cert-snakeoil.pem"
    tls = ssl.create_default_context(cafile=str(cert))
    tls.check_hostname = False
    start = time.monotonic()
    for k in range(args.rounds):
        with smtplib.SMTP("127.0.0.1", lab.ports["submission"], local_hostname="alumno.test",
                          timeout=30) as s:
            s.starttls(context=tls)
            s.login("user1", "pass")
            s.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                       f"From: user1@gponlab.local\r\nTo: user2@gponlab.local\r\nSubject: leccion {k}\r\n"
                       f"\r\nHola {k}.\r\n".encode())
        m = connect(lab.ports["imap"], "127.0.0.1", 30)
        m.starttls(tls)
        m.login("user2", "pass")
        typ, data = m.select("INBOX")
        count = int(data[0])
        if count:
            m.fetch("1:*", "(FLAGS)")
            m.fetch(str(count), "(BODY.PEEK[])")
        m.logout()
        pause = start + k + 1 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return 1


def class_load(lab: Lab, args) -> int:
    ns = argparse.Namespace(clients=args.clients, duration=args.duration, seed=5, accounts="own",
                            workers=8, session_seconds=args.sessions, session_tls=True)
    bench = Bench(ns, lab)
    c = bench.run_class()
    s = bench.run_sessions()
    if c["client_errors"] or s["errors"]:
        raise BenchError(f"the class's clients failed: {(c['client_errors'] + s['errors'])[:3]}")
    return args.clients


def flood_load(lab: Lab, args) -> int:
    """Beyond a class: Postfix's smtp-source, 40 sessions in parallel at full speed."""
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not Path(source).exists():
        raise BenchError("smtp-source is not installed (Debian package postfix)")
    subprocess.run([source, "-s", str(args.clients), "-l", "2048", "-m", str(args.messages),
                    "-f", "user1@gponlab.local", "-t", "user2@gponlab.local", "-M", "client.gponlab.local",
                    f"127.0.0.1:{lab.ports['smtp']}"], check=True, timeout=1800, stdout=subprocess.DEVNULL)
    return args.clients


def run_one(load: str, capturer: str, args, workdir: Path) -> dict:
    keys = workdir / "keys.log"
    ours = workdir / "gponsim.pcapng"
    extra = ["--keylog", str(keys)] + (["--capture", str(ours)] if capturer == "serve" else [])
    lab = Lab(workdir, args.python, extra)
    live = reference = None
    try:
        lab.start()
        ports = sorted(set(lab.ports.values()))
        bpf = " or ".join(f"tcp port {p}" for p in ports)
        reference = Reference(workdir / "reference.pcapng", bpf)
        if capturer == "capture":
            live = LiveCapture(args.python, ours, ports, keys, workdir / "narration.txt")
        else:
            deadline = time.monotonic() + 30
            while "capturing the lab's traffic" not in (workdir / "serve.log").read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise BenchError(f"serve --capture did not start:\n{lab.log_tail()}")
                time.sleep(0.05)
        t0 = time.monotonic()
        clients = {"lesson": lesson_load, "class": class_load, "flood": flood_load}[load](lab, args)
        seconds = time.monotonic() - t0
        time.sleep(1.0)                     # the last ACKs and FINs
        report = live.stop() if live is not None else ""
        live = None
        lab.stop()
        if capturer == "serve":
            report = (workdir / "serve.log").read_text(errors="replace")
        ref_drops = reference.stop()
        reference = None
    finally:
        if live is not None:
            with contextlib.suppress(Exception):
                live.stop()
        lab.stop()
        if reference is not None:
            with contextlib.suppress(Exception):
                reference.stop()
    theirs, mine = frames(workdir / "reference.pcapng"), frames(ours)
    lost = sum((theirs - mine).values())
    extra_frames = sum((mine - theirs).values())
    m = re.search(r"(\d+) dropped by the kernel", report)
    total = sum(theirs.values())
    return {"load": load, "capturer": capturer, "clients": clients, "seconds": round(seconds, 1),
            "reference_frames": total, "gponsim_frames": sum(mine.values()), "lost": lost,
            "extra": extra_frames, "kernel_drops_gponsim": int(m.group(1)) if m else 0,
            "kernel_drops_dumpcap": ref_drops, "frames_per_second": round(total / seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", choices=LOADS + ("all",), default="all",
                    help="lesson, class (40 clients), flood (smtp-source, 40 sessions at full speed)")
    ap.add_argument("--capturer", choices=CAPTURERS + ("all",), default="all")
    ap.add_argument("--rounds", type=int, default=10, help="lesson load: sessions, one a second")
    ap.add_argument("--clients", type=int, default=40, help="class load: idling IMAP clients")
    ap.add_argument("--duration", type=int, default=10, help="class load: seconds of deliveries")
    ap.add_argument("--sessions", type=int, default=10, help="class load: seconds of login-fetch-logout")
    ap.add_argument("--messages", type=int, default=2000, help="flood load: messages (smtp-source -m)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE")
    args = ap.parse_args(argv)
    out = sys.stderr if args.json == "-" else sys.stdout
    loads = LOADS if args.load == "all" else (args.load,)
    capturers = CAPTURERS if args.capturer == "all" else (args.capturer,)
    results = []
    try:
        for load in loads:
            for capturer in capturers:
                workdir = Path(tempfile.mkdtemp(prefix=f"gponsim-loss-{load}-{capturer}-"))
                try:
                    r = run_one(load, capturer, args, workdir)
                finally:
                    if not args.keep:
                        shutil.rmtree(workdir, ignore_errors=True)
                results.append(r)
                print(f"{load:7} {capturer:8} {r['reference_frames']:7} frames in {r['seconds']:5.1f} s "
                      f"({r['frames_per_second']:7.1f}/s): lost {r['lost']}, extra {r['extra']}, "
                      f"kernel drops gponsim {r['kernel_drops_gponsim']} / dumpcap {r['kernel_drops_dumpcap']}",
                      file=out, flush=True)
    except (BenchError, OSError, subprocess.SubprocessError, imaplib.IMAP4.error, smtplib.SMTPException) as exc:
        print(f"error: {exc}", file=out)
        return 2
    ok = all(r["lost"] == 0 and r["extra"] == 0 for r in results if r["load"] == "lesson")
    print(f"{'PASS' if ok else 'FAIL'}: no frame lost at the lesson load", file=out)
    if args.json:
        write_json({"runs": results, "pass": ok}, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
