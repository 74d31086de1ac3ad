"""TLS for the lab: a snakeoil-like certificate and server contexts with key logging.

On first start the lab gets a self-signed certificate for mail.gponlab.local
(SANs: that name, localhost, 127.0.0.1, ::1), like Debian's
``ssl-cert-snakeoil``, kept in the lab root where main.cf and 10-ssl.conf say.

``--keylog FILE`` (or ``SSLKEYLOGFILE``) makes every server context write its
TLS secrets in NSS key-log format, so Wireshark or ``gponsim analyze`` can
decrypt a capture of the lab.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

DEFAULT_NAMES = ("mail.gponlab.local", "localhost")
DEFAULT_IPS = ("127.0.0.1", "::1")


class TLSSetupError(Exception):
    """The certificate or key cannot be read, written or used."""


def make_self_signed(hostname: str, names=DEFAULT_NAMES, ips=DEFAULT_IPS,
                     days: int = 3650) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) of a self-signed RSA-2048 certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    dns = [hostname] + [n for n in names if n != hostname]
    san = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()))


def ensure_certificate(cert_path: Path, key_path: Path, hostname: str) -> bool:
    """Create the certificate and key when missing; True if they were created."""
    if cert_path.exists() and key_path.exists():
        return False
    cert_pem, key_pem = make_self_signed(hostname)
    try:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        cert_path.write_bytes(cert_pem)
    except OSError as exc:
        raise TLSSetupError(f"cannot write the lab certificate {cert_path}: {exc.strerror}") from exc
    return True


def link_certificate(cert_path: Path, key_path: Path, target_cert: Path, target_key: Path) -> bool:
    """Make ``cert_path``/``key_path`` symbolic links to the target pair, as
    Debian's dovecot-core does on a new installation (``dovecot.pem`` ->
    ``ssl-cert-snakeoil.pem``), unless either exists. The links are relative,
    so they stay inside the lab root. True if they were made."""
    if cert_path.exists() or key_path.exists() or cert_path.is_symlink() or key_path.is_symlink():
        return False
    try:
        for link, target in ((cert_path, target_cert), (key_path, target_key)):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(target, link.parent))
    except OSError as exc:
        raise TLSSetupError(f"cannot link {cert_path} to {target_cert}: {exc.strerror}") from exc
    return True


class KeyLog:
    """Appends NSS key-log lines (``CLIENT_RANDOM ...``, TLS 1.3 secrets)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab", buffering=0)
        self._lock = threading.Lock()

    def __call__(self, connection, line: bytes) -> None:
        with self._lock:
            self._fh.write(line + b"\n")

    def close(self) -> None:
        self._fh.close()


#: The key-exchange groups of Debian 12's OpenSSL 3.0, in its default order.
#: The OpenSSL bundled with Python's cryptography package is newer and would
#: prefer a post-quantum hybrid (X25519MLKEM768) that the lab's Postfix and
#: Dovecot cannot negotiate; their logs say ``key-exchange X25519``.
DEBIAN_GROUPS = b"X25519:P-256:X448:P-521:P-384:ffdhe2048:ffdhe3072:ffdhe4096:ffdhe6144:ffdhe8192"


def like_debian_openssl(context) -> None:
    """Offer (and accept) only what Debian 12's OpenSSL 3.0 does by default."""
    from OpenSSL._util import lib

    if hasattr(lib, "SSL_CTX_set1_curves_list"):
        lib.SSL_CTX_set1_curves_list(context._context, DEBIAN_GROUPS)


def server_options(cert_path: Path, key_path: Path, keylog: KeyLog | None = None):
    """A Twisted TLS server context factory for the lab's certificate."""
    from OpenSSL import crypto
    from twisted.internet import ssl

    try:
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, cert_path.read_bytes())
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_path.read_bytes())
    except (OSError, crypto.Error) as exc:
        raise TLSSetupError(f"cannot load the TLS certificate {cert_path} / key {key_path}: {exc}") from exc
    options = ssl.CertificateOptions(privateKey=key, certificate=cert)
    # CertificateOptions builds its context once and hands out that one.
    like_debian_openssl(options.getContext())
    if keylog is not None:
        options.getContext().set_keylog_callback(keylog)
    return options


def listening_factory(factory, tls_options, implicit_tls: bool):
    """The factory to listen with: wrapped in TLS from the first byte on an
    implicit-TLS port (993, 995; 465 with smtpd_tls_wrappermode = yes)."""
    if not implicit_tls:
        return factory
    from twisted.protocols.tls import TLSMemoryBIOFactory
    return TLSMemoryBIOFactory(tls_options, False, factory)


def describe_connection(transport) -> tuple[str, str, int, int] | None:
    """(protocol version, cipher, bits used, bits of the algorithm) of a TLS transport."""
    try:
        conn = transport.getHandle()
        version = conn.get_protocol_version_name()
        cipher = conn.get_cipher_name()
        bits = conn.get_cipher_bits()
    except Exception:  # noqa: BLE001 - not a TLS transport (yet)
        return None
    if not cipher:
        return None
    # OpenSSL names TLS 1.3 suites the IANA way (TLS_AES_256_GCM_SHA384) and
    # TLS 1.2 suites its own way; Postfix logs exactly these names.
    return version, cipher, bits, bits


_GROUP_NAMES = {"x25519": "X25519", "x448": "X448", "secp256r1": "prime256v1",
                "p-256": "prime256v1", "secp384r1": "secp384r1", "p-384": "secp384r1",
                "secp521r1": "secp521r1", "p-521": "secp521r1"}


def key_exchange_summary(transport, server_side: bool) -> str:
    """What Postfix 3.7 adds after ``(256/256 bits)`` at ``*_tls_loglevel`` >= 1
    (``tls_log_summary``): `` key-exchange X25519 server-signature RSA-PSS
    (2048 bits) server-digest SHA256``. The group comes from OpenSSL; the
    server signature from the server certificate's key (RSA keys sign with
    RSA-PSS in TLS 1.3 and with every client of today in TLS 1.2)."""
    try:
        from OpenSSL._util import ffi, lib

        conn = transport.getHandle()
        group = ""
        if hasattr(lib, "SSL_get0_group_name"):
            name = lib.SSL_get0_group_name(conn._ssl)
            group = ffi.string(name).decode() if name != ffi.NULL else ""
        cert = conn.get_certificate() if server_side else conn.get_peer_certificate()
        key = cert.get_pubkey() if cert is not None else None
    except Exception:  # noqa: BLE001 - not a TLS transport
        return ""
    # Postfix prints OpenSSL 3.0's short name of the group (OBJ_nid2sn)
    group = _GROUP_NAMES.get(group.lower(), group)
    text = f" key-exchange {group}" if group else ""
    if key is not None:
        from OpenSSL import crypto

        kind = {crypto.TYPE_RSA: "RSA-PSS"}.get(key.type())
        if kind:
            text += f" server-signature {kind} ({key.bits()} bits) server-digest SHA256"
    return text


#: TLS alerts by the text OpenSSL gives them (RFC 8446 §6, ssl/ssl_err.c).
ALERTS = {
    "sslv3 alert unexpected message": 10, "sslv3 alert bad record mac": 20,
    "sslv3 alert handshake failure": 40, "sslv3 alert bad certificate": 42,
    "sslv3 alert unsupported certificate": 43, "sslv3 alert certificate revoked": 44,
    "sslv3 alert certificate expired": 45, "sslv3 alert certificate unknown": 46,
    "sslv3 alert illegal parameter": 47, "tlsv1 alert unknown ca": 48,
    "tlsv1 alert access denied": 49, "tlsv1 alert decode error": 50,
    "tlsv1 alert decrypt error": 51, "tlsv1 alert protocol version": 70,
    "tlsv1 alert insufficient security": 71, "tlsv1 alert internal error": 80,
    "tlsv1 alert user cancelled": 90, "tlsv1 alert no renegotiation": 100,
    "tlsv13 alert missing extension": 109, "tlsv1 unsupported extension": 110,
    "tlsv1 unrecognized name": 112, "tlsv1 alert no application protocol": 120,
}

#: OpenSSL's reason codes (ssl/ssl_err.c) of what a client that is not
#: speaking TLS, or not one the server accepts, makes a handshake fail with.
REASONS = {
    "http request": 156, "no shared cipher": 193, "packet length too long": 198,
    "unsupported protocol": 258, "wrong version number": 267,
}


def handshake_failure(reason) -> tuple[str, list[str]]:
    """Why a server-side TLS handshake failed, as Postfix's ``tls_server.c``
    and ``tls_print_errors()`` log it with Debian 12's OpenSSL 3.0:

    - the client sent an alert (it refused the certificate):
      ``("-1", ["error:0A000418:SSL routines::tlsv1 alert unknown ca:../ssl/record/rec_layer_s3.c:1601:SSL alert number 48:"])``;
    - it hung up: ``("lost connection", [])``.

    ``reason`` is the Failure Twisted gave ``connectionLost``.
    """
    from OpenSSL import SSL

    value = getattr(reason, "value", None)
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        lines = []
        for lib_name, _func, text in value.args[0]:
            alert = ALERTS.get(text)
            if alert is not None:
                code = 0x0A000000 | (1000 + alert)
                lines.append(f"error:{code:08X}:{lib_name}::{text}:"
                             f"../ssl/record/rec_layer_s3.c:1601:SSL alert number {alert}:")
            else:
                code = 0x0A000000 | REASONS.get(text, 0)
                lines.append(f"error:{code:08X}:{lib_name}::{text}")
        return "-1", lines
    return "lost connection", []


def accept_error(reason) -> str:
    """A failed server-side handshake as Dovecot's ssl-iostream words it
    (``openssl_iostream_error()``: OpenSSL's error string, then its data):
    ``SSL_accept() failed: error:0A000418:SSL routines::tlsv1 alert unknown ca:
    SSL alert number 48``; "" when the client just hung up."""
    _status, problems = handshake_failure(reason)
    if not problems:
        return ""
    first = problems[0]
    text, _, where = first.partition(":../")
    data = where.rstrip(":").rsplit(":", 1)[-1] if where else ""
    return f"SSL_accept() failed: {text}" + (f": {data}" if data else "")


def alert_text(reason) -> str | None:
    """The alert a client sent during the handshake (OpenSSL's text), if any."""
    from OpenSSL import SSL

    value = getattr(reason, "value", None)
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        for _lib, _func, text in value.args[0]:
            if text in ALERTS:
                return text
    return None
