"""local(8) mbox delivery: exact bytes, locking, size limit, truncation, recovery."""

from __future__ import annotations

import mailbox
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from gponsim.server.postfix.local import (LocalAgent, LocalJob, MailboxError, MailboxLock,
                                  render_entry)
from gponsim.server.maillog import MailLog

JAN_1 = 1704110400.0        # Mon Jan  1 12:00:00 2024 UTC

CONTENT = (b"Received: from pc1 (unknown [127.0.0.1])\n"
           b"\tby mail.gponlab.local (Postfix) with ESMTP id 4F1A2C0D9E\n"
           b"\tfor <user2@gponlab.local>; Mon,  1 Jan 2024 12:00:00 +0000 (UTC)\n"
           b"From: user1@gponlab.local\n"
           b"Subject: hi\n"
           b"\n"
           b"From the start\n"
           b">From already quoted\n"
           b"From: not a From_ line\n"
           b"bye\n")

ENTRY = (b"From user1@gponlab.local  Mon Jan  1 12:00:00 2024\n"
         b"Return-Path: <user1@gponlab.local>\n"
         b"X-Original-To: user2@gponlab.local\n"
         b"Delivered-To: user2@gponlab.local\n"
         b"Received: from pc1 (unknown [127.0.0.1])\n"
         b"\tby mail.gponlab.local (Postfix) with ESMTP id 4F1A2C0D9E\n"
         b"\tfor <user2@gponlab.local>; Mon,  1 Jan 2024 12:00:00 +0000 (UTC)\n"
         b"From: user1@gponlab.local\n"
         b"Subject: hi\n"
         b"\n"
         b">From the start\n"
         b">From already quoted\n"
         b"From: not a From_ line\n"
         b"bye\n"
         b"\n")


@pytest.fixture(autouse=True)
def _in_utc(utc):
    """Every test here compares From_ lines: run them all in UTC (conftest's utc)."""
    yield


def job(qid: str = "4F1A2C0D9E", rcpt: str = "user2@gponlab.local", content: bytes | None = None,
        sender: str = "user1@gponlab.local", index: int = 0, orig: str | None = None) -> LocalJob:
    """A job whose Received: header carries its own queue id."""
    if content is None:
        content = CONTENT.replace(b"4F1A2C0D9E", qid.encode())
    return LocalJob(qid=qid, index=index, sender=sender, recipient=rcpt,
                    orig_rcpt=orig if orig is not None else rcpt, content=content,
                    arrival=JAN_1 - 0.05, active_arrival=JAN_1 - 0.02)


def make_agent(root, users=("user1", "user2"), clock=lambda: JAN_1, **kw) -> LocalAgent:
    return LocalAgent(root, user_exists=lambda u: u in users,
                      log=MailLog(root / "var/log/mail.log", clock=clock), clock=clock, **kw)


# -- the bytes

def test_entry_bytes_match_postfix_local():
    assert render_entry(CONTENT, sender="user1@gponlab.local", orig_rcpt="user2@gponlab.local",
                        delivered_to="user2@gponlab.local", when=JAN_1) == ENTRY


def test_null_sender_is_mailer_daemon():
    entry = render_entry(b"Subject: bounce\n\nbody\n", sender="", orig_rcpt="user1@gponlab.local",
                         delivered_to="user1@gponlab.local", when=JAN_1)
    assert entry.startswith(b"From MAILER-DAEMON  Mon Jan  1 12:00:00 2024\n"
                            b"Return-Path: <>\n"
                            b"X-Original-To: user1@gponlab.local\n"
                            b"Delivered-To: user1@gponlab.local\n")


def test_missing_final_newline_is_added_and_no_original_recipient():
    entry = render_entry(b"Subject: x\n\nno newline", sender="a@b", orig_rcpt="",
                         delivered_to="user2+lab@gponlab.local", when=JAN_1)
    assert b"X-Original-To" not in entry
    assert entry.endswith(b"Delivered-To: user2+lab@gponlab.local\nSubject: x\n\nno newline\n\n")


def test_first_line_from_is_quoted_too():
    entry = render_entry(b"From x\nFrom y\n", sender="a@b", orig_rcpt="", delivered_to="c@d",
                         when=JAN_1)
    assert entry.endswith(b"Delivered-To: c@d\n>From x\n>From y\n\n")


# -- delivery

def test_delivery_appends_exact_bytes_with_mode_0600(tmp_path):
    agent = make_agent(tmp_path)
    results = agent.deliver("user2", [job(), job(qid="ABCDE12345", index=1)])
    assert [r.status for r in results] == ["sent", "sent"]
    mbox = tmp_path / "var/mail/user2"
    data = mbox.read_bytes()
    assert data == ENTRY + ENTRY.replace(b"4F1A2C0D9E", b"ABCDE12345")
    assert stat.S_IMODE(mbox.stat().st_mode) == 0o600
    assert results[0].offset == 0 and results[1].offset == len(ENTRY)
    assert not (tmp_path / "var/mail/user2.lock").exists()
    assert results[0].line == ("4F1A2C0D9E: to=<user2@gponlab.local>, relay=local, delay=0.05, "
                               "delays=0.03/0.02/0/0, dsn=2.0.0, status=sent (delivered to mailbox)")


def test_python_mailbox_parses_it_back(tmp_path):
    agent = make_agent(tmp_path)
    agent.deliver("user2", [job()])
    agent.deliver("user2", [job(qid="ABCDE12345", sender="")])
    box = mailbox.mbox(str(tmp_path / "var/mail/user2"), create=False)
    msgs = list(box)
    box.close()
    assert len(msgs) == 2
    assert msgs[0].get_from() == "user1@gponlab.local  Mon Jan  1 12:00:00 2024"
    assert msgs[1].get_from() == "MAILER-DAEMON  Mon Jan  1 12:00:00 2024"
    assert msgs[0]["Return-Path"] == "<user1@gponlab.local>"
    assert msgs[0]["Delivered-To"] == "user2@gponlab.local"
    assert msgs[0]["Subject"] == "hi"
    assert msgs[0].get_payload() == ">From the start\n>From already quoted\nFrom: not a From_ line\nbye\n"


def test_orig_to_is_logged_when_it_differs(tmp_path):
    agent = make_agent(tmp_path)
    [r] = agent.deliver("user2", [job(rcpt="User2+lab@gponlab.local", orig="user2+lab")])
    assert r.status == "sent"
    assert "to=<User2+lab@gponlab.local>, orig_to=<user2+lab>, relay=local" in r.line
    data = (tmp_path / "var/mail/user2").read_bytes()
    assert b"\nX-Original-To: user2+lab\nDelivered-To: User2+lab@gponlab.local\n" in data


def test_recipient_extension_is_stripped_for_the_mailbox(tmp_path):
    agent = make_agent(tmp_path)
    assert agent.split_recipient("User2+Lab@gponlab.local") == ("user2", "user2+lab")
    assert agent.split_recipient("user2") == ("user2", "user2")
    assert agent.split_recipient("+x@gponlab.local") == ("+x", "+x")


def test_unknown_user_bounces(tmp_path):
    agent = make_agent(tmp_path)
    [r] = agent.deliver("nosuchuser", [job(rcpt="NoSuchUser+x@gponlab.local")])
    assert (r.status, r.dsn, r.reason) == ("bounced", "5.1.1", 'unknown user: "nosuchuser+x"')
    assert not (tmp_path / "var/mail/nosuchuser").exists()
    assert r.line.endswith('dsn=5.1.1, status=bounced (unknown user: "nosuchuser+x")')


def test_mailer_daemon_and_postmaster_without_alias_are_discarded(tmp_path):
    """local(8) deliver_unknown(): required names are not bounced."""
    agent = make_agent(tmp_path)
    [r] = agent.deliver("mailer-daemon", [job(rcpt="MAILER-DAEMON@gponlab.local",
                                             orig="@gponlab.local")])
    assert (r.status, r.dsn, r.reason) == ("sent", "2.0.0", "discarded")
    assert r.warning == "warning: required alias not found: mailer-daemon"
    assert 'to=<MAILER-DAEMON@gponlab.local>, orig_to=<""@gponlab.local>, relay=local' in r.line
    assert r.line.endswith("dsn=2.0.0, status=sent (discarded)")
    [r] = agent.deliver("postmaster", [job(rcpt="postmaster@gponlab.local")])
    assert (r.status, r.warning) == ("sent", "warning: required alias not found: postmaster")
    assert not (tmp_path / "var/mail/mailer-daemon").exists()


def test_path_tricks_are_unknown_users(tmp_path):
    agent = make_agent(tmp_path, users=("../etc/passwd", ".hidden"))
    for user in ("../etc/passwd", ".hidden"):
        [r] = agent.deliver(user, [job()])
        assert r.status == "bounced"


def test_mailbox_size_limit_bounces_and_keeps_the_file(tmp_path):
    agent = make_agent(tmp_path, mailbox_size_limit=len(ENTRY) + 10)
    first, second = agent.deliver("user2", [job(), job(qid="ABCDE12345", index=1)])
    assert first.status == "sent"
    assert (second.status, second.dsn) == ("bounced", "5.2.2")
    assert second.reason == ("cannot update mailbox /var/mail/user2 for user user2. "
                             "error writing message: File too large")
    assert (tmp_path / "var/mail/user2").read_bytes() == ENTRY


EFBIG_CHILD = r"""
import resource, signal, sys
from pathlib import Path
from gponsim.server.postfix.local import LocalAgent, LocalJob
from gponsim.server.maillog import MailLog
root, limit = Path(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
agent = LocalAgent(root, user_exists=lambda u: True, log=MailLog(None), mailbox_size_limit=0)
job = LocalJob(qid="ABCDE12345", index=0, sender="user1@gponlab.local",
               recipient="user2@gponlab.local", orig_rcpt="user2@gponlab.local",
               content=b"Subject: big\n\n" + b"x" * 5000 + b"\n", arrival=0, active_arrival=0)
[r] = agent.deliver("user2", [job])
print(r.status, r.dsn, r.reason, sep="|")
"""


def test_a_failed_write_is_truncated_back(tmp_path):
    """A real short write (the file size rlimit) leaves the mailbox as it was."""
    mbox = tmp_path / "var/mail/user2"
    mbox.parent.mkdir(parents=True)
    mbox.write_bytes(ENTRY)
    out = subprocess.run([sys.executable, "-c", EFBIG_CHILD, str(tmp_path), str(len(ENTRY) + 2000)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status, dsn, reason = out.stdout.strip().split("|")
    assert (status, dsn) == ("bounced", "5.2.2")
    assert reason.endswith("error writing message: File too large")
    assert mbox.read_bytes() == ENTRY


# -- locking

HOLDER = r"""
import fcntl, os, sys
path, mode = sys.argv[1], sys.argv[2]
if mode == "dotlock":
    os.close(os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
else:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)          # a classic POSIX lock, as Dovecot takes
print("locked", flush=True)
sys.stdin.readline()
if mode == "dotlock":
    os.unlink(path + ".lock")
"""


@pytest.mark.parametrize("mode", ["dotlock", "fcntl"])
def test_delivery_waits_for_a_lock_held_by_another_process(tmp_path, mode):
    mbox = tmp_path / "var/mail/user2"
    mbox.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(mbox), mode],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        waits: list[tuple[str, int, str]] = []
        waiting = threading.Event()

        def on_wait(user: str, waiting_job: LocalJob, attempt: int, kind: str) -> None:
            waits.append((user, waiting_job.qid, attempt, kind))
            waiting.set()

        agent = make_agent(tmp_path, clock=time.time, on_lock_wait=on_wait)
        results: list = []
        worker = threading.Thread(target=lambda: results.extend(agent.deliver("user2", [job()])))
        worker.start()
        assert waiting.wait(10), "delivery never found the mailbox locked"
        assert waits[0] == ("user2", "4F1A2C0D9E", 1, mode)
        assert mbox.read_bytes() == b""          # nothing written while locked
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(10) == 0
        worker.join(10)
        assert not worker.is_alive()
    finally:
        if holder.poll() is None:
            holder.kill()
    assert [r.status for r in results] == ["sent"]
    assert mbox.read_bytes().startswith(b"From user1@gponlab.local  ")


def test_lock_timeout_defers(tmp_path):
    mbox = tmp_path / "var/mail/user2"
    mbox.parent.mkdir(parents=True)
    (tmp_path / "var/mail/user2.lock").write_bytes(b"")
    agent = make_agent(tmp_path, clock=time.time, lock_attempts=3, lock_delay=0.01)
    [r] = agent.deliver("user2", [job()])
    assert (r.status, r.dsn) == ("deferred", "4.2.0")
    assert r.reason == ("cannot update mailbox /var/mail/user2 for user user2. "
                        "unable to create lock file /var/mail/user2.lock: File exists")
    assert "status=deferred (cannot update mailbox" in r.line
    assert (tmp_path / "var/mail/user2.lock").exists()     # not ours: left alone
    assert mbox.read_bytes() == b""


def test_stale_dotlock_is_broken(tmp_path):
    mbox = tmp_path / "var/mail/user2"
    mbox.parent.mkdir(parents=True)
    (tmp_path / "var/mail/user2.lock").write_bytes(b"")
    later = time.time() + 501          # the lock file looks 501 s old
    agent = make_agent(tmp_path, clock=lambda: later, lock_delay=0.01)
    [r] = agent.deliver("user2", [job()])
    assert r.status == "sent"
    assert not (tmp_path / "var/mail/user2.lock").exists()


def test_dotlock_of_a_dead_process_is_broken(tmp_path):
    mbox = tmp_path / "var/mail/user2"
    mbox.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock = tmp_path / "var/mail/user2.lock"
    lock.write_text(f"{dead.stdout.strip()}:{socket.gethostname()}")
    agent = make_agent(tmp_path, clock=time.time, lock_delay=0.01, lock_attempts=2)
    [r] = agent.deliver("user2", [job()])
    assert r.status == "sent"
    assert not lock.exists()


def test_dotlock_of_a_live_process_is_respected(tmp_path):
    mbox = tmp_path / "var/mail/user2"
    mbox.parent.mkdir(parents=True)
    lock = tmp_path / "var/mail/user2.lock"
    lock.write_text(f"{os.getppid()}:{socket.gethostname()}")
    agent = make_agent(tmp_path, clock=time.time, lock_delay=0.01, lock_attempts=2)
    [r] = agent.deliver("user2", [job()])
    assert r.status == "deferred"
    assert lock.exists()


def test_our_dotlock_names_its_owner(tmp_path):
    path = tmp_path / "box"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    lock = MailboxLock(path)
    lock.acquire(fd)
    assert (tmp_path / "box.lock").read_text() == f"{os.getpid()}:{socket.gethostname()}"
    lock.release()
    os.close(fd)
    assert not (tmp_path / "box.lock").exists()


def test_the_dotlock_of_a_killed_lab_is_broken_at_once(tmp_path):
    """A process that took the lock and died (a lab killed while delivering): the next
    delivery breaks its dotlock at once instead of waiting for stale_lock_time."""
    path = tmp_path / "box"
    path.write_bytes(b"")
    took = subprocess.run([sys.executable, "-c", f"""
import os
from gponsim.server.postfix.local import MailboxLock
fd = os.open({str(path)!r}, os.O_RDWR)
MailboxLock({str(path)!r}).acquire(fd)
os._exit(0)                     # dies holding it: the dotlock stays, naming a dead process
"""], capture_output=True, text=True, timeout=60)
    assert took.returncode == 0, took.stderr
    assert (tmp_path / "box.lock").exists()
    fd = os.open(path, os.O_RDWR)
    lock = MailboxLock(path, attempts=2, delay=0.01)
    try:
        lock.acquire(fd)
        lock.release()
    finally:
        os.close(fd)
    assert not (tmp_path / "box.lock").exists()


def test_mailbox_lock_excludes_threads_of_one_process(tmp_path):
    """The kernel lock works between threads too (in-process IMAP/POP3 readers)."""
    path = tmp_path / "box"
    path.write_bytes(b"")
    fd1 = os.open(path, os.O_RDWR)
    fd2 = os.open(path, os.O_RDWR)
    first = MailboxLock(path, attempts=1)
    first.acquire(fd1)
    os.unlink(str(path) + ".lock")      # leave only the kernel lock in place
    first._dotlocked = False
    second = MailboxLock(path, attempts=2, delay=0.01)
    with pytest.raises(MailboxError) as info:
        second.acquire(fd2)
    assert info.value.dsn == "4.2.0"
    assert "unable to lock for exclusive access" in info.value.reason
    first.release()
    second.acquire(fd2)
    second.release()
    os.close(fd1)
    os.close(fd2)


# -- crash recovery support

def test_a_recovered_message_already_in_the_mailbox_is_not_appended_again(tmp_path):
    agent = make_agent(tmp_path)
    agent.deliver("user2", [job(qid="ABCDE12345"), job()])
    before = (tmp_path / "var/mail/user2").read_bytes()
    results = agent.deliver("user2", [job(), job(qid="FFFFF12345")], check_delivered=True)
    assert [(r.status, r.reason) for r in results] == [("sent", "delivered to mailbox")] * 2
    after = (tmp_path / "var/mail/user2").read_bytes()
    assert after.startswith(before)           # only the new one was appended
    assert after.count(b" id 4F1A2C0D9E\n") == 1 and after.count(b" id FFFFF12345\n") == 1


def test_a_copy_is_found_after_a_reader_rewrote_the_mailbox(tmp_path):
    agent = make_agent(tmp_path)
    agent.deliver("user2", [job()])
    mbox = tmp_path / "var/mail/user2"
    # As Dovecot does: a new message before ours, and status headers in ours.
    rewritten = (b"From MAILER_DAEMON  Mon Jan  1 11:00:00 2024\nSubject: DON'T DELETE THIS "
                 b"MESSAGE -- FOLDER INTERNAL DATA\nX-IMAP: 1704106800 0000000001\n\nx\n\n"
                 + mbox.read_bytes().replace(b"\nSubject: hi\n", b"\nSubject: hi\nX-UID: 1\n"
                                             b"Status: RO\n"))
    mbox.write_bytes(rewritten)
    agent.deliver("user2", [job()], check_delivered=True)
    assert mbox.read_bytes() == rewritten
    # Another recipient of the same message is not the same copy.
    agent.deliver("user2", [job(rcpt="user2+x@gponlab.local")], check_delivered=True)
    assert mbox.read_bytes().count(b" id 4F1A2C0D9E\n") == 2


def test_a_copy_cut_short_by_a_crash_is_taken_away_and_delivered_again(tmp_path):
    agent = make_agent(tmp_path)
    agent.deliver("user2", [job(qid="ABCDE12345"), job()])
    mbox = tmp_path / "var/mail/user2"
    whole = mbox.read_bytes()
    os.truncate(mbox, len(whole) - 40)          # the crash: the last entry half written
    [r] = agent.deliver("user2", [job()], check_delivered=True)
    assert r.status == "sent"
    assert mbox.read_bytes() == whole           # the half entry replaced by a whole one
