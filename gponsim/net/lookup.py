"""A small stub resolver for scripted clients: what ``dig`` asks, from plain sockets.

The DNS messages are built and parsed by twisted.names (no reactor needed); the
socket is a plain UDP one, so it lives in whichever host the calling thread is
in (:func:`gponsim.net.kernel.in_netns`). The servers come from a resolv.conf
(the host's own, or the lab root's ``etc/resolv.conf``) — never from the
computer's, so no query leaves the lab's network.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path

from twisted.names import dns


class LookupError_(Exception):
    """No answer: names the query and why (timeout, NXDOMAIN, REFUSED...)."""


@dataclass(frozen=True)
class Answer:
    name: str
    type: str
    data: str        # an address, "10 mail.gponlab.local", a name


def nameservers(resolv_conf: Path | str = "/etc/resolv.conf") -> list[str]:
    servers = []
    try:
        text = Path(resolv_conf).read_text()
    except OSError:
        return servers
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1])
    return servers


def query(name: str, rtype: str, servers: list[str], timeout: float = 2.0, port: int = 53) -> list[Answer]:
    """Ask ``servers`` in turn (UDP ``port``, 53) for ``name``/``rtype``; the answer records."""
    qtype = getattr(dns, rtype.upper())
    problems = []
    for server in servers:
        msg = dns.Message(id=random.randrange(1, 65535), recDes=1)
        msg.queries = [dns.Query(name.rstrip("."), qtype, dns.IN)]
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.sendto(msg.toStr(), (server, port))
                raw, _ = sock.recvfrom(4096)
            except OSError as exc:
                problems.append(f"{server}: {exc.strerror or exc}")
                continue
        reply = dns.Message()
        reply.fromStr(raw)
        if reply.rCode != dns.OK:
            from gponsim.net.dns import RCODES

            raise LookupError_(f"{name} {rtype}: {RCODES.get(reply.rCode, reply.rCode)} from {server}")
        out = []
        for rr in reply.answers:
            kind = dns.QUERY_TYPES.get(rr.type, str(rr.type))
            p = rr.payload
            if rr.type in (dns.A, dns.AAAA):
                data = socket.inet_ntop(socket.AF_INET if rr.type == dns.A else socket.AF_INET6, p.address)
            elif rr.type == dns.MX:
                data = f"{p.preference} {p.name.name.decode()}"
            elif rr.type in (dns.CNAME, dns.PTR, dns.NS):
                data = p.name.name.decode()
            else:
                data = str(p)
            out.append(Answer(rr.name.name.decode(), kind, data))
        return out
    raise LookupError_(f"{name} {rtype}: no answer ({'; '.join(problems) or 'no nameserver'})")


def address_of(name: str, servers: list[str], family: str = "A") -> str:
    """The first address of ``name`` (following a CNAME)."""
    for answer in query(name, family, servers):
        if answer.type == family:
            return answer.data
    raise LookupError_(f"{name} has no {family} record")


def mail_exchangers(domain: str, servers: list[str]) -> list[tuple[int, str]]:
    """The MX hosts of ``domain``, lowest preference first (RFC 5321 §5.1)."""
    found = []
    for answer in query(domain, "MX", servers):
        if answer.type == "MX":
            preference, host = answer.data.split()
            found.append((int(preference), host))
    return sorted(found)
