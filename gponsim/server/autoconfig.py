"""Thunderbird's automatic account setup for the lab (lab-facts §5.1).

"Thunderbird buscará automáticamente la configuración del servidor": a small
web service answers ``/mail/config-v1.1.xml`` (what Thunderbird asks
``autoconfig.<domain>`` for) and ``/.well-known/autoconfig/mail/config-v1.1.xml``
(what it asks ``<domain>`` for) with the lab's servers, ports and security, in
Mozilla's ``clientConfig`` format. The answer is built from the ports the lab
really listens on, so it stays right with ``--port-offset``.

Thunderbird's requests have no body; one that comes with a body larger than
:data:`MAX_BODY` is answered ``413`` and closed as it arrives, and a body is
never spooled to a temporary file (stock twisted.web writes bodies over
100 KB to /tmp): a stranger on the network cannot fill the teacher's disk.
"""

from __future__ import annotations

import io
from typing import Callable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from twisted.web import resource, server

PATHS = (b"/mail/config-v1.1.xml", b"/.well-known/autoconfig/mail/config-v1.1.xml")
#: The largest request body read (Thunderbird sends none).
MAX_BODY = 64 * 1024

#: (service, Thunderbird type, socketType), in Thunderbird's order of preference.
INCOMING = (("imaps", "imap", "SSL"), ("imap", "imap", "STARTTLS"),
            ("pop3s", "pop3", "SSL"), ("pop3", "pop3", "STARTTLS"))
OUTGOING = (("submission", "smtp", "STARTTLS"),)


def client_config(domain: str, hostname: str, ports: dict[str, int],
                  display: str = "Laboratorio GPON") -> str:
    """The ``config-v1.1.xml`` document for the lab's listening services."""

    def server(tag: str, kind: str, port: int, socket_type: str) -> str:
        return (f'    <{tag} type="{kind}">\n'
                f"      <hostname>{escape(hostname)}</hostname>\n"
                f"      <port>{port}</port>\n"
                f"      <socketType>{socket_type}</socketType>\n"
                f"      <authentication>password-cleartext</authentication>\n"
                f"      <username>%EMAILLOCALPART%</username>\n"
                f"    </{tag}>\n")
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n', '<clientConfig version="1.1">\n',
             f'  <emailProvider id="{escape(domain)}">\n', f"    <domain>{escape(domain)}</domain>\n",
             f"    <displayName>{escape(display)}</displayName>\n",
             "    <displayShortName>GPON</displayShortName>\n"]
    for service, kind, socket_type in INCOMING:
        if service in ports:
            parts.append(server("incomingServer", kind, ports[service], socket_type))
    for service, kind, socket_type in OUTGOING:
        if service in ports:
            parts.append(server("outgoingServer", kind, ports[service], socket_type))
    parts += ["  </emailProvider>\n", "</clientConfig>\n"]
    return "".join(parts)


def request_path(target: bytes) -> bytes:
    """The path of a request target, also in absolute form (RFC 9112 §3.2.2).

    A client told to use the lab as its HTTP proxy asks for
    ``http://autoconfig.gponlab.local/mail/config-v1.1.xml``: the lab
    answers it like the plain path, so Thunderbird's real lookup of the
    lab's names reaches it with no DNS.
    """
    if target[:7].lower() == b"http://":
        return urlsplit(target).path or b"/"
    return target


class AutoconfigResource(resource.Resource):
    isLeaf = True

    def __init__(self, document: Callable[[], str], log: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self._document = document
        self._log = log

    def render_GET(self, request) -> bytes:
        path = request_path(request.path)
        if path not in PATHS:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: this server only answers Thunderbird's autoconfig\n"
        if self._log:
            address = request.args.get(b"emailaddress", [b""])[0].decode("utf-8", "replace")
            self._log(f"autoconfig: {path.decode()} for {address or 'no address'} "
                      f"from {request.getClientAddress().host}")
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return self._document().encode("utf-8")


class _Request(server.Request):
    """A request whose body is kept in memory, up to MAX_BODY."""

    _refused = False

    def gotLength(self, length) -> None:
        self.content = io.BytesIO()
        if length is not None and length > MAX_BODY:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            self._refuse()
            return
        self.content.write(data)

    def _refuse(self) -> None:
        self._refused = True
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n"
                        b"Content-Length: 0\r\n\r\n")
        transport.loseConnection()


def site(document: Callable[[], str], log: Callable[[str], None] | None = None) -> server.Site:
    factory = server.Site(AutoconfigResource(document, log), requestFactory=_Request)
    factory.noisy = False
    factory.log = lambda request: None      # no access log on the terminal
    return factory
