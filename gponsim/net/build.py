"""Build the lab network: one network namespace per host, switches, veth pairs, addresses.

Every host of the topology, and one more namespace for the switches, is held by a
small process (:func:`gponsim.net.kernel.spawn_holder`) that dies with the
network's own process. Each segment is a Linux bridge inside the switch
namespace; each host interface is one end of a veth pair whose other end is a
port of that bridge. The pair is created from inside the switch namespace
directly into the two namespaces, so nothing ever appears in the computer's own
namespace, and no namespace gets a link to it: the "internet" is just the host
``internet``.

As root the hosts also get the names ``ip netns`` knows (``ip netns attach``)
and ``/etc/netns/<name>/`` (their resolv.conf and hosts), as the lab document's
machines would; :func:`teardown` removes all of it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gponsim.net import kernel
from gponsim.net.topology import Topology

SWITCH = "switch"


class BuildError(Exception):
    """The network could not be built; says which command failed and what it said."""


@dataclass
class HostNs:
    name: str          #: the lab's name: mail, pc1 ...
    pid: int           #: its holder process
    netns: str         #: path of its network namespace
    named: str = ""    #: its ``ip netns`` name (root only)
    etc: str = ""      #: the folder with its resolv.conf and hosts

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def mac_for(address: str) -> str:
    """A stable, locally administered MAC from an IPv4 address: 02:00:c0:a8:28:32."""
    packed = ipaddress.IPv4Address(address.split("/")[0]).packed
    return "02:00:" + ":".join(f"{b:02x}" for b in packed)


def peer_name(host: str, iface: str) -> str:
    """The switch's port for a host interface (at most 15 characters)."""
    return f"{host[:8]}.{iface[:6]}"


def _ip(netns: str, commands: list[str]) -> None:
    """Run ``ip -batch`` inside a namespace (nsenter), failing with what ip said."""
    if not commands:
        return
    result = subprocess.run(["nsenter", f"--net={netns}", "ip", "-batch", "-"],
                            input="\n".join(commands) + "\n", capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"ip failed in {netns}: {result.stderr.strip() or result.stdout.strip()}")


def _sysctl(netns: str, values: dict[str, str]) -> None:
    with kernel.in_netns(netns):
        for name, value in values.items():
            path = "/proc/sys/" + name.replace(".", "/")
            try:
                with open(path, "w") as fh:
                    fh.write(value)
            except OSError as exc:
                raise BuildError(f"sysctl {name}={value}: {exc.strerror or exc}") from exc


#: Every host: no duplicate address detection (addresses usable at once), no router
#: solicitations or autoconfiguration (the addresses are the netplan file's).
HOST_SYSCTLS = {
    "net.ipv6.conf.default.accept_dad": "0", "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_ra": "0", "net.ipv6.conf.all.accept_ra": "0",
    "net.ipv6.conf.default.router_solicitations": "0",
}
ROUTER_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
#: The switch only forwards frames: no addresses of its own, nothing it says itself.
SWITCH_SYSCTLS = {"net.ipv6.conf.default.disable_ipv6": "1", "net.ipv6.conf.all.disable_ipv6": "1"}


def build(topology: Topology, *, named: bool, prefix: str = "", etc_root: Path) -> dict[str, HostNs]:
    """Make the whole network; returns its hosts (``switch`` included).

    Call it from a process without threads (it forks the holders). ``named``: give
    the hosts ``ip netns`` names ``<prefix><host>`` and write ``/etc/netns``-style
    files under ``etc_root/<prefix><host>/``.
    """
    hosts: dict[str, HostNs] = {}
    try:
        for name in [SWITCH, *topology.hosts]:
            pid = kernel.spawn_holder()
            hosts[name] = HostNs(name, pid, f"/proc/{pid}/ns/net")
        if named:
            for name in topology.hosts:
                ns_name = prefix + name
                if os.path.exists(f"/run/netns/{ns_name}"):
                    raise BuildError(f"a network namespace named {ns_name} already exists "
                                     f"(`ip netns list`): another lab network? `gponsim net down` "
                                     f"removes ours; choose another --prefix otherwise")
                result = subprocess.run(["ip", "netns", "attach", ns_name, str(hosts[name].pid)],
                                        capture_output=True, text=True)
                if result.returncode != 0:
                    raise BuildError(f"ip netns attach {ns_name}: {result.stderr.strip()}")
                hosts[name].named = ns_name
        for name, host in hosts.items():
            etc = etc_root / (prefix + name)
            if name != SWITCH:
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "resolv.conf").write_text(topology.resolv_conf(name))
                (etc / "hosts").write_text(topology.hosts_file(name))
                host.etc = str(etc)
        _links(topology, hosts)
    except BaseException:
        teardown(hosts.values())
        raise
    return hosts


def _links(topology: Topology, hosts: dict[str, HostNs]) -> None:
    switch = hosts[SWITCH].netns
    _sysctl(switch, SWITCH_SYSCTLS)
    for name, h in topology.hosts.items():
        _sysctl(hosts[name].netns, {**HOST_SYSCTLS, **(ROUTER_SYSCTLS if h.forwarding else {})})
    commands = []
    for segment in topology.segments:
        commands += [f"link add br-{segment} type bridge", f"link set br-{segment} up"]
    for name, h in topology.hosts.items():
        for iface in h.interfaces:
            port = peer_name(name, iface.name)
            mac = mac_for(iface.ipv4[0]) if iface.ipv4 else ""
            commands += [f"link add {port} type veth peer name {iface.name}"
                         + (f" address {mac}" if mac else "") + f" netns {hosts[name].netns}",
                         f"link set {port} master br-{iface.segment}", f"link set {port} up"]
    _ip(switch, commands)
    for name, h in topology.hosts.items():
        commands = ["link set lo up"]
        for iface in h.interfaces:
            for address in iface.addresses:
                commands.append(f"addr add {address} dev {iface.name}" + (" nodad" if ":" in address else ""))
            commands.append(f"link set {iface.name} up")
        if h.gateway4:
            commands.append(f"route add default via {h.gateway4}")
        if h.gateway6:
            commands.append(f"route add ::/0 via {h.gateway6}")
        _ip(hosts[name].netns, commands)


RUN_NETNS = Path("/run/netns")


def is_mount(path: Path) -> bool:
    """A mount point (a bind mount of the same file system too, unlike os.path.ismount)."""
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == str(path) for line in fh)


def remember_run_netns() -> bool:
    """Before the first ``ip netns attach``: True when /run/netns is not there yet (ip
    will make it, a folder bind-mounted on itself), so that the network's end undoes it."""
    return not RUN_NETNS.exists()


def forget_run_netns() -> None:
    """/run/netns back to not being there, once no namespace name is left in it."""
    try:
        if RUN_NETNS.is_dir() and not any(RUN_NETNS.iterdir()):
            for _ in range(4):        # ip's bind mount (and one more, if two raced)
                if not is_mount(RUN_NETNS):
                    break
                subprocess.run(["umount", str(RUN_NETNS)], check=False)
            RUN_NETNS.rmdir()
    except OSError:
        pass


def teardown(hosts) -> list[str]:
    """Remove what :func:`build` made: names, /etc/netns files, holders. Returns problems."""
    hosts = list(hosts)
    problems = []
    for host in hosts:
        if host.named and os.path.exists(f"/run/netns/{host.named}"):
            result = subprocess.run(["ip", "netns", "delete", host.named], capture_output=True, text=True)
            if result.returncode != 0:
                problems.append(f"ip netns delete {host.named}: {result.stderr.strip()}")
        if host.etc:
            shutil.rmtree(host.etc, ignore_errors=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if _is_holder(host.pid):
                os.kill(host.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(host.pid, os.WNOHANG)
    return problems


def _is_holder(pid: int) -> bool:
    """The process is still one of our holders (``sleep infinity``), not a reused pid."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\0infinity\0"
    except OSError:
        return False
