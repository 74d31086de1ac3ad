"""The running lab: timeouts, key logging, stopping cleanly, bounces on 587."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import ssl

import pytest

from gponsim.config import init_config
from labproc import wait_until

pytestmark = pytest.mark.slow          # end to end: `gponsim serve`


def profile_with(tmp_path, **main_cf):
    conf = tmp_path / "conf"
    init_config(conf)
    path = conf / "postfix" / "main.cf"
    path.write_text(path.read_text() + "".join(f"\n{k} = {v}" for k, v in main_cf.items()) + "\n")
    return conf


def test_idle_timeout_closes_with_421(lab_factory, tmp_path):
    lab = lab_factory(config_dir=profile_with(tmp_path, smtpd_timeout="1s")).start()
    with socket.create_connection(("127.0.0.1", lab.ports["smtp"]), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"EHLO pc1\r\n")
        while f.readline()[3:4] == b"-":
            pass
        # Say nothing more: smtpd_timeout (1 s here) hangs up with Postfix's 421.
        assert f.readline() == b"421 4.4.2 mail.gponlab.local Error: timeout exceeded\r\n"
        assert f.readline() == b""
    log = wait_until(lambda: "timeout after EHLO" in (t := lab.log_text()) and t, what="timeout log")
    assert "timeout after EHLO from localhost[127.0.0.1]" in log


def test_keylog_has_tls13_secrets(lab_factory, tmp_path):
    keys = tmp_path / "keys.log"
    lab = lab_factory(extra=["--keylog", str(keys)]).start()
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
        c.starttls(context=ssl._create_unverified_context())
        c.noop()
    lines = wait_until(lambda: keys.exists() and keys.read_text().splitlines(), what="key log")
    labels = {line.split()[0] for line in lines}
    assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels
    assert all(re.fullmatch(r"[A-Z_0-9]+ [0-9a-f]{64} [0-9a-f]{64,96}", line) for line in lines)


def test_sigint_stops_cleanly_and_logs_the_signal(tmp_path):
    from labproc import LabProcess

    lab = LabProcess(tmp_path / "gponlab").start()
    assert lab.stop(signal.SIGINT) == 0
    assert "postfix/master" in lab.log_text() and "terminating on signal 2" in lab.log_text()
    assert "Traceback" not in lab.stderr()
    # The same lab root starts again (stale auth socket replaced).
    lab2 = LabProcess(tmp_path / "gponlab").start()
    assert lab2.stop(signal.SIGTERM) == 0
    assert "terminating on signal 15" in lab2.log_text()


def test_ctrl_c_while_a_mailbox_is_locked_stops_at_once_and_keeps_the_mail(tmp_path):
    """A delivery waiting for a mailbox another program holds waits on a timer, not
    in a thread, so the lab stops at once; the mail stays queued and goes out after
    the next start (local(8) retries a lock 20 times, a second apart)."""
    import time

    from labproc import LabProcess

    lab = LabProcess(tmp_path / "gponlab").start()
    lock = lab.mbox_path("user2").with_name("user2.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(b"")                     # held by "another program" (no owner named)
    with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=10) as client:
        client.sendmail("user1@gponlab.local", ["user2@gponlab.local"],
                        b"Subject: locked out\r\n\r\nwaits for the lock\r\n")
    wait_until(lambda: any(s.verb == "LOCKWAIT" for s in lab.steps()), what="the lock wait")
    started = time.monotonic()
    assert lab.stop(signal.SIGINT) == 0
    assert time.monotonic() - started < 5          # not the 20 s of lock attempts
    assert "Traceback" not in lab.stderr()
    lock.unlink()
    lab2 = LabProcess(tmp_path / "gponlab").start()
    try:
        [message] = lab2.wait_for_mail("user2")
        assert message["Subject"] == "locked out"
    finally:
        lab2.stop(signal.SIGTERM)


def test_unknown_user_on_submission_is_accepted_then_bounced_by_local(lab):
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
        c.starttls(context=ssl._create_unverified_context())
        c.login("user1", "pass")
        c.sendmail("user1@gponlab.local", ["nosuchuser@gponlab.local"], b"Subject: lost\r\n\r\nx\r\n")
    log = wait_until(lambda: "status=bounced" in (t := lab.log_text()) and t, what="bounce log")
    assert re.search(r"postfix/local\[\d+\]: \w+: to=<nosuchuser@gponlab.local>, relay=local, "
                     r"delay=[\d.]+, delays=[\d./]+, dsn=5.1.1, status=bounced \(unknown user: \"nosuchuser\"\)",
                     log), log


def test_mail_for_other_domains_stays_queued(lab_factory):
    # --relay none: no SMTP client to the relay (defer_transports = smtp behaviour);
    # the relay itself is tested in test_relay.py
    lab = lab_factory(extra=["--relay", "none"]).start()
    with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=15) as c:
        c.sendmail("user1@gponlab.local", ["bob@gmail.com"], b"Subject: out\r\n\r\nx\r\n")
    log = wait_until(lambda: "status=deferred" in (t := lab.log_text()) and t, what="deferral")
    assert "to=<bob@gmail.com>, relay=none" in log and "status=deferred (deferred transport)" in log
    from gponsim.server.postfix.queuefile import list_queue

    [entry] = wait_until(lambda: [e for e in list_queue(lab.root) if e.state == "deferred"],
                         what="the message in the deferred queue")
    assert entry.recipients == ["bob@gmail.com"] and entry.sender == "user1@gponlab.local"
    assert entry.reason == "deferred transport"


@pytest.mark.root("`serve --capture` sniffs this computer's loopback: root or CAP_NET_RAW")
def test_serve_with_capture_records_the_session(lab_factory, tmp_path):
    from gponsim.capture.analyze import analyze

    pcap = tmp_path / "lab.pcap"
    lab = lab_factory(extra=["--capture", str(pcap)]).start()
    with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=15) as c:
        c.sendmail("alice@example.org", ["user2@gponlab.local"], b"Subject: captured\r\n\r\nx\r\n")
    lab.wait_for_mail("user2")
    assert lab.stop() == 0
    assert "capture written to" in lab.stderr()
    from gponsim.sinks.memory import ListSink

    sink = ListSink()
    analyze(pcap, sink.step)
    lines = [s.line for s in sink.steps if s.proto == "smtp"]
    assert any(line.startswith("220 mail.gponlab.local ESMTP Postfix") for line in lines)
    assert any(line.startswith("250 2.0.0 Ok: queued as") for line in lines)
