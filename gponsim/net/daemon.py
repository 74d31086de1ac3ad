"""The lab network's own process: builds the namespaces, serves, tears down.

``gponsim net up`` starts it in the background (or ``--foreground``, narrating on
the terminal). It builds the network (:mod:`gponsim.net.build`), runs the
services in one reactor (:mod:`gponsim.net.services`), checks from the hosts
themselves that everything answers, then writes ``ready`` in its state file. On
SIGTERM (``gponsim net down``) or Ctrl-C it stops the services and removes
everything it made.

Rootless, it first becomes root of a user namespace of its own (what ``unshare
--user --map-root-user`` does); every namespace it then makes belongs to that
one, and nothing of it is visible to, or changes, the rest of the computer.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from gponsim.net import build, kernel, services, state, topology


class NetworkError(Exception):
    """The lab network cannot be built or does not answer; says why."""


def become_userns_root() -> None:
    """Root of a new user namespace (rootless mode), in an empty network namespace it owns
    (a thread may only move between namespaces its user namespace owns); before any
    thread exists."""
    uid, gid = os.geteuid(), os.getegid()
    kernel.unshare(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNET)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)


def run(state_dir: Path, *, lab_root: Path, pcs: int | None, mode: str, prefix: str = "",
        config_dir: Path | None = None, sinks=None, on_ready=None) -> int:
    """Build, serve until SIGTERM/SIGINT, tear down. Returns an exit code.

    ``sinks``: called once the network is built (a user namespace can only be
    entered by a process without threads, and a sink may start one); returns the
    StepBus the services emit into."""
    started = time.monotonic()
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    topo = topology.load(pcs)
    if mode == "rootless":
        become_userns_root()
        etc_root = state_dir / "etc"
    else:
        etc_root = Path("/etc/netns")
    made_etc = mode == "root" and not etc_root.exists()
    made_run = mode == "root" and build.remember_run_netns()
    try:
        hosts = build.build(topo, named=(mode == "root"), prefix=prefix, etc_root=etc_root)
    except BaseException:
        _undo_folders(made_etc, made_run, etc_root)
        raise
    net = state.NetState(mode=mode, pid=os.getpid(), lab_root=str(Path(lab_root).resolve()),
                         prefix=prefix, hosts=hosts, etc_root=str(etc_root), made_etc_netns=made_etc,
                         made_run_netns=made_run,
                         userns=f"/proc/{os.getpid()}/ns/user" if mode == "rootless" else None)
    try:
        state.write(state_dir, net)
        bus = sinks() if sinks is not None else None
        try:
            return _serve(topo, hosts, net, state_dir, started, config_dir,
                          bus.emit if bus is not None else None, on_ready)
        finally:
            if bus is not None:
                bus.close()
    finally:
        build.teardown(hosts.values())
        _undo_folders(made_etc, made_run, etc_root)
        state.path(state_dir).unlink(missing_ok=True)


def _undo_folders(made_etc: bool, made_run: bool, etc_root: Path) -> None:
    """/etc/netns and /run/netns as they were before, if the network made them."""
    if made_etc:
        try:
            etc_root.rmdir()
        except OSError:
            pass
    if made_run:
        build.forget_run_netns()


def _serve(topo, hosts, net, state_dir, started, config_dir, emit, on_ready) -> int:
    services.enter_mail(hosts)
    from twisted.internet import reactor, threads

    svc = services.NetworkServices(topo, hosts, Path(net.lab_root), emit=emit or (lambda s: s),
                                   reactor=reactor, config_dir=config_dir)
    failure: list[str] = []

    def ready(problems):
        if problems:
            failure.extend(problems)
            reactor.stop()
            return
        net.ready, net.seconds, net.ports = True, round(time.monotonic() - started, 3), svc.lab.ports
        state.write(state_dir, net)
        if on_ready is not None:
            on_ready(net)

    def failed(f):
        failure.append(f.getErrorMessage())
        reactor.stop()

    def go():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: reactor.callFromThread(reactor.stop))
        d = svc.start()
        d.addCallback(lambda _: threads.deferToThread(services.check_ready, topo, hosts))
        d.addCallbacks(ready, failed)

    reactor.callWhenRunning(go)
    reactor.addSystemEventTrigger("before", "shutdown", svc.stop)
    reactor.run()
    if failure:
        raise NetworkError("; ".join(failure))
    return 0
