"""isync's mbsync against `gponsim serve`: STARTTLS on 143 with the lab's certificate
trusted, user2's INBOX and a second folder synced into a local Maildir, both ways.

mbsync is a client nobody here wrote: it logs in (AUTHENTICATE PLAIN after
STARTTLS), lists, selects, fetches with UID FETCH ranges, stores flags, appends
with APPENDUID (UIDPLUS) and reads the mailbox state back, like a user's
offline mail setup would against the lab.
"""

from __future__ import annotations

import email
import imaplib
import shutil
import smtplib
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest

from labproc import LabProcess, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mbsync") is None,
                       reason="mbsync (Debian package isync) is not installed"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    proc = LabProcess(tmp_path_factory.mktemp("mbsync") / "gponlab").start()
    yield proc
    proc.stop()


def send(lab, subject: str, body: str) -> None:
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=10) as s:
        s.starttls(context=ssl._create_unverified_context())
        s.login("user1", "pass")
        s.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                   f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@test>\r\n\r\n"
                   f"{body}".encode())


def imap(lab) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    m.starttls(ssl_context=ssl.create_default_context(
        cafile=str(lab.root / "etc/ssl/certs/ssl-cert-snakeoil.pem")))
    m.login("user2", "pass")
    return m


def server_messages(lab, folder: str) -> dict[str, set[str]]:
    """{subject: flags} of a folder, read through the lab's IMAP."""
    m = imap(lab)
    try:
        typ, _ = m.select(folder, readonly=True)
        assert typ == "OK"
        typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])")
        out = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            subject = email.message_from_bytes(item[1])["Subject"]
            flags = set(imaplib.ParseFlags(item[0]))
            out[subject] = {f.decode() for f in flags}
        return out
    finally:
        m.logout()


def maildir_messages(folder: Path) -> dict[str, tuple[Path, str]]:
    """{subject: (file, maildir flag letters)} of a local Maildir folder."""
    out = {}
    for sub in ("cur", "new"):
        for path in (folder / sub).glob("*"):
            subject = email.message_from_bytes(path.read_bytes())["Subject"]
            flags = path.name.rpartition(":2,")[2] if ":2," in path.name else ""
            out[subject] = (path, flags)
    return out


class Mbsync:
    def __init__(self, tmp_path: Path, lab) -> None:
        self.local = tmp_path / "Mail"
        self.local.mkdir()
        self.conf = tmp_path / "mbsyncrc"
        cert = lab.root / "etc/ssl/certs/ssl-cert-snakeoil.pem"
        self.conf.write_text(f"""\
IMAPAccount lab
Host 127.0.0.1
Port {lab.ports["imap"]}
User user2
Pass pass
SSLType STARTTLS
CertificateFile {cert}
AuthMechs PLAIN

IMAPStore lab-far
Account lab

MaildirStore lab-near
Path {self.local}/
Inbox {self.local}/INBOX
SubFolders Verbatim

Channel lab
Far :lab-far:
Near :lab-near:
Patterns INBOX Proyecto
Create Near
Sync All
SyncState *
Expunge None
""")

    def __call__(self) -> str:
        out = subprocess.run(["mbsync", "-c", str(self.conf), "-V", "lab"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, f"mbsync failed:\n{out.stdout}\n{out.stderr}"
        return out.stdout + out.stderr


def test_mbsync_starttls_two_folders_both_directions(lab, tmp_path):
    send(lab, "mbsync uno", "primero\r\n")
    send(lab, "mbsync dos", "segundo\r\nFrom the lab\r\n")
    lab.wait_for_mail("user2", 2)
    m = imap(lab)
    assert m.create("Proyecto")[0] == "OK"
    assert m.append("Proyecto", r"(\Flagged)", None,
                    b"Subject: en proyecto\r\nFrom: user1@gponlab.local\r\n\r\nnotas\r\n")[0] == "OK"
    m.logout()

    sync = Mbsync(tmp_path, lab)
    sync()
    inbox = maildir_messages(sync.local / "INBOX")
    assert set(inbox) == {"mbsync uno", "mbsync dos"}
    # The bytes arrived as the server has them (mboxo ">From" quoting kept, as Dovecot does).
    body = inbox["mbsync dos"][0].read_bytes()
    assert body.endswith(b"segundo\r\n>From the lab\r\n") or body.endswith(
        b"segundo\n>From the lab\n")
    assert b"X-UID" not in body and b"X-IMAPbase" not in body
    project = maildir_messages(sync.local / "Proyecto")
    assert set(project) == {"en proyecto"} and "F" in project["en proyecto"][1]

    # Near -> far: mark one message seen locally, and file a new one locally.
    path, flags = inbox["mbsync uno"]
    base = path.name.partition(":2,")[0]
    path.rename(path.parent.parent / "cur" / (base + ":2," + "".join(sorted(set(flags) | {"S"}))))
    new = sync.local / "INBOX" / "new" / f"1700000000.{uuid.uuid4().hex}.local"
    new.write_bytes(b"Subject: escrito en local\nFrom: user2@gponlab.local\n\nhola desde Maildir\n")
    # Far -> near: flag a message on the server.
    m = imap(lab)
    m.select("INBOX")
    typ, data = m.search(None, "SUBJECT", '"mbsync dos"')
    assert m.store(data[0].split()[0], "+FLAGS", r"(\Flagged)")[0] == "OK"
    m.logout()

    sync()
    on_server = server_messages(lab, "INBOX")
    assert set(on_server) == {"mbsync uno", "mbsync dos", "escrito en local"}
    assert "\\Seen" in on_server["mbsync uno"]
    assert "\\Seen" not in on_server["mbsync dos"]
    # The new message is really in the mbox file local(8) delivers to, once.
    box = lab.mbox("user2")
    subjects = [msg["Subject"] for msg in box]
    assert subjects.count("escrito en local") == 1 and len(subjects) == 3
    kept = next(msg for msg in box if msg["Subject"] == "escrito en local")
    assert kept.get_payload() == "hola desde Maildir\n"
    inbox = maildir_messages(sync.local / "INBOX")
    assert "F" in inbox["mbsync dos"][1] and "S" in inbox["mbsync uno"][1]

    # A third run changes nothing: the UIDs mbsync recorded are still the server's.
    sync()
    assert set(maildir_messages(sync.local / "INBOX")) == set(on_server)
    assert server_messages(lab, "INBOX") == on_server
    wait_until(lambda: "imap-login: Login: user=<user2>, method=PLAIN" in lab.log_text()
               and ", TLS, session=<" in lab.log_text(), 10, "STARTTLS logins in mail.log")
