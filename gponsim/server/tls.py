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
    if keylog is not None:
        # CertificateOptions builds its context once and hands out that one.
        options.getContext().set_keylog_callback(keylog)
    return options


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
