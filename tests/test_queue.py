"""The queue and qmgr: delivery, bounces, deferral, crash safety, throughput."""

from __future__ import annotations

import json
import mailbox
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from twisted.internet import defer

from gponsim.server.postfix import queue as queue_mod
from gponsim.server.postfix.cleanup import received_header
from gponsim.server.postfix.queue import (Envelope, MailQueue, RecipientStatus, list_queue)
from gponsim.steps import ListSink
from labproc import wait_until

TESTS = Path(__file__).resolve().parent
HOST = "mail.gponlab.local"
DOMAINS = {"gponlab.local", HOST}
USERS = {"user1", "user2"}
BODY = b"Subject: hi\r\n\r\nFrom me\r\nhello\r\n"


def new_queue(root: Path, sink: ListSink | None = None, **kw) -> MailQueue:
    return MailQueue(root, myhostname=HOST, is_local_domain=lambda d: d in DOMAINS,
                     local_user_exists=lambda u: u in USERS,
                     emit=sink.step if sink else None, **kw)


def submit(q: MailQueue, rcpts: list[str], body: bytes = BODY, sender: str = "user1@gponlab.local",
           client_ip: str = "127.0.0.1", session: str = "smtp-test-1", protocol: str = "ESMTP",
           sasl: str | None = None):
    """What smtpd does (reactor thread): open at the first RCPT, commit after DATA."""
    env = Envelope(sender=sender, helo="pc1", client_ip=client_ip, protocol=protocol,
                   session=session, sasl_method="PLAIN" if sasl else None, sasl_username=sasl)
    qf = q.open(env)
    for rcpt in rcpts:
        qf.add_recipient(rcpt)
    header = received_header("pc1", "unknown", client_ip, protocol, qf.qid, rcpts,
                             env.arrival, HOST)
    return qf.commit(header.encode() + body)


class Lab:
    def __init__(self, root: Path, rt, **kw) -> None:
        self.root = root
        self.rt = rt
        self.sink = ListSink()
        self.queue = new_queue(root, self.sink, **kw)
        rt.call(self.queue.start)

    def send(self, rcpts: list[str], **kw) -> str:
        return self.rt.call(submit, self.queue, rcpts, **kw)

    def wait(self, verb: str, qid: str, timeout: float = 10.0):
        step = self.sink.wait_for(lambda s: s.verb == verb and s.meta.get("qid") == qid, timeout)
        assert step is not None, f"no {verb} step for {qid}"
        return step

    def log(self) -> str:
        return (self.root / "var/log/mail.log").read_text()

    def mbox(self, user: str) -> bytes:
        return (self.root / "var/mail" / user).read_bytes()

    def spool_files(self) -> list[str]:
        base = self.root / "var/spool/postfix"
        return sorted(str(p.relative_to(base)) for p in base.rglob("*")
                      if p.is_file() and p.relative_to(base).parts[0] != "gponsim")


@pytest.fixture
def lab(tmp_path, reactor_thread):  # noqa: F811
    made: list[Lab] = []

    def make(**kw) -> Lab:
        made.append(Lab(tmp_path / "lab", reactor_thread, **kw))
        return made[-1]

    yield make
    for one in made:
        reactor_thread.call(one.queue.stop)


# -- the happy path

def test_local_delivery_end_to_end(lab):
    lab = lab()
    qid = lab.send(["user2@gponlab.local"], sasl="user1")
    lab.wait("REMOVED", qid)
    data = lab.mbox("user2")
    assert re.match(rb"From user1@gponlab\.local  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n"
                    rb"Return-Path: <user1@gponlab\.local>\n"
                    rb"X-Original-To: user2@gponlab\.local\n"
                    rb"Delivered-To: user2@gponlab\.local\n"
                    rb"Received: from pc1 \(unknown \[127\.0\.0\.1\]\)\n"
                    rb"\tby mail\.gponlab\.local \(Postfix\) with ESMTP id " + qid.encode()
                    + rb"\n\tfor <user2@gponlab\.local>; ", data)
    # The client is on the server itself: cleanup added the missing headers.
    assert re.search(rb"\nSubject: hi\nMessage-Id: <\d{14}\." + qid.encode()
                     + rb"@mail\.gponlab\.local>\nDate: .+\nFrom: user1@gponlab\.local\n\n"
                     rb">From me\nhello\n\n\Z", data)
    assert lab.spool_files() == []

    log = [line.split(" mail ", 1)[1] for line in lab.log().splitlines()]
    programs = [re.sub(r"\[\d+\]", "", line.split(": ", 1)[0]) for line in log]
    assert programs == ["postfix/smtpd", "postfix/cleanup", "postfix/qmgr", "postfix/local",
                        "postfix/qmgr"]
    texts = [line.split(": ", 1)[1] for line in log]
    assert texts[0] == f"{qid}: client=unknown[127.0.0.1], sasl_method=PLAIN, sasl_username=user1"
    assert re.fullmatch(rf"{qid}: message-id=<\d{{14}}\.{qid}@mail\.gponlab\.local>", texts[1])
    assert re.fullmatch(rf"{qid}: from=<user1@gponlab\.local>, size=\d+, nrcpt=1 \(queue active\)",
                        texts[2])
    assert re.fullmatch(rf"{qid}: to=<user2@gponlab\.local>, relay=local, delay=[\d.]+, "
                        rf"delays=[\d.]+/[\d.]+/0/[\d.]+, dsn=2\.0\.0, "
                        rf"status=sent \(delivered to mailbox\)", texts[3])
    assert texts[4] == f"{qid}: removed"


def test_steps_follow_the_message_through_the_lab(lab):
    lab = lab()
    qid = lab.send(["user2@gponlab.local"], session="smtp-abc-7")
    lab.wait("REMOVED", qid)
    steps = [s for s in lab.sink.steps if s.meta.get("qid") == qid]
    assert [(s.proto, s.src, s.dst, s.verb) for s in steps] == [
        ("queue", "smtpd", "cleanup", "CLIENT"),
        ("queue", "smtpd", "cleanup", "RECEIVED"),
        ("queue", "cleanup", "qmgr", "QUEUED"),
        ("queue", "qmgr", "local", "DELIVER"),
        ("delivery", "local", "mailbox", "DELIVERED"),
        ("queue", "qmgr", "qmgr", "REMOVED"),
    ]
    assert all(s.session == "smtp-abc-7" and s.kind == "event" and s.dir == "internal"
               for s in steps)
    assert [s.key for s in steps] == [f"{s.proto}.event.{s.verb}" for s in steps]
    delivered = steps[4]
    assert delivered.meta["recipient"] == "user2@gponlab.local"
    assert delivered.meta["status"] == "sent"
    assert delivered.line in lab.log()
    queued = steps[2]
    assert queued.meta["nrcpt"] == 1 and queued.meta["size"] > len(BODY)


def test_remote_client_gets_no_added_headers(lab):
    lab = lab()
    qid = lab.send(["user2@gponlab.local"], client_ip="192.168.1.50")
    lab.wait("REMOVED", qid)
    assert b"Message-Id:" not in lab.mbox("user2")
    assert f"{qid}: message-id=<>" in lab.log()


def test_several_recipients_and_mailboxes(lab):
    lab = lab()
    rcpts = ["user1@gponlab.local", "user2@gponlab.local", "User2+lab@gponlab.local"]
    qid = lab.send(rcpts)
    lab.wait("REMOVED", qid)
    one, two = lab.mbox("user1"), lab.mbox("user2")
    assert one.count(b"\nDelivered-To: ") == 1
    assert two.count(b"\nDelivered-To: ") == 2
    assert b"\nDelivered-To: User2+lab@gponlab.local\n" in two
    assert f"by mail.gponlab.local (Postfix) with ESMTP id {qid};\n\t".encode() in one
    assert "nrcpt=3 (queue active)" in lab.log()
    assert lab.log().count("status=sent (delivered to mailbox)") == 3


def test_duplicate_and_unqualified_recipients(lab):
    lab = lab()
    qid = lab.send(["user2@gponlab.local", "user2@gponlab.local", "user1"])
    lab.wait("REMOVED", qid)
    assert "nrcpt=2 (queue active)" in lab.log()
    assert f"{qid}: to=<user1@mail.gponlab.local>, orig_to=<user1>, relay=local" in lab.log()
    assert b"\nX-Original-To: user1\nDelivered-To: user1@mail.gponlab.local\n" in lab.mbox("user1")
    assert lab.mbox("user2").count(b"\nDelivered-To: ") == 1


def test_messages_keep_their_order_in_a_mailbox(lab):
    lab = lab()
    qids = [lab.send(["user2@gponlab.local"], body=f"Subject: n{i}\n\nx\n".encode())
            for i in range(30)]
    lab.wait("REMOVED", qids[-1])
    box = mailbox.mbox(str(lab.root / "var/mail/user2"), create=False)
    subjects = [m["Subject"] for m in box]
    box.close()
    assert subjects == [f"n{i}" for i in range(30)]


def test_queue_file_is_in_incoming_during_the_transaction_and_abort_removes_it(lab):
    lab = lab()

    def open_file():
        qf = lab.queue.open(Envelope(sender="user1@gponlab.local", client_ip="127.0.0.1"))
        qf.add_recipient("user2@gponlab.local")
        return qf

    qf = lab.rt.call(open_file)
    assert qf.path == lab.root / "var/spool/postfix/incoming" / qf.qid
    wait_until(qf.path.exists, what="the queue file in incoming/")   # the qmgr thread moves it
    assert qf.path.stat().st_mode & 0o777 == 0o600        # not complete yet
    lab.rt.call(qf.abort)
    wait_until(lambda: not qf.path.exists(), what="the queue file to go")
    assert lab.spool_files() == []
    assert lab.log().count(qf.qid) == 1     # only smtpd's client= line


def test_delivered_queue_files_are_reused_emptied_and_bounded(lab, monkeypatch):
    monkeypatch.setattr(queue_mod, "RECYCLE_MAX", 8)
    monkeypatch.setattr(queue_mod, "RECYCLE_CHECK", 4)
    lab = lab()
    spare = lab.root / "var/spool/postfix/gponsim/spare"
    qids, most_waiting = [], 0
    for i in range(40):      # big messages, delivered: their files wait in spare/ for reuse
        body = f"Subject: m{i}\r\n\r\n".encode() + (b"x" * 70 + b"\r\n") * 300
        qids.append(lab.send(["user2@gponlab.local"], body=body))
        lab.wait("REMOVED", qids[-1])
        most_waiting = max(most_waiting, len([p for p in spare.iterdir() if p.name.startswith("r")]))
    assert most_waiting <= 8 + 4            # RECYCLE_MAX, counted every RECYCLE_CHECK files
    box = mailbox.mbox(str(lab.root / "var/mail/user2"))
    assert [m["Subject"] for m in box] == [f"m{i}" for i in range(40)]
    assert [len(m.get_payload()) for m in box] == [71 * 300] * 40      # LF line ends
    # Small messages that stay queued (a remote domain, no relay): reused
    # files hold exactly the new message and its records, nothing older.
    small = [lab.send(["someone@example.com"]) for _ in range(20)]
    for qid in small:
        lab.wait("DEFERRED", qid)
    inodes = [int(q[5:], 16) for q in qids + small]
    assert len(set(inodes)) < len(inodes), "no queue file was reused"
    deferred = lab.root / "var/spool/postfix/deferred"
    files: dict[str, Path] = {}
    wait_until(lambda: files.update((p.name, p) for p in deferred.rglob("*") if p.is_file())
               or sorted(files) == sorted(small), what="the small messages in deferred/")
    for qid in small:
        data = files[qid].read_bytes()
        header, _, rest = data.partition(b"\n")
        length = json.loads(header[len(queue_mod.MAGIC):])["length"]
        assert rest[:length].startswith(b"Received: ") and rest[:length].endswith(b"hello\n")
        assert re.fullmatch(rb"(R \{[^\n]*\}\n)+", rest[length:]), rest[length:length + 80]


def _asleep_until_woken(thread: threading.Thread) -> bool:
    """True while ``thread`` waits on a Condition without a timeout."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "wait" and "timeout" in frame.f_locals:
            return frame.f_locals["timeout"] is None
        frame = frame.f_back
    return False


def test_an_idle_queue_does_not_look_for_spare_files(lab, monkeypatch):
    passes = []
    real = MailQueue._reused_spares
    monkeypatch.setattr(MailQueue, "_reused_spares",
                        lambda self, n: (passes.append(n), real(self, n))[1])
    lab = lab()
    spares = next(t for t in lab.queue._threads if t.name == "gponsim-spares")
    wait_until(lambda: _asleep_until_woken(spares), what="the spare-file thread to sleep")
    assert len(passes) == 1, f"{len(passes)} passes without mail"
    lab.wait("REMOVED", lab.send(["user2@gponlab.local"]))
    wait_until(lambda: _asleep_until_woken(spares), what="the spare-file thread to sleep again")
    assert len(passes) <= 3


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"),
                    reason="this platform has no SCHED_BATCH scheduling policy (Linux only)")
def test_the_queue_threads_never_preempt_the_reactor(lab):
    lab = lab()
    lab.send(["user2@gponlab.local"])
    lab.queue._fsync_pool.submit(int).result()        # a pool thread exists
    threads = lab.queue._threads + list(lab.queue._fsync_pool._threads)
    assert len(threads) >= 5
    assert {os.sched_getscheduler(t.native_id) for t in threads} == {os.SCHED_BATCH}
    assert os.sched_getscheduler(lab.rt._thread.native_id) == os.SCHED_OTHER


def test_start_empties_the_spare_directory(tmp_path, reactor_thread):  # noqa: F811
    spare = tmp_path / "lab/var/spool/postfix/gponsim/spare"
    spare.mkdir(parents=True)
    (spare / "r4F1A2C0D9E").write_bytes(b"an old delivered message")
    (spare / "t123.4").write_bytes(b"")
    lab = Lab(tmp_path / "lab", reactor_thread)
    try:
        assert not (spare / "r4F1A2C0D9E").exists() and not (spare / "t123.4").exists()
    finally:
        reactor_thread.call(lab.queue.stop)


def test_commit_fires_only_with_the_file_in_the_active_queue(lab):
    lab = lab()
    seen = []

    def commit_and_look():
        d = submit(lab.queue, ["bob@gmail.com"])
        d.addCallback(lambda qid: seen.append(
            (qid, (lab.root / "var/spool/postfix/active" / qid).exists()
             or any((lab.root / "var/spool/postfix/deferred").rglob(qid)))) or qid)
        return d

    qid = lab.rt.call(commit_and_look)
    assert seen == [(qid, True)]
    assert os.stat(next((lab.root / "var/spool/postfix").rglob(qid))).st_mode & 0o700 == 0o700


def test_local_delivery_waits_briefly_to_batch_a_mailbox():
    sched = queue_mod._Scheduler(linger=0.2)
    first, second = object(), object()
    threading.Timer(0.02, lambda: sched.add([("user2", second)])).start()
    sched.add([("user2", first)])
    start = time.monotonic()
    user, batch = sched.take()
    assert (user, batch) == ("user2", [first, second])
    assert time.monotonic() - start >= 0.15          # it did wait for the second one
    sched.done("user2")
    sched.stop()
    assert sched.take() is None


def test_journal_is_kept_until_the_removal_is_durable(lab, monkeypatch):
    events = []
    real_fsync_dir, real_ftruncate = queue_mod._fsync_dir, os.ftruncate
    monkeypatch.setattr(queue_mod, "_fsync_dir",
                        lambda d: (events.append("fsync " + Path(d).name), real_fsync_dir(d)))
    monkeypatch.setattr(os, "ftruncate",
                        lambda fd, n: (events.append("truncate"), real_ftruncate(fd, n)))
    real_unlink, real_rename = os.unlink, os.rename
    monkeypatch.setattr(os, "unlink", lambda p, *a, **kw: (
        events.append("remove " + os.path.basename(p)), real_unlink(p, *a, **kw)))
    monkeypatch.setattr(os, "rename", lambda a, b, *r, **kw: (
        events.append("remove " + os.path.basename(a)) if Path(a).parent.name == "active" and
        Path(b).parent.name == "spare" else None, real_rename(a, b, *r, **kw)))
    lab = lab(delivery_workers=1)
    journal = lab.root / "var/spool/postfix/gponsim/journal.0"
    qid = lab.send(["user2@gponlab.local"])
    lab.wait("REMOVED", qid)
    assert qid.encode() in journal.read_bytes()          # the intent is kept
    qid2 = lab.send(["user2@gponlab.local"])
    lab.wait("REMOVED", qid2)
    assert qid.encode() not in journal.read_bytes()
    assert qid2.encode() in journal.read_bytes()
    # active/ was fsync-ed after the removal and before the journal forgot it.
    after = events[events.index("remove " + qid):]
    assert "fsync active" in after[:after.index("truncate")]


# -- failures

def test_unknown_local_user_bounces(lab):
    notices = []
    lab = lab(on_bounce=notices.append)
    qid = lab.send(["nosuchuser@gponlab.local", "user2@gponlab.local"])
    lab.wait("REMOVED", qid)
    assert re.search(rf"postfix/local\[\d+\]: {qid}: to=<nosuchuser@gponlab\.local>, relay=local, "
                     rf"delay=[\d.]+, delays=[\d./]+, dsn=5\.1\.1, "
                     rf'status=bounced \(unknown user: "nosuchuser"\)', lab.log())
    assert not (lab.root / "var/mail/nosuchuser").exists()
    assert lab.mbox("user2").count(b"\nDelivered-To: ") == 1
    wait_until(lambda: notices, what="the bounce notice")   # posted after REMOVED
    assert [(n.qid, n.recipient, n.dsn) for n in notices] == \
        [(qid, "nosuchuser@gponlab.local", "5.1.1")]
    bounced = lab.wait("BOUNCED", qid)
    assert (bounced.src, bounced.dst, bounced.key) == ("local", "qmgr", "delivery.event.BOUNCED")


def test_non_local_recipient_stays_deferred(lab):
    lab = lab()
    qid = lab.send(["bob@gmail.com", "user2@gponlab.local"], client_ip="192.168.1.50")
    lab.wait("DELIVERED", qid)
    step = lab.wait("DEFERRED", qid)
    assert (step.src, step.dst, step.key) == ("qmgr", "smtp", "queue.event.DEFERRED")
    assert re.search(rf"postfix/error\[\d+\]: {qid}: to=<bob@gmail\.com>, relay=none, "
                     rf"delay=[\d.]+, delays=[\d.]+/[\d.]+/0/0, dsn=4\.3\.2, "
                     rf"status=deferred \(deferred transport\)", lab.log())
    path = lab.root / "var/spool/postfix/deferred" / qid[0] / qid
    wait_until(path.exists, what="the move to the deferred queue")   # after the last recipient
    assert path.stat().st_mtime > time.time() + 200      # next try in ~300 s
    [entry] = lab.queue.entries()
    assert (entry.qid, entry.state, entry.sender, entry.recipients, entry.reason) == \
        (qid, "deferred", "user1@gponlab.local", ["bob@gmail.com"], "deferred transport")
    assert list_queue(lab.root) == [entry]
    assert f"{qid}: removed" not in lab.log()


def test_flush_retries_deferred_mail(lab):
    lab = lab()
    qid = lab.send(["bob@gmail.com"])
    first = lab.wait("DEFERRED", qid)
    wait_until((lab.root / "var/spool/postfix/deferred" / qid[0] / qid).exists,
               what="the move to the deferred queue")
    lab.rt.call(lab.queue.flush)
    lab.wait("RETRY", qid)
    assert lab.sink.wait_for(lambda s: s.verb == "DEFERRED" and s.meta.get("qid") == qid
                             and s is not first, 10)
    assert lab.log().count("status=deferred (deferred transport)") == 2


def test_queue_run_retries_with_backoff(lab):
    lab = lab(queue_run_delay=0.2, minimal_backoff_time=0.1, maximal_backoff_time=0.1)
    qid = lab.send(["bob@gmail.com"])
    lab.wait("RETRY", qid)


def test_expired_message_is_returned(lab):
    notices = []
    lab = lab(maximal_queue_lifetime=0, on_bounce=notices.append)
    qid = lab.send(["bob@gmail.com"])
    lab.wait("REMOVED", qid)
    assert f"{qid}: from=<user1@gponlab.local>, status=expired, returned to sender" in lab.log()
    wait_until(lambda: notices, what="the bounce notice")   # posted with REMOVED
    assert [(n.recipient, n.dsn) for n in notices] == [("bob@gmail.com", "5.3.2")]
    assert lab.spool_files() == []


class OneShotRelay:
    """A relay transport that accepts everything (the real SMTP client comes later)."""

    def __init__(self) -> None:
        self.requests = []

    def deliver(self, request):
        self.requests.append(request)
        return defer.succeed([RecipientStatus(i, "sent", "2.0.0", "250 2.0.0 OK")
                              for i, _addr, _orig in request.recipients])


def test_relay_transport_hook(lab):
    relay = OneShotRelay()
    lab = lab(relay_transport=relay)
    qid = lab.send(["bob@gmail.com", "user2@gponlab.local"])
    lab.wait("REMOVED", qid)
    [req] = relay.requests
    assert req.qid == qid and [r[1] for r in req.recipients] == ["bob@gmail.com"]
    assert req.content.startswith(b"Received: from pc1")
    relay_step = lab.wait("RELAY", qid)
    assert (relay_step.src, relay_step.dst) == ("qmgr", "smtp")


# -- crash safety

CHILD = r"""
import os, signal, sys, threading
sys.path.insert(0, sys.argv[4])
from twisted.internet import defer
from reactor_thread import ReactorThread
from gponsim.server.postfix import queue as queue_mod
from gponsim.server.postfix.cleanup import received_header
from gponsim.server.postfix.queue import Envelope, MailQueue

root, count, crash_at = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rcpts = sys.argv[5].split(",")
if crash_at.startswith("at:"):
    point = crash_at[3:]
    def hook(name):
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)
    queue_mod.fault_hook = hook
rt = ReactorThread().start()
q = MailQueue(root, myhostname="mail.gponlab.local",
              is_local_domain=lambda d: d == "gponlab.local",
              local_user_exists=lambda u: u in ("user1", "user2"))
rt.call(q.start)

def one(i):
    env = Envelope(sender="user1@gponlab.local", helo="pc1", client_ip="192.168.1.50",
                   session="smtp-crash-%d" % i)
    if crash_at == "open":
        qf = q.open(env)
        qf.add_recipient(rcpts[0])
        d = defer.Deferred()
        def placed():               # the qmgr thread moves it into incoming/
            if qf.path.exists():
                print("OPENED", qf.qid, flush=True)
                d.callback(None)
            else:
                rt.reactor.callLater(0.005, placed)
        placed()
        return d
    qf = q.open(env)
    for r in rcpts:
        qf.add_recipient(r)
    header = received_header("pc1", "unknown", "192.168.1.50", "ESMTP", qf.qid, rcpts,
                             env.arrival, "mail.gponlab.local")
    d = qf.commit(header.encode() + ("Subject: m%d\n\nbody %d\n" % (i, i)).encode())
    d.addCallback(lambda qid: print("COMMITTED", qid, flush=True))
    return d

rt.call(lambda: defer.gatherResults([one(i) for i in range(count)]), timeout=60)
print("ALL", flush=True)
threading.Event().wait(120)      # until the test kills us
"""


def run_child(root: Path, count: int, crash_at: str, rcpts=("user2@gponlab.local",)):
    """Run a lab process; kill -9 it after its last ack (or let it crash itself)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(count), crash_at, str(TESTS), ",".join(rcpts)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked, opened = [], []
    try:
        for line in child.stdout:
            word, *rest = line.split()
            if word == "COMMITTED":
                acked.append(rest[0])
            elif word == "OPENED":
                opened.append(rest[0])
            if crash_at.startswith("at:"):
                continue                              # it kills itself at that point
            if word == "ALL" or (crash_at == "open" and len(opened) == count):
                child.send_signal(signal.SIGKILL)     # right after the acknowledgements
                break
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    return acked, opened


def subjects(root: Path, user: str) -> list[str]:
    path = root / "var/mail" / user
    if not path.exists():
        return []
    box = mailbox.mbox(str(path), create=False)
    out = [m["Subject"] for m in box]
    box.close()
    return out


def delivered_qids(root: Path, user: str) -> set[str]:
    path = root / "var/mail" / user
    if not path.exists():
        return set()
    return {m.decode() for m in re.findall(rb"\n\tby mail\.gponlab\.local \(Postfix\) with "
                                           rb"ESMTP id ([0-9A-F]+)", path.read_bytes())}


def restart_and_drain(root: Path, rt, expect_user_messages: dict[str, int]) -> ListSink:
    sink = ListSink()
    q = new_queue(root, sink)
    rt.call(q.start)
    try:
        wait_until(lambda: not list_queue(root) and expect_user_messages == {
            u: len(subjects(root, u)) for u in expect_user_messages}, timeout=20,
            what=f"the queue to empty into {expect_user_messages}")
    finally:
        rt.call(q.stop)
    return sink


@pytest.mark.parametrize("crash_at", ["kill-after-ack", "at:after-fsync", "at:after-commit",
                                      "at:after-mailbox"])
def test_crash_then_restart_delivers_exactly_once(tmp_path, reactor_thread, crash_at):  # noqa: F811
    root = tmp_path / "lab"
    count = 20
    acked, _ = run_child(root, count, crash_at)
    if crash_at in ("kill-after-ack",):
        assert len(acked) == count
    if crash_at in ("at:after-fsync", "at:after-commit"):
        assert acked == []          # died before the 250
    # Whatever was queued durably is delivered once; every acknowledged one is there.
    delivered, queued = delivered_qids(root, "user2"), {e.qid for e in list_queue(root)}
    if crash_at == "at:after-mailbox":
        assert delivered & queued       # delivered, but its queue file not yet updated
    durable = delivered | queued
    assert durable >= set(acked)
    expected = len(durable)
    restart_and_drain(root, reactor_thread, {"user2": expected})
    got = subjects(root, "user2")
    assert len(got) == len(set(got)), f"delivered twice: {got}"
    for qid in acked:
        assert (root / "var/mail/user2").read_bytes().count(f" id {qid}\n".encode()) == 1
    # The crash hit the first group commit or delivery batch: at least that
    # message was durable and is now delivered (the rest were never acked).
    assert len(got) == expected >= 1


def test_crash_between_recipients_never_delivers_twice(tmp_path, reactor_thread):  # noqa: F811
    root = tmp_path / "lab"
    rcpts = ("user1@gponlab.local", "user2@gponlab.local")
    acked, _ = run_child(root, 5, "at:after-mailbox", rcpts)
    before = {u: delivered_qids(root, u) for u in ("user1", "user2")}
    queued = {e.qid for e in list_queue(root)}
    # The dangerous state: a message in a mailbox and still in the queue.
    assert queued & (before["user1"] | before["user2"])
    durable = before["user1"] | before["user2"] | queued
    assert durable >= set(acked)
    restart_and_drain(root, reactor_thread, {"user1": len(durable), "user2": len(durable)})
    for user in ("user1", "user2"):
        got = subjects(root, user)
        assert len(got) == len(set(got)), (user, got)
        assert delivered_qids(root, user) == durable


def test_uncommitted_incoming_file_is_discarded(tmp_path, reactor_thread):  # noqa: F811
    root = tmp_path / "lab"
    _acked, opened = run_child(root, 1, "open")
    [qid] = opened
    assert (root / "var/spool/postfix/incoming" / qid).exists()
    sink = ListSink()
    q = new_queue(root, sink)
    reactor_thread.call(q.start)
    reactor_thread.call(q.stop)
    assert list((root / "var/spool/postfix/incoming").iterdir()) == []
    assert not (root / "var/mail/user2").exists()
    assert "status=" not in (root / "var/log/mail.log").read_text()


def test_torn_record_is_cut_off_at_start(tmp_path, reactor_thread):  # noqa: F811
    root = tmp_path / "lab"
    acked, _ = run_child(root, 1, "at:after-commit")
    [entry] = list_queue(root)
    path = root / "var/spool/postfix/active" / entry.qid
    with open(path, "ab") as fh:
        fh.write(b'D {"r":0,"sta')          # a crash in the middle of an append
    restart_and_drain(root, reactor_thread, {"user2": 1})
    assert subjects(root, "user2") == ["m0"]


# -- throughput

class Counter:
    def __init__(self, want: int) -> None:
        self.want = want
        self.removed = 0
        self.done = threading.Event()

    def step(self, step) -> None:
        if step.verb == "REMOVED":
            self.removed += 1
            if self.removed >= self.want:
                self.done.set()


@pytest.mark.slow
def test_throughput_2000_messages(tmp_path, reactor_thread, capsys):  # noqa: F811
    """Commit + deliver 2000 messages of 2 KB from 10 concurrent sessions."""
    total, sessions = 2000, 10
    counter = Counter(total)
    q = MailQueue(tmp_path / "lab", myhostname=HOST, is_local_domain=lambda d: d in DOMAINS,
                  local_user_exists=lambda u: u in USERS, emit=counter.step)
    reactor_thread.call(q.start)
    body = b"Subject: load\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26
    assert 2000 <= len(body) <= 2200

    def session(n: int, left: list[int]):
        if not left:
            return defer.succeed(None)
        left.pop()
        d = submit(q, ["user2@gponlab.local"], body=body, client_ip="192.168.1.50",
                   session=f"smtp-load-{n}")
        return d.addCallback(lambda _qid: session(n, left))

    start = time.perf_counter()
    reactor_thread.call(lambda: defer.gatherResults(
        [session(n, [0] * (total // sessions)) for n in range(sessions)]), timeout=120)
    committed = time.perf_counter() - start
    assert counter.done.wait(120)
    elapsed = time.perf_counter() - start
    reactor_thread.call(q.stop)
    rate = total / elapsed
    with capsys.disabled():
        print(f"\nqueue throughput: {total} msgs of 2 KB in {elapsed:.2f} s = {rate:.0f} msg/s "
              f"(all committed after {committed:.2f} s)")
    assert subjects(tmp_path / "lab", "user2").count("load") == total
    assert rate > 300


def test_a_failing_lookup_defers_instead_of_stranding(tmp_path, reactor_thread):  # noqa: F811
    def broken(domain: str) -> bool:
        raise LookupError("table lookup failure")

    sink = ListSink()
    q = MailQueue(tmp_path / "lab", myhostname=HOST, is_local_domain=broken,
                  local_user_exists=lambda u: True, emit=sink.step)
    reactor_thread.call(q.start)
    try:
        qid = reactor_thread.call(submit, q, ["user2@gponlab.local"])
        wait_until(lambda: [e for e in list_queue(tmp_path / "lab") if e.state == "deferred"],
                   what="the message in the deferred queue")
        [entry] = list_queue(tmp_path / "lab")
        assert (entry.qid, entry.reason) == (qid, "mail system configuration error")
        assert "cannot route the message: LookupError" in (tmp_path / "lab/var/log/mail.log").read_text()
    finally:
        reactor_thread.call(q.stop)


def test_every_event_the_queue_emits_has_commentary():
    from gponsim.commentary import catalog

    emitted = {("queue", v) for v in ("CLIENT", "RECEIVED", "QUEUED", "DELIVER", "RELAY",
                                      "DEFERRED", "REMOVED", "EXPIRED", "RETRY", "RECOVERED")}
    emitted |= {("delivery", v) for v in ("DELIVERED", "BOUNCED", "DEFERRED", "LOCKWAIT")}
    source = (Path(queue_mod.__file__)).read_text()
    in_code = set(re.findall(r'self\._step\("(queue|delivery)", "\w+", "\w+", "(\w+)"', source))
    in_code |= {("delivery", "BOUNCED"), ("delivery", "DEFERRED")}   # built from a variable
    assert in_code == emitted
    cat = catalog()
    for proto, verb in emitted:
        entry = cat.get(f"{proto}.event.{verb}")
        assert entry is not None and entry.en and entry.es, (proto, verb)
    # Variants chosen by the log text.
    assert cat.get("delivery.event.BOUNCED", 'status=bounced (unknown user: "x")').match == \
        "unknown user"
    assert cat.get("delivery.event.BOUNCED", "error writing message: File too large").match == \
        "File too large"
    assert cat.get("queue.event.RECEIVED", "ABC: message-id=<>").match == "message-id=<>"
