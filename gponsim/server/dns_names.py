"""Client names on the lab network: ``/etc/hosts``, then the lab's own DNS.

On the lab network (``gponsim net``, relay mode ``dns``) the server has an
``/etc/resolv.conf`` naming the lab's DNS, and Debian's ``hosts: files dns``
makes glibc ask it whenever ``/etc/hosts`` has no answer. Postfix's smtpd
(``src/smtpd/smtpd_peer.c``) then names a client as on any server: the
address's name (``getnameinfo``: a PTR record), confirmed by looking that name
up again (``getaddrinfo``: A or AAAA records of the same family). pc1 is
``pc1.gponlab.local[192.168.40.101]``; a host the lab's DNS does not know
(it answers REFUSED outside its zones) is ``unknown``.

Only the lab's own DNS server is asked (the one in the lab root's
``etc/resolv.conf``), never the computer's.
"""

from __future__ import annotations

import ipaddress
from typing import Callable

from twisted.internet import defer
from twisted.names import dns

from gponsim.server.resolver import HostsFile, valid_hostname


class LabDnsNames:
    """smtpd's verified client name, from ``etc/hosts`` then the lab's DNS."""

    def __init__(self, hosts: HostsFile, resolver) -> None:
        self.hosts = hosts
        #: a twisted.names resolver (client.Resolver of the lab's resolv.conf)
        self.resolver = resolver

    async def _name_of(self, ip: str) -> str | None:
        name = self.hosts.name_of(ip)
        if name is not None:
            return name
        pointer = ipaddress.ip_address(ip).reverse_pointer
        try:
            answers, _authority, _additional = await self.resolver.lookupPointer(pointer)
        except Exception:  # noqa: BLE001 - NXDOMAIN, REFUSED, timeout: no name
            return None
        for rr in answers:
            if rr.type == dns.PTR:
                return str(rr.payload.name).rstrip(".")
        return None

    async def _addresses_of(self, name: str, version: int) -> list[str] | None:
        """The addresses of ``name`` (None: the lookup failed, as getaddrinfo's error)."""
        listed = self.hosts.addresses_of(name, version)
        if listed:
            return listed
        lookup = self.resolver.lookupIPV6Address if version == 6 else self.resolver.lookupAddress
        try:
            answers, _authority, _additional = await lookup(name)
        except Exception:  # noqa: BLE001
            return None
        wanted = dns.AAAA if version == 6 else dns.A
        found = [rr.payload for rr in answers if rr.type == wanted]
        if version == 6:
            return [str(ipaddress.ip_address(p.address)) for p in found] or None
        return [p.dottedQuad() for p in found] or None

    async def _client_name(self, ip: str, warn: Callable[[str], None]) -> str:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return "unknown"
        name = await self._name_of(ip)
        if name is None or not valid_hostname(name):
            return "unknown"
        addresses = await self._addresses_of(name, addr.version)
        if addresses is None:
            warn(f"hostname {name} does not resolve to address {ip}: "
                 f"Name or service not known")
            return "unknown"
        if not any(ipaddress.ip_address(a) == addr for a in addresses):
            warn(f"hostname {name} does not resolve to address {ip}")
            return "unknown"
        return name

    def client_name(self, ip: str, warn: Callable[[str], None]) -> defer.Deferred:
        """Fires with the name smtpd logs for ``ip`` ("unknown" when none)."""
        return defer.ensureDeferred(self._client_name(ip, warn))
