"""``gponsim net up|down|status|exec``: the command side of the lab network.

``up`` starts the network's process (:mod:`gponsim.net.daemon`) and returns when it
is ready; ``down`` stops it and makes sure nothing it made is left; ``exec`` runs a
command inside a host (its network, its resolv.conf and hosts, its name),
replacing this process, so the command's exit code, output and terminal are the
caller's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gponsim.net import build, kernel, state
from gponsim.net.state import NetState


class ControlError(Exception):
    """Said to the user as is (exit code 1)."""


def choose_mode(want: str = "auto") -> tuple[str, str]:
    """``(mode, why)``: root when we are root (unless rootless is asked), else rootless
    when the kernel lets this user make a user namespace; otherwise an error saying why."""
    if want == "root" and os.geteuid() != 0:
        raise ControlError("--mode root: you are not root (try without --mode: rootless, "
                           "in a user namespace of your own)")
    if want == "root" or (want == "auto" and os.geteuid() == 0):
        return "root", "running as root: named namespaces (ip netns) and /etc/netns/<host>"
    reason = userns_refused()
    if reason is None:
        return "rootless", ("rootless: inside an unprivileged user namespace of its own; "
                            "nothing outside it can see or is changed by the network")
    raise ControlError(f"the lab network needs root, or user namespaces for a normal user, and "
                       f"this kernel refuses them ({reason}). Run it as root (sudo gponsim net up). / "
                       f"La red del laboratorio necesita root o espacios de nombres de usuario, y "
                       f"este sistema no los permite ({reason}): ejecútelo como root.")


def userns_refused() -> str | None:
    """None when this user may make a user namespace with network namespaces inside."""
    from gponsim.capture.userns import refused_in_child
    from gponsim.net.daemon import become_userns_root

    return refused_in_child(become_userns_root)


def running(state_dir: Path) -> NetState | None:
    net = state.read(state_dir)
    if net is not None and state.alive(net.pid):
        return net
    return None


def up(state_dir: Path, *, lab_root: Path, pcs: int | None, mode: str, prefix: str = "",
       config_dir: Path | None = None, lang: str = "en", timeout: float = 60.0) -> NetState:
    """Start the network's process in the background; return once it is ready."""
    state_dir = Path(state_dir).resolve()
    net = running(state_dir)
    if net is not None:
        raise ControlError(f"the lab network is already up (process {net.pid}, state in {state_dir}); "
                           f"`gponsim net down` first")
    stale = state.read(state_dir)
    if stale is not None:                      # a network whose process died: clean it first
        cleanup(stale, state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "narration.log"
    argv = [sys.executable, "-m", "gponsim", "net", "daemon", "--state-dir", str(state_dir),
            "--lab-root", str(Path(lab_root).resolve()), "--mode", mode, "--prefix", prefix,
            "--lang", lang]
    if pcs is not None:
        argv += ["--pcs", str(pcs)]
    if config_dir is not None:
        argv += ["--config", str(Path(config_dir).resolve())]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "COLUMNS": "100"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        net = state.read(state_dir)
        if net is not None and net.ready and net.pid == proc.pid:
            return net
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise ControlError("the lab network did not start:\n" + "\n".join(tail))
        time.sleep(0.05)
    proc.terminate()
    raise ControlError(f"the lab network was not ready after {timeout:.0f} s (see {log})")


def down(state_dir: Path, timeout: float = 15.0) -> NetState | None:
    """Stop the network's process and remove whatever is left. None: nothing was up."""
    state_dir = Path(state_dir).resolve()
    net = state.read(state_dir)
    if net is None:
        return None
    if state.alive(net.pid) and _is_network_process(net.pid):
        os.kill(net.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while state.alive(net.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if state.alive(net.pid):
            os.kill(net.pid, signal.SIGKILL)
            while state.alive(net.pid):
                time.sleep(0.05)
    cleanup(net, state_dir)
    return net


def _is_network_process(pid: int) -> bool:
    try:
        return b"net\0daemon\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def cleanup(net: NetState, state_dir: Path) -> None:
    """What the network's process removes itself when it ends, done again (it may have
    been killed): ip netns names, /etc/netns entries, holders, the state file."""
    if net.mode == "root":
        build.teardown(net.hosts.values())
        if net.made_etc_netns:
            with contextlib.suppress(OSError):
                Path(net.etc_root).rmdir()
        if net.made_run_netns:
            build.forget_run_netns()
    else:
        build.teardown([build.HostNs(h.name, h.pid, h.netns, etc=h.etc) for h in net.hosts.values()])
    state.path(state_dir).unlink(missing_ok=True)


def status(state_dir: Path) -> NetState | None:
    return running(Path(state_dir).resolve())


def exec_in(state_dir: Path, host: str, argv: list[str]) -> None:
    """Replace this process by ``argv`` run inside ``host`` (never returns on success)."""
    net = running(Path(state_dir).resolve())
    if net is None:
        raise ControlError("the lab network is not up: `gponsim net up` first")
    if host not in net.hosts or host == build.SWITCH:
        names = ", ".join(h for h in net.hosts if h != build.SWITCH)
        raise ControlError(f"no host {host!r} in the lab network (hosts: {names})")
    if not argv:
        argv = [os.environ.get("SHELL", "/bin/sh")]
    h = net.hosts[host]
    try:
        kernel.enter_host(h.netns, userns=net.userns, etc=Path(h.etc) if h.etc else None, hostname=host)
    except OSError as exc:
        raise ControlError(f"cannot enter {host}: {exc}") from exc
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise ControlError(f"{argv[0]}: {exc.strerror or exc}") from exc
