"""The one function that writes an mbox entry, and the writers that use it."""

from __future__ import annotations

import mailbox

import pytest

from gponsim.server.mailstore.mbox import MboxStore, decode, encode
from gponsim.server.mailstore.mboxentry import from_line, mbox_entry, mboxo_quote
from gponsim.server.postfix.local import render_entry

JAN_1 = 1704110400.0        # Mon Jan  1 12:00:00 2024 UTC
NOV_27 = 1701128446.0       # Mon Nov 27 23:40:46 2023 UTC


def test_from_line_dates_postfix_pads_the_day_with_a_space_dovecot_with_a_zero(utc):
    # Postfix: C asctime(); Dovecot: src/lib-mail/mbox-from.c (lab-facts §2.5, §4.3)
    assert from_line("a@b", JAN_1, zero_pad_day=False) == b"From a@b  Mon Jan  1 12:00:00 2024"
    assert from_line("a@b", JAN_1, zero_pad_day=True) == b"From a@b  Mon Jan 01 12:00:00 2024"
    assert from_line("a@b", NOV_27, zero_pad_day=False) == b"From a@b  Mon Nov 27 23:40:46 2023"
    assert from_line("a@b", NOV_27, zero_pad_day=True) == b"From a@b  Mon Nov 27 23:40:46 2023"
    assert from_line("", JAN_1, zero_pad_day=False) == b"From MAILER-DAEMON  Mon Jan  1 12:00:00 2024"


def test_from_line_is_local_time(utc, monkeypatch):
    import time
    monkeypatch.setenv("TZ", "CLT+4")          # POSIX TZ string: UTC-4, no tzdata needed
    time.tzset()
    try:
        assert from_line("a@b", JAN_1, zero_pad_day=True) == b"From a@b  Mon Jan 01 08:00:00 2024"
    finally:
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()


@pytest.mark.parametrize("data, quoted", [
    (b"From me\nFrom you\n", b">From me\n>From you\n"),
    (b">From kept\nFromage\nfrom lower\n", b">From kept\nFromage\nfrom lower\n"),
    (b"x\n\nFrom y", b"x\n\n>From y"),
    (b"", b""),
])
def test_mboxo_quoting(data, quoted):
    assert mboxo_quote(data) == quoted
    assert mboxo_quote(quoted) == quoted          # mboxo cannot be undone, nor done twice


def test_entry_final_newline_and_separator():
    line = b"From a@b  Mon Jan  1 12:00:00 2024"
    assert mbox_entry(line, b"H: 1\n", b"\nno newline", quote=True) == (
        line + b"\nH: 1\n\nno newline\n\n")
    assert mbox_entry(line, b"H: 1\n", b"\nFrom x\n", quote=True) == line + b"\nH: 1\n\n>From x\n\n"
    assert mbox_entry(line, b"H: 1\n\n", b"From x\n", quote=False) == line + b"\nH: 1\n\nFrom x\n\n"
    assert mbox_entry(line, b"H: 1\n", b"", quote=True) == line + b"\nH: 1\n\n"


def test_local8_entry_is_postfix_s_bytes(utc):
    entry = render_entry(b"Received: x\nSubject: s\n\nFrom here\n>From there", sender="a@b",
                         orig_rcpt="c@d", delivered_to="c@d", when=JAN_1)
    assert entry == (b"From a@b  Mon Jan  1 12:00:00 2024\nReturn-Path: <a@b>\n"
                     b"X-Original-To: c@d\nDelivered-To: c@d\nReceived: x\nSubject: s\n\n"
                     b">From here\n>From there\n\n")


def test_dovecot_rewrite_and_append_use_the_same_entries(utc, tmp_path):
    """A delivery by local(8), then an APPEND: Dovecot's file, entry by entry."""
    inbox = tmp_path / "var/mail/user2"
    inbox.parent.mkdir(parents=True)
    inbox.write_bytes(render_entry(b"Subject: one\n\nFrom the body\n", sender="user1@gponlab.local",
                                   orig_rcpt="", delivered_to="user2@gponlab.local", when=JAN_1))
    folder = MboxStore(tmp_path, "user2").folder("INBOX")
    validity, uid = folder.append(b"Subject: two\r\n\r\nFrom again\r\nend", ["\\Seen"],
                                  when=NOV_27, envelope="user2")
    assert uid == 2
    data = inbox.read_bytes()
    assert data == (
        b"From user1@gponlab.local  Mon Jan  1 12:00:00 2024\n"     # local(8)'s From_, kept
        b"Return-Path: <user1@gponlab.local>\nDelivered-To: user2@gponlab.local\nSubject: one\n"
        + f"X-IMAPbase: {validity} 0000000002\n".encode()
        + b"X-UID: 1\nContent-Length: 15\n\n>From the body\n\n"
        b"From user2  Mon Nov 27 23:40:46 2023\n"                   # Dovecot's own From_
        # (\Recent, new here: Dovecot writes "RO" and keeps \Recent in its index,
        # gponsim has no index and leaves the "O" out; docs/fidelity.md)
        b"Subject: two\nX-UID: 2\nStatus: R\nContent-Length: 16\n\n>From again\nend\n\n")
    assert encode(decode(data)) == data               # a rewrite changes nothing
    # Python's mailbox (mboxo) reads both entries back.
    box = mailbox.mbox(str(inbox), create=False)
    assert [m["Subject"] for m in box] == ["one", "two"]
    box.close()
