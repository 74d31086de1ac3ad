"""smtpd's Received: header and cleanup(8)'s header processing, byte for byte."""

from __future__ import annotations

import email
import os
import time

import pytest

from gponsim.server.postfix.cleanup import (CleanupRejected, cleanup_message, is_local_client,
                                    mail_date, message_size, partial_log_lines, quote_822_local,
                                    received_header, split_headers)
from gponsim.server.postfix.queueid import hash_dir, is_queue_id, short_queue_id

JAN_1 = 1704110400.0        # Mon Jan  1 12:00:00 2024 UTC
NOV_27 = 1701128446.0       # Mon Nov 27 23:40:46 2023 UTC


@pytest.fixture
def tz():
    """Set the process time zone (POSIX TZ strings need no tzdata)."""
    old = os.environ.get("TZ")

    def set_tz(value: str) -> None:
        os.environ["TZ"] = value
        time.tzset()

    set_tz("UTC")
    yield set_tz
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


# -- dates

def test_mail_date_pads_the_day_with_a_space(tz):
    assert mail_date(JAN_1) == "Mon,  1 Jan 2024 12:00:00 +0000 (UTC)"
    assert mail_date(NOV_27) == "Mon, 27 Nov 2023 23:40:46 +0000 (UTC)"


@pytest.mark.parametrize("zone, text", [
    ("CET-1CEST,M3.5.0,M10.5.0/3", "Mon,  1 Jan 2024 13:00:00 +0100 (CET)"),
    ("EST+5", "Mon,  1 Jan 2024 07:00:00 -0500 (EST)"),
    ("IST-5:30", "Mon,  1 Jan 2024 17:30:00 +0530 (IST)"),
    ("NST+3:30", "Mon,  1 Jan 2024 08:30:00 -0330 (NST)"),
])
def test_mail_date_offset_and_zone_name(tz, zone, text):
    tz(zone)
    assert mail_date(JAN_1) == text


# -- Received:

def test_received_one_recipient_has_for_clause(tz):
    header = received_header("pc1", "unknown", "192.168.1.50", "ESMTPSA", "4F1A2C0D9E",
                             ["bob@gmail.com"], JAN_1, "mail.gponlab.local")
    assert header == (
        "Received: from pc1 (unknown [192.168.1.50])\n"
        "\tby mail.gponlab.local (Postfix) with ESMTPSA id 4F1A2C0D9E\n"
        "\tfor <bob@gmail.com>; Mon,  1 Jan 2024 12:00:00 +0000 (UTC)\n")


def test_received_several_recipients_puts_the_date_on_its_own_line(tz):
    header = received_header("[192.168.1.50]", "unknown", "192.168.1.50", "ESMTPS",
                             "4F1A2C0D9E", ["a@gponlab.local", "b@gponlab.local"], NOV_27,
                             "mail.gponlab.local")
    assert header == (
        "Received: from [192.168.1.50] (unknown [192.168.1.50])\n"
        "\tby mail.gponlab.local (Postfix) with ESMTPS id 4F1A2C0D9E;\n"
        "\tMon, 27 Nov 2023 23:40:46 +0000 (UTC)\n")


def test_received_without_helo_uses_client_name_and_ipv6_literal(tz):
    header = received_header(None, "unknown", "::1", "SMTP", "ABCDE12",
                             ["user2@gponlab.local"], JAN_1, "mail.gponlab.local")
    assert header.splitlines()[0] == "Received: from unknown (unknown [IPv6:::1])"
    assert header.splitlines()[1] == "\tby mail.gponlab.local (Postfix) with SMTP id ABCDE12"


def test_received_quotes_an_odd_local_part(tz):
    header = received_header("pc1", "unknown", "127.0.0.1", "ESMTP", "ABCDE12",
                             ["john smith@gponlab.local"], JAN_1, "mail.gponlab.local")
    assert '\tfor <"john smith"@gponlab.local>; ' in header


def test_received_parses_as_one_header_field(tz):
    header = received_header("pc1", "unknown", "127.0.0.1", "ESMTPA", "ABCDE12",
                             ["user2@gponlab.local"], JAN_1, "mail.gponlab.local")
    msg = email.message_from_string(header + "Subject: x\n\nbody\n")
    assert msg["Received"].startswith("from pc1 (unknown [127.0.0.1])")
    assert "id ABCDE12" in msg["Received"]


@pytest.mark.parametrize("address, quoted", [
    ("user1@gponlab.local", "user1@gponlab.local"),
    ("first.last@x.org", "first.last@x.org"),
    ("john smith@x.org", '"john smith"@x.org'),
    (".lead@x.org", '".lead"@x.org'),
    ('a"b@x.org', '"a\\"b"@x.org'),
    ("", ""),
    ("MAILER-DAEMON", "MAILER-DAEMON"),
])
def test_quote_822_local(address, quoted):
    assert quote_822_local(address) == quoted


# -- cleanup

MSG = (b"Received: from pc1 (unknown [127.0.0.1])\n"
       b"\tby mail.gponlab.local (Postfix) with ESMTP id 4F1A2C0D9E\n"
       b"\tfor <user2@gponlab.local>; Mon,  1 Jan 2024 12:00:00 +0000 (UTC)\n"
       b"Subject: hi\n"
       b"\n"
       b"hello\n")


def run_cleanup(content: bytes, local: bool, sender: str = "user1@gponlab.local", **kw):
    return cleanup_message(content, qid="4F1A2C0D9E", sender=sender, arrival=JAN_1,
                           created=JAN_1 + 0.3, myhostname="mail.gponlab.local",
                           add_missing_headers=local, **kw)


def test_local_client_gets_missing_headers_in_postfix_order(tz):
    result = run_cleanup(MSG, local=True)
    assert result.content == MSG.replace(b"Subject: hi\n\n", (
        b"Subject: hi\n"
        b"Message-Id: <20240101120000.4F1A2C0D9E@mail.gponlab.local>\n"
        b"Date: Mon,  1 Jan 2024 12:00:00 +0000 (UTC)\n"
        b"From: user1@gponlab.local\n"
        b"\n"))
    assert result.message_id == "<20240101120000.4F1A2C0D9E@mail.gponlab.local>"
    assert result.log_lines == ["message-id=<20240101120000.4F1A2C0D9E@mail.gponlab.local>"]
    assert result.added == ["Message-Id: <20240101120000.4F1A2C0D9E@mail.gponlab.local>",
                            "Date: Mon,  1 Jan 2024 12:00:00 +0000 (UTC)",
                            "From: user1@gponlab.local"]


def test_remote_client_headers_are_left_alone(tz):
    result = run_cleanup(MSG, local=False)
    assert result.content == MSG
    assert result.added == []
    assert result.message_id == "<>"
    assert result.log_lines == ["message-id=<>"]


def test_existing_message_id_is_logged_as_is(tz):
    content = MSG.replace(b"Subject: hi\n", b"Subject: hi\nMessage-ID: <abc@pc1>\n"
                                            b"Date: Mon, 1 Jan 2024 11:59:00 +0000\n"
                                            b"From: Ana <user1@gponlab.local>\n")
    result = run_cleanup(content, local=True)
    assert result.content == content
    assert result.log_lines == ["message-id=<abc@pc1>"]
    assert result.message_id == "<abc@pc1>"


def test_null_sender_gets_mailer_daemon_from(tz):
    result = run_cleanup(MSG, local=True, sender="")
    assert b"\nFrom: MAILER-DAEMON\n\nhello\n" in result.content


def test_resent_headers_make_cleanup_add_resent_fields(tz):
    content = MSG.replace(b"Subject: hi\n", b"Subject: hi\nMessage-ID: <orig@x>\n"
                                            b"Date: Sun, 31 Dec 2023 10:00:00 +0000\n"
                                            b"From: someone@x\nResent-To: user2@gponlab.local\n")
    result = run_cleanup(content, local=True)
    assert result.added == ["Resent-Message-Id: <20240101120000.4F1A2C0D9E@mail.gponlab.local>",
                            "Resent-Date: Mon,  1 Jan 2024 12:00:00 +0000 (UTC)",
                            "Resent-From: user1@gponlab.local"]
    assert result.log_lines == ["message-id=<orig@x>",
                                "resent-message-id=<20240101120000.4F1A2C0D9E@mail.gponlab.local>"]


def test_return_path_and_content_length_are_removed(tz):
    content = MSG.replace(b"Subject: hi\n", b"Return-Path: <evil@x>\nSubject: hi\n"
                                            b"Content-Length: 99999\n\tcontinued\n")
    result = run_cleanup(content, local=False)
    assert result.content == MSG


def test_body_without_blank_separator_gets_one(tz):
    content = MSG.replace(b"Subject: hi\n\nhello\n", b"Subject: hi\nthis is not a header\n")
    result = run_cleanup(content, local=False)
    assert result.content.endswith(b"Subject: hi\n\nthis is not a header\n")
    added = run_cleanup(content, local=True).content
    assert added.endswith(b"From: user1@gponlab.local\n\nthis is not a header\n")


def test_headers_only_message(tz):
    content = MSG.replace(b"Subject: hi\n\nhello\n", b"Subject: hi")
    result = run_cleanup(content, local=True)
    assert result.content.endswith(b"Subject: hi\nMessage-Id: <20240101120000.4F1A2C0D9E"
                                   b"@mail.gponlab.local>\nDate: Mon,  1 Jan 2024 12:00:00 "
                                   b"+0000 (UTC)\nFrom: user1@gponlab.local\n")


def test_crlf_is_stored_as_lf(tz):
    result = run_cleanup(MSG.replace(b"\n", b"\r\n"), local=False)
    assert result.content == MSG


def test_too_many_hops_is_rejected(tz):
    hop = b"Received: from a (unknown [10.0.0.1])\n\tby b (Postfix) with SMTP id 1;\n\tdate\n"
    result = run_cleanup(hop * 48 + MSG, local=False)
    assert result.hops == 49
    with pytest.raises(CleanupRejected) as info:
        run_cleanup(hop * 49 + MSG, local=False)
    assert info.value.reply == "554 5.4.0 Error: too many hops"


@pytest.mark.parametrize("part, local, logged", [
    (b"", True, []),
    (b"Message-ID: <a@pc1>\n", True, []),                  # the header may go on
    (b"Message-ID: <a@pc1>\n\tmore\n", True, []),
    (b"Message-ID: <a@pc1>\nSubj", True, []),              # a partial line is not read
    (b"Message-ID: <a@pc1>\r\nSubject: hi\r\n", True, ["message-id=<a@pc1>"]),
    (b"Message-ID: <a@pc1>\n\nhel", True, ["message-id=<a@pc1>"]),
    (b"Subject: hi\nSubj", True, []),
    (b"Subject: hi\n\n", True, ["message-id=<20240101120000.4F1A2C0D9E@mail.gponlab.local>"]),
    (b"Subject: hi\nnot a header\n", False, ["message-id=<>"]),
])
def test_a_partial_message_logs_the_message_ids_of_whole_headers(tz, part, local, logged):
    assert partial_log_lines(part, qid="4F1A2C0D9E", sender="user1@gponlab.local",
                             arrival=JAN_1, created=JAN_1 + 0.3, myhostname="mail.gponlab.local",
                             add_missing_headers=local) == logged


def test_split_headers_keeps_continuations():
    block = split_headers(MSG)
    assert len(block.fields) == 2
    assert block.fields[0].count(b"\n") == 3
    assert block.separator
    assert block.body == b"hello\n"
    assert block.get("subject") == "hi"


@pytest.mark.parametrize("content, size", [
    (b"", 0),
    (b"a\nbb\n", 3 + 4),
    (b"a\nbb", 3 + 4),                 # the last line counts without its LF too
    (b"\n", 2),                        # an empty line is a 2-byte record
    (b"x" * 200 + b"\n", 1 + 2 + 200),  # length >= 128 takes two bytes
    (b"y" * 5000 + b"\n", 2051 + 2051 + 907),  # split at line_length_limit 2048
])
def test_message_size_counts_queue_records(content, size):
    assert message_size(content) == size


def test_local_client_is_one_of_the_listening_addresses():
    listening = ("127.0.0.1", "::1")
    assert is_local_client("127.0.0.1", listening)
    assert is_local_client("::1", listening)
    assert is_local_client("::ffff:127.0.0.1", listening)
    assert not is_local_client("192.168.1.50", listening)
    assert is_local_client("192.168.1.10", ("192.168.1.10",))


def test_short_queue_id():
    assert short_queue_id(324002, 0xC0D9E) == "4F1A2C0D9E"
    assert short_queue_id(5, 0x1) == "000051"
    assert is_queue_id("4F1A2C0D9E")
    assert not is_queue_id("t123.4")
    assert hash_dir("4F1A2C0D9E") == "4"
    with pytest.raises(ValueError):
        short_queue_id(1_000_000, 1)
