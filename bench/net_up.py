"""How long `gponsim net up` takes until every service answers, and `net down`.

    sudo .venv/bin/python bench/net_up.py              # root: named namespaces
    .venv/bin/python bench/net_up.py --mode rootless   # a user namespace of its own
    .venv/bin/python bench/net_up.py --repeat 5 --pcs 10

Each round: `gponsim net up` in a fresh state folder and lab root (the time is
the command's, from start to return, and the network's own figure from its
state file: build to ready), then `gponsim net down`. Target: up in under 5 s
with 3 PCs on the project's 2-core machines (seen: about 1 s of the network's
own, 2-2.5 s for the command, most of it starting Python twice).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(mode: str, pcs: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="gponsim-net-bench-") as tmp:
        env = {**os.environ, "GPONSIM_NET_STATE": str(Path(tmp) / "state")}
        gponsim = [sys.executable, "-m", "gponsim", "net"]
        started = time.monotonic()
        up = subprocess.run([*gponsim, "up", "--mode", mode, "--pcs", str(pcs), "--prefix", "bench-",
                             "--lab-root", str(Path(tmp) / "gponlab")], env=env, capture_output=True, text=True)
        took = time.monotonic() - started
        if up.returncode != 0:
            raise SystemExit(f"net up failed: {up.stderr}")
        own = json.loads((Path(tmp) / "state" / "state.json").read_text())["seconds"]
        started = time.monotonic()
        subprocess.run([*gponsim, "down"], env=env, check=True, capture_output=True)
        return took, own, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["auto", "root", "rootless"], default="auto")
    parser.add_argument("--pcs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rounds = [one(args.mode, args.pcs) for _ in range(args.repeat)]
    for name, values in zip(("net up (command)", "net up (network: build to ready)", "net down"), zip(*rounds)):
        print(f"{name:34} median {statistics.median(values):.2f} s  (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
