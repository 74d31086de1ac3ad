"""The Dovecot-style mbox store: UIDs/flags in the file, locking, safe rewrites."""

from __future__ import annotations

import mailbox
import threading
import time

import pytest

from gponsim.server.postfix.local import LocalAgent, LocalJob, render_entry
from gponsim.server.maillog import MailLog
from gponsim.server.mailstore.mbox import (
    DELETED, SEEN, MboxStore, StoreError, decode, parse_mbox, valid_name,
)


def deliver(root, user, body: bytes, n: int = 1, when: float = 1700000000.0) -> None:
    path = root / "var" / "mail" / user
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        for i in range(n):
            fh.write(render_entry(body.replace(b"#", str(i).encode()), sender="user1@gponlab.local",
                                  orig_rcpt=f"{user}@gponlab.local",
                                  delivered_to=f"{user}@gponlab.local", when=when))


def test_uids_assigned_in_order_and_persisted_as_dovecot_headers(tmp_path):
    deliver(tmp_path, "user2", b"Subject: m#\n\nFrom the body\nline\n", n=2)
    store = MboxStore(tmp_path, "user2")
    state = store.folder("INBOX").sync(mark_old=True)
    assert [m.uid for m in state.messages] == [1, 2]
    assert all(m.recent for m in state.messages)
    text = (tmp_path / "var/mail/user2").read_text()
    assert f"X-IMAPbase: {state.uidvalidity} 0000000002\n" in text
    assert "X-UID: 1\nStatus: O\nContent-Length:" in text
    # Hidden from clients; body kept byte for byte (mboxo quoting not undone).
    assert b"X-UID" not in state.messages[0].content
    assert state.messages[0].content.endswith(b"\n\n>From the body\nline\n")
    # A new delivery gets the next UID; the others keep theirs, and are no longer recent.
    deliver(tmp_path, "user2", b"Subject: third\n\nx\n")
    again = MboxStore(tmp_path, "user2").folder("INBOX").sync()
    assert [m.uid for m in again.messages] == [1, 2, 3]
    assert [m.recent for m in again.messages] == [False, False, True]
    assert again.uidvalidity == state.uidvalidity
    # Python's mailbox module (a third-party mbox reader) still sees 3 messages.
    assert len(mailbox.mbox(str(tmp_path / "var/mail/user2"))) == 3


def test_flags_persist_and_expunge_keeps_uidnext(tmp_path):
    deliver(tmp_path, "user2", b"Subject: m#\n\nbody\n", n=3)
    folder = MboxStore(tmp_path, "user2").folder("INBOX")
    folder.sync(mark_old=True)              # a read-write SELECT: no longer \Recent ("O")
    assert folder.store([1, 2], [SEEN, "\\Flagged", "$Label1"], 1) == {
        1: ["\\Flagged", "\\Seen", "$Label1"], 2: ["\\Flagged", "\\Seen", "$Label1"]}
    folder.store([2], [DELETED], 1)
    text = (tmp_path / "var/mail/user2").read_text()
    assert "Status: RO\nX-Status: F\nX-Keywords: $Label1\n" in text
    assert "X-Status: FD\n" in text
    assert folder.expunge() == [2]
    state = folder.sync()
    assert [(m.uid, m.all_flags()) for m in state.messages] == [
        (1, ["\\Flagged", "\\Seen", "$Label1"]), (3, [])]
    folder.store([1, 3], [DELETED], 1)
    assert folder.expunge() == [1, 3]
    state = folder.sync()
    assert state.messages == [] and state.uidnext == 4
    # Dovecot's pseudo message keeps UIDVALIDITY and the next UID.
    text = (tmp_path / "var/mail/user2").read_text()
    assert "DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA" in text
    assert f"X-IMAP: {state.uidvalidity} 0000000003" in text
    deliver(tmp_path, "user2", b"Subject: new\n\nx\n")
    assert [m.uid for m in folder.sync().messages] == [4]


def test_append_quotes_from_and_writes_content_length(tmp_path):
    store = MboxStore(tmp_path, "user2")
    store.create("Sent")
    validity, uid = store.folder("Sent").append(b"Subject: s\r\n\r\nFrom me\r\nbye\r\n",
                                                ["\\Seen"], envelope="user2")
    assert uid == 1
    raw = (tmp_path / "home/user2/mail/Sent").read_bytes()
    assert raw.startswith(b"From user2  ")
    assert b"\n>From me\nbye\n" in raw and b"Content-Length: 13\n" in raw
    msg = store.folder("Sent").sync().messages[0]
    assert msg.flags == {SEEN} and msg.wire() == b"Subject: s\r\n\r\n>From me\r\nbye\r\n"


def test_content_length_lets_unquoted_from_lines_through():
    body = b"From inside, unquoted\nend\n"
    data = (b"From a@b  Mon Jan  1 00:00:00 2024\nSubject: x\nX-UID: 7\nContent-Length: "
            + str(len(body)).encode() + b"\n\n" + body + b"\n"
            + b"From a@b  Mon Jan  1 00:00:01 2024\nSubject: y\n\nz\n\n")
    raws = parse_mbox(data)
    assert [r.body for r in raws] == [body, b"z\n"]
    state = decode(data)
    assert [m.uid for m in state.messages] == [7, 8]


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", ".subscriptions",
                                  "a//b", "", "~root/x", "x/.imap", "bad\x01name"])
def test_names_leaving_the_mail_directory_are_refused(tmp_path, name):
    assert not valid_name(name)
    store = MboxStore(tmp_path, "user2")
    with pytest.raises(StoreError):
        store.create(name)
    with pytest.raises(StoreError):
        store.folder(name)
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["home"])


def test_folders_children_and_subscriptions(tmp_path):
    store = MboxStore(tmp_path, "user2")
    store.create("Work/2024")
    store.create("Sent")
    store.subscribe("Sent")
    store.subscribe("INBOX")
    listed = {f.name: (f.selectable, f.children) for f in store.list()}
    assert listed == {"INBOX": (True, False), "Sent": (True, False),
                      "Work": (False, True), "Work/2024": (True, False)}
    assert (tmp_path / "home/user2/mail/.subscriptions").read_text() == "Sent\nINBOX\n"
    with pytest.raises(StoreError) as err:
        store.create("Sent")
    assert err.value.code == "ALREADYEXISTS"
    store.rename("Sent", "Enviados")
    store.delete("Work/2024")
    assert [f.name for f in store.list()] == ["INBOX", "Work", "Enviados"]


def test_concurrent_delivery_while_a_reader_rewrites(tmp_path):
    """Local delivery (dotlock + fcntl) and store rewrites (new file renamed over)
    in two threads: nothing lost, nothing duplicated, UIDs strictly increasing."""
    agent = LocalAgent(tmp_path, user_exists=lambda u: True, log=MailLog(None),
                       lock_delay=0.01, lock_attempts=500)
    folder = MboxStore(tmp_path, "user2").folder("INBOX")
    total = 40
    errors = []

    def writer():
        try:
            for i in range(total):
                job = LocalJob(qid=f"Q{i}", index=0, sender="user1@gponlab.local",
                               recipient="user2@gponlab.local", orig_rcpt="user2@gponlab.local",
                               content=f"Subject: n{i}\nMessage-ID: <{i}@t>\n\nbody {i}\n".encode(),
                               arrival=time.time(), active_arrival=time.time())
                result = agent.deliver("user2", [job])
                assert result[0].status == "sent", result[0].reason
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    seen_uids: dict[int, bytes] = {}
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        state = folder.sync(mark_old=True)
        if state.messages:
            folder.store([state.messages[-1].uid], [SEEN], 1)   # forces a rewrite
        for m in state.messages:
            assert seen_uids.setdefault(m.uid, m.content) == m.content
    thread.join(30)
    assert not errors
    state = folder.sync()
    uids = [m.uid for m in state.messages]
    subjects = [m.content.split(b"Subject: ")[1].split(b"\n")[0] for m in state.messages]
    assert len(state.messages) == total
    assert sorted(set(subjects)) == sorted(f"n{i}".encode() for i in range(total))
    assert uids == sorted(set(uids))
    assert not list((tmp_path / "var/mail").glob("*.tmp")) and not list(
        (tmp_path / "var/mail").glob("*.lock"))


@pytest.fixture
def frozen_clock(monkeypatch):
    """The UIDVALIDITY counter's clock stopped at one second (and its
    fallback, a per-process counter in Dovecot, starting afresh)."""
    from types import SimpleNamespace
    from gponsim.server.mailstore import uidvalidity
    monkeypatch.setattr(uidvalidity, "_fallback_last", 0)
    monkeypatch.setattr(uidvalidity, "time", SimpleNamespace(time=lambda: 1700000000.25))
    return 1700000000


def test_empty_mailboxes_of_one_second_get_the_next_uidvalidity(tmp_path, frozen_clock):
    """mailbox_uidvalidity_next(): an empty INBOX and new mailboxes, all in one
    second, get distinct values counting up; ~/mail/.imap keeps the last one
    as Dovecot writes it. A mailbox deleted and created again gets a new one."""
    store = MboxStore(tmp_path, "user2")
    values = [store.folder("INBOX").sync().uidvalidity]
    for name in ("A", "B"):
        store.create(name)
        values.append(store.folder(name).sync().uidvalidity)
    store.delete("A")
    store.create("A")
    values.append(store.folder("A").sync().uidvalidity)
    assert values == [frozen_clock, frozen_clock + 1, frozen_clock + 2, frozen_clock + 3]
    # a value once given stays (the file keeps it), and the counter is not asked again
    assert MboxStore(tmp_path, "user2").folder("B").sync().uidvalidity == frozen_clock + 2
    control = tmp_path / "home/user2/mail/.imap"
    last = f"{frozen_clock + 3:08x}"
    assert sorted(p.name for p in control.iterdir()) == [
        "dovecot-uidvalidity", f"dovecot-uidvalidity.{last}"]
    assert (control / "dovecot-uidvalidity").read_bytes() == last.encode()   # no newline
    assert (control / f"dovecot-uidvalidity.{last}").read_bytes() == b""
    assert (control / f"dovecot-uidvalidity.{last}").stat().st_mode & 0o777 == 0o444
    mail_mode = (tmp_path / "home/user2/mail").stat().st_mode
    assert (control / "dovecot-uidvalidity").stat().st_mode & 0o777 == mail_mode & 0o666
    assert control.stat().st_mode & 0o777 == mail_mode & 0o777
    # the control directory is no mailbox
    assert [f.name for f in store.list()] == ["INBOX", "A", "B"]


def test_a_first_delivery_takes_the_time_not_the_counter(tmp_path, frozen_clock):
    """A file with messages but no X-IMAPbase (local(8)'s first delivery)
    gets the current time, as mbox-sync-parse.c gives it; the counter is
    neither asked nor created. An APPEND to an empty mailbox asks it."""
    deliver(tmp_path, "user2", b"Subject: m\n\nbody\n")
    store = MboxStore(tmp_path, "user2")
    before = int(time.time())
    assert before <= store.folder("INBOX").sync().uidvalidity <= time.time()
    assert not (tmp_path / "home/user2/mail/.imap").exists()
    store.create("Sent")
    validity, _uid = store.folder("Sent").append(b"Subject: s\r\n\r\nx\r\n", [])
    assert validity == frozen_clock          # the counter's first value: this second
    store.create("Other")
    assert store.folder("Other").sync().uidvalidity == frozen_clock + 1


def test_uidvalidity_counter_recovers_as_dovecot_does(tmp_path, frozen_clock):
    """The main file gone: the highest dovecot-uidvalidity.<hex> goes on (the
    lowest of two is deleted); unreadable: the same; both gone: the clock
    again; the main file alone: its renames fail, the clock again."""
    from gponsim.server.mailstore.uidvalidity import uidvalidity_next
    path = tmp_path / "home/user2/mail/.imap/dovecot-uidvalidity"
    assert uidvalidity_next(path) == frozen_clock
    path.unlink()
    assert uidvalidity_next(path) == frozen_clock + 1
    (path.parent / f"dovecot-uidvalidity.{frozen_clock + 10:08x}").touch()
    assert uidvalidity_next(path) == frozen_clock + 2           # the main file's value goes on
    path.write_bytes(b"zz")
    assert uidvalidity_next(path) == frozen_clock + 11          # rescan: the highest
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "dovecot-uidvalidity", f"dovecot-uidvalidity.{frozen_clock + 11:08x}"]
    for p in path.parent.iterdir():
        p.unlink()
    assert uidvalidity_next(path) == frozen_clock + 1           # the fallback counts on
    (path.parent / f"dovecot-uidvalidity.{frozen_clock + 1:08x}").unlink()
    assert uidvalidity_next(path) == frozen_clock + 2
    assert path.read_bytes() == f"{frozen_clock + 2:08x}".encode()


def test_sessions_creating_mailboxes_at_once_get_distinct_uidvalidities(tmp_path, frozen_clock):
    """Sessions (threads, each with its own store) selecting new mailboxes at
    the same moment: the counter's renames give each its own value."""
    count = 12
    for i in range(count):
        MboxStore(tmp_path, "user2").create(f"M{i}")
    MboxStore(tmp_path, "user2").folder("INBOX").sync()     # the counter exists
    start = threading.Barrier(count)
    got: dict[int, int] = {}
    errors = []

    def session(i):
        try:
            folder = MboxStore(tmp_path, "user2").folder(f"M{i}")
            start.wait(10)
            got[i] = folder.sync().uidvalidity
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert sorted(got.values()) == list(range(frozen_clock + 1, frozen_clock + 1 + count))
    control = tmp_path / "home/user2/mail/.imap"
    assert [p.name for p in control.glob("dovecot-uidvalidity.*")] == [
        f"dovecot-uidvalidity.{frozen_clock + count:08x}"]


def test_special_use_mailboxes_created_only_with_auto(tmp_path):
    from gponsim.server.dovecot.imap import ImapContext, ImapSettings
    settings = ImapSettings(special_use=[("Sent", "\\Sent", "subscribe"),
                                         ("Trash", "\\Trash", "create"),
                                         ("Junk", "\\Junk", "no")])
    store = ImapContext(lab_root=tmp_path, settings=settings).store_for("user2")
    assert [f.name for f in store.list()] == ["INBOX", "Sent", "Trash"]
    assert store.subscriptions() == ["Sent"]


def test_cache_reads_only_what_a_delivery_appended_and_matches_a_whole_parse(tmp_path,
                                                                             monkeypatch):
    import gponsim.server.mailstore.mbox as ms
    deliver(tmp_path, "user2", b"Subject: m#\n\nFrom the body\n", n=3)
    folder = MboxStore(tmp_path, "user2").folder("INBOX")
    first = folder.sync(mark_old=True)
    parsed = []
    real_parse = ms.parse_mbox
    monkeypatch.setattr(ms, "parse_mbox", lambda data: parsed.append(len(data)) or real_parse(data))
    # Unchanged file: nothing parsed, nothing locked (no dotlock left behind either).
    assert [m.uid for m in folder.sync().messages] == [1, 2, 3]
    assert parsed == []
    size = (tmp_path / "var/mail/user2").stat().st_size
    deliver(tmp_path, "user2", b"Subject: new #\n\nhello\n", n=2)
    grown = (tmp_path / "var/mail/user2").stat().st_size
    state = folder.sync()
    assert parsed == [grown - size]                       # only the appended bytes
    assert [m.uid for m in state.messages] == [1, 2, 3, 4, 5]
    assert [m.recent for m in state.messages] == [False, False, False, True, True]
    # What the cache says is what a fresh parse of the file says.
    whole = decode((tmp_path / "var/mail/user2").read_bytes())
    assert [(m.uid, m.headers, m.body, m.flags) for m in whole.messages] == [
        (m.uid, m.headers, m.body, m.flags) for m in state.messages]
    assert whole.uidvalidity == first.uidvalidity and whole.uidnext == state.uidnext == 6
    # Callers get copies: changing them does not change the shared cache.
    state.messages[0].flags.add(DELETED)
    assert DELETED not in folder.sync().messages[0].flags


def test_cache_notices_a_rewrite_by_another_program(tmp_path):
    deliver(tmp_path, "user2", b"Subject: m#\n\nbody\n", n=2)
    folder = MboxStore(tmp_path, "user2").folder("INBOX")
    folder.sync(mark_old=True)
    path = tmp_path / "var/mail/user2"
    text = path.read_bytes()
    # Another program (Dovecot, an editor) rewrites the file in place: flags change.
    with open(path, "r+b") as fh:
        fh.write(text.replace(b"X-UID: 2\nStatus: O\n", b"X-UID: 2\nStatus: RO\n"))
    assert [SEEN in m.flags for m in folder.sync().messages] == [False, True]
    # Truncated to nothing but the first message: the second is gone.
    cut = text.index(b"\nFrom ", 10) + 1
    path.write_bytes(text[:cut])
    assert [m.uid for m in folder.sync().messages] == [1]


def test_mailwatch_tells_when_a_delivery_finishes(tmp_path, reactor_thread):
    """inotify on the mail directory: a delivery (dotlock, append, close)
    and a rewrite (rename over) each reach the subscriber; others do not."""
    import sys
    from gponsim.server.mailstore.mailwatch import MailWatch
    from labproc import wait_until
    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux's")
    calls = []
    deliver(tmp_path, "user2", b"Subject: first\n\nx\n")
    path = tmp_path / "var/mail/user2"
    watch = reactor_thread.call(lambda: MailWatch.for_reactor(reactor_thread.reactor))
    handle = reactor_thread.call(watch.watch, path, lambda: calls.append("user2"))
    assert handle is not None
    reactor_thread.call(watch.watch, tmp_path / "var/mail/user1", lambda: calls.append("user1"))
    deliver(tmp_path, "user2", b"Subject: second\n\nx\n")
    wait_until(lambda: "user2" in calls, 5, "the watch to fire for a delivery")
    MboxStore(tmp_path, "user2").folder("INBOX").sync()           # a rewrite: rename over
    wait_until(lambda: calls.count("user2") >= 2, 5, "the watch to fire for a rewrite")
    assert "user1" not in calls
    reactor_thread.call(watch.unwatch, handle)
    before = len(calls)
    deliver(tmp_path, "user2", b"Subject: third\n\nx\n")
    deliver(tmp_path, "user1", b"Subject: other\n\nx\n")
    wait_until(lambda: "user1" in calls, 5, "user1's watch")
    assert calls.count("user2") == before
