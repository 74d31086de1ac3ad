"""Which server software a captured connection talks to, from what it says.

``gponsim analyze`` explains the lab's own programs (Postfix for SMTP,
Dovecot for IMAP and POP3) with the lab's configuration; any other server
(Exim, Gmail, Exchange...) is explained by the RFCs instead, naming what it
is. The server is told by its greeting (``220 ... ESMTP Exim 4.69 ...``,
``* OK ... Dovecot ready.``) and, for SMTP, by its EHLO reply when the
greeting says nothing (Gmail's ``at your service``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class ServerSoftware:
    name: str          #: "Postfix", "Exim 4.69", "Gmail", "" (it does not say)
    lab: bool          #: the lab's own software: explained with the lab's configuration


#: (protocol, pattern over the greeting or EHLO reply, name; \1 is the version)
_KNOWN = [
    ("smtp", r"\bESMTP Postfix\b", "Postfix"),
    ("smtp", r"\bExim (\d[\w.]*)", r"Exim \1"),
    ("smtp", r"\bExim\b", "Exim"),
    ("smtp", r"- gsmtp\b|\bat your service\b|\bmx\.google\.com\b", "Gmail"),
    ("smtp", r"Microsoft ESMTP MAIL Service", "Microsoft Exchange"),
    ("smtp", r"\bSendmail (\d[\w./-]*)", r"Sendmail \1"),
    ("smtp", r"\bOpenSMTPD\b", "OpenSMTPD"),
    ("smtp", r"\bHaraka\b", "Haraka"),
    ("smtp", r"\bqmail\b", "qmail"),
    ("smtp", r"\bMDaemon\b", "MDaemon"),
    ("smtp", r"\bCommuniGate Pro (\d[\w.]*)", r"CommuniGate Pro \1"),
    ("smtp", r"Yahoo!? ESMTP|\byahoo\.com\b", "Yahoo"),
    ("imap", r"\bDovecot\b", "Dovecot"),
    ("imap", r"\bCyrus IMAP\b|\bCyrus\b", "Cyrus IMAP"),
    ("imap", r"\bCourier-IMAP\b", "Courier-IMAP"),
    ("imap", r"\bGimap\b", "Gmail"),
    ("imap", r"Microsoft Exchange", "Microsoft Exchange"),
    ("imap", r"\bUW IMAP\b|IMAP4rev1 20\d\d", "UW IMAP"),
    ("pop3", r"\bDovecot\b", "Dovecot"),
    ("pop3", r"\bGpop\b", "Gmail"),
    ("pop3", r"\bCourier-POP3\b|\bCourier\b", "Courier"),
    ("pop3", r"Microsoft Exchange", "Microsoft Exchange"),
    ("pop3", r"\bCyrus\b", "Cyrus"),
]
_LAB = {"smtp": "Postfix", "imap": "Dovecot", "pop3": "Dovecot"}


@lru_cache(maxsize=1024)
def identify(proto: str, text: str) -> ServerSoftware | None:
    """The software a greeting (or an SMTP EHLO reply) names, or None when it
    names none. (Remembered: a capture of a busy server repeats one greeting
    in every connection.)"""
    for p, pattern, name in _KNOWN:
        if p != proto:
            continue
        m = re.search(pattern, text, re.I)
        if m:
            found = m.expand(name) if "\\" in name else name
            return ServerSoftware(found, found == _LAB.get(proto))
    return None


UNKNOWN = ServerSoftware("", False)
