"""The lab's DNS server (host ``dns``, 192.168.20.20), built on twisted.names.

Authoritative for ``gponlab.local`` (every host's A and AAAA, ``MX 10
mail.gponlab.local.``, ``autoconfig`` for Thunderbird), for the reverse zones
of the lab's addresses (PTR) and, standing in for the internet the lab does not
have, for the few outside names the lab needs (``smtp.gmail.com``, the relay).
It never asks another server: a name outside its zones gets ``REFUSED``, as an
authoritative-only server answers, so no query ever leaves the lab.

Every query and every answer is a Step (``proto dns``): ``resolver`` → ``dns``
with the question, ``dns`` → ``resolver`` with the answer as ``dig`` prints it;
``meta`` says which host asked (``pc1``, ``mail``, ...), over UDP or TCP.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from twisted.names import authority, dns, error, server

from gponsim.commentary import annotate
from gponsim.net.topology import Topology
from gponsim.steps import Emit, Step, new_session, null_emit

RCODES = {dns.OK: "NOERROR", dns.EFORMAT: "FORMERR", dns.ESERVER: "SERVFAIL",
          dns.ENAME: "NXDOMAIN", dns.ENOTIMP: "NOTIMP", dns.EREFUSED: "REFUSED"}


def type_name(qtype: int) -> str:
    return dns.QUERY_TYPES.get(qtype) or dns.EXT_QUERIES.get(qtype) or f"TYPE{qtype}"


def _payload(rtype: str, data: str, ttl: int):
    if rtype == "A":
        return dns.Record_A(data, ttl)
    if rtype == "AAAA":
        return dns.Record_AAAA(data, ttl)
    if rtype == "MX":
        preference, name = data.split()
        return dns.Record_MX(int(preference), name.rstrip("."), ttl)
    if rtype == "CNAME":
        return dns.Record_CNAME(data.rstrip("."), ttl)
    if rtype == "PTR":
        return dns.Record_PTR(data.rstrip("."), ttl)
    if rtype == "NS":
        return dns.Record_NS(data.rstrip("."), ttl)
    if rtype == "TXT":
        return dns.Record_TXT(data.strip('"'), ttl=ttl)
    raise ValueError(f"record type {rtype} is not supported by the lab's DNS")


class ZoneAuthority(authority.FileAuthority):
    """One zone, from ``(name, type, data)`` records (instead of a zone file)."""

    def __init__(self, zone: str, records: list[tuple[str, str, str]], ttl: int, ns: str) -> None:
        self._zone, self._records, self._ttl, self._ns = zone, records, ttl, ns
        super().__init__(zone)

    def loadFile(self, filename) -> None:   # noqa: N802 - twisted's name
        zone, ttl = self._zone, self._ttl
        self.soa = (zone.encode(), dns.Record_SOA(mname=self._ns, rname=f"hostmaster.{zone}",
                                                  serial=int(time.strftime("%Y%m%d01")),
                                                  refresh=3600, retry=600, expire=86400,
                                                  minimum=ttl, ttl=ttl))
        self.records = {zone.encode(): [self.soa[1], dns.Record_NS(self._ns, ttl)]}
        for name, rtype, data in self._records:
            key = name.rstrip(".").lower().encode()
            self.records.setdefault(key, []).append(_payload(rtype, data, ttl))


def _zone_of(name: str, zones: list[str]) -> str | None:
    name = name.rstrip(".").lower()
    best = None
    for zone in zones:
        if (name == zone or name.endswith("." + zone)) and (best is None or len(zone) > len(best)):
            best = zone
    return best


def authorities(topology: Topology) -> list[ZoneAuthority]:
    """One authority per zone of the topology, each with its records."""
    by_zone: dict[str, list] = {zone: [] for zone in topology.zones}
    for record in topology.records():
        zone = _zone_of(record[0], topology.zones)
        if zone is None:
            raise ValueError(f"the lab's DNS has no zone for {record[0]} (dns.zones in lab-network.toml)")
        by_zone[zone].append(record)
    ns = topology.hosts["dns"].fqdn if "dns" in topology.hosts else f"dns.{topology.domain}"
    return [ZoneAuthority(zone, records, topology.ttl, ns) for zone, records in by_zone.items()]


def record_text(rr: dns.RRHeader) -> str:
    """A resource record as ``dig`` prints it: ``name. ttl IN TYPE data``."""
    payload = rr.payload
    kind = type_name(rr.type)
    if rr.type in (dns.A, dns.AAAA):
        data = socket.inet_ntop(socket.AF_INET if rr.type == dns.A else socket.AF_INET6, payload.address)
    elif rr.type == dns.MX:
        data = f"{payload.preference} {payload.name.name.decode()}."
    elif rr.type in (dns.CNAME, dns.PTR, dns.NS):
        data = f"{payload.name.name.decode()}."
    elif rr.type == dns.SOA:
        data = (f"{payload.mname.name.decode()}. {payload.rname.name.decode()}. {payload.serial} "
                f"{payload.refresh} {payload.retry} {payload.expire} {payload.minimum}")
    else:
        data = str(payload)
    return f"{rr.name.name.decode()}. {rr.ttl} IN {kind} {data}"


class NarratedDNSServerFactory(server.DNSServerFactory):
    """twisted.names' server, every query and answer a Step; out-of-zone → REFUSED."""

    def __init__(self, topology: Topology, emit: Emit = null_emit) -> None:
        super().__init__(authorities=authorities(topology))
        self.emit = emit
        self.topology = topology
        self._names = {a: h.name for h in topology.hosts.values() for a in h.addresses}
        self._sessions: dict[tuple, str] = {}

    # -------------------------------------------------------------- narration

    def _who(self, protocol, address) -> tuple[str, str]:
        if address is None:                       # TCP: the peer of the connection
            peer = protocol.transport.getPeer()
            ip, transport = peer.host, "tcp"
        else:
            ip, transport = address[0], "udp"
        try:
            ip = str(ipaddress.ip_address(ip.split("%")[0]))
        except ValueError:
            pass
        return ip, transport

    def _step(self, session: str, **kw) -> None:
        self.emit(annotate(Step(t=time.time(), session=session, proto="dns", **kw)))

    def handleQuery(self, message, protocol, address):   # noqa: N802 - twisted's name
        ip, transport = self._who(protocol, address)
        if not message.queries:
            return super().handleQuery(message, protocol, address)
        query = message.queries[0]
        session = new_session("dns")
        self._sessions[(message.id, ip)] = session
        qname = query.name.name.decode(errors="replace") + "."
        kind = type_name(query.type)
        host = self._names.get(ip, "")
        self._step(session, src="resolver", dst="dns", dir="c2s", kind="command", verb=kind,
                   args=qname, line=f"{qname} IN {kind}",
                   meta={"id": message.id, "client": ip, "host": host, "transport": transport,
                         "qname": qname, "qtype": kind, "recursion_desired": bool(message.recDes)})
        return super().handleQuery(message, protocol, address)

    def gotResolverError(self, failure_, protocol, message, address):   # noqa: N802
        if failure_.check(error.DomainError) and not failure_.check(dns.AuthoritativeDomainError):
            # Not one of our zones: an authoritative-only server refuses (and asks nobody).
            response = self._responseFromMessage(message=message, rCode=dns.EREFUSED)
            self.sendReply(protocol, response, address)
            return None
        return super().gotResolverError(failure_, protocol, message, address)

    def sendReply(self, protocol, message, address):   # noqa: N802 - twisted's name
        ip, transport = self._who(protocol, address)
        session = self._sessions.pop((message.id, ip), None) or new_session("dns")
        status = RCODES.get(message.rCode, str(message.rCode))
        query = message.queries[0] if message.queries else None
        kind = type_name(query.type) if query is not None else ""
        qname = (query.name.name.decode(errors="replace") + ".") if query is not None else ""
        answers = [record_text(rr) for rr in message.answers]
        authority_ = [record_text(rr) for rr in message.authority]
        additional = [record_text(rr) for rr in message.additional if rr.type != dns.OPT]
        lines = [f"{status} {qname} IN {kind}"
                 + ("" if answers else " (no answer)")] + answers
        if additional:
            lines += [f"additional: {a}" for a in additional]
        self._step(session, src="dns", dst="resolver", dir="s2c", kind="reply", verb=kind,
                   status=status, line="\n".join(lines),
                   meta={"id": message.id, "client": ip, "host": self._names.get(ip, ""),
                         "transport": transport, "qname": qname, "qtype": kind,
                         "answers": answers, "authority": authority_, "additional": additional,
                         "aa": bool(message.auth)})
        return super().sendReply(protocol, message, address)


def listen(reactor, factory: NarratedDNSServerFactory, addresses: list[str], port: int = 53) -> list:
    """UDP and TCP port 53 on each address (as ``named`` does); returns the listeners."""
    listeners = []
    for address in addresses:
        listeners.append(reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=address))
        listeners.append(reactor.listenTCP(port, factory, interface=address))
    return listeners

