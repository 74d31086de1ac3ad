"""A lab network (``gponsim net up``) for tests: real namespaces, real clients.

Root gets named namespaces; a normal user gets the rootless network (a user
namespace of its own). Where neither is possible, tests that need it skip,
saying why (:data:`CANNOT`).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest


@functools.cache
def rootless_possible() -> str:
    """"" when a rootless network can be built here (also as root), else why not
    (asked once per test run: it starts a Python)."""
    out = subprocess.run([sys.executable, "-c", "from gponsim.net.control import userns_refused; "
                          "print(userns_refused() or '', end='')"], capture_output=True, text=True)
    return out.stdout.strip() or (out.stderr.strip()[-200:] if out.returncode else "")


#: Why this user cannot build the lab network here ("" when it can: root, or user namespaces).
CANNOT = "" if os.geteuid() == 0 else rootless_possible()
needs_network = pytest.mark.skipif(bool(CANNOT), reason=f"needs root or user namespaces: {CANNOT}")


class Network:
    """One ``gponsim net up`` in its own state folder, lab root and namespace names."""

    count = 0

    def __init__(self, base: Path, mode: str = "auto", pcs: int | None = None) -> None:
        self.state = base / "state"
        self.lab_root = base / "gponlab"
        self.mode = mode
        self.pcs = pcs
        Network.count += 1
        self.prefix = f"gt{os.getpid() % 100000}{Network.count}-"
        self.env = {**os.environ, "GPONSIM_NET_STATE": str(self.state)}

    def gponsim(self, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gponsim", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, **kw)

    def up(self) -> subprocess.CompletedProcess:
        args = ["net", "up", "--lab-root", str(self.lab_root), "--mode", self.mode, "--prefix", self.prefix]
        if self.pcs is not None:
            args += ["--pcs", str(self.pcs)]
        out = self.gponsim(*args, timeout=90)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    def down(self) -> subprocess.CompletedProcess:
        return self.gponsim("net", "down")

    def exec(self, host: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.gponsim("net", "exec", host, "--", *argv, timeout=timeout)

    def state_json(self) -> dict:
        import json

        return json.loads((self.state / "state.json").read_text())

    @property
    def mail_log(self) -> str:
        path = self.lab_root / "var" / "log" / "mail.log"
        return path.read_text() if path.exists() else ""
