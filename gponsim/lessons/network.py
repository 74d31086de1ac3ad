"""A lesson on the lab network (``gponsim lesson ID --network``, or ``[lab] network = true``).

Before its lab starts (while the process has no threads), the lesson builds a
lab network of its own (:mod:`gponsim.net.build`): as root, unnamed namespaces
that vanish with the lesson; otherwise inside a user namespace of its own. The
lab's services then run in their hosts (:mod:`gponsim.net.services`), and each
client action runs from a host: ``pc1`` by default, the internet's MTA from
``internet`` (finding the lab by its MX), or the one named by the action's
``host`` option (``outside``, ``pc2``, ...). A client first asks the lab's DNS
for ``mail.gponlab.local``, as a real one does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gponsim.net import build, kernel, lookup, topology
from gponsim.net.build import HostNs
from gponsim.net.topology import Topology

NOTES = {
    "root": {"es": "La red del laboratorio (espacios de nombres de red de Linux) está creada: servidor mail "
                   "(enp0s3, 192.168.40.50), router, dns (192.168.20.20), pc1 (192.168.40.101), internet "
                   "(203.0.113.10) y outside (198.51.100.20). Los clientes de la lección corren en pc1.",
             "en": "The lab network (Linux network namespaces) is built: server mail (enp0s3, "
                   "192.168.40.50), router, dns (192.168.20.20), pc1 (192.168.40.101), internet "
                   "(203.0.113.10) and outside (198.51.100.20). The lesson's clients run on pc1."},
    "rootless": {"es": "La red del laboratorio está creada sin ser root, dentro de un espacio de nombres de "
                       "usuario propio: mail (192.168.40.50), router, dns (192.168.20.20), pc1 "
                       "(192.168.40.101), internet y outside. Los clientes de la lección corren en pc1.",
                 "en": "The lab network is built without root, inside a user namespace of its own: mail "
                       "(192.168.40.50), router, dns (192.168.20.20), pc1 (192.168.40.101), internet and "
                       "outside. The lesson's clients run on pc1."},
}

#: Actions that are clients of the server (they run from a host of the network).
CLIENT_ACTIONS = ("send", "read_imap", "read_pop3", "autoconfig", "certificate", "dns")


class NetworkUnavailable(Exception):
    """The lesson cannot build its network here (says why)."""


def wanted(lesson, asked: bool) -> bool:
    return asked or bool(lesson.lab.get("network"))


@dataclass
class LessonNetwork:
    topology: Topology
    hosts: dict[str, HostNs]
    mode: str

    # ----------------------------------------------------------------- build

    @classmethod
    def build(cls, out: Path) -> "LessonNetwork":
        """Build it (root: unnamed namespaces; else rootless). Before any thread."""
        from gponsim.net.control import ControlError, choose_mode
        from gponsim.net.daemon import become_userns_root

        try:    # GPONSIM_NET_MODE=rootless: the rootless network even as root (tests, teachers)
            mode, _why = choose_mode(os.environ.get("GPONSIM_NET_MODE", "auto"))
        except ControlError as exc:
            raise NetworkUnavailable(str(exc)) from exc
        if mode == "rootless":
            become_userns_root()
        topo = topology.load(pcs=1)
        hosts = build.build(topo, named=False, etc_root=out / "net" / "etc")
        return cls(topo, hosts, mode)

    def note(self, lang: str) -> str:
        return NOTES[self.mode][lang]

    def close(self) -> None:
        build.teardown(self.hosts.values())

    @property
    def server(self) -> str:
        return self.topology.host("mail").ipv4

    # --------------------------------------------------------------- clients

    def host_for(self, do: str, options: dict) -> str:
        if options.get("host"):
            return str(options["host"])
        if do == "send" and options.get("port") == "smtp" and \
                not str(options.get("from", "")).endswith("@" + self.topology.domain):
            recipients = [str(r) for r in options.get("to", [f"user2@{self.topology.domain}"])]
            if all(r.endswith("@" + self.topology.domain) for r in recipients):
                return "internet"              # mail for the lab from the internet: by MX
            return "outside"                   # a stranger trying to relay through the lab
        return self.topology.pcs[0]

    @contextlib.contextmanager
    def acting(self, ctx, do: str, options: dict):
        """Run a client action from its host, with ``ctx.host`` the server's address as
        that host finds it: the MX of the recipient's domain (the internet's MTA), else
        ``mail.gponlab.local`` asked to the lab's DNS."""
        if do not in CLIENT_ACTIONS:
            yield
            return
        name = self.host_for(do, options)
        if name not in self.hosts or name == build.SWITCH:
            raise RuntimeError(f"no host {name!r} on the lab network")
        servers = self.topology.nameservers[:1]
        previous = ctx.host
        if do == "dns":                        # it asks from its own host (do_dns)
            yield
            return
        with kernel.in_netns(self.hosts[name].netns):
            target = self.topology.host("mail").fqdn
            if name == "internet" and do == "send":
                recipient = (options.get("to") or ["user2@gponlab.local"])[0]
                target = lookup.mail_exchangers(recipient.rpartition("@")[2], servers)[0][1]
            ctx.host = lookup.address_of(target, servers, "AAAA" if options.get("family") == 6 else "A")
            try:
                yield
            finally:
                ctx.host = previous

    server_iface = "enp0s3"

    def in_server(self):
        """The calling thread in the server's namespace (a capture socket made there)."""
        return kernel.in_netns(self.hosts["mail"].netns)

    def lookup(self, host: str, name: str, rtype: str) -> list[lookup.Answer]:
        with kernel.in_netns(self.hosts[host].netns):
            return lookup.query(name, rtype, self.topology.nameservers[:1])

    def ip(self, host: str, *args: str) -> str:
        """What ``ip ARGS`` prints inside a host (read-only: neigh, addr, route)."""
        result = subprocess.run(["nsenter", f"--net={self.hosts[host].netns}", "ip", *args],
                                capture_output=True, text=True)
        return (result.stdout + result.stderr).strip()


def netplan_yaml(topo: Topology) -> str:
    """The server's /etc/netplan/netconf.yaml, from the topology (the lab document's file)."""
    mail = topo.host("mail")
    (iface,) = mail.interfaces
    lines = ["network:", "  version: 2", "  renderer: networkd", "  ethernets:", f"    {iface.name}:",
             "      addresses:"]
    lines += [f"        - {a}" for a in iface.addresses]
    lines += ["      routes:"]
    for gw in (mail.gateway4, mail.gateway6):
        if gw:
            lines += ["        - to: default", f"          via: {gw}"]
    lines += ["      nameservers:", f"        addresses: [{', '.join(topo.nameservers)}]",
              f"        search: [{', '.join(topo.search)}]"]
    return "\n".join(lines) + "\n"


def write_server_view(topo: Topology, lab_root: Path) -> None:
    """The server's netplan file inside the lab root (its "/"), for ``show``."""
    path = Path(lab_root) / "etc" / "netplan" / "netconf.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# /etc/netplan/netconf.yaml\n" + netplan_yaml(topo))
