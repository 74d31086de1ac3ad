"""The lab server's name resolution: its own ``etc/hosts``, never DNS.

Postfix's smtpd names every client in its log as ``name[address]``
(``src/smtpd/smtpd_peer.c``): it asks the system resolver for the address's
name (``getnameinfo``), then checks that the name resolves back to the same
address (``getaddrinfo``, same address family). Only a confirmed name is
used; otherwise the client is ``unknown``. The resolver reads ``/etc/hosts``
first (``hosts: files dns`` in nsswitch.conf), so on the real server a
client on 127.0.0.1 is ``localhost[127.0.0.1]``.

gponsim does the same with the lab root's ``etc/hosts`` as glibc's ``files``
backend reads it: the reverse lookup takes the first line whose address
matches and returns its first name (the canonical name); the forward lookup
collects the addresses of every line listing the name (case-insensitive).
It never asks DNS: an address the file does not list is ``unknown``, as on a
server whose DNS has no PTR record for it. (On the lab network, where the
server has the lab's own DNS, ``dns_names.py`` asks it after this file.)
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Callable

from gponsim.server.parsedfile import ParsedFile

_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?$")


def _address(text: str):
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _parse_hosts(text: str) -> list[tuple[object, list[str]]]:
    entries = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and (addr := _address(fields[0])) is not None:
            entries.append((addr, fields[1:]))
    return entries


class HostsFile:
    """``/etc/hosts`` of the lab (re-read when it changes)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = ParsedFile(self.path, _parse_hosts)

    def name_of(self, ip: str) -> str | None:
        """``gethostbyaddr``: the canonical name of the first line listing ``ip``."""
        addr = _address(ip)
        for entry_addr, names in self._file.get():
            if entry_addr == addr:
                return names[0]
        return None

    def addresses_of(self, name: str, version: int | None = None) -> list[str]:
        """``getaddrinfo``: every address listed for ``name`` (of one IP version)."""
        wanted = name.lower()
        return [str(addr) for addr, names in self._file.get()
                if wanted in (n.lower() for n in names)
                and (version is None or addr.version == version)]


def valid_hostname(name: str) -> bool:
    """Postfix's ``valid_hostname``: dot-separated labels of letters, digits,
    '-' and '_', not a numeric address, at most 255 characters."""
    if not name or len(name) > 255 or _address(name) is not None:
        return False
    labels = name.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        return False
    return all(len(label) <= 63 and _LABEL.match(label) for label in labels)


def client_name(hosts: HostsFile, ip: str, warn: Callable[[str], None]) -> str:
    """smtpd's verified client name for ``ip`` ("unknown" when none).

    ``warn(text)`` is called with the warning smtpd logs when the name found
    for the address does not resolve back to it.
    """
    addr = _address(ip)
    if addr is None:
        return "unknown"
    name = hosts.name_of(ip)
    if name is None or not valid_hostname(name):
        return "unknown"
    addresses = hosts.addresses_of(name, addr.version)
    if not addresses:
        warn(f"hostname {name} does not resolve to address {ip}: "
             f"Name or service not known")
        return "unknown"
    if not any(_address(a) == addr for a in addresses):
        warn(f"hostname {name} does not resolve to address {ip}")
        return "unknown"
    return name
