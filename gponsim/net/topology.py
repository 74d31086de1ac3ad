"""The lab's network as data: hosts, segments, addresses, routes and DNS records.

``lab-network.toml`` beside this module is the lab document's network (the
server's netplan file, the DNS, ``mynetworks``); :func:`load` reads it and adds
the student PCs ``pc1 … pcN``. Everything else (building the namespaces, the
DNS zone, /etc/resolv.conf and /etc/hosts of every host) is derived from it.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from importlib import resources


class TopologyError(Exception):
    """The network description is wrong (names the problem)."""


@dataclass(frozen=True)
class Interface:
    name: str              #: inside the host: enp0s3, eth0 ...
    segment: str           #: the switch it plugs into
    addresses: tuple[str, ...]   #: with prefix: 192.168.40.50/24

    @property
    def ipv4(self) -> list[str]:
        return [a.split("/")[0] for a in self.addresses if ":" not in a]

    @property
    def ipv6(self) -> list[str]:
        return [a.split("/")[0] for a in self.addresses if ":" in a]


@dataclass(frozen=True)
class Host:
    name: str
    role: dict
    names: tuple[str, ...]
    interfaces: tuple[Interface, ...]
    gateway4: str | None = None
    gateway6: str | None = None
    forwarding: bool = False

    @property
    def addresses(self) -> list[str]:
        """Its addresses without prefix, IPv4 first."""
        return [a for i in self.interfaces for a in i.ipv4] + \
               [a for i in self.interfaces for a in i.ipv6]

    @property
    def ipv4(self) -> str:
        return next(a for i in self.interfaces for a in i.ipv4)

    @property
    def ipv6(self) -> str | None:
        return next((a for i in self.interfaces for a in i.ipv6), None)

    @property
    def fqdn(self) -> str:
        return self.names[0] if self.names else self.name


@dataclass(frozen=True)
class Segment:
    name: str
    title: dict
    ipv4: str
    ipv6: str | None


@dataclass
class Topology:
    domain: str
    nameservers: list[str]
    search: list[str]
    segments: dict[str, Segment]
    hosts: dict[str, Host]
    ttl: int = 300
    extra_records: list[str] = field(default_factory=list)
    zones: list[str] = field(default_factory=list)

    @property
    def pcs(self) -> list[str]:
        return [name for name in self.hosts if name.startswith("pc") and name[2:].isdigit()]

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise TopologyError(f"no host {name!r} in the lab network (hosts: "
                                f"{', '.join(self.hosts)})") from None

    def members(self, segment: str) -> list[tuple[Host, Interface]]:
        return [(h, i) for h in self.hosts.values() for i in h.interfaces if i.segment == segment]

    # ------------------------------------------------------------ files of a host

    def resolv_conf(self, host: str) -> str:
        """/etc/resolv.conf of a host: what netplan's ``nameservers`` give."""
        lines = [f"# {host}: the lab's DNS (gponsim net; netplan nameservers)"]
        lines += [f"nameserver {ns}" for ns in self.nameservers]
        if self.search:
            lines.append("search " + " ".join(self.search))
        return "\n".join(lines) + "\n"

    def hosts_file(self, host: str) -> str:
        """/etc/hosts of a host, as Debian writes it: localhost and its own names."""
        h = self.host(host)
        out = [f"# {host}: /etc/hosts (gponsim net)", "127.0.0.1\tlocalhost",
               "::1\tlocalhost ip6-localhost ip6-loopback"]
        if h.names:
            out.append(f"{h.ipv4}\t{' '.join(h.names)}")
            if h.ipv6:
                out.append(f"{h.ipv6}\t{' '.join(h.names)}")
        return "\n".join(out) + "\n"

    # ------------------------------------------------------------------- the DNS

    def records(self) -> list[tuple[str, str, str]]:
        """Every record the lab's DNS serves: ``(name, type, data)``, names absolute."""
        out: list[tuple[str, str, str]] = []
        for h in self.hosts.values():
            for name in h.names:
                if "." not in name:
                    continue
                for a in h.addresses:
                    out.append((name + ".", "AAAA" if ":" in a else "A", a))
            if h.names:
                fqdn = next((n for n in h.names if "." in n), None)
                if fqdn:
                    for a in h.addresses:
                        out.append((ipaddress.ip_address(a).reverse_pointer + ".", "PTR", fqdn + "."))
        for line in self.extra_records:
            parts = line.split(None, 2)
            if len(parts) != 3:
                raise TopologyError(f"dns record {line!r}: expected NAME TYPE DATA")
            out.append((parts[0], parts[1].upper(), parts[2]))
        return out


def _interface(raw: dict, where: str) -> Interface:
    try:
        iface = Interface(raw["name"], raw["segment"], tuple(raw["addresses"]))
    except KeyError as exc:
        raise TopologyError(f"{where}: interface without {exc.args[0]}") from None
    for a in iface.addresses:
        try:
            ipaddress.ip_interface(a)
        except ValueError as exc:
            raise TopologyError(f"{where}: {exc}") from None
    return iface


def _add(address: str, n: int) -> str:
    iface = ipaddress.ip_interface(address)
    return f"{iface.ip + n}/{iface.network.prefixlen}"


def parse(data: dict, pcs: int | None = None) -> Topology:
    segments = {name: Segment(name, s.get("title", {}), s["ipv4"], s.get("ipv6"))
                for name, s in data.get("segments", {}).items()}
    hosts: dict[str, Host] = {}
    for name, h in data.get("hosts", {}).items():
        hosts[name] = Host(name=name, role=h.get("role", {}), names=tuple(h.get("names", ())),
                           interfaces=tuple(_interface(i, f"host {name}") for i in h["interfaces"]),
                           gateway4=h.get("gateway4"), gateway6=h.get("gateway6"),
                           forwarding=bool(h.get("forwarding")))
    spec = data.get("pcs", {})
    count = spec.get("count", 0) if pcs is None else pcs
    if count < 0 or count > 99:
        raise TopologyError(f"--pcs {count}: between 0 and 99 student PCs")
    domain = data["domain"]
    for n in range(count):
        name = f"pc{n + 1}"
        addresses = tuple(_add(spec[k], n) for k in ("first4", "first6") if spec.get(k))
        hosts[name] = Host(name=name, role=spec.get("role", {}),
                           names=(f"{name}.{domain}", name),
                           interfaces=(Interface(spec.get("interface", "eth0"), spec["segment"], addresses),),
                           gateway4=spec.get("gateway4"), gateway6=spec.get("gateway6"))
    for h in hosts.values():
        for i in h.interfaces:
            if i.segment not in segments:
                raise TopologyError(f"host {h.name}: interface {i.name} on unknown segment {i.segment!r}")
    dns = data.get("dns", {})
    return Topology(domain=domain, nameservers=list(data.get("nameservers", [])),
                    search=list(data.get("search", [])), segments=segments, hosts=hosts,
                    ttl=int(dns.get("ttl", 300)), extra_records=list(dns.get("records", [])),
                    zones=list(dns.get("zones", [domain])))


def load(pcs: int | None = None) -> Topology:
    """The lab network of the lab document, with ``pcs`` student PCs (default: the file's)."""
    text = resources.files(__package__).joinpath("lab-network.toml").read_text(encoding="utf-8")
    return parse(tomllib.loads(text), pcs)
