"""The lab network's services, in one process and one Step stream.

Each service's sockets are made inside its host's network namespace (a socket
keeps the namespace it was made in), all served by one Twisted reactor:

- ``mail``: the lab's server (:class:`gponsim.server.lab.Lab`) on the standard
  ports at 192.168.40.50 and 2001:db8:40::50; its relayhost looked up in the lab's
  DNS (``--relay dns``), as Postfix does;
- ``dns``: the lab's DNS (:mod:`gponsim.net.dns`) on port 53, UDP and TCP;
- ``internet``: the Gmail simulator, ``smtp.gmail.com`` on port 587.

The reactor's thread must be in ``mail``'s namespace (its outgoing connections,
the relay and its DNS lookups, leave from there): :func:`enter_mail` puts it there.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer

from gponsim.net import dns as lab_dns
from gponsim.net import kernel, lookup
from gponsim.net.build import HostNs
from gponsim.net.topology import Topology
from gponsim.server.sims.gmail import GmailSimulator
from gponsim.steps import Emit, null_emit


def enter_mail(hosts: dict[str, HostNs]) -> None:
    """Move the calling thread (the reactor's) into the server's namespace for good."""
    kernel.setns(hosts["mail"].netns, kernel.CLONE_NEWNET)


def write_server_files(topology: Topology, lab_root: Path) -> None:
    """The server's /etc/resolv.conf and /etc/hosts inside the lab root (its "/")."""
    etc = Path(lab_root) / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(topology.resolv_conf("mail"))
    (etc / "hosts").write_text(topology.hosts_file("mail"))


@dataclass
class NetworkServices:
    topology: Topology
    hosts: dict[str, HostNs]
    lab_root: Path
    emit: Emit = null_emit
    reactor: object = None
    config_dir: Path | None = None
    keylog: Path | None = None

    def __post_init__(self) -> None:
        if self.reactor is None:
            from twisted.internet import reactor
            self.reactor = reactor
        self.lab_root = Path(self.lab_root).resolve()
        self.lab = None
        self.gmail = None
        self._dns_listeners: list = []

    def _make_lab(self):
        from gponsim.server.lab import Lab, LabOptions

        mail = self.topology.host("mail")
        options = LabOptions(lab_root=self.lab_root, config_dir=self.config_dir, listen="0.0.0.0",
                             listen_also=tuple(a for a in mail.addresses if ":" in a) + ("::1",),
                             interfaces=(*mail.addresses, "127.0.0.1", "::1"),
                             port_offset=0, relay="dns", keylog=self.keylog)
        return Lab(options, emit=self.emit, reactor=self.reactor)

    @defer.inlineCallbacks
    def start(self):
        """DNS, then the internet's Gmail, then the server; fires with the server's ports."""
        write_server_files(self.topology, self.lab_root)
        self.lab = self._make_lab()
        factory = lab_dns.NarratedDNSServerFactory(self.topology, emit=self.emit)
        with kernel.in_netns(self.hosts["dns"].netns):
            self._dns_listeners = lab_dns.listen(self.reactor, factory, self.topology.host("dns").addresses)
        self.gmail = self._make_gmail()
        with kernel.in_netns(self.hosts["internet"].netns):
            self.gmail.start()
        ports = yield self.lab.start()
        return ports

    def _make_gmail(self):
        from gponsim.server.postfix.smtp import settings_from_profile

        settings = settings_from_profile(self.lab.profile, self.lab_root)
        host = self.topology.host("internet")
        creds = self.lab.profile.sasl_credentials(settings.host, settings.nexthop) if settings else None
        netns = self.hosts["internet"].netns

        class InternetGmail(GmailSimulator):
            def _listen(self) -> None:          # also when it listens again after `fault refuse`
                with kernel.in_netns(netns):
                    super()._listen()

        return InternetGmail(self.lab_root, emit=self.emit, reactor=self.reactor, listen=host.ipv4,
                             port=settings.port if settings else 587, wire_steps=False,
                             cafile=settings.cafile if settings else None,
                             account=creds[0] if creds else None)

    @property
    def root(self) -> Path:
        """The lab root (the server's "/"), as :attr:`gponsim.server.lab.Lab.root`."""
        return self.lab_root

    def reload(self):
        return self.lab.reload()

    @defer.inlineCallbacks
    def stop(self):
        for listener in self._dns_listeners:
            yield defer.maybeDeferred(listener.stopListening)
        self._dns_listeners = []
        if self.gmail is not None:
            yield self.gmail.stop()
        if self.lab is not None:
            yield self.lab.stop()


# ------------------------------------------------------------------ readiness

def reachable(hosts: dict[str, HostNs], src: str, address: str, timeout: float = 3.0) -> bool:
    """Can ``src`` reach ``address``? A UDP datagram to the closed port 9 comes back
    as "port unreachable" (ICMP) from the host that has the address: the path works
    (ARP/NDP, routes, the router), and no service of the lab sees anything."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    deadline = time.monotonic() + timeout
    with kernel.in_netns(hosts[src].netns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(0.2)
        try:
            sock.connect((address, 9))
        except OSError:
            return False
        while time.monotonic() < deadline:
            try:
                sock.send(b"gponsim")
                sock.recv(16)
            except ConnectionRefusedError:
                return True
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                    time.sleep(0.1)
                    continue
                return False
    return False


def check_ready(topology: Topology, hosts: dict[str, HostNs], timeout: float = 10.0) -> list[str]:
    """From the hosts' own namespaces: every host reaches the server (IPv4 and IPv6),
    the server reaches the internet, and the lab's DNS answers a PC. Returns what
    failed (empty: ready). Blocking: run it outside the reactor's thread."""
    mail = topology.host("mail")
    problems = []
    for name in topology.hosts:
        if name in ("mail", "router"):
            continue
        for address in (mail.ipv4, mail.ipv6):
            if address and not reachable(hosts, name, address, timeout):
                problems.append(f"{name} cannot reach the server at {address}")
    internet = topology.host("internet")
    if not reachable(hosts, "mail", internet.ipv4, timeout):
        problems.append(f"the server cannot reach the internet at {internet.ipv4}")
    asker = topology.pcs[0] if topology.pcs else "outside"
    try:
        with kernel.in_netns(hosts[asker].netns):
            found = lookup.address_of(mail.fqdn, topology.nameservers[:1])
        if found != mail.ipv4:
            problems.append(f"the lab's DNS says {mail.fqdn} is {found}, not {mail.ipv4}")
    except lookup.LookupError_ as exc:
        problems.append(f"the lab's DNS does not answer {asker}: {exc}")
    return problems
