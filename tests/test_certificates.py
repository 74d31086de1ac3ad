"""Each server presents the certificate its own configuration names:
Postfix ``smtpd_tls_cert_file`` (main.cf), Dovecot ``ssl_cert`` (10-ssl.conf).

On Debian 12 dovecot-core's postinst links ``/etc/dovecot/private/dovecot.pem``
to the snakeoil certificate Postfix uses (when both are absent), so a fresh
lab has one certificate behind two names; an instructor who puts another
certificate there sees two, as on a server set up that way.
"""

from __future__ import annotations

import hashlib
import imaplib
import os
import smtplib
import ssl

import pytest
from labproc import LabProcess

from gponsim.server import tls


def _context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def fingerprints(lab: LabProcess) -> tuple[str, str, str]:
    """SHA-256 of the certificate on 587 (after STARTTLS), 993 and 143 (after STARTTLS)."""
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=_context())
        smtp_cert = smtp.sock.getpeercert(binary_form=True)
    imaps = imaplib.IMAP4_SSL("127.0.0.1", lab.ports["imaps"], ssl_context=_context())
    imaps_cert = imaps.sock.getpeercert(binary_form=True)
    imaps.logout()
    imap = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    imap.starttls(ssl_context=_context())
    imap_cert = imap.sock.getpeercert(binary_form=True)
    imap.logout()
    return tuple(hashlib.sha256(c).hexdigest() for c in (smtp_cert, imaps_cert, imap_cert))


@pytest.mark.slow          # starts `gponsim serve`
def test_fresh_lab_links_dovecot_pem_to_snakeoil_as_debian(tmp_path):
    lab = LabProcess(tmp_path / "gponlab").start()
    try:
        smtp, imaps, imap = fingerprints(lab)
    finally:
        lab.stop()
    private = tmp_path / "gponlab/etc/dovecot/private"
    assert os.readlink(private / "dovecot.pem") == "../../ssl/certs/ssl-cert-snakeoil.pem"
    assert os.readlink(private / "dovecot.key") == "../../ssl/private/ssl-cert-snakeoil.key"
    assert smtp == imaps == imap


@pytest.mark.slow          # starts `gponsim serve`
def test_dovecot_serves_its_own_ssl_cert(tmp_path):
    root = tmp_path / "gponlab"
    cert, key = tls.make_self_signed("mail.gponlab.local")
    private = root / "etc/dovecot/private"
    private.mkdir(parents=True)
    (private / "dovecot.pem").write_bytes(cert)
    (private / "dovecot.key").write_bytes(key)
    lab = LabProcess(root).start()
    try:
        smtp, imaps, imap = fingerprints(lab)
    finally:
        lab.stop()
    ours = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.decode())).hexdigest()
    snakeoil = (root / "etc/ssl/certs/ssl-cert-snakeoil.pem").read_text()
    assert imaps == imap == ours
    assert smtp == hashlib.sha256(ssl.PEM_cert_to_DER_cert(snakeoil)).hexdigest() != ours
