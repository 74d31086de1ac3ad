"""Interop with real Dovecot (Debian's doveadm): both read the same UIDs, UIDVALIDITY and flags.

doveadm opens the mbox files directly (no Dovecot server running), with a
throwaway configuration: ``mail_location = mbox:...:INBOX=...:INDEX=MEMORY``,
so everything it reports comes from the mbox file itself, never from an index.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from gponsim.server.local import render_entry
from gponsim.server.mbox_store import MailStore

pytestmark = pytest.mark.skipif(shutil.which("doveadm") is None,
                                reason="Dovecot (dovecot-core) not installed")


class Doveadm:
    def __init__(self, tmp_path, root):
        self.root = root
        self.conf = tmp_path / "dovecot.conf"
        run = tmp_path / "run"
        run.mkdir()
        uid = 65534 if os.getuid() == 0 else os.getuid()     # Dovecot refuses root
        gid = 65534 if os.getuid() == 0 else os.getgid()
        self.uid, self.gid = uid, gid
        self.conf.write_text(f"""
base_dir = {run}
state_dir = {run}
log_path = /dev/stderr
ssl = no
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 0
first_valid_gid = 0
mail_privileged_group =
mail_location = mbox:{root}/home/%u/mail:INBOX={root}/var/mail/%u:INDEX=MEMORY
mbox_write_locks = dotlock fcntl
""")

    def __call__(self, *args: str) -> str:
        if os.getuid() == 0:
            for dirpath, dirnames, filenames in os.walk(self.root):
                for name in dirnames + filenames + [""]:
                    os.chown(os.path.join(dirpath, name), self.uid, self.gid)
        env = {**os.environ, "USER": "user2", "HOME": str(self.root / "home/user2")}
        out = subprocess.run(["doveadm", "-c", str(self.conf), *args], capture_output=True,
                             text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def fetch(self, mailbox: str) -> list[tuple[int, set[str], str]]:
        text = self("fetch", "uid flags hdr.subject", "mailbox", mailbox, "all")
        records: list[dict] = []
        for line in text.splitlines():
            m = re.match(r"^(uid|flags|hdr\.subject): ?(.*)$", line)
            if not m:
                continue
            if m.group(1) == "uid":
                records.append({})
            records[-1][m.group(1)] = m.group(2).strip()
        return [(int(r["uid"]), set(r["flags"].split()), r.get("hdr.subject", ""))
                for r in records]

    def status(self, mailbox: str) -> dict[str, int]:
        text = self("mailbox", "status", "messages uidvalidity uidnext", mailbox)
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


@pytest.fixture
def where():
    """A folder Dovecot's unprivileged user can reach (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gponsim-dovecot-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def deliver(root, n, start=0):
    path = root / "var/mail/user2"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        for i in range(start, start + n):
            fh.write(render_entry(f"Subject: m{i}\n\nFrom body {i}\n".encode(),
                                  sender="user1@gponlab.local", orig_rcpt="user2@gponlab.local",
                                  delivered_to="user2@gponlab.local", when=1700000000 + i))


def gponsim_view(root, mailbox="INBOX"):
    state = MailStore(root, "user2").folder(mailbox).sync()
    return state, [(m.uid, set(m.flags) | set(m.keywords),
                    m.content.split(b"Subject: ")[1].split(b"\n")[0].decode())
                   for m in state.messages]


def test_dovecot_reads_what_gponsim_wrote(where):
    tmp_path = where
    root = tmp_path / "lab"
    deliver(root, 4)
    store = MailStore(root, "user2")
    inbox = store.folder("INBOX")
    inbox.sync(mark_old=True)
    inbox.store([2], ["\\Seen", "\\Flagged"], 1)
    inbox.store([3], ["\\Deleted", "$Work"], 1)
    inbox.store([4], ["\\Deleted"], 1)
    inbox.expunge([4])
    store.create("Sent")
    store.folder("Sent").append(b"Subject: sent\r\n\r\nFrom me\r\n", ["\\Seen", "\\Answered"],
                                envelope="user2")
    before = (root / "var/mail/user2").read_bytes()
    state, ours = gponsim_view(root)
    dove = Doveadm(tmp_path, root)
    assert dove.fetch("INBOX") == ours == [
        (1, set(), "m0"), (2, {"\\Seen", "\\Flagged"}, "m1"), (3, {"\\Deleted", "$Work"}, "m2")]
    assert dove.status("INBOX") == {"messages": 3, "uidvalidity": state.uidvalidity, "uidnext": 5}
    assert dove.fetch("Sent") == [(1, {"\\Seen", "\\Answered"}, "sent")]
    # Dovecot found nothing to fix in the file.
    assert (root / "var/mail/user2").read_bytes() == before


def test_gponsim_reads_what_dovecot_wrote(where):
    tmp_path = where
    root = tmp_path / "lab"
    deliver(root, 2)                       # as Postfix's local(8) writes it: no UIDs yet
    dove = Doveadm(tmp_path, root)
    assert [u for u, _f, _s in dove.fetch("INBOX")] == [1, 2]
    dove("flags", "add", "\\Answered \\Seen $Label1 Junk", "mailbox", "INBOX", "uid", "2")
    state, ours = gponsim_view(root)
    assert ours == visible(dove.fetch("INBOX")) == [
        (1, set(), "m0"), (2, {"\\Answered", "\\Seen", "$Label1", "Junk"}, "m1")]
    dove("expunge", "mailbox", "INBOX", "uid", "1")
    deliver(root, 1, start=5)              # a delivery after Dovecot's rewrite
    dove_view = visible(dove.fetch("INBOX"))
    validity = dove.status("INBOX")["uidvalidity"]
    state, ours = gponsim_view(root)
    assert ours == dove_view
    assert [(u, "\\Answered" in f, s) for u, f, s in ours] == [(2, True, "m1"), (3, False, "m5")]
    assert state.uidvalidity == validity


def visible(records):
    """Dovecot's view without \\Recent (a per-session flag, not stored in the file)."""
    return [(u, f - {"\\Recent"}, s) for u, f, s in records]
