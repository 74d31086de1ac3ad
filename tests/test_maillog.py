"""mail.log lines as Debian's rsyslog writes them, and Postfix's delay format."""

from __future__ import annotations

import os
import re
import threading


import pytest

from gponsim.server.maillog import MailLog, delivery_line, format_delay, pid_for

NOV_27 = 1701128446.25      # Mon Nov 27 23:40:46 2023 UTC
JAN_1 = 1704110400.0        # Mon Jan  1 12:00:00 2024 UTC


def test_line_format_is_rsyslog_traditional(tmp_path, utc):
    log = MailLog(tmp_path / "var/log/mail.log", hostname="mail.gponlab.local",
                  clock=lambda: NOV_27)
    line = log.write("postfix/smtpd", 2101, "connect from unknown[127.0.0.1]")
    assert line == "Nov 27 23:40:46 mail postfix/smtpd[2101]: connect from unknown[127.0.0.1]"
    log.close()
    assert (tmp_path / "var/log/mail.log").read_text() == line + "\n"


def test_single_digit_day_is_space_padded(tmp_path, utc):
    log = MailLog(tmp_path / "mail.log", clock=lambda: JAN_1)
    assert log.write("postfix/qmgr", 900, "4F1A2C0D9E: removed") == \
        "Jan  1 12:00:00 mail postfix/qmgr[900]: 4F1A2C0D9E: removed"


def test_line_is_in_the_file_before_close(tmp_path):
    path = tmp_path / "mail.log"
    log = MailLog(path)
    log.write("postfix/smtpd", 1, "first")
    # A reader (tail -f) sees it at once: no buffering.
    assert path.read_text().endswith("postfix/smtpd[1]: first\n")
    log.write("postfix/smtpd", 1, "second")
    assert path.read_text().count("\n") == 2
    log.close()


def test_appends_to_an_existing_log(tmp_path):
    path = tmp_path / "mail.log"
    path.write_text("old line\n")
    with MailLog(path) as log:
        log.write("postfix/master", 1, "daemon started")
    assert path.read_text().startswith("old line\n")


def test_control_characters_are_escaped_like_rsyslog(tmp_path):
    log = MailLog(tmp_path / "mail.log")
    line = log.write("postfix/cleanup", 5, "message-id=<a\nb>\tx")
    assert line.endswith("message-id=<a#012b>#011x")
    assert (tmp_path / "mail.log").read_text().count("\n") == 1


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "mail.log"
    log = MailLog(path)
    n_threads, n_lines = 8, 300

    def writer(k: int) -> None:
        for i in range(n_lines):
            log.write(f"postfix/t{k}", 100 + k, f"line {i} " + "x" * 200)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    lines = path.read_text().splitlines()
    assert len(lines) == n_threads * n_lines
    pattern = re.compile(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d mail postfix/t(\d)\[10\1\]: line \d+ x{200}$")
    assert all(pattern.match(line) for line in lines)


def test_no_file_when_path_is_none():
    log = MailLog(None)
    assert "postfix/smtpd[7]: hello" in log.write("postfix/smtpd", 7, "hello")


def test_fake_pids_are_stable_and_distinct():
    assert pid_for("smtpd") == pid_for("postfix/smtpd") == pid_for("smtpd")
    names = ["master", "qmgr", "smtpd", "submission/smtpd", "cleanup", "local", "smtp", "error"]
    pids = [pid_for(n) for n in names]
    assert len(set(pids)) == len(pids)
    assert all(p > os.getpid() or p == os.getpid() for p in pids)
    assert pid_for("some-new-daemon") == pid_for("some-new-daemon")


def test_postfix_helper_uses_the_syslog_name(tmp_path):
    log = MailLog(tmp_path / "mail.log")
    line = log.postfix("smtpd", "connect from unknown[::1]", syslog_name="postfix/submission")
    assert f" postfix/submission/smtpd[{pid_for('smtpd')}]: connect from unknown[::1]" in line


@pytest.mark.parametrize("seconds, text", [
    (0.0, "0"),
    (0.004, "0"),              # under the 10 ms resolution
    (0.005, "0.01"),           # rounded up
    (0.0312, "0.03"),
    (0.05, "0.05"),
    (0.0999, "0.1"),           # trailing zero dropped
    (0.25, "0.25"),
    (1.0, "1"),
    (3.14159, "3.1"),          # two significant digits
    (9.96, "10"),
    (12.3, "12"),
    (123.4, "123"),            # large values: whole seconds
    (4000.6, "4001"),
])
def test_delays_are_formatted_like_postfix(seconds, text):
    assert format_delay(seconds) == text


def test_delivery_line_shows_orig_to_only_when_different():
    line = delivery_line("5B2C3C0DA1", "bob@gponlab.local", orig_to="bob", relay="local",
                         delays=(0.01, 0.01, 0, 0.01), dsn="2.0.0", status="sent",
                         reason="delivered to mailbox")
    assert line == ("5B2C3C0DA1: to=<bob@gponlab.local>, orig_to=<bob>, relay=local, "
                    "delay=0.03, delays=0.01/0.01/0/0.01, dsn=2.0.0, "
                    "status=sent (delivered to mailbox)")
    same = delivery_line("5B2C3C0DA1", "bob@gponlab.local", orig_to="BOB@gponlab.local",
                         relay="local", delays=(0, 0, 0, 0), dsn="2.0.0", status="sent",
                         reason="delivered to mailbox")
    assert "orig_to" not in same
