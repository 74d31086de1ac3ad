"""A scripted, narrated SMTP client: the client's side of the same Steps.

``gponsim send`` and the lessons use it to act like Thunderbird does
(lab-facts §5.3): ``EHLO [ip]`` → ``STARTTLS`` → ``EHLO [ip]`` →
``AUTH PLAIN <b64>`` → ``MAIL FROM:<a> BODY=8BITMIME SIZE=n`` → ``RCPT TO:<b>``
→ ``DATA`` → ``QUIT``. It is plain blocking sockets, so it runs the same from
the command line or from a thread beside the lab's reactor.
"""

from __future__ import annotations

import base64
import email.utils
import socket
import errno
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage

from gponsim.steps import Emit, new_session, null_emit
from gponsim.wire import smtp as wire


#: What the client tells the user, in both languages.
MESSAGES = {
    "connect": {
        "en": "cannot connect to {host} port {port}: {why}. Is `gponsim serve` running, "
              "and with the same --port-offset?",
        "es": "no se puede conectar a {host}, puerto {port}: {why}. ¿Está en marcha "
              "`gponsim serve`, y con el mismo --port-offset?"},
    "closed": {"en": "the server closed the connection (after {after})",
               "es": "el servidor cerró la conexión (después de {after})"},
    "answered": {"en": "the server answered: {answer}", "es": "el servidor respondió: {answer}"},
    "no_starttls": {"en": "the server does not offer STARTTLS",
                    "es": "el servidor no ofrece STARTTLS"},
    "queued": {"en": "gponsim: accepted by the server, queue id {qid}",
               "es": "gponsim: el servidor lo aceptó, identificador de cola {qid}"},
    "lab_queued": {"en": "gponsim: the lab accepted the mail, queue id {qid}",
                   "es": "gponsim: el laboratorio aceptó el correo, identificador de cola {qid}"},
}
#: The system's words for the usual connection failures, in Spanish.
_ERRNO_ES = {errno.ECONNREFUSED: "conexión rechazada", errno.ETIMEDOUT: "tiempo agotado",
             errno.EHOSTUNREACH: "no hay ruta hasta el equipo",
             errno.ENETUNREACH: "la red no es accesible"}


def say(key: str, lang: str, **values) -> str:
    return MESSAGES[key]["es" if lang == "es" else "en"].format(**values)


class SmtpClientError(Exception):
    """The server could not be reached, or answered with a failure.

    ``str(exc)`` is English; :meth:`text` gives it in the user's language."""

    def __init__(self, key: str, reply: list[str] | None = None, **values) -> None:
        self.key, self.values = key, values
        self.reply = reply or []
        super().__init__(say(key, "en", **values))

    def text(self, lang: str) -> str:
        values = dict(self.values)
        if lang == "es" and "errno" in values and values["errno"] in _ERRNO_ES:
            values["why"] = _ERRNO_ES[values["errno"]]
        return say(self.key, lang, **values)


@dataclass
class SendResult:
    queue_id: str | None
    replies: list[list[str]] = field(default_factory=list)
    tls: bool = False
    authenticated: bool = False


class SmtpClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 587, *, emit: Emit = null_emit,
                 timeout: float = 30.0, verify: bool = False, cafile: str | None = None,
                 server_name: str = "mail.gponlab.local", session: str | None = None,
                 source: str | None = None) -> None:
        self.host, self.port, self.emit, self.timeout = host, port, emit, timeout
        self.source = source        # connect from this local address (127.0.0.2: another computer)
        self.verify, self.cafile, self.server_name = verify, cafile, server_name
        self.session = session or new_session("client")
        self.tls = False
        self.sock: socket.socket | None = None
        self._file = None
        self.last_verb = "CONNECT"
        self.extensions: dict[str, str] = {}

    # ------------------------------------------------------------ plumbing

    def connect(self) -> list[str]:
        try:
            self.sock = socket.create_connection(
                (self.host, self.port), timeout=self.timeout,
                source_address=(self.source, 0) if self.source else None)
        except OSError as exc:
            raise SmtpClientError("connect", host=self.host, port=self.port,
                                  why=exc.strerror or str(exc), errno=exc.errno) from exc
        self._file = self.sock.makefile("rb")
        return self.read_reply("CONNECT")

    def local_name(self) -> str:
        """Thunderbird's EHLO argument: the local address as a literal."""
        ip = self.sock.getsockname()[0] if self.sock else "127.0.0.1"
        return f"[IPV6:{ip}]" if ":" in ip else f"[{ip}]"

    def read_reply(self, answers: str) -> list[str]:
        lines = []
        while True:
            raw = self._file.readline(65536)
            if not raw:
                raise SmtpClientError("closed", lines, after=answers)
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        self.emit(wire.reply_step(lines, session=self.session, answers=answers, src="smtpd",
                                  dst="client", tls=self.tls))
        return lines

    def _send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str, *, auth_data: bool = False) -> list[str]:
        if auth_data:
            step = wire.auth_data_step(line, session=self.session, tls=self.tls)
        else:
            step = wire.command_step(line, session=self.session, tls=self.tls)
            self.last_verb = step.verb or "UNKNOWN"
        self.emit(step)
        self._send_raw(line.encode("utf-8") + b"\r\n")
        return self.read_reply("AUTH" if auth_data else self.last_verb)

    @staticmethod
    def code(reply: list[str]) -> int:
        return int(reply[-1][:3]) if reply and reply[-1][:3].isdigit() else 0

    def expect(self, reply: list[str], *codes: int) -> list[str]:
        if self.code(reply) not in codes:
            raise SmtpClientError("answered", reply, answer=" / ".join(reply))
        return reply

    # ------------------------------------------------------------ commands

    def ehlo(self, name: str | None = None) -> list[str]:
        reply = self.expect(self.command(f"EHLO {name or self.local_name()}"), 250)
        self.extensions = {}
        for line in reply[1:]:
            word, _, rest = line[4:].partition(" ")
            self.extensions[word.upper()] = rest
        return reply

    def starttls(self) -> list[str]:
        if "STARTTLS" not in self.extensions:
            raise SmtpClientError("no_starttls")
        reply = self.expect(self.command("STARTTLS"), 220)
        context = ssl.create_default_context(cafile=self.cafile) if self.verify else \
            ssl._create_unverified_context()  # the lab's self-signed certificate
        self.sock = context.wrap_socket(self.sock, server_hostname=self.server_name)
        self._file = self.sock.makefile("rb")
        self.tls = True
        version, cipher = self.sock.version(), self.sock.cipher()[0]
        self.emit(wire.event_step("STARTTLS", f"TLS established: {version} with cipher {cipher}",
                                  session=self.session, proto="tls", tls=True,
                                  meta={"version": version, "cipher": cipher,
                                        "verified": self.verify}))
        return reply

    def auth_plain(self, user: str, password: str, initial: bool = True) -> list[str]:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        if initial:
            return self.command(f"AUTH PLAIN {token}")
        reply = self.command("AUTH PLAIN")
        if self.code(reply) != 334:
            return reply
        return self.command(token, auth_data=True)

    def auth_login(self, user: str, password: str) -> list[str]:
        reply = self.command("AUTH LOGIN")
        for value in (user, password):
            if self.code(reply) != 334:
                return reply
            reply = self.command(base64.b64encode(value.encode()).decode(), auth_data=True)
        return reply

    def send_data(self, message: bytes) -> list[str]:
        self.expect(self.command("DATA"), 354)
        self.emit(wire.message_step(message, session=self.session, tls=self.tls,
                                    size=wire.wire_size(message)))
        self._send_raw(wire.dot_stuffed(message) + b".\r\n")
        self.last_verb = "DATA"
        return self.read_reply("DATA")

    def quit(self) -> None:
        try:
            self.command("QUIT")
        except (SmtpClientError, OSError):
            pass
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


def build_message(sender: str, recipients: list[str], subject: str, body: str,
                  domain: str = "gponlab.local") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    msg["User-Agent"] = "gponsim send"
    msg.set_content(body)
    return msg.as_bytes()


def send_mail(*, host: str, port: int, sender: str, recipients: list[str], message: bytes,
              user: str | None = None, password: str | None = None, starttls: bool = True,
              mechanism: str = "PLAIN", initial_response: bool = True, emit: Emit = null_emit,
              verify: bool = False, cafile: str | None = None, timeout: float = 30.0,
              source: str | None = None) -> SendResult:
    """One submission, step by step, as a mail client does it."""
    client = SmtpClient(host, port, emit=emit, verify=verify, cafile=cafile, timeout=timeout,
                        source=source)
    result = SendResult(queue_id=None)
    try:
        client.expect(client.connect(), 220)
        client.ehlo()
        if starttls:
            client.starttls()
            client.ehlo()
            result.tls = True
        if user is not None:
            if mechanism.upper() == "LOGIN":
                reply = client.auth_login(user, password or "")
            else:
                reply = client.auth_plain(user, password or "", initial=initial_response)
            client.expect(reply, 235)
            result.authenticated = True
        size = len(message)
        client.expect(client.command(f"MAIL FROM:<{sender}> BODY=8BITMIME SIZE={size}"), 250)
        for rcpt in recipients:
            client.expect(client.command(f"RCPT TO:<{rcpt}>"), 250, 251)
        reply = client.expect(client.send_data(message), 250)
        text = reply[-1]
        if "queued as " in text:
            result.queue_id = text.rsplit("queued as ", 1)[1].strip()
        client.quit()
        return result
    except BaseException:
        try:
            if client.sock is not None:
                client.quit()
        finally:
            client.close()
        raise
