"""Who took part in the conversations of a capture, as the capture shows them.

Steps from the lab are between the lab's programs, and the diagrams name them
so. Steps from a capture (``gponsim analyze --steps``) are between a client and
a server seen on the wire. When that server is the lab's software (Postfix,
Dovecot) the diagrams keep the lab's roles. When it is not (the analyzer marks
its Steps ``meta["foreign"]`` and names it in ``meta["software"]``), they do not
cast it as the lab's Postfix or Dovecot at 192.168.40.50: both sides are named
by what the capture shows,

- the client by its software (the User-Agent or X-Mailer of a message it sent
  that no server handled before, i.e. without Received: headers; the name it
  gave in IMAP ID) and its EHLO name, with its address;
- the server by the software its greeting names (when it names none: "SMTP
  server" and the host name its greeting starts with), with its address and port.

Whether an SMTP client is a mail client or another mail server does not depend
on the server: a capture's client on port 25 is a mail client when it
authenticates (AUTH) or a message it wrote names a mail user agent; otherwise it
is another mail server ("server to server", e.g. a relay passing on a message
Thunderbird wrote). Ports 587 and 465 are clients'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from gponsim.diagrams.labels import caption
from gponsim.steps import Step

CLIENT_PORTS = (587, 465)
_AUTH = {"AUTH", "AUTHENTICATE", "LOGIN", "USER", "APOP"}
_SENT = {"DATA", "BDAT", "APPEND"}           # messages the client sent (not ones it read)


@dataclass
class Party:
    """The two sides of one captured connection."""

    session: str
    proto: str
    client_address: str
    server_address: str
    port: int | None
    client_name: str = ""          # EHLO / HELO
    software: str = ""             # the client's
    server_software: str = ""      # "" when its greeting names none
    server_name: str = ""          # the host name an SMTP greeting starts with
    foreign: bool = False          # the server is not the lab's software
    auth: bool = False

    @property
    def mail_client(self) -> bool:
        """A mail client (a user agent), not another mail server relaying."""
        return self.proto != "smtp" or self.auth or bool(self.software) or self.port in CLIENT_PORTS

    def client_label(self, lang: str) -> str:
        name = self.client_name if not self.client_name.startswith("[") else ""   # not an address again
        who = " · ".join(x for x in (self.software, name) if x) \
            or caption("mail_client" if self.mail_client else "mail_server", lang)
        return f"{who}\n{self.client_address}" if self.client_address else who

    def server_label(self, lang: str) -> str:
        what = self.server_software or " · ".join(
            x for x in (caption("server_of", lang, proto=self.proto.upper()), self.server_name) if x)
        return f"{what}\n{self.server_address}" if self.server_address else what


def _short(mailer: str) -> str:
    """A browser-style User-Agent by its last product: ``Mozilla/5.0 (Windows NT 10.0;
    ...) Gecko/20100101 Thunderbird/38.5.0`` is Thunderbird/38.5.0."""
    return mailer.split()[-1] if mailer.startswith("Mozilla/") else mailer


def _address(endpoint) -> tuple[str, int | None]:
    host, port = (list(endpoint) + [None, None])[:2]
    host = str(host or "")
    return (f"[{host}]" if ":" in host else host), port


def parties(steps: Iterable[Step]) -> dict[str, Party]:
    """The captured connections among ``steps`` (their CONNECT names both ends), by session."""
    found: dict[str, Party] = {}
    for s in steps:
        if s.kind == "event" and s.verb == "CONNECT" and "server" in s.meta and "client" in s.meta \
                and "service" not in s.meta:
            client, _ = _address(s.meta["client"])
            server, port = _address(s.meta["server"])
            found[s.session] = Party(s.session, s.proto, client, f"{server}:{port}" if port else server, port)
            continue
        party = found.get(s.session)
        if party is None:
            continue
        if s.meta.get("foreign"):
            party.foreign = True
            party.server_software = s.meta.get("software") or party.server_software
        if s.src != "client":
            if s.proto == "smtp" and s.kind == "reply" and s.verb == "CONNECT" and s.code == 220:
                party.server_name = party.server_name or (s.line[4:].split() or [""])[0]
            continue
        verb = (s.verb or "").upper()
        if s.kind == "command" and verb in ("EHLO", "HELO") and s.args:
            party.client_name = s.args.split()[0]
        elif s.kind == "command" and verb in _AUTH:
            party.auth = True
        elif s.kind == "command" and verb == "ID" and s.args:
            fields = re.findall(r'"([^"]*)"', s.args)
            named = dict(zip(fields[::2], fields[1::2]))
            party.software = party.software or " ".join(
                x for x in (named.get("name"), named.get("version")) if x)
        if verb in _SENT and s.meta.get("mailer") and not s.meta.get("received") and not party.software:
            party.software = _short(s.meta["mailer"])   # written by it: no server handled it before
    return found
