"""The server's own addresses, as Postfix knows them (``own_inet_addr()``).

Postfix takes a domain ``[a.b.c.d]`` as its own (local delivery, like a
domain of ``mydestination``) when the address is one of ``inet_interfaces``
or ``proxy_interfaces`` (``resolve_local()``), and ``permit_inet_interfaces``
(cleanup's ``local_header_rewrite_clients``) matches the same addresses.
With ``inet_interfaces = all`` (the lab's main.cf) they are every address of
every interface of the machine, loopback included (``getifaddrs()``).

gponsim reads them from the kernel without asking any DNS: the IPv4
addresses are the ``/32 host LOCAL`` entries of ``/proc/net/fib_trie``, the
IPv6 ones the lines of ``/proc/net/if_inet6`` (both cheap files of the
network namespace gponsim runs in). The lab network (``gponsim net``) gives
the mail host's addresses instead (the server lives in a namespace of its
own). Where ``/proc`` cannot be read the addresses gponsim listens on and
the loopback ones are the server's.

``loopback-only`` is 127.0.0.1 and ::1; addresses listed in
``inet_interfaces`` or ``proxy_interfaces`` are taken as they are; host
names there are not looked up (no DNS), except ``localhost``.
``inet_protocols`` (``ipv4``/``ipv6``/``all``) leaves out the other family.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Iterable

LOOPBACK = ("127.0.0.1", "::1")


def machine_addresses(proc: Path = Path("/proc/net")) -> tuple[str, ...]:
    """Every address of this machine's interfaces (an empty tuple when the
    kernel's files cannot be read)."""
    found: list[str] = []
    try:
        lines = (proc / "fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    last = ""
    for line in lines:
        text = line.strip()
        if text.startswith("|--"):
            last = text[3:].strip()
        elif text == "/32 host LOCAL" and last and last not in found:
            found.append(last)
    try:
        inet6 = (proc / "if_inet6").read_text().splitlines()
    except OSError:
        inet6 = []
    for line in inet6:
        hexa = line.split()[0] if line.split() else ""
        if len(hexa) == 32:
            text = str(ipaddress.IPv6Address(bytes.fromhex(hexa)))
            if text not in found:
                found.append(text)
    return tuple(found)


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def own_addresses(inet_interfaces: Iterable[str], proxy_interfaces: Iterable[str],
                  inet_protocols: str, *, machine: Iterable[str],
                  listening: Iterable[str] = ()) -> tuple[str, ...]:
    """The server's own addresses: ``inet_interfaces`` (``all``: the
    ``machine``'s, plus the ones gponsim listens on) and ``proxy_interfaces``,
    of the families of ``inet_protocols``."""
    out: list[str] = []
    for item in inet_interfaces:
        item = item.strip().lower()
        if item == "all":
            out += [*machine, *listening, *LOOPBACK]
        elif item in ("loopback-only", "localhost"):
            out += LOOPBACK
        else:
            out.append(item)
    out += [item.strip() for item in proxy_interfaces]
    protocols = set(inet_protocols.replace(",", " ").lower().split())
    families = {4, 6} if "all" in protocols or not protocols else \
        {v for name, v in (("ipv4", 4), ("ipv6", 6)) if name in protocols}
    kept: list[str] = []
    for item in out:
        ip = _ip(item)
        if ip is None or ipaddress.ip_address(ip).is_unspecified:
            continue              # a host name (not looked up), or 0.0.0.0 / ::
        if ipaddress.ip_address(ip).version in families and ip not in kept:
            kept.append(ip)
    return tuple(kept)
