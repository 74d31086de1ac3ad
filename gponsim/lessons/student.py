"""Interactive mode: the student acts with their own mail client (Thunderbird).

Instead of a scripted client, the lesson tells the student what to do, prints
the settings to type in (the lab's address, its real ports, security, user
name), and waits until the Steps show it happened. While it waits it watches
the student's sessions and gives the hints a teacher would: 530 (STARTTLS is
off), 535 / AUTHENTICATIONFAILED (wrong user or password), a certificate the
client did not accept (the lab document's note), mail sent to port 25 instead
of the submission port, 550 / 554.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from gponsim.steps import Step

# ------------------------------------------------------------------ texts

ACCOUNT = {
    "es": ("Ahora tú: abre Thunderbird y crea la cuenta de {address} (menú ☰ → Nuevo → "
           "Cuenta de correo existente…; la primera vez que se abre, el asistente aparece solo). "
           "Escribe tu nombre, la dirección {address} y la contraseña {password}, y pulsa «Continuar».\n"
           "Thunderbird pide la configuración a http://autoconfig.{domain}/mail/config-v1.1.xml "
           "(y a http://{domain}/.well-known/autoconfig/mail/config-v1.1.xml). El servicio "
           "autoconfig de este laboratorio escucha en:\n"
           "  Autoconfig: {url}\n"
           "Si Thunderbird no encuentra la configuración (el nombre autoconfig.{domain} no se "
           "resuelve en tu red, o el laboratorio no usa el puerto 80), pulsa «Configurar "
           "manualmente» y escribe lo mismo que diría ese XML:"),
    "en": ("Now you: open Thunderbird and create the account of {address} (menu ☰ → New → "
           "Existing Mail Account…; the first time it opens, the wizard comes up by itself). "
           "Type your name, the address {address} and the password {password}, and press 'Continue'.\n"
           "Thunderbird asks http://autoconfig.{domain}/mail/config-v1.1.xml (and "
           "http://{domain}/.well-known/autoconfig/mail/config-v1.1.xml) for the settings. This "
           "lab's autoconfig service listens on:\n"
           "  Autoconfig: {url}\n"
           "If Thunderbird does not find the settings (the name autoconfig.{domain} does not "
           "resolve on your network, or the lab is not on port 80), press 'Configure manually' "
           "and type what that XML would say:"),
}

SETTINGS = {
    "es": ("  Entrada: IMAP  servidor {host}  puerto {imap}  STARTTLS  (o puerto {imaps} con SSL/TLS)\n"
           "  Salida:  SMTP  servidor {host}  puerto {submission}  STARTTLS\n"
           "  Usuario: {user}   Autenticación: contraseña normal"),
    "en": ("  Incoming: IMAP  server {host}  port {imap}  STARTTLS  (or port {imaps} with SSL/TLS)\n"
           "  Outgoing: SMTP  server {host}  port {submission}  STARTTLS\n"
           "  User name: {user}   Authentication: normal password"),
}

CERTIFICATE = {
    "es": ("La primera vez que se conecte, Thunderbird avisará de que no puede confirmar la "
           "identidad del servidor: el certificado del laboratorio es autofirmado (como el "
           "snakeoil de Debian), no lo firma ninguna autoridad de confianza. Cifra igual de bien; "
           "en el laboratorio, pulsa «Confirmar excepción de seguridad»."),
    "en": ("The first time it connects, Thunderbird will warn that it cannot confirm the "
           "server's identity: the lab's certificate is self-signed (like Debian's snakeoil), "
           "signed by no trusted authority. It encrypts just as well; in the lab, press "
           "'Confirm Security Exception'."),
}

SEND = {
    "submission": {
        "es": "Ahora tú, con tu cliente de correo (Thunderbird): como {user}, envía un mensaje a {to}{subject}.",
        "en": "Now you, with your mail client (Thunderbird): as {user}, send a message to {to}{subject}.",
    },
    "smtp": {
        "es": ("Ahora tú, como un servidor de Internet: entrega por el puerto {port} de {host} (sin "
               "autenticación) un mensaje de {sender} para {to}{subject} (por ejemplo con swaks)."),
        "en": ("Now you, as an Internet server: deliver on {host} port {port} (no authentication) a "
               "message from {sender} to {to}{subject} (with swaks, for example)."),
    },
}

READ = {
    "es": ("Ahora tú: en Thunderbird, como {user} (contraseña {password}), abre la Bandeja de "
           "entrada (o pulsa «Recibir mensajes») y mira el mensaje nuevo."),
    "en": ("Now you: in Thunderbird, as {user} (password {password}), open the Inbox (or press "
           "'Get Messages') and look at the new message."),
}

TIMED_OUT = {
    "autoconfig": {"es": "Thunderbird no pidió la configuración de {address} ni inició sesión como {user} en {timeout:.0f} s",
                   "en": "Thunderbird neither asked for the settings of {address} nor logged in as {user} within {timeout:.0f} s"},
    "send": {"es": "no llegó ningún mensaje al puerto {service} en {timeout:.0f} s",
             "en": "nothing arrived on the {service} port within {timeout:.0f} s"},
    "read": {"es": "ningún cliente con sesión de {user} descargó un mensaje en {timeout:.0f} s",
             "en": "no IMAP client logged in as {user} downloaded a message within {timeout:.0f} s"},
}

WAITING = {
    "es": "Esperando (como mucho {timeout:.0f} s)…",
    "en": "Waiting (at most {timeout:.0f} s)…",
}

HINTS = {
    "530": {"es": "Pista: el servidor pide STARTTLS (530). En Thunderbird, seguridad de la conexión: STARTTLS.",
            "en": "Hint: the server wants STARTTLS (530). In Thunderbird, connection security: STARTTLS."},
    "535": {"es": "Pista: usuario o contraseña incorrectos (535). Revisa el usuario ({user}, sin @dominio) "
                  "y la contraseña; Thunderbird te ofrecerá escribir una nueva.",
            "en": "Hint: wrong user or password (535). Check the user name ({user}, without @domain) "
                  "and the password; Thunderbird will offer to enter a new one."},
    "imap-auth": {"es": "Pista: Dovecot rechazó el usuario o la contraseña (NO [AUTHENTICATIONFAILED]). "
                        "Revisa el usuario ({user}, sin @dominio) y la contraseña; Thunderbird te "
                        "ofrecerá escribir una nueva.",
                  "en": "Hint: Dovecot refused the user or the password (NO [AUTHENTICATIONFAILED]). "
                        "Check the user name ({user}, without @domain) and the password; Thunderbird "
                        "will offer to enter a new one."},
    "554": {"es": "Pista: el servidor rechazó al cliente o al destinatario (554): ¿te autenticaste?",
            "en": "Hint: the server refused the client or the recipient (554): did you authenticate?"},
    "550": {"es": "Pista: ese usuario no existe en el laboratorio (550). Los usuarios son user1 y user2.",
            "en": "Hint: that user does not exist in the lab (550). The users are user1 and user2."},
    "certificate": {"es": "Pista: el cliente cortó la conexión sin terminar el saludo TLS: no aceptó el "
                          "certificado. Es el certificado autofirmado del laboratorio (nota del documento "
                          "del laboratorio): confirma la excepción de seguridad y vuelve a intentarlo.",
                    "en": "Hint: the client hung up without finishing the TLS handshake: it did not "
                          "accept the certificate. It is the lab's self-signed certificate (the lab "
                          "document's note): confirm the security exception and try again."},
    "port25": {"es": "Pista: ese mensaje entró por el puerto {port} (smtp, de servidor a servidor), no por "
                     "el de envío (submission, {submission}). Pon en Thunderbird el puerto {submission} "
                     "con STARTTLS.",
               "en": "Hint: that message came in on port {port} (smtp, server to server), not on the "
                     "submission port ({submission}). Set port {submission} with STARTTLS in Thunderbird."},
    "auth-after-starttls": {
        "es": "Pista: tu cliente se rindió tras el EHLO sin autenticarse: en el puerto {submission} el "
              "servidor solo ofrece AUTH después de STARTTLS (smtpd_tls_security_level=encrypt, nada de "
              "contraseñas sin cifrar). En Thunderbird, seguridad de la conexión: STARTTLS.",
        "en": "Hint: your client gave up after EHLO without logging in: on port {submission} the server "
              "offers AUTH only after STARTTLS (smtpd_tls_security_level=encrypt, no passwords without "
              "encryption). In Thunderbird, connection security: STARTTLS."},
    "by-hand": {"es": "Has escrito la configuración a mano (Thunderbird no pidió el XML de autoconfig): "
                      "también vale, como dice el documento del laboratorio.",
                "en": "You typed the settings by hand (Thunderbird did not ask for the autoconfig XML): "
                      "that works too, as the lab document says."},
}


def student_host(ctx) -> str:
    """The address a student types: where the lab listens; on every address, this computer's name."""
    if ctx.host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return ctx.host


def settings_text(ctx, user: str) -> str:
    return SETTINGS[ctx.lang].format(host=student_host(ctx), user=user, **ctx.ports)


# ------------------------------------------------------------------ watching

@dataclass
class Session:
    service: str = ""
    user: str = ""            # who logged in (the auth socket's OK/FAIL says)
    tls_offered: bool = False  # 220 Ready to start TLS / OK Begin TLS, or an implicit-TLS port
    tls_done: bool = False     # the handshake completed
    started: int = 0           # index of its first Step
    auth_offered: bool | None = None   # the last EHLO reply listed AUTH (None: no EHLO reply yet)
    asked_tls: bool = False    # the client sent STARTTLS / STLS
    sent_mail: bool = False    # the client got as far as MAIL FROM
    failures: list = field(default_factory=list)   # the server's refusals, as sent
    queued: str = ""           # 250 … queued as ID
    logged_in: bool = False    # the auth socket said OK


@dataclass
class Watch:
    """Follows the student's sessions through the Steps and says what went wrong."""

    ctx: object
    user: str
    quiet: set = field(default_factory=set)      # hints not to give (the lesson expects them)
    sessions: dict = field(default_factory=dict)
    given: set = field(default_factory=set)
    seen: int = 0
    live: bool = False   # Steps before this lesson step only teach who is who: no hints

    def hint(self, key: str, **values) -> None:
        if not self.live or key in self.given or key in self.quiet:
            return
        self.given.add(key)
        ctx = self.ctx
        said = HINTS[key][ctx.lang].format(user=self.user, submission=ctx.ports.get("submission"), **values)
        ctx.say(said)
        ctx.hinted(key, said)

    def attempt(self, step: Step, s: Session) -> None:
        """The student's session ended: keep how it went (summary.json's ``attempts``)."""
        done = self.ctx.results.setdefault("attempted_sessions", set())
        if not self.live or step.session in done:
            return
        done.add(step.session)
        if s.queued:
            outcome = f"queued as {s.queued}"
        elif s.failures:
            outcome = s.failures[-1]
        elif s.tls_offered and not s.tls_done:
            outcome = "hung up in the TLS handshake (certificate not accepted)"
        elif s.service == "submission" and s.auth_offered is False and not s.asked_tls and not s.sent_mail:
            outcome = "gave up after EHLO: no AUTH offered before STARTTLS"
        elif s.logged_in:
            outcome = "logged in"
        else:
            outcome = "disconnected"
        self.ctx.results.setdefault("attempts", []).append(
            {"session": step.session, "service": s.service, "user": s.user, "tls": s.tls_done,
             "outcome": outcome, "ok": bool(s.queued) or (s.logged_in and not s.failures),
             "t": round(step.t, 3)})

    def follow(self, step: Step) -> Session:
        """Update what is known of ``step``'s session; give a hint if it calls for one."""
        ports = {port: name for name, port in self.ctx.ports.items()}
        s = self.sessions.setdefault(step.session, Session())
        if step.kind == "event" and step.verb == "CONNECT" and step.proto in ("smtp", "imap", "pop3"):
            s.service = step.meta.get("service") or ports.get(step.meta.get("port"), step.proto)
            s.tls_offered = s.service in ("imaps", "pop3s", "smtps")
        elif step.proto == "sasl" and step.kind == "reply" and step.status in ("OK", "FAIL"):
            s.user = str(step.meta.get("params", {}).get("user", "")) or s.user
        elif step.proto == "tls":
            s.tls_done = True
        elif step.kind == "reply" and (
                (step.proto == "smtp" and step.verb == "STARTTLS" and step.code == 220)
                or (step.proto == "imap" and step.verb == "STARTTLS" and step.status == "OK")):
            s.tls_offered = True
        elif step.kind == "event" and step.verb == "DISCONNECT" and s.service:
            if s.tls_offered and not s.tls_done:
                self.hint("certificate")
            elif s.service == "submission" and s.auth_offered is False and not s.asked_tls \
                    and not s.sent_mail and not s.failures:
                self.hint("auth-after-starttls")
            self.attempt(step, s)
        if not s.service:
            return s        # not a client's session (the relay's towards Gmail, say): no hints
        if step.proto == "sasl" and step.status == "OK":
            s.logged_in = True
        if step.kind == "command" and step.verb in ("STARTTLS", "STLS"):
            s.asked_tls = True
        if step.proto == "smtp" and step.kind == "command" and step.verb in ("MAIL", "RCPT", "DATA"):
            s.sent_mail = True
        if step.proto == "smtp" and step.kind == "reply" and step.verb in ("EHLO", "HELO"):
            s.auth_offered = "AUTH" in step.line.replace("-", " ").split()
        if step.kind == "reply" and step.failed and step.proto in ("smtp", "imap", "pop3"):
            s.failures.append(step.shown_line().split("\n")[-1])
        if step.proto == "smtp" and step.kind == "reply" and step.code == 250 and "queued as" in step.line:
            s.queued = step.line.rsplit(" ", 1)[-1]
        if step.proto == "smtp" and step.kind == "reply":
            if step.code in (530, 535, 550, 554):
                self.hint(str(step.code))
            if step.code == 250 and "queued as" in step.line and s.service == "smtp":
                self.hint("port25", port=self.ctx.ports["smtp"])
        if step.proto == "imap" and step.kind == "reply" and step.status == "NO" \
                and "AUTHENTICATIONFAILED" in step.line:
            self.hint("imap-auth")
        return s

    def wait(self, done, timeout: float | None = None, poll=None) -> Step | bool | None:
        """Follow every Step from the lesson's start; return when ``done(step, session)`` (only
        for Steps of this lesson step) or ``poll()`` says so; None after the timeout."""
        ctx = self.ctx
        timeout = ctx.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout

        def check(step: Step) -> bool:
            index = self.seen
            self.seen += 1
            self.live = index >= ctx.mark
            session = self.follow(step)
            if index >= ctx.mark and done(step, session):
                if session.service:
                    self.attempt(step, session)     # the try that did it (it may not have hung up yet)
                return True
            return False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            found = ctx.record.wait_for(check, min(left, 0.25) if poll else left, start=self.seen)
            if found is not None:
                return found
            if poll and poll():
                return True


# ------------------------------------------------------------------ actions

def create_account(ctx, o: dict) -> None:
    """Autoconfig, interactively: the student creates the account in Thunderbird."""
    address = o.get("address", "user1@gponlab.local")
    user, _, domain = address.partition("@")
    password = o.get("password", "pass")
    url = f"http://{student_host(ctx)}:{ctx.ports['autoconfig']}/mail/config-v1.1.xml"
    ctx.say(ACCOUNT[ctx.lang].format(address=address, password=password, domain=domain, url=url))
    ctx.say(settings_text(ctx, user))
    ctx.say(CERTIFICATE[ctx.lang])
    ctx.say(WAITING[ctx.lang].format(timeout=ctx.timeout))
    log = ctx.lab_root / "var" / "log" / "mail.log"
    wanted = f"config-v1.1.xml for {address} "

    def fetched() -> bool:
        try:
            return wanted in log.read_text(errors="replace")
        except OSError:
            return False
    watch = Watch(ctx, user)
    # Done when Thunderbird fetched the XML, or logged in with settings typed by hand.
    found = watch.wait(lambda step, s: step.proto == "sasl" and step.status == "OK" and s.user == user,
                       poll=fetched)
    if found is None:
        raise RuntimeError(TIMED_OUT["autoconfig"][ctx.lang].format(address=address, user=user,
                                                                    timeout=ctx.timeout))
    if found is True or fetched():
        ctx.results.setdefault("autoconfig_fetched", []).append(address)
    else:
        ctx.results.setdefault("autoconfig_by_hand", []).append(address)
        ctx.say(HINTS["by-hand"][ctx.lang])
    from gponsim.server.autoconfig import client_config

    # What the lab hands out, so the student can compare it with the account's settings.
    ctx.show_text(f"{url}?emailaddress={quote(address)}",
                  client_config(domain, student_host(ctx), ctx.ports))


def send(ctx, o: dict) -> None:
    """Ask the student to send the mail themselves; wait for the server's 250 … queued as."""
    user = o.get("as", "user1")
    domain = o.get("domain", "gponlab.local")
    service = o.get("port", "submission")
    to = ", ".join(o.get("to", [f"user2@{domain}"]))
    subject = f" ({'asunto' if ctx.lang == 'es' else 'subject'}: {o['subject']})" if o.get("subject") else ""
    ctx.say(SEND[service][ctx.lang].format(user=user, to=to, subject=subject, host=student_host(ctx),
                                           port=ctx.ports[service], sender=o.get("from", f"{user}@{domain}")))
    if service == "submission":
        lines = settings_text(ctx, user).split("\n")
        ctx.say("\n".join([lines[1], lines[2]]))
        ctx.say(("  Contraseña: " if ctx.lang == "es" else "  Password: ") + o.get("password", "pass"))
        ctx.say(CERTIFICATE[ctx.lang])
    ctx.say(WAITING[ctx.lang].format(timeout=ctx.timeout))
    refused = o.get("expect") == "refused"
    # Refusals the lesson expects are not the student's mistakes; nor is port 25 when asked for.
    quiet = {"530", "535", "550", "554"} if refused else set()
    watch = Watch(ctx, user, quiet=quiet | ({"port25"} if service == "smtp" else set()))

    def done(step: Step, s: Session) -> bool:
        if s.service != service or step.proto != "smtp" or step.kind != "reply":
            return False
        if refused:
            return step.code in (530, 535, 550, 554)
        return step.code == 250 and "queued as" in step.line
    found = watch.wait(done)
    if found is None:
        raise RuntimeError(TIMED_OUT["send"][ctx.lang].format(service=service, timeout=ctx.timeout))
    queued = re.search(r"queued as (\w+)", found.line)
    if queued:
        ctx.results["queue_id"] = queued.group(1)


def read_imap(ctx, o: dict) -> None:
    """Ask the student to open the mailbox; wait until their client, logged in as that user,
    downloads a message (its headers at least, as Thunderbird does on opening the Inbox)."""
    user = o.get("user", "user2")
    ctx.say(READ[ctx.lang].format(user=user, password=o.get("password", "pass")))
    lines = settings_text(ctx, user).split("\n")
    ctx.say("\n".join([lines[0], lines[2]]))
    ctx.say(WAITING[ctx.lang].format(timeout=ctx.timeout))
    watch = Watch(ctx, user)

    def done(step: Step, s: Session) -> bool:
        # The client, logged in as the user, got a message's headers or body (not only flags).
        return step.proto == "imap" and step.kind == "reply" and s.user == user \
            and step.line.startswith("* ") and " FETCH (" in step.line \
            and ("BODY[" in step.line or "RFC822" in step.line)
    if watch.wait(done) is None:
        raise RuntimeError(TIMED_OUT["read"][ctx.lang].format(user=user, timeout=ctx.timeout))


ACTIONS = {"autoconfig": create_account, "send": send, "read_imap": read_imap}
