"""A scripted student: the lab document's practice done with real clients.

What Thunderbird does, with Python's own clients (urllib, smtplib, imaplib),
from the student's own address (``source``: a 127.0.0.x on one computer, so
every "PC" of the class has its own), with pauses like a person's and, when
asked, the usual mistakes:

``certificate``  first connect checking the certificate (refused: it is
                 self-signed), then accept it
``530``          first send without STARTTLS (530 5.7.0)
``535``          first log in with a wrong password (535), then the right one
``535-stuck``    only ever the wrong password: nothing is sent
``imap-auth``    first read with a wrong password (NO [AUTHENTICATIONFAILED])

Used by the tests and ``bench/class.py``; a teacher can try the dashboard
with it (``python -m gponsim.classroom.practice``). Every command's time is
recorded in ``timings`` (seconds, by command) for the bench.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid

MISTAKES = ("certificate", "530", "535", "535-stuck", "imap-auth")


@dataclass
class Account:
    user: str
    password: str


@dataclass
class Practice:
    host: str
    ports: dict
    sender: Account
    reader: Account
    send_to: str                      # the address the message goes to
    source: str = "127.0.0.1"         # the student's "PC"
    mistakes: tuple = ()
    pause: float = 0.0                # seconds between actions, like a person
    domain: str = "gponlab.local"
    subject: str = ""
    timings: list = field(default_factory=list)     # (command, seconds, it succeeded)
    log: list = field(default_factory=list)         # what happened, for a test's message

    def _wait(self) -> None:
        if self.pause:
            time.sleep(self.pause)

    def _timed(self, name: str, fn, *args, **kw):
        start = time.perf_counter()
        ok = False
        try:
            result = fn(*args, **kw)
            ok = True
            return result
        finally:
            self.timings.append((name, time.perf_counter() - start, ok))

    # ------------------------------------------------------------------ steps

    def autoconfig(self, address: str) -> str:
        """What Thunderbird's account wizard asks first (from the student's address)."""
        url = (f"http://{self.host}:{self.ports['autoconfig']}/mail/config-v1.1.xml"
               f"?emailaddress={address}")
        opener = urllib.request.build_opener(_SourceHandler(self.source))

        def fetch() -> str:
            with opener.open(url, timeout=10) as reply:
                return reply.read().decode()
        body = self._timed("autoconfig", fetch)
        self.log.append(f"autoconfig {address}: {len(body)} bytes")
        return body

    def refuse_certificate(self) -> None:
        """Connect checking the certificate, as Thunderbird does before the exception."""
        context = ssl.create_default_context()
        sock = self._timed("connect", socket.create_connection, (self.host, self.ports["imaps"]), 10,
                           (self.source, 0))
        try:
            context.wrap_socket(sock, server_hostname="mail." + self.domain)
            self.log.append("certificate: accepted?!")
        except ssl.SSLError as exc:
            self.log.append(f"certificate refused: {exc.reason}")
        finally:
            sock.close()

    def _smtp(self) -> smtplib.SMTP:
        return self._timed("connect", smtplib.SMTP, self.host, self.ports["submission"], timeout=20,
                           source_address=(self.source, 0))

    def send(self, password: str, starttls: bool = True) -> str | None:
        """Send the practice's message; the queue id, or None when refused."""
        smtp = self._smtp()
        try:
            self._timed("EHLO", smtp.ehlo, "student-pc")
            if starttls:
                self._timed("STARTTLS", smtp.starttls, context=_accepting())
                self._timed("EHLO", smtp.ehlo, "student-pc")
            try:
                if starttls:
                    self._timed("AUTH", smtp.login, self.sender.user, password)
                msg = EmailMessage()
                msg["From"] = f"{self.sender.user}@{self.domain}"
                msg["To"] = self.send_to
                msg["Subject"] = self.subject or f"Hola, soy {self.sender.user}"
                msg["Message-ID"] = make_msgid(domain=self.domain)
                msg.set_content(f"Mensaje de la práctica de {self.sender.user}.\n")
                self._timed("MAIL", smtp.mail, msg["From"])
                code, _ = self._timed("RCPT", smtp.rcpt, self.send_to)
                if code >= 400:
                    self.log.append(f"send: RCPT {code}")
                    return None
                code, reply = self._timed("DATA", smtp.data, msg.as_bytes())
                self.log.append(f"send: {code} {reply.decode()}")
                return reply.decode().rsplit(" ", 1)[-1] if code == 250 else None
            except smtplib.SMTPException as exc:
                self.log.append(f"send: {exc}")
                return None
        finally:
            try:
                self._timed("QUIT", smtp.quit)
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def read(self, password: str, want: int = 1, wait: float = 15.0) -> int:
        """Open the reader's INBOX (STARTTLS), and download new messages' headers and
        bodies as Thunderbird does; the number of messages downloaded."""
        deadline = time.monotonic() + wait
        while True:
            imap = _SourceIMAP(self.source, self.host, self.ports["imap"])
            try:
                self._timed("STARTTLS", imap.starttls, _accepting())
                try:
                    self._timed("LOGIN", imap.login, self.reader.user, password)
                except imaplib.IMAP4.error as exc:
                    self.log.append(f"read: {exc}")
                    return -1
                _typ, data = self._timed("SELECT", imap.select, "INBOX")
                count = int(data[0])
                if count >= want or time.monotonic() > deadline:
                    if count:
                        self._timed("FETCH", imap.fetch, f"1:{count}",
                                    "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER])")
                        self._timed("FETCH", imap.fetch, str(count), "(BODY.PEEK[])")
                    self.log.append(f"read: {count} message(s)")
                    return count
            finally:
                try:
                    self._timed("LOGOUT", imap.logout)
                except (imaplib.IMAP4.error, OSError):
                    pass
            time.sleep(0.5)

    # ------------------------------------------------------------------ the practice

    def run(self) -> dict:
        m = set(self.mistakes)
        self.autoconfig(f"{self.sender.user}@{self.domain}")
        self._wait()
        if self.reader.user != self.sender.user:
            self.autoconfig(f"{self.reader.user}@{self.domain}")
            self._wait()
        if "certificate" in m:
            self.refuse_certificate()
            self._wait()
        queued = None
        if "530" in m:
            self.send(self.sender.password, starttls=False)
            self._wait()
        if "535" in m or "535-stuck" in m:
            self.send(self.sender.password + "x")
            self._wait()
        if "535-stuck" not in m:
            queued = self.send(self.sender.password)
            self._wait()
        if "imap-auth" in m:
            self.read(self.reader.password + "x", want=0)
            self._wait()
        got = self.read(self.reader.password, want=0 if queued is None else 1)
        return {"queued": queued, "read": got, "log": self.log}


def _accepting() -> ssl.SSLContext:
    """The client after the security exception: the lab's certificate is accepted."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _SourceIMAP(imaplib.IMAP4):
    """imaplib from a chosen source address (a student's PC)."""

    def __init__(self, source: str, host: str, port: int) -> None:
        self._source = source
        super().__init__(host, port, timeout=20)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, (self._source, 0))


class _SourceHandler(urllib.request.HTTPHandler):
    def __init__(self, source: str) -> None:
        super().__init__()
        self._source = source

    def http_open(self, req):
        import http.client

        source = self._source
        return self.do_open(lambda host, **kw: http.client.HTTPConnection(
            host, source_address=(source, 0), **kw), req)


def main(argv: list[str] | None = None) -> int:
    """``python -m gponsim.classroom.practice CLASS_DIR [--student student01] ...``: every
    student (or one) of a running class does the practice, for trying the dashboard."""
    import argparse
    import threading

    from gponsim.classroom.roster import Roster

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("class_dir")
    parser.add_argument("--student", action="append")
    parser.add_argument("--pause", type=float, default=2.0)
    parser.add_argument("--mistake", action="append", default=[], choices=MISTAKES)
    args = parser.parse_args(argv)
    from pathlib import Path

    folder = Path(args.class_dir)
    info = json.loads((folder / "class.json").read_text())
    roster = Roster.read_accounts(folder / "accounts.csv", info.get("domain", "gponlab.local"))
    threads = []
    for n, s in enumerate(roster.students, 11):
        if args.student and s.login not in args.student:
            continue
        p = Practice(host=info["connect"], ports=info["ports"],
                     sender=Account(s.login, roster.passwords[s.login]),
                     reader=Account(s.reader, roster.passwords[s.reader]),
                     send_to=roster.address(s.send_to), source=f"127.0.0.{n}",
                     mistakes=tuple(args.mistake), pause=args.pause)
        t = threading.Thread(target=p.run, name=s.login)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
