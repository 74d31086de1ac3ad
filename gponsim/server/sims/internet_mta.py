"""An internet MTA delivering to the lab the way the internet does: by MX.

For ``user2@gponlab.local`` it asks the DNS (its own resolv.conf: on the lab
network, the lab's DNS) for the MX records of ``gponlab.local``, takes the
lowest preference, asks that host's address, and delivers on port 25
(:func:`gponsim.server.sims.gmail.send_to_lab`). With no MX record the domain's
own address is used, as RFC 5321 §5.1 says (the "implicit MX").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gponsim.net import lookup
from gponsim.server.sims.gmail import send_to_lab
from gponsim.steps import Emit, null_emit


class MxError(Exception):
    """The recipient's domain has no mail server the DNS can tell."""


@dataclass
class Route:
    domain: str
    exchangers: list[tuple[int, str]] = field(default_factory=list)
    host: str = ""
    address: str = ""
    queue_id: str | None = None

    def describe(self) -> str:
        mx = ", ".join(f"{p} {h}" for p, h in self.exchangers) or "none (implicit MX: the domain itself)"
        return f"MX {self.domain}: {mx}; {self.host} is {self.address}; delivered on port 25"


def route(domain: str, servers: list[str]) -> Route:
    found = Route(domain)
    try:
        found.exchangers = lookup.mail_exchangers(domain, servers)
    except lookup.LookupError_ as exc:
        raise MxError(f"no MX for {domain}: {exc}") from exc
    candidates = [host for _, host in found.exchangers] or [domain]
    problems = []
    for host in candidates:
        try:
            found.host, found.address = host, lookup.address_of(host, servers)
            return found
        except lookup.LookupError_ as exc:
            problems.append(str(exc))
    raise MxError(f"no address for the mail servers of {domain}: {'; '.join(problems)}")


def deliver_by_mx(*, sender: str, recipients: list[str], message: bytes,
                  resolv_conf: Path | str = "/etc/resolv.conf", servers: list[str] | None = None,
                  helo: str = "mail-sor-f41.google.com", starttls: bool = True, port: int = 25,
                  emit: Emit = null_emit, timeout: float = 30.0) -> Route:
    """Deliver to the MX of the (first) recipient's domain; returns the route taken."""
    domain = recipients[0].rpartition("@")[2].lower()
    servers = servers if servers is not None else lookup.nameservers(resolv_conf)
    if not servers:
        raise MxError(f"no nameserver in {resolv_conf}")
    found = route(domain, servers)
    found.queue_id = send_to_lab(host=found.address, port=port, sender=sender, recipients=recipients,
                                 message=message, helo=helo, starttls=starttls, emit=emit, timeout=timeout)
    return found
