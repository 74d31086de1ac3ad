"""Real Thunderbird against the lab, end to end.

Thunderbird (under its own Xvfb, fresh profile, driven through Marionette)
reads user2's mail over IMAP with STARTTLS on 143 and sends as user1 through
the submission port with STARTTLS, as the lab's students do. Everything is
checked from the lab's Steps: what Thunderbird really sent and got.

Needs ``thunderbird``, ``xvfb`` and ``xauth`` (apt); skipped without them.
"""

from __future__ import annotations

import json
import smtplib
import time
import uuid

from gponsim.steps import Step
from labproc import wait_until
from thunderbird_driver import ImapAccount, Profile, SmtpServer, Thunderbird, remote_loopback, thunderbird_marks

pytestmark = thunderbird_marks()

PASSWORD = "pass"


def dump(steps) -> str:
    return "\n".join(f"  {s.session} {s.dir} tls={s.tls} {s.line[:160]!r}" for s in steps)


def first(steps, pred, what, after=-1):
    """Index of the first step after index ``after`` matching ``pred``."""
    for i, s in enumerate(steps):
        if i > after and pred(s):
            return i
    raise AssertionError(f"no Step for {what} after #{after} in Thunderbird's session:\n{dump(steps)}")


def all_steps(lab) -> list[Step]:
    """The lab's Steps so far; a last line still being written is left for
    the next poll."""
    if not lab.steps_file.exists():
        return []
    text = lab.steps_file.read_text(encoding="utf-8")
    return [Step.from_dict(json.loads(line)) for line in text.split("\n")[:-1] if line.strip()]


def session_steps(lab, session, protos=("imap", "smtp", "tls")):
    """The client's side of one connection (without the auth-socket dialogue)."""
    return [s for s in all_steps(lab) if s.session == session and s.proto in protos]


def thunderbird_imap_session(lab) -> str | None:
    for s in all_steps(lab):
        if s.proto == "imap" and s.dir == "c2s" and s.verb == "ID" and "Thunderbird" in s.line:
            return s.session
    return None


def test_thunderbird_reads_with_idle_and_sends_through_submission(lab_factory, tmp_path):
    host = remote_loopback()
    lab = lab_factory(extra=["--listen", host]).start()

    def deliver(subject: str) -> None:
        with smtplib.SMTP(host, lab.ports["smtp"], timeout=10) as s:
            s.sendmail("prof@example.org", ["user2@gponlab.local"],
                       f"From: prof@example.org\r\nTo: user2@gponlab.local\r\nSubject: {subject}\r\n"
                       f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\nHola user2\r\n".encode())

    # One message already waiting, so the first sync has something to fetch.
    deliver("Bienvenida al laboratorio")
    lab.wait_for_mail("user2", 1)

    profile = Profile(
        tmp_path / "tb-profile",
        ImapAccount("user2", "user2@gponlab.local", host, lab.ports["imap"], socket_type=2,
                    full_name="User Two"),
        SmtpServer("user1", host, lab.ports["submission"], try_ssl=2),
        extra_identities=[("user1@gponlab.local", "User One")],
    )
    tb = Thunderbird(profile, tmp_path / "tb")
    started = time.monotonic()

    def phase(what: str) -> None:      # shown by pytest when the test fails
        print(f"[{time.monotonic() - started:5.1f}s] {what}")
    try:
        tb.start(timeout=60)
        cert = (lab.root / "etc/ssl/certs/ssl-cert-snakeoil.pem").read_text()
        version = tb.trust(host, [lab.ports["imap"], lab.ports["submission"]], cert,
                           [(f"imap://{host}", "user2", PASSWORD), (f"smtp://{host}", "user1", PASSWORD)])
        assert not any(s.proto == "imap" for s in all_steps(lab)), "Thunderbird connected before the test asked"
        phase(f"Thunderbird {version} up, password and certificate given")
        tb.check_inbox()

        # ---- IMAP: STARTTLS, AUTHENTICATE PLAIN in TLS, LIST, SELECT, FETCH, IDLE
        session = wait_until(lambda: thunderbird_imap_session(lab), 30, "Thunderbird's IMAP ID")

        def idling():
            st = session_steps(lab, session)
            return any(s.dir == "s2c" and s.line.startswith("+ idling") for s in st)
        wait_until(idling, 30, "Thunderbird to go IDLE")
        steps = session_steps(lab, session)
        phase("Thunderbird is IDLE")

        greet = first(steps, lambda s: s.dir == "s2c" and "Dovecot (Debian) ready." in s.line, "greeting")
        assert "STARTTLS" in steps[greet].line and not steps[greet].tls
        if host != "127.0.0.1":
            assert "LOGINDISABLED" in steps[greet].line, steps[greet].line
        i = first(steps, lambda s: s.dir == "c2s" and s.verb == "STARTTLS", "STARTTLS", greet)
        assert not steps[i].tls
        i = first(steps, lambda s: s.dir == "s2c" and s.status == "OK" and "Begin TLS" in s.line,
                  "OK Begin TLS", i)
        auth = first(steps, lambda s: s.dir == "c2s" and s.verb == "AUTHENTICATE", "AUTHENTICATE", i)
        assert steps[auth].tls and steps[auth].args.upper().startswith("PLAIN"), steps[auth].line
        assert steps[auth].args.strip().upper() == "PLAIN", "Thunderbird does not use SASL-IR"
        assert not any(s.dir == "c2s" and s.verb == "LOGIN" for s in steps), "no plaintext LOGIN"
        assert all(s.tls for s in steps[i + 1:] if s.kind in ("command", "reply", "data")), \
            f"everything after STARTTLS travels inside TLS:\n{dump(steps)}"
        sasl = [s for s in all_steps(lab) if s.session == session and s.proto == "sasl"
                and s.dir == "c2s" and s.verb == "AUTH"]
        assert sasl and "\tsecured" in sasl[0].line and "service=imap" in sasl[0].line, dump(sasl)
        if host != "127.0.0.1":
            assert f"lip={host}" in sasl[0].line and "rip=127.0.0.1" in sasl[0].line, sasl[0].line
        ok = first(steps, lambda s: s.dir == "s2c" and s.tag == steps[auth].tag, "the AUTHENTICATE reply", auth)
        assert steps[ok].status == "OK" and "Logged in" in steps[ok].line, steps[ok].line
        ident = first(steps, lambda s: s.dir == "c2s" and s.verb == "ID", "ID", ok)
        assert f'"version" "{version}"' in steps[ident].line
        lst = first(steps, lambda s: s.dir == "c2s" and (
            (s.verb == "LIST" and "return (special-use)" in s.line.lower()) or s.verb == "LSUB"),
            "LIST ... return (special-use) / LSUB", ok)
        sel = first(steps, lambda s: s.dir == "c2s" and s.verb == "SELECT" and "INBOX" in s.line, "SELECT INBOX", lst)
        first(steps, lambda s: s.dir == "s2c" and s.line.startswith("* 1 EXISTS"), "* 1 EXISTS on SELECT", sel)
        fetch = first(steps, lambda s: s.dir == "c2s" and s.verb == "UID FETCH",
                      "UID FETCH", sel)
        first(steps, lambda s: s.dir == "s2c" and "FETCH (UID 1" in s.line, "the FETCH of message 1", fetch)
        idle = first(steps, lambda s: s.dir == "c2s" and s.verb == "IDLE", "IDLE", fetch)
        assert steps[idle].tls

        # ---- new mail while idling: pushed as * 2 EXISTS, then fetched
        before = time.time()
        deliver("Nuevo correo durante IDLE")
        lab.wait_for_mail("user2", 2)

        def pushed_and_fetched():
            st = session_steps(lab, session)
            try:
                push = first(st, lambda s: s.dir == "s2c" and s.t >= before and s.line == "* 2 EXISTS",
                             "* 2 EXISTS", idle)
                done = first(st, lambda s: s.dir == "c2s" and s.line == "DONE", "DONE", push)
                first(st, lambda s: s.dir == "c2s" and s.verb == "UID FETCH" and "HEADER.FIELDS" in s.line.upper(),
                      "UID FETCH of the new headers", done)
                first(st, lambda s: s.dir == "s2c" and "FETCH (UID 2" in s.line, "the FETCH of message 2", done)
            except AssertionError:
                return None
            return st
        phase("second message delivered")
        steps = wait_until(pushed_and_fetched, 30, "the push (* 2 EXISTS during IDLE) and Thunderbird's fetch")
        push = first(steps, lambda s: s.dir == "s2c" and s.t >= before and s.line == "* 2 EXISTS", "push", idle)
        assert steps[push].verb == "IDLE", "the EXISTS arrived while Thunderbird was idling"
        assert not any(s.dir == "c2s" for s in steps[idle + 1:push]), \
            f"nothing from Thunderbird between IDLE and the push (it was not polling):\n{dump(steps[idle:push + 1])}"
        wait_until(lambda: "Nuevo correo durante IDLE" in (tb.inbox_subjects() or []), 30,
                   "the new message in Thunderbird's INBOX")

        phase("pushed, fetched, shown in Thunderbird's INBOX")

        # ---- user1 sends through submission: EHLO, STARTTLS, AUTH PLAIN in TLS, MAIL/RCPT/DATA
        subject = f"Enviado desde Thunderbird {uuid.uuid4().hex[:8]}"
        assert tb.send("user1@gponlab.local", "user2@gponlab.local", subject,
                       "Hola user2, esto lo manda Thunderbird.\r\n")
        phase("Thunderbird reports the message sent")
        msgs = lab.wait_for_mail("user2", 3, timeout=30)
        sent = [m for m in msgs if m["Subject"] == subject]
        assert len(sent) == 1, [m["Subject"] for m in msgs]
        assert "user1@gponlab.local" in sent[0]["From"]
        assert "Thunderbird" in (sent[0]["User-Agent"] or ""), sent[0]["User-Agent"]
        assert "ESMTPSA" in sent[0]["Received"], sent[0]["Received"]

        def submission_sessions():
            return {s.session for s in all_steps(lab) if s.proto == "smtp" and s.dir == "c2s"
                    and s.session.startswith("submission") and s.verb == "MAIL" and "user1@" in s.line}
        sub_sessions = wait_until(submission_sessions, 15, "Thunderbird's MAIL FROM Step on submission")
        assert len(sub_sessions) == 1, sub_sessions
        [sub] = sub_sessions
        steps = wait_until(lambda: (st := session_steps(lab, sub)) and any(
            s.dir == "c2s" and s.verb == "QUIT" for s in st) and st, 15, "Thunderbird's QUIT")
        phase("Thunderbird's QUIT seen")
        e1 = first(steps, lambda s: s.dir == "c2s" and s.verb == "EHLO", "EHLO")
        assert not steps[e1].tls and steps[e1].args.startswith("["), steps[e1].line
        st = first(steps, lambda s: s.dir == "c2s" and s.verb == "STARTTLS", "STARTTLS", e1)
        first(steps, lambda s: s.dir == "s2c" and s.code == 220 and s.verb == "STARTTLS", "220 Ready", st)
        e2 = first(steps, lambda s: s.dir == "c2s" and s.verb == "EHLO", "EHLO after STARTTLS", st)
        assert steps[e2].tls
        au = first(steps, lambda s: s.dir == "c2s" and s.verb == "AUTH", "AUTH", e2)
        assert steps[au].tls and steps[au].args.upper().startswith("PLAIN "), steps[au].line
        first(steps, lambda s: s.dir == "s2c" and s.code == 235 and s.tls, "235 2.7.0", au)
        mail = first(steps, lambda s: s.dir == "c2s" and s.verb == "MAIL", "MAIL", au)
        assert steps[mail].tls
        assert steps[mail].line.startswith("MAIL FROM:<user1@gponlab.local> BODY=8BITMIME SIZE="), steps[mail].line
        rcpt = first(steps, lambda s: s.dir == "c2s" and s.verb == "RCPT", "RCPT", mail)
        assert steps[rcpt].line == "RCPT TO:<user2@gponlab.local>" and steps[rcpt].tls
        data = first(steps, lambda s: s.dir == "c2s" and s.verb == "DATA", "DATA", rcpt)
        queued = first(steps, lambda s: s.dir == "s2c" and s.code == 250 and "queued as" in s.line, "250 queued", data)
        assert all(s.tls for s in steps[e2:queued + 1] if s.kind in ("command", "reply", "data"))
    finally:
        tb.stop()
        phase("Thunderbird and Xvfb stopped")
    assert tb.proc.poll() is not None and tb.xvfb.poll() is not None
    assert time.monotonic() - started < 110
