"""A Gmail simulator: ``smtp.gmail.com`` on a loopback port, for a lab without internet.

The real relay, ``[smtp.gmail.com]:587``, cannot be reached from the lab, so
``gponsim serve`` starts this simulator and maps the relay host to it (the
lab's ``etc/hosts`` says ``127.0.0.1 smtp.gmail.com``; the port is mapped in
memory, logs keep ``:587``). It answers as Gmail's submission service does
(lab-facts §3; the AUTH lines and post-TLS EHLO are verified, the rest are
Gmail's typical texts): greeting, EHLO lists before and after STARTTLS,
``235 2.7.0 Accepted`` for the account's app password, ``534-5.7.9
Application-specific password required`` for its normal password,
``535-5.7.8 Username and Password not accepted`` for anything else.

Files (under the lab root)
--------------------------
- ``etc/gmail-ca/ca.pem`` (+ ``ca.key``): the simulator's own small CA;
  ``etc/gmail-ca/smtp.gmail.com.pem`` (+ ``.key``): the server certificate
  it signs. The CA is appended to the lab's ``smtp_tls_CAfile``
  (``etc/ssl/certs/ca-certificates.crt``), so the lab's SMTP client logs a
  *Trusted* TLS connection — remove it to see *Untrusted*.
- ``etc/gmail-sim.conf``: the account and the faults (re-read at every
  connection; for ``fault = refuse`` every second and before each
  connection of the lab's smtp(8))::

      account = gponlab.relay@gmail.com
      app_password = abcdefghijklmnop
      normal_password = contraseña-de-gmail
      fault = none
      delay = 0

  ``fault`` is one of :data:`FAULTS` (deterministic, never random).
- ``internet/<domain>/<local part>``: the "internet" — every message the
  simulator accepts is appended, in mbox format (a ``From `` line, Gmail's
  ``Return-Path:`` and ``Received:`` on top), to one mbox per recipient,
  e.g. ``internet/example.org/someone``. Python's ``mailbox.mbox`` reads it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import random
import re
import time
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ServerFactory

from gponsim.commentary import annotate
from gponsim.server.mailstore.mboxentry import from_line, mbox_entry
from gponsim.server.postfix.smtp import prefer_relay_key
from gponsim.server.sendnow import listen_tcp
from gponsim.server.smtpserver import AUTH, COMMAND, SmtpServer
from gponsim.steps import Emit, Step, new_session, null_emit
from gponsim.wire import smtp as wire

HOSTNAME = "smtp.gmail.com"
FAULTS = ("none", "refuse", "no-starttls", "greeting-421", "mail-451", "mail-550",
          "rcpt-450", "rcpt-550", "data-451", "data-552", "slow")
DEFAULT_ACCOUNT = "gponlab.relay@gmail.com"
DEFAULT_APP_PASSWORD = "abcdefghijklmnop"
DEFAULT_NORMAL_PASSWORD = "contraseña-de-gmail"
CONF_NAME = "etc/gmail-sim.conf"
INTERNET_DIR = "internet"

CONF_TEMPLATE = """\
# gponsim's Gmail simulator (smtp.gmail.com). Read again at every connection.
# The account the lab relays through (the user in /etc/postfix/sasl_passwd):
account = {account}
# Its app password (16 letters; Gmail shows it as "abcd efgh ijkl mnop"):
app_password = {app_password}
# Its normal password: Gmail answers 534-5.7.9 "Application-specific
# password required" (2-step verification is on):
normal_password = {normal_password}
# A fault, chosen on purpose (never random):
#   none | refuse | no-starttls | greeting-421 | mail-451 | mail-550 |
#   rcpt-450 | rcpt-550 | data-451 | data-552 | slow
fault = none
# Seconds before each reply when fault = slow:
delay = 5
"""

SIZE_LIMIT = 35882577
PRE_TLS_EXTENSIONS = [f"SIZE {SIZE_LIMIT}", "8BITMIME", "STARTTLS", "ENHANCEDSTATUSCODES",
                      "PIPELINING", "CHUNKING", "SMTPUTF8"]
AUTH_LINE = "AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH"


@dataclass
class GmailConfig:
    account: str = DEFAULT_ACCOUNT
    app_password: str = DEFAULT_APP_PASSWORD
    normal_password: str = DEFAULT_NORMAL_PASSWORD
    fault: str = "none"
    delay: float = 5.0

    @classmethod
    def read(cls, path: Path) -> "GmailConfig":
        conf = cls()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return conf
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            name, sep, value = line.partition("=")
            if not sep:
                continue
            name, value = name.strip(), value.strip()
            if name == "delay":
                try:
                    conf.delay = float(value)
                except ValueError:
                    pass
            elif name == "fault":
                conf.fault = value if value in FAULTS else "none"
            elif name in ("account", "app_password", "normal_password"):
                setattr(conf, name, value)
        return conf


def ensure_config(root: Path, account: str | None = None, app_password: str | None = None) -> Path:
    path = root / CONF_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CONF_TEMPLATE.format(account=account or DEFAULT_ACCOUNT,
                                             app_password=app_password or DEFAULT_APP_PASSWORD,
                                             normal_password=DEFAULT_NORMAL_PASSWORD),
                        encoding="utf-8")
    return path


def set_fault(root: Path, fault: str, delay: float | None = None) -> None:
    """Rewrite ``fault =`` (and ``delay =``) in the simulator's conf file."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}: one of {', '.join(FAULTS)}")
    path = ensure_config(root)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^fault\s*=.*$", f"fault = {fault}", text)
    if delay is not None:
        text = re.sub(r"(?m)^delay\s*=.*$", f"delay = {delay:g}", text)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------
# The CA and the certificate for smtp.gmail.com

@dataclass
class GmailPki:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def ensure_pki(root: Path, cafile: Path | None = None) -> GmailPki:
    """Create the simulator's CA and certificate when missing, and then add
    the CA to ``cafile`` (the lab's smtp_tls_CAfile)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = root / "etc" / "gmail-ca"
    pki = GmailPki(folder / "ca.pem", folder / "ca.key", folder / f"{HOSTNAME}.pem",
                   folder / f"{HOSTNAME}.key")
    created = not all(p.exists() for p in (pki.ca_cert, pki.ca_key, pki.cert, pki.key))
    if created:
        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "ES"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gponsim"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "gponsim Gmail simulator CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                           key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, key_cert_sign=True,
                                           crl_sign=True, encipher_only=False,
                                           decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=825))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(HOSTNAME),
                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        raw = serialization.PrivateFormat.TraditionalOpenSSL
        for path, data, mode in (
                (pki.ca_key, ca_key.private_bytes(pem, raw, serialization.NoEncryption()), 0o600),
                (pki.key, key.private_bytes(pem, raw, serialization.NoEncryption()), 0o600),
                (pki.ca_cert, ca.public_bytes(pem), 0o644),
                (pki.cert, cert.public_bytes(pem), 0o644)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
    if cafile is not None and created:
        # Only when the CA is new: a CA taken out of the file stays out.
        ca_pem = pki.ca_cert.read_bytes()
        existing = cafile.read_bytes() if cafile.exists() else b""
        if ca_pem.strip() not in existing:
            cafile.parent.mkdir(parents=True, exist_ok=True)
            with open(cafile, "ab") as fh:
                if existing and not existing.endswith(b"\n"):
                    fh.write(b"\n")
                fh.write(b"# gponsim Gmail simulator CA (etc/gmail-ca/ca.pem)\n" + ca_pem)
    return pki


# --------------------------------------------------------------------------
# The "internet" mailboxes

def _safe_name(text: str) -> str:
    """A file name made of ``text``: other characters become ``_``, and a name
    that starts with a dot (``.``, ``..``, hidden files) gets a ``_`` first, so
    every mailbox stays a file two levels below ``internet/``."""
    name = re.sub(r"[^A-Za-z0-9._+=-]", "_", text)
    return "_" + name if not name or name.startswith(".") else name


def internet_mbox(root: Path, address: str) -> Path:
    local, _, domain = address.rpartition("@")
    if not local:
        local, domain = address, "localhost"
    return root / INTERNET_DIR / _safe_name(domain.lower()) / _safe_name(local)


def append_mbox(path: Path, sender: str, message: bytes, when: float) -> None:
    """Append one message in mboxo format (``From `` quoted as ``>From ``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = mbox_entry(from_line(sender, when, zero_pad_day=False), b"",
                      message.replace(b"\r\n", b"\n"), quote=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _gmail_id(rng: random.Random) -> str:
    """Something shaped like Gmail's transaction ids (``x1-20020a...sm123``)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return (f"{rng.choice(letters)}{rng.choice(letters)}{rng.randrange(10)}-"
            f"{rng.randrange(10**19, 10**20)}{rng.choice(letters)}"
            f"{rng.randrange(10**6):06d}sm{rng.randrange(1000)}")


# --------------------------------------------------------------------------
# The server

class GmailSmtp(SmtpServer):
    """One session with smtp.gmail.com (port 587 style: STARTTLS, then AUTH):
    the SMTP engine with Gmail's policy (its replies, its faults)."""

    server_actor = "relay"

    def __init__(self, sim: "GmailSimulator") -> None:
        super().__init__("gmail", tls_options=sim.tls_options, timeout=300,
                         size_limit=SIZE_LIMIT)
        self.sim = sim
        self.host = HOSTNAME
        self.conf = sim.config()
        self.authenticated: str | None = None
        self.helo_name: str | None = None
        self._auth_state: tuple[str, list[str]] | None = None
        self._bdat_last = False
        self._reset()

    def _reset(self) -> None:
        self.sender: str | None = None
        self.rcpts: list[str] = []
        self.reset_message()

    # -------------------------------------------------------------- output
    def gid(self) -> str:
        return _gmail_id(self.sim.rng)

    def emit(self, step: Step) -> None:
        if self.sim.wire_steps:
            self.sim.emit(step)

    def step_for_reply(self, step: Step) -> Step:
        return prefer_relay_key(step)

    # ---------------------------------------------------------- connection
    def greet(self) -> None:
        self.emit(self.event_step("CONNECT", f"connection from {self.client_ip} to {HOSTNAME}"))
        if self.conf.fault == "greeting-421":
            self.reply(421, ["4.7.0 Try again later, closing connection. (EHLO)",
                             f"4.7.0  {self.gid()} - gsmtp"], "CONNECT")
            self.transport.loseConnection()
            return
        self.reply(220, f"{HOSTNAME} ESMTP {self.gid()} - gsmtp", "CONNECT")

    def tls_established(self, version: str, cipher: str, used: int, alg: int) -> None:
        self.tls_info = (version, cipher, used)
        self.emit(self.event_step("STARTTLS", f"TLS established: {version} with cipher {cipher} "
                                  f"({used}/{alg} bits)", proto="tls", tls=True,
                                  meta={"version": version, "cipher": cipher}))

    def timeoutConnection(self) -> None:
        self.reply(451, f"4.4.2 Timeout - closing connection. {self.gid()} - gsmtp", "TIMEOUT")
        self.transport.loseConnection()

    def line_too_long(self) -> None:
        self.reply(500, f"5.5.2 Line too long. {self.gid()} - gsmtp", "UNKNOWN")

    # --------------------------------------------------------------- input
    def state_COMMAND(self, raw: bytes) -> None:
        if self.conf.fault == "slow" and self.conf.delay > 0:
            d = defer.Deferred()
            self.sim.reactor.callLater(self.conf.delay, d.callback, None)
            d.addCallback(lambda _: None if self.closed else self._command(raw))
            self.wait_for(d)
            return
        self._command(raw)

    def _command(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        self.emit(self.command_step(line))
        verb, args = wire.split_command(line)
        if not self.dispatch(verb, args):
            self.reply(502, f"5.5.1 Unrecognized command. {self.gid()} - gsmtp", verb or "UNKNOWN")

    def state_AUTH(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        self.emit(self.auth_data_step(line))
        self._auth_continue(line)

    # ------------------------------------------------------------ commands
    def _ehlo_lines(self, name: str) -> list[str]:
        ext = list(PRE_TLS_EXTENSIONS)
        if self.tls:
            ext[ext.index("STARTTLS")] = AUTH_LINE
        elif self.conf.fault == "no-starttls" or not self.canStartTLS:
            ext.remove("STARTTLS")
        return [f"{HOSTNAME} at your service, [{self.client_ip}]"] + ext

    def cmd_EHLO(self, args: str) -> None:
        if not args.strip():
            self.reply(555, f"5.5.2 Syntax error, goodbye. {self.gid()} - gsmtp", "EHLO")
            self.transport.loseConnection()
            return
        self._reset()
        self.helo_name = args.strip()
        self.reply(250, self._ehlo_lines(args.strip()), "EHLO")

    def cmd_HELO(self, args: str) -> None:
        self._reset()
        self.reply(250, f"{HOSTNAME} at your service", "HELO")

    def cmd_STARTTLS(self, args: str) -> None:
        if self.tls or self.conf.fault == "no-starttls" or not self.canStartTLS:
            self.reply(502, f"5.5.1 Unrecognized command. {self.gid()} - gsmtp", "STARTTLS")
            return
        self.reply(220, "2.0.0 Ready to start TLS", "STARTTLS")
        self.start_tls()
        self._reset()

    def cmd_AUTH(self, args: str) -> None:
        if not self.tls:
            self.reply(530, f"5.7.0 Must issue a STARTTLS command first. {self.gid()} - gsmtp",
                       "AUTH")
            return
        if self.authenticated:
            self.reply(503, f"5.5.1 Already authenticated. {self.gid()} - gsmtp", "AUTH")
            return
        parts = args.split()
        mech = parts[0].upper() if parts else ""
        if mech == "PLAIN":
            if len(parts) > 1:
                self._auth_plain(parts[1])
            else:
                self._auth_state = ("PLAIN", [])
                self.mode = AUTH
                self.reply(334, "", "AUTH")
        elif mech == "LOGIN":
            self._auth_state = ("LOGIN", parts[1:2])
            self.mode = AUTH
            self.reply(334, "UGFzc3dvcmQ6" if len(parts) > 1 else "VXNlcm5hbWU6", "AUTH")
        else:
            self.reply(504, f"5.7.4 Unrecognized authentication type. {self.gid()} - gsmtp",
                       "AUTH")

    def _auth_continue(self, line: str) -> None:
        mech, got = self._auth_state or ("", [])
        if line.strip() == "*":
            self._auth_state = None
            self.mode = COMMAND
            self.reply(501, f"5.7.0 Authentication aborted. {self.gid()} - gsmtp", "AUTH")
            return
        if mech == "PLAIN":
            self._auth_state = None
            self.mode = COMMAND
            self._auth_plain(line.strip())
            return
        got.append(line.strip())
        if len(got) == 1:
            self.reply(334, "UGFzc3dvcmQ6", "AUTH")
            return
        self._auth_state = None
        self.mode = COMMAND
        try:
            user = base64.b64decode(got[0], validate=True).decode("utf-8")
            password = base64.b64decode(got[1], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            self._bad_base64()
            return
        self._check(user, password)

    def _bad_base64(self) -> None:
        self.reply(501, f"5.5.2 Cannot Decode response {self.gid()} - gsmtp", "AUTH")

    def _auth_plain(self, token: str) -> None:
        try:
            parts = base64.b64decode(token, validate=True).decode("utf-8").split("\0")
        except (ValueError, UnicodeDecodeError):
            self._bad_base64()
            return
        if len(parts) != 3:
            self._bad_base64()
            return
        self._check(parts[1], parts[2])

    def _check(self, user: str, password: str) -> None:
        conf = self.sim.config()
        same_user = user.lower() == conf.account.lower() or \
            user.lower() == conf.account.split("@")[0].lower()
        squeezed = password.replace(" ", "")
        if same_user and squeezed == conf.app_password.replace(" ", ""):
            self.authenticated = user
            self.reply(235, "2.7.0 Accepted", "AUTH")
        elif same_user and conf.normal_password and password == conf.normal_password:
            self.reply(534, ["5.7.9 Application-specific password required. For more "
                             "information, go to",
                             f"5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor "
                             f"{self.gid()} - gsmtp"], "AUTH")
        else:
            self.reply(535, ["5.7.8 Username and Password not accepted. For more "
                             "information, go to",
                             f"5.7.8  https://support.google.com/mail/?p=BadCredentials "
                             f"{self.gid()} - gsmtp"], "AUTH")

    def _path(self, args: str, keyword: str) -> str | None:
        m = re.match(rf"\s*{keyword}:\s*<([^>]*)>", args, re.IGNORECASE)
        return m.group(1) if m else None

    def cmd_MAIL(self, args: str) -> None:
        if not self.authenticated:
            self.reply(530, ["5.7.0 Authentication Required. For more information, go to",
                             f"5.7.0  https://support.google.com/mail/?p=WantAuthError "
                             f"{self.gid()} - gsmtp"], "MAIL")
            return
        if self.sender is not None:
            self.reply(503, f"5.5.1 MAIL first. {self.gid()} - gsmtp", "MAIL")
            return
        sender = self._path(args, "FROM")
        if sender is None:
            self.reply(555, f"5.5.2 Syntax error. {self.gid()} - gsmtp", "MAIL")
            return
        if self.conf.fault == "mail-451":
            self.reply(451, f"4.3.0 Mail server temporarily rejected message. {self.gid()} - gsmtp",
                       "MAIL")
            return
        if self.conf.fault == "mail-550":
            self.reply(550, ["5.7.1 Our system has detected an unusual rate of",
                             "5.7.1 unsolicited mail originating from your IP address. To protect",
                             f"5.7.1  our users from spam, mail sent from your IP address has "
                             f"been blocked. {self.gid()} - gsmtp"], "MAIL")
            return
        self.sender = sender
        self.reply(250, f"2.1.0 OK {self.gid()} - gsmtp", "MAIL")

    def cmd_RCPT(self, args: str) -> None:
        if self.sender is None:
            self.reply(503, f"5.5.1 MAIL first. {self.gid()} - gsmtp", "RCPT")
            return
        rcpt = self._path(args, "TO")
        if not rcpt:
            self.reply(555, f"5.5.2 Syntax error. {self.gid()} - gsmtp", "RCPT")
            return
        if self.conf.fault == "rcpt-450":
            self.reply(450, ["4.2.1 The user you are trying to contact is receiving mail at a "
                             "rate that",
                             "4.2.1 prevents additional messages from being delivered. For more",
                             f"4.2.1  https://support.google.com/mail/?p=ReceivingRatePerm "
                             f"{self.gid()} - gsmtp"], "RCPT")
            return
        if self.conf.fault == "rcpt-550":
            self.reply(550, ["5.1.1 The email account that you tried to reach does not exist. "
                             "Please try",
                             "5.1.1 double-checking the recipient's email address for typos or",
                             "5.1.1 unnecessary spaces. For more information, go to",
                             f"5.1.1  https://support.google.com/mail/?p=NoSuchUser "
                             f"{self.gid()} - gsmtp"], "RCPT")
            return
        self.rcpts.append(rcpt)
        self.reply(250, f"2.1.5 OK {self.gid()} - gsmtp", "RCPT")

    def cmd_DATA(self, args: str) -> None:
        if self.sender is None:
            self.reply(503, f"5.5.1 MAIL first. {self.gid()} - gsmtp", "DATA")
            return
        if not self.rcpts:
            self.reply(554, f"5.5.1 RCPT first. {self.gid()} - gsmtp", "DATA")
            return
        self.start_data()
        self.reply(354, f" Go ahead {self.gid()} - gsmtp", "DATA")

    def message_received(self, message: bytes, verb: str) -> None:
        self._finish(message, verb)

    def _finish(self, message: bytes, verb: str = "DATA") -> None:
        if self.too_big:
            self.reply(552, ["5.3.4 Your message exceeded Google's message size limits. For more "
                             "information, go to",
                             f"5.3.4  https://support.google.com/mail/?p=MaxSizeError "
                             f"{self.gid()} - gsmtp"], verb)
            self._reset()
            return
        if self.conf.fault == "data-451":
            self.reply(451, ["4.3.0 Mail server temporarily rejected message.",
                             f"4.3.0  {self.gid()} - gsmtp"], verb)
            self._reset()
            return
        if self.conf.fault == "data-552":
            self.reply(552, ["5.7.0 This message was blocked because its content presents a "
                             "potential",
                             "5.7.0 security issue. For more information, go to",
                             f"5.7.0  https://support.google.com/mail/?p=BlockedMessage "
                             f"{self.gid()} - gsmtp"], verb)
            self._reset()
            return
        tid = self.gid()
        now = time.time()
        version, cipher, bits = getattr(self, "tls_info", ("", "", 0))
        tls_part = (f"\r\n        (version={version.replace('v', '').replace('.', '_')} "
                    f"cipher={cipher} bits={bits}/{bits})") if self.tls else ""
        date = format_datetime(datetime.datetime.now().astimezone())
        try:
            for rcpt in self.rcpts:
                received = (f"Return-Path: <{self.sender}>\n"
                            f"Received: from {self.sim.helo_guess(self)} ([{self.client_ip}])\n"
                            f"        by {HOSTNAME} with "
                            f"{'ESMTPSA' if self.authenticated else 'ESMTP'}"
                            f" id {tid}\n        for <{rcpt}>"
                            f"{tls_part.replace(chr(13), '')};\n        {date}\n").encode()
                path = internet_mbox(self.sim.root, rcpt)
                append_mbox(path, self.sender or "", received + message, now)
                self.sim.delivered(self.session, self.sender or "", rcpt, path, tid)
        except OSError:             # the simulated internet's disk: a temporary failure
            self.reply(451, ["4.3.0 Mail server temporarily rejected message.",
                             f"4.3.0  {self.gid()} - gsmtp"], verb)
            self._reset()
            return
        self.reply(250, f"2.0.0 OK  {int(now)} {tid} - gsmtp", verb)
        self._reset()

    def cmd_BDAT(self, args: str) -> None:
        """CHUNKING (RFC 3030): ``BDAT <size> [LAST]``, then exactly size bytes."""
        parts = args.split()
        if not parts or not parts[0].isdigit() or (len(parts) > 1 and parts[1].upper() != "LAST"):
            self.reply(501, f"5.5.4 Syntax error in parameters or arguments. {self.gid()} - gsmtp",
                       "BDAT")
            return
        self._bdat_last = len(parts) > 1
        self.read_chunk(int(parts[0]), self._bdat_chunk_done)

    def _bdat_chunk_done(self) -> None:
        if self.sender is None or not self.rcpts:
            self.reset_message()
            self.reply(503, f"5.5.1 {'MAIL' if self.sender is None else 'RCPT'} first. "
                            f"{self.gid()} - gsmtp", "BDAT")
            return
        if not self._bdat_last:
            self.reply(250, f"2.0.0 {self.message_size} bytes received {self.gid()} - gsmtp",
                       "BDAT")
            return
        message = self.chunked_message()
        self.emit(wire.message_step(message, session=self.session, verb="BDAT", dst="relay",
                                    tls=self.tls, size=self.wire_size))
        self._finish(message, "BDAT")

    def cmd_RSET(self, args: str) -> None:
        self._reset()
        self.reply(250, f"2.1.5 Flushed {self.gid()} - gsmtp", "RSET")

    def cmd_NOOP(self, args: str) -> None:
        self.reply(250, f"2.0.0 OK {self.gid()} - gsmtp", "NOOP")

    def cmd_QUIT(self, args: str) -> None:
        self.reply(221, f"2.0.0 closing connection {self.gid()} - gsmtp", "QUIT")
        self.transport.loseConnection()


class _Factory(ServerFactory):
    def __init__(self, sim: "GmailSimulator") -> None:
        self.sim = sim

    def buildProtocol(self, addr):
        proto = GmailSmtp(self.sim)
        proto.factory = self
        return proto


@dataclass
class GmailSimulator:
    """The simulator: TLS material, its config file, the listener and its faults."""

    root: Path
    emit: Emit = null_emit
    reactor: Any = None
    listen: str = "127.0.0.1"
    port: int = 0
    wire_steps: bool = True            #: False in the lab: the relay client shows the wire
    cafile: Path | None = None
    account: str | None = None
    app_password: str | None = None
    keylog: Any = None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.reactor is None:
            from twisted.internet import reactor
            self.reactor = reactor
        self.root = Path(self.root)
        self.conf_path = ensure_config(self.root, self.account, self.app_password)
        self.pki = ensure_pki(self.root, self.cafile)
        from OpenSSL import crypto
        from twisted.internet import ssl

        cert = crypto.load_certificate(crypto.FILETYPE_PEM, self.pki.cert.read_bytes())
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, self.pki.key.read_bytes())
        ca = crypto.load_certificate(crypto.FILETYPE_PEM, self.pki.ca_cert.read_bytes())
        self.tls_options = ssl.CertificateOptions(privateKey=key, certificate=cert,
                                                  extraCertChain=[ca])
        if self.keylog is not None:
            self.tls_options.getContext().set_keylog_callback(self.keylog)
        self._listener = None
        self._conf_mtime = None
        self._conf = GmailConfig.read(self.conf_path)
        self._watch = None

    def config(self) -> GmailConfig:
        try:
            st = self.conf_path.stat()
            mtime = (st.st_mtime_ns, st.st_size)    # two quick rewrites may share a time
        except OSError:
            mtime = None
        if mtime != self._conf_mtime:
            self._conf_mtime = mtime
            self._conf = GmailConfig.read(self.conf_path)
        return self._conf

    def start(self) -> int:
        """Listen (unless ``fault = refuse``); returns the port."""
        from twisted.internet.task import LoopingCall

        self.apply_config()
        if self._listener is None and self.port == 0:
            # fault = refuse at start: still pick the port we will use later.
            self._listen()
            self.apply_config()
        self._watch = LoopingCall(self.apply_config)
        self._watch.clock = self.reactor
        self._watch.start(1.0, now=False)
        return self.port

    def _listen(self) -> None:
        self._listener = listen_tcp(self.reactor, self.port, _Factory(self), interface=self.listen)
        self.port = self._listener.getHost().port

    def apply_config(self) -> None:
        """Listen or stop listening as ``fault`` says. It runs every second, and
        the lab's smtp(8) calls it before each connection to the simulator, so
        ``gponsim gmail fault none`` followed at once by ``gponsim queue --flush``
        finds it listening (and ``fault refuse`` followed by a send, refused)."""
        refuse = self.config().fault == "refuse"
        if refuse and self._listener is not None:
            listener, self._listener = self._listener, None
            listener.stopListening()
        elif not refuse and self._listener is None:
            try:
                self._listen()
            except Exception:  # noqa: BLE001 - port taken meanwhile: try again in a second
                if self._watch is None:
                    raise

    @defer.inlineCallbacks
    def stop(self):
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            yield listener.stopListening()

    # ------------------------------------------------------------- events
    def helo_guess(self, session: GmailSmtp) -> str:
        return getattr(session, "helo_name", None) or "mail.gponlab.local"

    def delivered(self, session: str, sender: str, rcpt: str, path: Path, tid: str) -> None:
        try:
            shown = path.relative_to(self.root)
        except ValueError:
            shown = path
        step = Step(t=time.time(), session=session, proto="relay", src="relay", dst="internet",
                    dir="internal", kind="event", verb="INTERNET",
                    line=f"{HOSTNAME} delivered the message for <{rcpt}> to the internet "
                         f"mailbox {shown}",
                    meta={"sender": sender, "recipient": rcpt, "mbox": str(path), "id": tid})
        self.emit(annotate(step))


# --------------------------------------------------------------------------
# The other direction: the internet delivers to the lab's port 25

def send_to_lab(*, host: str, port: int, sender: str, recipients: list[str], message: bytes,
                helo: str = "mail-sor-f41.google.com", starttls: bool = True,
                emit: Emit = null_emit, timeout: float = 30.0) -> str | None:
    """An internet MTA (Gmail's outbound servers, say) delivering to the lab.

    MTA to MTA on port 25: EHLO with its own name, STARTTLS when offered
    (opportunistic, certificate not checked, as most MTAs do), no AUTH,
    MAIL/RCPT/DATA, QUIT. Steps go ``internet`` → ``smtpd``. Returns the
    lab's queue id.
    """
    from gponsim.clients.smtp import SmtpClient

    def as_internet(step: Step) -> Step:
        if step.src == "client":
            step.src = "internet"
        if step.dst == "client":
            step.dst = "internet"
        return emit(step)

    client = SmtpClient(host, port, emit=as_internet, timeout=timeout,
                        session=new_session("internet"))
    try:
        client.expect(client.connect(), 220)
        client.ehlo(helo)
        if starttls and "STARTTLS" in client.extensions:
            client.starttls()
            client.ehlo(helo)
        mail = f"MAIL FROM:<{sender}>"
        if "SIZE" in client.extensions:
            mail += f" SIZE={len(message)}"
        client.expect(client.command(mail), 250)
        for rcpt in recipients:
            client.expect(client.command(f"RCPT TO:<{rcpt}>"), 250, 251)
        reply = client.expect(client.send_data(message), 250)
        client.quit()
    except BaseException:
        client.close()
        raise
    text = reply[-1]
    return text.rsplit("queued as ", 1)[1].strip() if "queued as " in text else None
