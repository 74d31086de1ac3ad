"""Where a running lab network is written down, so that status, exec and down find it.

A state folder (``/run/gponsim/net`` as root; ``$XDG_RUNTIME_DIR/gponsim/net`` or
``/tmp/gponsim-<uid>/net`` otherwise; ``--state-dir`` or ``GPONSIM_NET_STATE``)
holds ``state.json`` (the mode, the network's process, every host's namespace),
the network's narration (``narration.log``) and its Steps (``steps.jsonl``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gponsim.net.build import HostNs


def default_dir() -> Path:
    env = os.environ.get("GPONSIM_NET_STATE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/gponsim/net")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "gponsim" / "net"
    return Path(f"/tmp/gponsim-{os.geteuid()}") / "net"


@dataclass
class NetState:
    mode: str                      #: root | rootless
    pid: int                       #: the network's process (services, holders' parent)
    lab_root: str
    prefix: str = ""
    hosts: dict[str, HostNs] = field(default_factory=dict)
    userns: str | None = None      #: rootless: the user namespace to enter first
    ready: bool = False
    seconds: float = 0.0           #: from start to ready
    etc_root: str = ""             #: where the hosts' resolv.conf and hosts are
    made_etc_netns: bool = False   #: /etc/netns did not exist before (removed by down)
    made_run_netns: bool = False   #: /run/netns did not exist before (removed by down)
    ports: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = dict(self.__dict__)
        data["hosts"] = {k: h.to_dict() for k, h in self.hosts.items()}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "NetState":
        data = json.loads(text)
        data["hosts"] = {k: HostNs(**h) for k, h in data.get("hosts", {}).items()}
        return cls(**data)


def path(state_dir: Path) -> Path:
    return Path(state_dir) / "state.json"


def write(state_dir: Path, state: NetState) -> None:
    target = path(state_dir)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    tmp.replace(target)


def read(state_dir: Path) -> NetState | None:
    try:
        return NetState.from_json(path(state_dir).read_text())
    except FileNotFoundError:
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:     # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
