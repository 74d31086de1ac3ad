"""Import Twisted's mail modules without a DNS lookup.

``twisted.mail.smtp`` computes ``DNSNAME = socket.getfqdn()`` when it is
imported, which may ask the resolver about this machine's name. The lab is
offline and never asks DNS anything (its names come from main.cf), so the
import runs with ``getfqdn`` answering from the local host name alone.
"""

from __future__ import annotations

import socket
import sys


def _import_quietly(module: str):
    if module in sys.modules:
        return sys.modules[module]
    real = socket.getfqdn
    socket.getfqdn = lambda name="": name or socket.gethostname()
    try:
        __import__(module)
    finally:
        socket.getfqdn = real
    return sys.modules[module]


smtp = _import_quietly("twisted.mail.smtp")
