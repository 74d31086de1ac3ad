"""Interop with real Dovecot (Debian's doveadm): both read the same UIDs, UIDVALIDITY and flags;
and Dovecot's own imap binary (package dovecot-imapd) answers SORT, THREAD, ESEARCH, WITHIN
and BINARY exactly as gponsim does on the same mbox.

doveadm opens the mbox files directly (no Dovecot server running), with a
throwaway configuration: ``mail_location = mbox:...:INBOX=...:INDEX=MEMORY``,
so everything it reports comes from the mbox file itself, never from an index.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import subprocess
import tempfile
from pathlib import Path

import pytest

from gponsim.server.postfix.local import render_entry
from gponsim.server.mailstore.mbox import MboxStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("doveadm") is None,
                       reason="Dovecot (dovecot-core) not installed"),
]


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
    state = MboxStore(root, "user2").folder(mailbox).sync()
    return state, [(m.uid, set(m.flags) | set(m.keywords),
                    m.content.split(b"Subject: ")[1].split(b"\n")[0].decode())
                   for m in state.messages]


def test_dovecot_reads_what_gponsim_wrote(where):
    tmp_path = where
    root = tmp_path / "lab"
    deliver(root, 4)
    store = MboxStore(root, "user2")
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
    # APPENDed: \Recent until a session has seen it (no "O" in Status:)
    assert dove.fetch("Sent") == [(1, {"\\Seen", "\\Answered", "\\Recent"}, "sent")]
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


# ---------------------------------------------------------------------------
# The same IMAP commands against real Dovecot's imap and gponsim, on the same mbox.

DOVECOT_IMAP = os.environ.get("GPONSIM_DOVECOT_IMAP", "/usr/lib/dovecot/imap")

#: (From_ line date, message) – replies, forwards, list tags, missing parents,
#: dates in other zones, a MIME message with every transfer encoding.
COMPARE_MESSAGES = [
    (1704456000, "Subject: Practica GPON\nFrom: Ana Zoe <zoe@gponlab.local>\n"
     "To: user2@gponlab.local\nCc: bea@gponlab.local\nDate: Tue, 02 Jan 2024 10:00:00 +0000\n"
     "Message-ID: <a@t>\n\nuno\n"),
    (1704110400, "Subject: Re: Practica GPON\nFrom: ana@gponlab.local\nTo: carlos@gponlab.local\n"
     "Date: Wed, 03 Jan 2024 10:00:00 +0000\nMessage-ID: <b@t>\nIn-Reply-To: <a@t>\n\n"
     "dos dos dos dos\n"),
    (1704283200, "Subject: [lab] Horario\nFrom: Bruno <bruno@gponlab.local>\nTo: ana@gponlab.local\n"
     "Date: Mon, 01 Jan 2024 09:00:00 +0100\nMessage-ID: <c@t>\n\ntres\n"),
    (1704196800, "Subject: Fwd: Horario (fwd)\nFrom: Carla <carla@gponlab.local>\n"
     "Date: Thu, 04 Jan 2024 10:00:00 +0000\nMessage-ID: <d@t>\nReferences: <zz@t>\n\n"
     "cuatro cuatro cuatro cuatro cuatro cuatro\n"),
    (1704369600, "Subject: Re: Practica GPON\nFrom: zoe@gponlab.local\n"
     "Date: Wed, 03 Jan 2024 09:00:00 +0000\nMessage-ID: <e@t>\nReferences: <a@t> <b@t>\n\n"
     "cinco\n"),
    (1704542400, "Subject: Horario\nFrom: dario@gponlab.local\nTo: user2@gponlab.local\n"
     "Date: Fri, 05 Jan 2024 10:00:00 +0000\nMessage-ID: <f@t>\n\nseis seis\n"),
    (1704628800, "Subject: =?utf-8?q?Re=3A_=C3=BAltima?= [lab]\nFrom: =?utf-8?q?=C3=81lvaro?= <alvaro@x>\n"
     "Date: Sat, 06 Jan 2024 10:00:00 -0500\nMessage-ID: <g@t>\nReferences: <f@t>\n"
     "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"XX\"\n\n"
     "--XX\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
     "Hola, esto es una pr=C3=A1ctica=\n de GPON.\n"
     "--XX\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
     "AAECAwRHUE9O\n"
     "--XX\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
     "l\u00ednea en 8 bits\n--XX--\n"),
    (1704715200, "Subject: sin fecha ni id\nFrom: eva@gponlab.local\n\nsiete\n"),
    # Threading corner cases: a duplicate Message-ID, a wrapped forward, a
    # References loop, a reply whose parent arrives later, an empty subject.
    (1704801600, "Subject: Re: Re: Horario\nFrom: f@x\nDate: Sun, 07 Jan 2024 10:00:00 +0000\n"
     "Message-ID: <a@t>\nReferences: <c@t>\n\nnueve\n"),
    (1704888000, "Subject: [Fwd: Practica GPON]\nFrom: g@x\nDate: Mon, 08 Jan 2024 10:00:00 +0000\n"
     "Message-ID: <h@t>\n\ndiez\n"),
    (1704974400, "Subject: bucle\nFrom: h@x\nDate: Tue, 09 Jan 2024 10:00:00 +0000\n"
     "Message-ID: <j@t>\nReferences: <i@t> <j@t> <i@t>\n\nonce\n"),
    (1705060800, "Subject: Re: perdido\nFrom: i@x\nDate: Wed, 10 Jan 2024 10:00:00 +0000\n"
     "Message-ID: <l@t>\nIn-Reply-To: <k@t>\n\ndoce\n"),
    (1705147200, "Subject: perdido\nFrom: j@x\nDate: Wed, 10 Jan 2024 09:00:00 +0000\n"
     "Message-ID: <k@t>\n\ntrece\n"),
    (1705233600, "Subject: \nFrom: k@x\nDate: Fri, 12 Jan 2024 10:00:00 +0000\n"
     "Message-ID: <m@t>\n\ncatorce\n"),
    (1705320000, "Subject: Re: [lab] Re: Fwd: Horario (fwd) (fwd)\nFrom: l@x\n"
     "Date: Sat, 13 Jan 2024 10:00:00 +0000\nMessage-ID: <n@t>\n\nquince\n"),
    # MIME structure: nested multipart, an attached message, dispositions, no charset.
    (1705406400, "Subject: estructura\nFrom: m@x\nMIME-Version: 1.0\n"
     "Content-Type: multipart/mixed; boundary=\"Out\"\n\npreambulo\n"
     "--Out\nContent-Type: multipart/alternative; boundary=in\n\n"
     "--in\nContent-Type: text/plain\n\nhola\nadios\n"
     "--in\nContent-Type: text/html; charset=\"UTF-8\"\nContent-Transfer-Encoding: 7bit\n\n"
     "<p>hola</p>\n--in--\n"
     "--Out\nContent-Type: application/pdf; name=\"practica.pdf\"\n"
     "Content-Disposition: attachment; filename=\"practica.pdf\"\n"
     "Content-Transfer-Encoding: base64\nContent-ID: <pdf@t>\nContent-Description: la practica\n\n"
     "JVBERi0xLjQK\n"
     "--Out\nContent-Type: message/rfc822\n\nSubject: dentro\nFrom: n@x\nTo: o@x\n\ncuerpo\n"
     "--Out--\nepilogo\n"),
]

COMPARE_COMMANDS = [
    "SORT (ARRIVAL) UTF-8 ALL", "SORT (DATE) UTF-8 ALL", "SORT (REVERSE DATE) UTF-8 ALL",
    "SORT (SUBJECT) UTF-8 ALL", "SORT (SUBJECT DATE) UTF-8 ALL", "SORT (FROM) UTF-8 ALL",
    "SORT (REVERSE FROM) UTF-8 ALL", "SORT (TO) UTF-8 ALL", "SORT (CC) UTF-8 ALL",
    "SORT (SIZE) UTF-8 ALL", "SORT (DISPLAYFROM) UTF-8 ALL", "SORT (DISPLAYTO ARRIVAL) UTF-8 ALL",
    "SORT (REVERSE ARRIVAL) UTF-8 NOT FROM zoe",
    "SORT (SUBJECT REVERSE DATE) UTF-8 ALL", "SORT (REVERSE SUBJECT SIZE) UTF-8 ALL",
    "THREAD ORDEREDSUBJECT UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL",
    "THREAD REFERENCES UTF-8 NOT FROM zoe", "UID THREAD REFERENCES UTF-8 ALL",
    "SEARCH RETURN (MIN MAX COUNT ALL) ALL", "SEARCH RETURN (COUNT) FROM nadie",
    "SEARCH RETURN () SUBJECT horario", "UID SEARCH RETURN (MIN MAX) SUBJECT practica",
    "SEARCH OLDER 3600", "SEARCH YOUNGER 3600",
    "FETCH 7 (BINARY.SIZE[1] BINARY.SIZE[2] BINARY.SIZE[3])",
    "FETCH 7 (BINARY.PEEK[1])", "FETCH 7 (BINARY.PEEK[2])", "FETCH 7 (BINARY.PEEK[3]<2.5>)",
    # EXAMINE shows \Recent; STATUS in Dovecot's item order; SENT* without Date:.
    "UID FETCH 1:* (FLAGS)", "STATUS INBOX (UIDNEXT UNSEEN MESSAGES RECENT SIZE)",
    "SEARCH SENTBEFORE 03-Jan-2024", "SEARCH SENTSINCE 05-Jan-2024",
    "FETCH 1:3 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
    "Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])",
    "FETCH 7 (ENVELOPE)", "FETCH 7 (BODY.PEEK[1.MIME] BODY.PEEK[2])",
    "SEARCH HEADER Message-ID <a@t>", "SEARCH OR FROM ana FROM bruno", "SEARCH TEXT GPON",
    "FETCH 1 (BODYSTRUCTURE)", "FETCH 7 (BODYSTRUCTURE)", "FETCH 7 (BODY)",
    "FETCH 16 (BODYSTRUCTURE)", "FETCH 16 (BODY)", "FETCH 16 (BODY.PEEK[3.1])",
    # ESORT, SEARCHRES, THREAD=REFS, PREVIEW, SNIPPET=FUZZY, SAVEDATE
    "SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL",
    "SORT RETURN () (REVERSE ARRIVAL) UTF-8 ALL", "UID SORT RETURN (MIN MAX) (SIZE) UTF-8 ALL",
    "SORT RETURN (COUNT) (SIZE) UTF-8 FROM nadie",
    "SEARCH RETURN (SAVE) FROM ana", "FETCH $ (UID)", "SEARCH $",
    "UID SEARCH RETURN (SAVE MIN) ALL", "UID FETCH $ (UID RFC822.SIZE)",
    "SEARCH RETURN (SAVE COUNT) SUBJECT horario", "FETCH $ (UID)", "SEARCH UID $",
    "THREAD REFS UTF-8 ALL", "UID THREAD REFS UTF-8 ALL", "THREAD REFS UTF-8 NOT FROM zoe",
    "FETCH 1:16 (PREVIEW)", "FETCH 1:16 (SNIPPET (FUZZY))", "FETCH 1 (PREVIEW (LAZY))",
    "FETCH 1:2 (SAVEDATE)", "SEARCH SAVEDATESUPPORTED", "SEARCH SAVEDSINCE 1-Jan-2020",
    "SEARCH SAVEDBEFORE 5-Jan-2024",
]


def _answers(raw: bytes, tags: list[str]) -> dict[str, bytes]:
    """The untagged bytes each tagged command got, from a whole transcript."""
    out, start = {}, 0
    for tag in tags:
        mark = f"{tag} ".encode()
        end = start if raw.startswith(mark, start) else raw.index(b"\r\n" + mark, start) + 2
        out[tag] = raw[start:end]
        start = raw.index(b"\r\n", end) + 2
    return out


@pytest.mark.skipif(not os.path.exists(DOVECOT_IMAP),
                    reason=f"Dovecot's imap binary not found at {DOVECOT_IMAP} "
                           "(apt-get install dovecot-imapd, or GPONSIM_DOVECOT_IMAP=path)")
def test_sort_thread_esearch_binary_as_dovecot(where, extra_commands=()):
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from imapclient import Raw
    from labproc import LabProcess

    lab_root, dove_root = where / "lab", where / "dove"
    path = lab_root / "var/mail/user2"
    path.parent.mkdir(parents=True)
    with open(path, "ab") as fh:
        for when, text in COMPARE_MESSAGES:
            fh.write(render_entry(text.encode(), sender="user1@gponlab.local",
                                  orig_rcpt="user2@gponlab.local",
                                  delivered_to="user2@gponlab.local", when=when))
    shutil.copytree(lab_root, dove_root)
    commands = COMPARE_COMMANDS + list(extra_commands)
    tags = [f"q{i}" for i in range(len(commands))]

    # Real Dovecot: its imap binary, pre-authenticated, the commands on stdin.
    dove = Doveadm(where, dove_root)
    dove("mailbox", "status", "messages", "INBOX")            # chowns the tree for Dovecot
    env = {**os.environ, "USER": "user2", "HOME": str(dove_root / "home/user2")}
    proc = subprocess.Popen([DOVECOT_IMAP, "-c", str(dove.conf)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    theirs = {}
    try:
        # One command at a time: Dovecot runs pipelined commands in parallel.
        for tag, command in [("x", "EXAMINE INBOX")] + list(zip(tags, commands)):
            proc.stdin.write(f"{tag} {command}\r\n".encode())
            proc.stdin.flush()
            block = b""
            while True:
                line = proc.stdout.readline()
                assert line, proc.stderr.read().decode(errors="replace")
                literal = re.search(rb"~?\{(\d+)\}\r\n$", line)
                if literal:
                    line += proc.stdout.read(int(literal.group(1)))
                    continue_line = proc.stdout.readline()
                    line += continue_line
                if line.startswith(f"{tag} ".encode()):
                    break
                block += line
            theirs[tag] = block
        proc.stdin.write(b"z LOGOUT\r\n")
        proc.stdin.close()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()

    # gponsim, over the network.
    lab = LabProcess(lab_root).start()
    try:
        c = Raw(lab.ports["imap"])
        c.line()
        c.cmd("a", "LOGIN user2 pass")
        c.cmd("x", "EXAMINE INBOX")
        # One command at a time, as above: pipelined, both would hold the
        # tagged replies until the batch is done (Dovecot's parallel commands).
        raw = c.buf
        for t, cmd in zip(tags, commands):
            c.send(f"{t} {cmd}\r\n")
            while not re.search(rf"(?:^|\r\n){t} [^\r\n]*\r\n".encode(), raw):
                raw += c.sock.recv(65536)
        ours = _answers(raw, tags)
        c.close()
    finally:
        lab.stop()
    if os.environ.get("GPONSIM_SHOW_DIFF"):
        for tag, command in zip(tags, commands):
            if ours[tag] != theirs[tag]:
                print(f"### {command}\n gponsim: {ours[tag]!r}\n Dovecot: {theirs[tag]!r}")
        return
    for tag, command in zip(tags, commands):
        assert ours[tag] == theirs[tag], f"{command}\n gponsim: {ours[tag]!r}\n Dovecot: {theirs[tag]!r}"


#: Malformed and incomplete commands, after login: each gets Dovecot's tagged answer.
MALFORMED = [b"a SELECT", b"b ID", b"c ID (", b"d AUTHENTICATE", b"e LOGIN", b"\xff\xfe NOOP",
             b"f \xd6NOOP x", b"g SELECT \xff", b"h NOSUCH", b"i STATUS", b"j FETCH", b"k LIST",
             b"l ENABLE", b'm EXAMINE ""', b"n UID", b"o UID FETCH", b"p SEARCH", b"q STORE 1",
             b"r COPY", b"s APPEND", b"a+b NOOP", b"a2 LSUB", b"b2 CREATE", b"i2 MOVE", b"k2 NOOP x",
             b"m2 STATUS \xff (MESSAGES)", b"s2 SELECT INBOX", b"t2 FETCH", b"u2 STORE",
             b"v2 SEARCH", b"w2 COPY", b"y2 UID FETCH", b"y3 MOVE", b"y4 EXPUNGE x",
             b"y5 NAMESPACE x", b'y6 ID ("a" "b"', b"y7 UID EXPUNGE",
             b"s3 SELECT INBOX", b"a3 FETCH 1 SINCE", b"b3 FETCH 1 -1", b"g3 FETCH 1:* (FLAGS",
             b"h3 FETCH 1 younger", b"i3 FETCH 1 (FLAGS) (", b"m3 FETCH 1 BODY[",
             b"n3 FETCH 1 (UID) x", b"o3 STORE 1 +FLAGS", b"f3 SEARCH SINCE x", b"q3 SEARCH FOO",
             b"r3 SEARCH 1:2:3"]


def _tagged(raw: bytes) -> list[bytes]:
    """The tagged (and untagged BAD) lines, without Dovecot's timing suffix."""
    lines = [ln for ln in raw.split(b"\r\n") if ln and (not ln.startswith(b"* ") or b" BAD " in ln)]
    return [re.sub(rb" \(\d+\.\d{3} \+ \d+\.\d{3}(?: \+ \d+\.\d{3})? secs\)\.$", b".", ln)
            for ln in lines]


@pytest.mark.skipif(not os.path.exists(DOVECOT_IMAP),
                    reason=f"Dovecot's imap binary not found at {DOVECOT_IMAP} "
                           "(apt-get install dovecot-imapd, or GPONSIM_DOVECOT_IMAP=path)")
def test_malformed_commands_get_dovecots_answers(where):
    import socket
    import sys
    import time
    sys.path.insert(0, str(Path(__file__).parent))
    from labproc import LabProcess

    dove_root, lab_root = where / "dove", where / "lab"
    for root in (dove_root, lab_root):          # one message in INBOX, for FETCH and STORE
        (root / "var/mail").mkdir(parents=True)
        (root / "var/mail/user2").write_bytes(render_entry(
            b"Subject: uno\nMessage-ID: <u@t>\n\nuno\n", sender="user1@gponlab.local",
            orig_rcpt="user2@gponlab.local", delivered_to="user2@gponlab.local", when=1704456000))
        (root / "home/user2/mail").mkdir(parents=True)
    dove = Doveadm(where, dove_root)
    dove("mailbox", "status", "messages", "INBOX")
    env = {**os.environ, "USER": "user2", "HOME": str(dove_root / "home/user2")}
    out = subprocess.run([DOVECOT_IMAP, "-c", str(dove.conf)], env=env, timeout=30,
                         input=b"".join(c + b"\r\n" for c in MALFORMED) + b"z LOGOUT\r\n",
                         capture_output=True).stdout
    theirs = [ln for ln in _tagged(out) if not ln.startswith((b"z ", b"* BYE"))]

    lab = LabProcess(lab_root).start()
    try:
        s = socket.create_connection(("127.0.0.1", lab.ports["imap"]), timeout=10)
        s.recv(4096)
        s.sendall(b"x LOGIN user2 pass\r\n")
        raw = b""
        while b"x OK" not in raw:
            raw += s.recv(4096)
        raw = b""
        for command in MALFORMED:       # one at a time, as Dovecot read them
            s.sendall(command + b"\r\n")
            deadline = time.monotonic() + 10
            while not re.search(rb"(^|\r\n)[^*\r\n][^\r\n]* (OK|NO|BAD) [^\r\n]*\r\n$|"
                                rb"\* BAD Error in IMAP tag[^\r\n]*\r\n$", raw) \
                    and time.monotonic() < deadline:
                raw += s.recv(65536)
            raw += b"\r\n"
        s.close()
        assert "Traceback" not in lab.stderr() and "Unhandled" not in lab.stderr(), lab.stderr()
    finally:
        lab.stop()
    ours = _tagged(raw)
    # Sorted: Dovecot runs a pipelined command while the next is read, so an EXPUNGE
    # may finish after the commands that followed it.
    assert sorted(ours) == sorted(theirs) and len(ours) == len(MALFORMED)


PREVIEW_MESSAGES = [
    (1704456000, "Subject: citas\nFrom: a@x\nDate: Tue, 02 Jan 2024 10:00:00 +0000\n\n\n\n"
     "  Hola,\n> lo que dijiste\n>> y antes\nrespondo aqui.\n\tcon   espacios\n"),
    (1704542400, "Subject: html\nFrom: b@x\nDate: Wed, 03 Jan 2024 10:00:00 +0000\n"
     "MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n\n"
     "<html><head><title>T</title><style>p {}</style></head><body><p>Hola &amp; "
     "adi&oacute;s</p><blockquote>citado</blockquote><div>fin<br>linea</div></body></html>\n"),
    (1704628800, "Subject: largo\nFrom: c@x\nDate: Thu, 04 Jan 2024 10:00:00 +0000\n\n"
     + "palabra " * 40 + "\n"),
    (1704715200, "Subject: adjunto\nFrom: d@x\nMIME-Version: 1.0\n"
     "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/pdf\n\n"
     "JVBERi0xLjQK\n--b\nContent-Type: text/plain\n\ntexto\n--b--\n"),
    (1704801600, "Subject: latin1\nFrom: e@x\nMIME-Version: 1.0\n"
     "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
     "Pr=E1ctica de redes=\n y m=E1s\n"),
]


@pytest.mark.skipif(not os.path.exists(DOVECOT_IMAP), reason="Dovecot's imap binary not found")
def test_previews_as_dovecot(where, monkeypatch):
    """PREVIEW and SNIPPET (FUZZY) of quoted text, HTML, long text, a first
    part that is not text, another charset: the same text as Dovecot's."""
    monkeypatch.setattr(sys.modules[__name__], "COMPARE_MESSAGES", PREVIEW_MESSAGES)
    monkeypatch.setattr(sys.modules[__name__], "COMPARE_COMMANDS", [
        "FETCH 1:5 (PREVIEW)", "FETCH 1:5 (SNIPPET (FUZZY))", "SEARCH TEXT citado",
        "THREAD REFS UTF-8 ALL", "SORT RETURN (ALL) (SUBJECT) UTF-8 ALL"])
    test_sort_thread_esearch_binary_as_dovecot(where)
