#!/usr/bin/env python3
"""The packets view's speed against tshark -V, in the same run (issue #20).

Takes the first N packets (default 10,000) of a capture (default: analyze_throughput.py's
cached smtp-source capture) into a temporary file, then, alternating, ``--repeat`` times:

- ``gponsim analyze FILE --packets`` (its text to a file): when its first packet line is
  written (seconds from the start of the process) and its packets per second overall;
- ``tshark -r FILE -V`` (every packet dissected in full, to a file).

Target: the first line within 1 s. Prints the figures and PASS/FAIL; exits 0, 1, or 2.

    .venv/bin/python bench/packets_view.py [--capture FILE] [--packets 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gponsim" / "bench" / "smtp-load.pcap"


def first_line_and_total(argv, out: Path, env) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    with open(out, "wb") as sink:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        for line in proc.stdout:
            if first is None and line[:1].isdigit():
                first = time.perf_counter() - t0
            sink.write(line)
        proc.wait()
    return first if first is not None else float("nan"), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", type=Path, default=DEFAULT)
    ap.add_argument("--packets", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not args.capture.exists():
        print(f"error: {args.capture} missing (run bench/analyze_throughput.py once)", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="gponsim-pkbench-") as tmp:
        cut = Path(tmp) / "cut.pcap"
        subprocess.run(["editcap", "-r", str(args.capture), str(cut), f"1-{args.packets}"], check=True)
        firsts, ours, theirs = [], [], []
        for i in range(args.repeat):
            order = ("gponsim", "tshark") if i % 2 == 0 else ("tshark", "gponsim")
            for name in order:
                if name == "gponsim":
                    first, total = first_line_and_total([sys.executable, "-m", "gponsim", "analyze", str(cut),
                                                         "--packets"], Path(tmp) / "g.txt", env)
                    firsts.append(first)
                    ours.append(args.packets / total)
                else:
                    t0 = time.perf_counter()
                    with open(Path(tmp) / "t.txt", "wb") as sink:
                        subprocess.run(["tshark", "-r", str(cut), "-V"], stdout=sink, stderr=subprocess.DEVNULL,
                                       check=True)
                    theirs.append(args.packets / (time.perf_counter() - t0))
                print(f"  round {i + 1} {name}: done", file=sys.stderr)
    first = statistics.median(firsts)
    ratio = statistics.median(o / t for o, t in zip(ours, theirs))
    print(f"first line after {first:.2f} s (median of {firsts}); gponsim --packets "
          f"{statistics.median(ours):,.0f} packets/s, tshark -V {statistics.median(theirs):,.0f} packets/s: "
          f"ratio {ratio:.2f}; {'PASS' if first <= 1.0 else 'FAIL'} (first line within 1 s)")
    return 0 if first <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
