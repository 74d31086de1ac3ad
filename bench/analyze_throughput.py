#!/usr/bin/env python3
"""How fast `gponsim analyze` decodes a big SMTP capture, against tshark in the same run.

1. The capture: at least 200,000 packets of SMTP load, made here (root: tcpdump)
   with Postfix's ``smtp-source`` against a ``gponsim serve`` lab on a free
   loopback port, captured with ``tcpdump -i lo -w FILE port P`` (or, without
   tcpdump, Wireshark's ``dumpcap -i lo -f "tcp port P" -P -w FILE``); or reused
   from the cache (``--capture FILE`` names it; made when missing).
2. In the same run, alternating, ``--repeat`` times each:

   - tshark: ``tshark -r FILE -d tcp.port==P,smtp -Y smtp -T fields -e smtp.req.command
     -e smtp.response.code`` with the output to a file (the decode-as because the
     lab's port P is not 25: without it tshark dissects no SMTP and writes nothing);
   - gponsim: ``python -m gponsim analyze FILE --steps OUT.jsonl --quiet`` (the
     full decode: every Step built, with its commentary key, and written as
     JSON lines to a file);
   - narrated, as a user writes a report (issue #19): ``tshark -r FILE -d
     tcp.port==P,smtp -Y smtp`` (its one-line-per-packet text) against ``python -m gponsim analyze FILE``
     (summary and every Step narrated, with explanations), each with its
     output to a file.

   Each runs as a child process; its wall time, its CPU time and its own peak
   RSS (``os.wait4``'s rusage) are recorded.
3. Packets per second = packets in the file / wall time; the ratio is
   gponsim's rate / tshark's rate (median of the per-repeat ratios). The same
   ratio in CPU time is printed too: on a shared machine it is the steadier one.

Target: ratio >= 2, the narrated ratio >= 1 and gponsim's peak RSS < 200 MB. Prints PASS/FAIL; exits
0 (pass), 1 (fail) or 2 (error). Loopback only; no DNS.

    sudo .venv/bin/python bench/analyze_throughput.py
    .venv/bin/python bench/analyze_throughput.py --capture /tmp/smtp-load.pcap --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CAPTURE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gponsim" \
    / "bench" / "smtp-load.pcap"


class BenchError(Exception):
    pass


def count_packets(path: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from gponsim.capture.pcap import ReadReport, read_packets

    report = ReadReport()
    n = 0
    for n, *_ in read_packets(path, report):
        pass
    return n


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def make_capture(path: Path, messages: int, sessions: int, size: int) -> int:
    """smtp-source → gponsim serve on loopback, captured by tcpdump into ``path``."""
    smtp_source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not Path(smtp_source).exists():
        raise BenchError("smtp-source is not installed (Debian package postfix)")
    capturer = shutil.which("tcpdump") or shutil.which("dumpcap")
    if not capturer:
        raise BenchError("neither tcpdump nor dumpcap is installed (Debian package tcpdump)")
    if os.geteuid() != 0:
        raise BenchError("making the capture needs root (tcpdump on lo); or pass --capture "
                         "with an existing capture")
    work = Path(tempfile.mkdtemp(prefix="gponsim-anbench-"))
    ready = work / "ready.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    lab = subprocess.Popen([sys.executable, "-m", "gponsim", "serve", "--lab-root", str(work / "lab"),
                            "--quiet", "--ready-file", str(ready), "--relay", "none",
                            "--port", "smtp=0", "--port", "submission=0", "--port", "imap=0",
                            "--port", "imaps=0", "--port", "pop3=0", "--port", "pop3s=0",
                            "--port", "autoconfig=0"],
                           env=env, stdout=subprocess.DEVNULL, stderr=open(work / "lab.err", "wb"))
    dump = None
    try:
        wait_for(lambda: ready.exists() or lab.poll() is not None, "gponsim serve")
        if lab.poll() is not None:
            raise BenchError("gponsim serve did not start:\n" + (work / "lab.err").read_text())
        port = json.loads(ready.read_text())["ports"]["smtp"]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        if capturer.endswith("tcpdump"):
            argv = [capturer, "-i", "lo", "-s", "0", "-U", "-w", str(tmp), f"tcp port {port}"]
            started = "listening on"
        else:
            argv = [capturer, "-i", "lo", "-f", f"tcp port {port}", "-P", "-w", str(tmp)]
            started = "Capturing on"
        dump = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first = dump.stderr.readline()                 # "listening on lo, ..." / "Capturing on 'lo'"
        if started not in first:
            raise BenchError(f"{capturer} did not start: {first.strip()}")
        print(f"  {Path(capturer).name} on lo, port {port}", file=sys.stderr)
        t0 = time.monotonic()
        subprocess.run([smtp_source, "-s", str(sessions), "-l", str(size), "-m", str(messages),
                        "-f", "user1@gponlab.local", "-t", "user2@gponlab.local",
                        "-M", "client.gponlab.local", f"127.0.0.1:{port}"],
                       check=True, timeout=3600, stdout=subprocess.DEVNULL)
        print(f"  smtp-source: {messages} messages in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        dump.send_signal(signal.SIGINT)
        dump.wait(30)
        tmp.replace(path)
        return count_packets(path)
    finally:
        if dump is not None and dump.poll() is None:
            dump.kill()
        lab.send_signal(signal.SIGINT)
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            lab.kill()
        shutil.rmtree(work, ignore_errors=True)


def run_child(argv: list[str], stdout=subprocess.DEVNULL, env=None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise BenchError(f"{argv[0]} exited with {proc.returncode}:\n{err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def server_port(capture: Path) -> int:
    """The SMTP server's port in ``capture``: the first SYN's destination (tshark says)."""
    proc = subprocess.Popen(["tshark", "-r", str(capture), "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0",
                             "-T", "fields", "-e", "tcp.dstport"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()
    if not first.isdigit():
        raise BenchError(f"{capture}: no TCP connection opens in it")
    return int(first)


def concatenate(capture: Path, copies: int, out_dir: Path) -> Path:
    """``copies`` copies of ``capture`` one after the other (``mergecap -a``): the same
    connections again and again, many short connections in one big file."""
    if not shutil.which("mergecap"):
        raise BenchError("--copies needs mergecap (Debian package wireshark-common)")
    out = out_dir / f"{capture.stem}-x{copies}.pcap"
    subprocess.run(["mergecap", "-a", "-F", "pcap", "-w", str(out)] + [str(capture)] * copies,
                   check=True)
    return out


def measure(capture: Path, packets: int, repeat: int, out_dir: Path, narrated_too: bool = True) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # The lab's port is not 25: tshark is told it is SMTP (it would dissect no SMTP at all,
    # and its -Y smtp would print nothing).
    port = server_port(capture)
    decode_as = ["-d", f"tcp.port=={port},smtp"]
    tshark = ["tshark", "-r", str(capture), *decode_as, "-Y", "smtp", "-T", "fields",
              "-e", "smtp.req.command", "-e", "smtp.response.code"]
    steps = out_dir / "steps.jsonl"
    gponsim = [sys.executable, "-m", "gponsim", "analyze", str(capture), "--steps", str(steps),
               "--quiet"]
    # Narrated: what a user types to get a report, each writing its text to a file.
    tshark_text = ["tshark", "-r", str(capture), *decode_as, "-Y", "smtp"]
    narrated = [sys.executable, "-m", "gponsim", "analyze", str(capture)]
    text_env = {k: v for k, v in env.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    commands = {"tshark": (tshark, out_dir / "tshark-fields.txt"), "gponsim": (gponsim, None)}
    if narrated_too:
        commands.update({"tshark_text": (tshark_text, out_dir / "tshark.txt"),
                         "narrated": (narrated, out_dir / "report.txt")})
    runs: dict[str, list] = {name: [] for name in commands}
    for i in range(repeat):
        names = list(commands)
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            argv, target = commands[name]
            if target is None:
                wall, cpu, rss = run_child(argv, env=env)
            else:
                with open(target, "wb") as sink:
                    wall, cpu, rss = run_child(argv, stdout=sink, env=text_env)
            runs[name].append({"seconds": wall, "cpu_seconds": cpu, "packets_per_s": packets / wall,
                               "packets_per_cpu_s": packets / cpu, "peak_rss_mb": rss})
            print(f"  {name:11} {wall:6.2f} s  {packets / wall:9,.0f} packets/s  "
                  f"(CPU {cpu:5.2f} s: {packets / cpu:9,.0f} packets/CPU-s)  "
                  f"peak RSS {rss:6.1f} MB", file=sys.stderr)
    lines = sum(1 for _ in open(steps, "rb"))
    tshark_lines = sum(1 for _ in open(out_dir / "tshark-fields.txt", "rb"))
    if not tshark_lines or not lines:
        raise BenchError(f"nothing decoded (tshark: {tshark_lines} SMTP lines, gponsim: {lines} "
                         f"Steps; the server's port taken as {port})")
    cpu_ratios = [g["packets_per_cpu_s"] / t["packets_per_cpu_s"]
                  for g, t in zip(runs["gponsim"], runs["tshark"])]
    ratios = [g["packets_per_s"] / t["packets_per_s"] for g, t in zip(runs["gponsim"], runs["tshark"])]
    result = {
        "capture": str(capture), "packets": packets, "steps_written": lines,
        "tshark_lines": tshark_lines, "server_port": port, "repeat": repeat,
        "tshark": {"packets_per_s": statistics.median(r["packets_per_s"] for r in runs["tshark"]),
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["tshark"]), "runs": runs["tshark"]},
        "gponsim": {"packets_per_s": statistics.median(r["packets_per_s"] for r in runs["gponsim"]),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["gponsim"]),
                    "runs": runs["gponsim"]},
        "ratio": statistics.median(ratios), "ratios": ratios,
        "cpu_ratio": statistics.median(cpu_ratios), "cpu_ratios": cpu_ratios,
    }
    if not narrated_too:
        return result
    report_lines = sum(1 for _ in open(out_dir / "report.txt", "rb"))
    narrated_ratios = [g["packets_per_s"] / t["packets_per_s"]
                       for g, t in zip(runs["narrated"], runs["tshark_text"])]
    narrated_cpu = [g["packets_per_cpu_s"] / t["packets_per_cpu_s"]
                    for g, t in zip(runs["narrated"], runs["tshark_text"])]
    result.update({
        "narrated": {"packets_per_s": statistics.median(r["packets_per_s"] for r in runs["narrated"]),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["narrated"]),
                     "report_lines": report_lines, "runs": runs["narrated"],
                     "tshark_text_packets_per_s": statistics.median(r["packets_per_s"]
                                                                    for r in runs["tshark_text"]),
                     "tshark_text_runs": runs["tshark_text"],
                     "ratio": statistics.median(narrated_ratios), "ratios": narrated_ratios,
                     "cpu_ratio": statistics.median(narrated_cpu)},
    })
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE,
                    help=f"the capture to time (made when missing; default {DEFAULT_CAPTURE})")
    ap.add_argument("--remake", action="store_true", help="make the capture again")
    ap.add_argument("--messages", type=int, default=12000, help="smtp-source -m (making the capture)")
    ap.add_argument("--sessions", type=int, default=10, help="smtp-source -s")
    ap.add_argument("--size", type=int, default=2048, help="smtp-source -l (body bytes)")
    ap.add_argument("--min-packets", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--target", type=float, default=2.0, help="PASS when gponsim/tshark >= this")
    ap.add_argument("--max-rss", type=float, default=200.0, help="PASS needs gponsim's peak RSS (MB) below")
    ap.add_argument("--narrated-target", type=float, default=1.0,
                    help="PASS when narrated gponsim / tshark -Y smtp (both to a file) >= this")
    ap.add_argument("--copies", type=int, default=1,
                    help="time N copies of the capture one after the other (mergecap -a): many "
                         "short connections (5: 60,000 connections from the default capture)")
    ap.add_argument("--no-narrated", dest="narrated", action="store_false",
                    help="time only the Steps path (-q --steps) against tshark -T fields")
    ap.add_argument("--json", nargs="?", const="-", help="results as JSON to FILE (or stdout)")
    args = ap.parse_args()
    if not shutil.which("tshark"):
        print("error: tshark is not installed (Debian package tshark)", file=sys.stderr)
        return 2
    try:
        if args.remake or not args.capture.exists():
            print(f"making {args.capture} ...", file=sys.stderr)
            packets = make_capture(args.capture, args.messages, args.sessions, args.size)
        else:
            packets = count_packets(args.capture)
        print(f"capture {args.capture}: {packets:,} packets, "
              f"{args.capture.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
        if packets < args.min_packets:
            raise BenchError(f"only {packets} packets (< {args.min_packets}): --remake with more "
                             "--messages")
        with tempfile.TemporaryDirectory(prefix="gponsim-anbench-") as tmp:
            capture = args.capture
            if args.copies > 1:
                capture = concatenate(args.capture, args.copies, Path(tmp))
                packets *= args.copies
                print(f"{args.copies} copies one after the other: {packets:,} packets", file=sys.stderr)
            result = measure(capture, packets, args.repeat, Path(tmp), args.narrated)
            result["copies"] = args.copies
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ok = result["ratio"] >= args.target and result["gponsim"]["peak_rss_mb"] < args.max_rss \
        and (not args.narrated or result["narrated"]["ratio"] >= args.narrated_target)
    result["target"] = {"ratio": args.target, "max_rss_mb": args.max_rss,
                        "narrated_ratio": args.narrated_target, "pass": ok}
    print(f"tshark  {result['tshark']['packets_per_s']:9,.0f} packets/s  "
          f"peak RSS {result['tshark']['peak_rss_mb']:.0f} MB  ({result['tshark_lines']:,} SMTP lines)",
          file=sys.stderr)
    print(f"gponsim {result['gponsim']['packets_per_s']:9,.0f} packets/s  "
          f"peak RSS {result['gponsim']['peak_rss_mb']:.0f} MB  ({result['steps_written']:,} Steps)",
          file=sys.stderr)
    n = result.get("narrated")
    if n:
        print(f"narrated: gponsim analyze > file {n['packets_per_s']:9,.0f} packets/s ({n['report_lines']:,} lines), "
              f"tshark -Y smtp > file {n['tshark_text_packets_per_s']:9,.0f} packets/s: ratio {n['ratio']:.2f} "
              f"(target >= {args.narrated_target}), {n['cpu_ratio']:.2f} in CPU time", file=sys.stderr)
    print(f"ratio gponsim/tshark {result['ratio']:.2f} in wall time (target >= {args.target}), "
          f"{result['cpu_ratio']:.2f} in CPU time; {'PASS' if ok else 'FAIL'}", file=sys.stderr)
    if args.json:
        write_json(result, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
