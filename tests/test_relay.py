"""Outgoing mail: lab (587) -> queue -> smtp(8) -> Gmail simulator -> "internet" mbox.

Real processes on loopback ports (`gponsim serve`), real TLS, real files;
queue timings in seconds come from a test main.cf.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import subprocess
import sys
from pathlib import Path

import pytest

from gponsim.clients.smtp import build_message, send_mail
from gponsim.config import init_config
from gponsim.server.sims import gmail as gm
from gponsim.server.postfix.queuefile import list_queue
from labproc import LabProcess, wait_until

pytestmark = pytest.mark.slow          # end to end: `gponsim serve` and the Gmail simulator

GMAIL_535 = ("SASL authentication failed; server smtp.gmail.com[127.0.0.1] said: "
             "535-5.7.8 Username and Password not accepted. For more information, go to?"
             "535 5.7.8  https://support.google.com/mail/?p=BadCredentials ")


def make_profile(tmp_path: Path, password: str = "abcdefghijklmnop", **params: str) -> Path:
    conf = tmp_path / "profile"
    init_config(conf)
    (conf / "postfix" / "sasl_passwd").write_text(
        f"[smtp.gmail.com]:587 gponlab.relay@gmail.com:{password}\n")
    if params:
        with open(conf / "postfix" / "main.cf", "a") as fh:
            fh.write("\n# test timings\n")
            for name, value in params.items():
                fh.write(f"{name} = {value}\n")
    return conf


def internet(root: Path, address: str) -> list:
    path = gm.internet_mbox(root, address)
    if not path.exists():
        return []
    box = mailbox.mbox(str(path), create=False)
    try:
        return list(box)
    finally:
        box.close()


def wait_internet(root: Path, address: str, count: int = 1, timeout: float = 20.0) -> list:
    return wait_until(lambda: len(m := internet(root, address)) >= count and m, timeout,
                      f"{count} message(s) for {address} in the internet mbox")


def submit(lab: LabProcess, to: str, subject: str = "Prueba relay", body: str = "Hola Gmail.\n",
           user: str = "user1") -> str:
    sender = f"{user}@gponlab.local"
    message = build_message(sender, [to], subject, body)
    result = send_mail(host="127.0.0.1", port=lab.ports["submission"], sender=sender,
                       recipients=[to], message=message, user=user, password="pass")
    return result.queue_id


def gponsim(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gponsim", *args], capture_output=True,
                          text=True, timeout=60, check=check)


def test_user1_to_internet_every_hop(tmp_path):
    lab = LabProcess(tmp_path / "gponlab", config_dir=make_profile(tmp_path)).start()
    try:
        assert "gmail" in lab.ports
        qid = submit(lab, "someone@example.org", subject="Hola internet",
                     body="Linea 1\n.punto al principio\nFrom the lab\n")
        [msg] = wait_internet(lab.root, "someone@example.org")
        wait_until(lambda: f"{qid}: removed" in lab.log_text(), 10, "qmgr removed")
        log = lab.log_text()
    finally:
        lab.stop()
    # the message, intact, with the Received chain: Gmail's on top of the lab's
    assert msg["Subject"] == "Hola internet"
    assert msg["From"] == "user1@gponlab.local"
    assert msg["Return-Path"] == "<user1@gponlab.local>"
    received = msg.get_all("Received")
    assert len(received) == 2
    assert received[0].startswith("from mail.gponlab.local ([127.0.0.1])")
    assert "by smtp.gmail.com with ESMTPSA id" in received[0]
    assert "(version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256);" in received[0]
    assert f"by mail.gponlab.local (Postfix) with ESMTPSA id {qid}" in received[1]
    # mboxo, as local(8) writes it: "From " at a line start is quoted as ">From "
    assert msg.get_payload() == "Linea 1\n.punto al principio\n>From the lab\n"
    # mail.log as Postfix writes it: with the lab's smtp_tls_loglevel (0)
    # smtp(8) logs no TLS summary; the Step narrates the handshake anyway
    assert "TLS connection established" not in log
    sent = [ln for ln in log.splitlines() if f"{qid}: to=<someone@example.org>" in ln]
    assert len(sent) == 1
    assert "relay=smtp.gmail.com[127.0.0.1]:587, delay=" in sent[0]
    assert ", dsn=2.0.0, status=sent (250 2.0.0 OK  " in sent[0] and sent[0].endswith(" - gsmtp)")
    # every hop in the Steps
    steps = lab.steps()
    hops = [(s.src, s.dst, s.verb) for s in steps]
    assert ("client", "smtpd", "DATA") in hops
    assert ("qmgr", "smtp", "RELAY") in hops
    relay = [s for s in steps if s.proto == "smtp" and {s.src, s.dst} == {"smtp", "relay"}]
    commands = [s.line.split()[0] for s in relay if s.kind == "command"]
    assert commands == ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]
    trusted = next(s for s in steps if s.verb == "TRUSTED")
    assert trusted.meta["logged"] is False
    auth = next(s for s in relay if s.verb == "AUTH" and s.kind == "command")
    assert auth.line == "AUTH PLAIN ********" and auth.secret
    replies = [s.code for s in relay if s.kind == "reply"]
    assert replies == [220, 250, 220, 250, 235, 250, 250, 354, 250, 221]
    assert all(s.key for s in relay), [s.line for s in relay if not s.key]
    assert any(s.key and s.key.startswith("relay.") for s in relay)
    ehlo2 = [s for s in relay if s.kind == "reply" and s.verb == "EHLO"][1]
    assert "250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH" in ehlo2.line
    assert ehlo2.tls
    events = [(s.proto, s.src, s.dst, s.verb) for s in steps]
    assert ("relay", "smtp", "relay", "SIMULATOR") in events
    assert ("tls", "smtp", "relay", "TRUSTED") in events
    assert ("relay", "relay", "internet", "INTERNET") in events
    assert ("relay", "smtp", "relay", "SENT") in events


def test_wrong_relay_password_is_deferred_then_flushed(tmp_path):
    conf = make_profile(tmp_path, password="wrong-password")
    lab = LabProcess(tmp_path / "gponlab", config_dir=conf).start()
    try:
        qid = submit(lab, "bob@example.org")
        wait_until(lambda: f"{qid}: to=<bob@example.org>" in lab.log_text(), 15, "a verdict")
        line = next(ln for ln in lab.log_text().splitlines()
                    if f"{qid}: to=<bob@example.org>" in ln)
        assert "relay=smtp.gmail.com[127.0.0.1]:587" in line
        assert f", dsn=4.7.8, status=deferred ({GMAIL_535}" in line
        assert line.endswith(" - gsmtp)")
        wait_until(lambda: [e for e in list_queue(lab.root) if e.state == "deferred"], 10,
                   "the message in the deferred queue")
        mailq = gponsim("queue", "--lab-root", str(lab.root)).stdout
        assert qid in mailq and "bob@example.org" in mailq and "SASL authentication failed" in mailq
        assert internet(lab.root, "bob@example.org") == []
        # Gmail's own reply, narrated
        reply = wait_until(lambda: next((s for s in lab.steps()
                                         if s.code == 535 and s.src == "relay"), None),
                           10, "Gmail's 535 in the Steps")
        assert reply.key == "smtp.reply.535-5.7.8" and "BadCredentials" in reply.line
        # fix the password (postmap is not needed: gponsim reads the text), flush
        (conf / "postfix" / "sasl_passwd").write_text(
            "[smtp.gmail.com]:587 gponlab.relay@gmail.com:abcdefghijklmnop\n")
        out = gponsim("queue", "--flush", "--lab-root", str(lab.root))
        assert "1 deferred message" in out.stderr
        wait_internet(lab.root, "bob@example.org")
        wait_until(lambda: "status=sent" in lab.log_text(), 10, "status=sent")
        assert gponsim("queue", "--lab-root", str(lab.root)).stdout == "Mail queue is empty\n"
    finally:
        lab.stop()


def test_normal_gmail_password_gets_534(tmp_path):
    lab = LabProcess(tmp_path / "gponlab",
                     config_dir=make_profile(tmp_path, password=gm.DEFAULT_NORMAL_PASSWORD)).start()
    try:
        qid = submit(lab, "bob@example.org")
        wait_until(lambda: f"{qid}: to=<bob@example.org>" in lab.log_text(), 15, "a verdict")
    finally:
        lab.stop()
    assert ("dsn=4.7.9, status=deferred (SASL authentication failed; server "
            "smtp.gmail.com[127.0.0.1] said: 534-5.7.9 Application-specific password required. "
            "For more information, go to?534 5.7.9  "
            "https://support.google.com/mail/?p=InvalidSecondFactor ") in lab.log_text()


def test_relay_down_deferred_then_delivered_on_retry_and_delete(tmp_path):
    conf = make_profile(tmp_path, queue_run_delay="1s", minimal_backoff_time="1s",
                        maximal_backoff_time="1s")
    root = tmp_path / "gponlab"
    gm.set_fault(root, "refuse")
    lab = LabProcess(root, config_dir=conf).start()
    try:
        keep = submit(lab, "carol@example.org", subject="keep")
        drop = submit(lab, "dave@example.org", subject="drop")
        refused = "connect to smtp.gmail.com[127.0.0.1]:587: Connection refused"
        wait_until(lambda: lab.log_text().count(f"dsn=4.4.1, status=deferred ({refused})") >= 2,
                   15, "two deferrals")
        assert "postfix/smtp[" in lab.log_text() and f"{keep}: to=<carol@example.org>, relay=none" \
            in lab.log_text()
        # postsuper -d on a deferred message (retry until it is not active)
        def deleted():
            r = gponsim("queue", "--delete", drop, "--lab-root", str(root), check=False)
            return r.returncode == 0 and f"postsuper: {drop}: removed" in r.stdout
        wait_until(deleted, 15, "postsuper -d")
        gm.set_fault(root, "none")
        wait_internet(root, "carol@example.org")
        [msg] = internet(root, "carol@example.org")
        assert msg["Subject"] == "keep"
        wait_until(lambda: f"{keep}: removed" in lab.log_text(), 10, "removed")
        assert internet(root, "dave@example.org") == []
        assert "postfix/postsuper[" in lab.log_text() and f"{drop}: removed" in lab.log_text()
    finally:
        lab.stop()


def test_gmail_fault_is_seen_by_the_next_connection(tmp_path):
    """README's sequence, each command right after the previous one: `gmail
    fault refuse`, a send (deferred), `gmail fault none`, `queue --flush`
    (delivered). The simulator's once-a-second look at its conf must not leave
    a window in which the lab's smtp(8) sees the old fault."""
    root = tmp_path / "gponlab"
    lab = LabProcess(root, config_dir=make_profile(tmp_path)).start()    # backoff: 300 s
    try:
        refused = "connect to smtp.gmail.com[127.0.0.1]:587: Connection refused"
        for _ in range(3):
            gponsim("gmail", "--lab-root", str(root), "fault", "refuse")
            qid = submit(lab, "erin@example.org", subject="later")
            wait_until(lambda: f"{qid}: to=<erin@example.org>, relay=none" in lab.log_text(),
                       15, "the deferral")
            assert f"dsn=4.4.1, status=deferred ({refused})" in lab.log_text()
            wait_until(lambda: [e for e in list_queue(root) if e.state == "deferred"], 10,
                       "the deferred queue")
            gponsim("gmail", "--lab-root", str(root), "fault", "none")
            flush = gponsim("queue", "--flush", "--lab-root", str(root))
            assert "flush requested: 1 deferred message" in flush.stderr + flush.stdout
            wait_until(lambda: f"{qid}: removed" in lab.log_text(), 15, "delivery after the flush")
            assert lab.log_text().count(f"{qid}: to=<erin@example.org>, relay=none") == 1
        assert len(internet(root, "erin@example.org")) == 3
    finally:
        lab.stop()


def _dsn_parts(message):
    msg = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                     "message/rfc822"]
    return msg, parts


def test_lifetime_exceeded_returns_dsn_to_sender(tmp_path):
    conf = make_profile(tmp_path, password="wrong-password", queue_run_delay="1s",
                        minimal_backoff_time="1s", maximal_backoff_time="1s",
                        maximal_queue_lifetime="2s")
    lab = LabProcess(tmp_path / "gponlab", config_dir=conf).start()
    try:
        qid = submit(lab, "erin@example.org", subject="Caducara")
        [dsn] = lab.wait_for_mail("user1", timeout=30)
        log = lab.log_text()
    finally:
        lab.stop()
    assert f"{qid}: from=<user1@gponlab.local>, status=expired, returned to sender" in log
    assert "postfix/bounce[" in log and f"{qid}: sender non-delivery notification: " in log
    assert dsn.get_from().startswith("MAILER-DAEMON ")
    msg, (text, report, original) = _dsn_parts(dsn)
    assert dsn["From"] == "MAILER-DAEMON@mail.gponlab.local (Mail Delivery System)"
    assert dsn["Return-Path"] == "<>"
    assert dsn["Received"].startswith("by mail.gponlab.local (Postfix)\n\tid ")
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert "This is the mail system at host mail.gponlab.local." in text.get_content()
    assert "<erin@example.org>: SASL authentication failed" in text.get_content()
    blocks = report.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; mail.gponlab.local"
    assert blocks[0]["X-Postfix-Queue-ID"] == qid
    rcpt = blocks[1]
    assert rcpt["Final-Recipient"] == "rfc822; erin@example.org"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.7.8"
    assert rcpt["Remote-MTA"] == "dns; smtp.gmail.com"
    assert rcpt["Diagnostic-Code"].startswith("smtp; 535-5.7.8 Username and Password not accepted.")
    returned = original.get_payload()[0]
    assert returned["Subject"] == "Caducara"
    assert internet(tmp_path / "gponlab", "erin@example.org") == []


def test_permanent_rcpt_failure_bounces_at_once(tmp_path):
    root = tmp_path / "gponlab"
    gm.set_fault(root, "rcpt-550")
    lab = LabProcess(root, config_dir=make_profile(tmp_path)).start()
    try:
        qid = submit(lab, "nobody@example.org")
        [dsn] = lab.wait_for_mail("user1", timeout=20)
        log = lab.log_text()
    finally:
        lab.stop()
    steps = lab.steps()       # complete once the lab has stopped
    assert (f"{qid}: to=<nobody@example.org>, relay=smtp.gmail.com[127.0.0.1]:587" in log)
    assert "dsn=5.1.1, status=bounced (host smtp.gmail.com[127.0.0.1] said: 550-5.1.1 " in log
    assert "(in reply to RCPT TO command)" in log
    _msg, (_t, report, _o) = _dsn_parts(dsn)
    rcpt = report.get_payload()[1]
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"].startswith("smtp; 550-5.1.1 The email account")
    assert any(s.verb == "BOUNCE" and s.key == "queue.event.BOUNCE" for s in steps)


def test_kill9_during_relaying_loses_nothing(tmp_path):
    root = tmp_path / "gponlab"
    conf = make_profile(tmp_path)
    gm.set_fault(root, "slow", delay=30)
    lab = LabProcess(root, config_dir=conf).start()
    qid = submit(lab, "frank@example.org", subject="sobrevive")
    wait_until(lambda: any(s.src == "smtp" and s.dst == "relay" and s.verb == "EHLO"
                           for s in lab.steps()), 15, "the relay conversation to start")
    lab.kill9()
    assert (root / "var/spool/postfix/active" / qid).exists()
    gm.set_fault(root, "none")
    lab2 = LabProcess(root, config_dir=conf).start()
    try:
        [msg] = wait_internet(root, "frank@example.org")
        assert msg["Subject"] == "sobrevive"
        wait_until(lambda: f"{qid}: removed" in lab2.log_text(), 10, "removed")
    finally:
        lab2.stop()
    assert len(internet(root, "frank@example.org")) == 1


@pytest.mark.parametrize("fault,dsn,text", [
    ("no-starttls", "4.7.4",
     "status=deferred (TLS is required, but was not offered by host smtp.gmail.com[127.0.0.1])"),
    ("greeting-421", "4.7.0", "status=deferred (host smtp.gmail.com[127.0.0.1] refused to talk "
                              "to me: 421-4.7.0 Try again later, closing connection."),
])
def test_relay_faults_defer(tmp_path, fault, dsn, text):
    root = tmp_path / "gponlab"
    gm.set_fault(root, fault)
    lab = LabProcess(root, config_dir=make_profile(tmp_path)).start()
    try:
        qid = submit(lab, "gina@example.org")
        wait_until(lambda: f"{qid}: to=<gina@example.org>" in lab.log_text(), 15, "a verdict")
    finally:
        lab.stop()
    line = next(ln for ln in lab.log_text().splitlines() if f"{qid}: to=<gina@example.org>" in ln)
    assert f"dsn={dsn}, {text}" in line


def test_ca_not_in_cafile_is_untrusted_but_delivered(tmp_path):
    """smtp_tls_security_level = encrypt: encryption is required, trust is not."""
    root = tmp_path / "gponlab"
    conf = make_profile(tmp_path)
    with open(conf / "postfix" / "main.cf", "a") as fh:
        fh.write("smtp_tls_loglevel = 1\n")           # the summary line in mail.log
    lab = LabProcess(root, config_dir=conf).start()
    lab.stop()
    cafile = root / "etc/ssl/certs/ca-certificates.crt"
    assert (root / "etc/gmail-ca/ca.pem").read_bytes().strip() in cafile.read_bytes()
    cafile.write_text("")             # the CA taken out of smtp_tls_CAfile
    lab = LabProcess(root, config_dir=conf)
    lab.start()
    try:
        qid = submit(lab, "hank@example.org")
        wait_internet(root, "hank@example.org")
        wait_until(lambda: f"{qid}: removed" in lab.log_text(), 10, "removed")
    finally:
        lab.stop()
    log = lab.log_text()
    assert ("Untrusted TLS connection established to smtp.gmail.com[127.0.0.1]:587: TLSv1.3 "
            "with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 "
            "server-signature RSA-PSS (2048 bits) server-digest SHA256") in log
    steps = lab.steps()
    untrusted = next(s for s in steps if s.verb == "UNTRUSTED")
    assert untrusted.key == "tls.handshake.UNTRUSTED" and untrusted.meta["trusted"] is False


def test_secure_level_logs_verified(tmp_path):
    """smtp_tls_security_level = secure: chain and name checked -> 'Verified'."""
    conf = make_profile(tmp_path)
    main_cf = conf / "postfix" / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("smtp_tls_security_level = encrypt",
                                                   "smtp_tls_security_level = secure")
                       + "smtp_tls_loglevel = 1\n")
    lab = LabProcess(tmp_path / "gponlab", config_dir=conf).start()
    try:
        submit(lab, "ivan@example.org")
        wait_internet(lab.root, "ivan@example.org")
    finally:
        lab.stop()
    assert "Verified TLS connection established to smtp.gmail.com[127.0.0.1]:587" in lab.log_text()
