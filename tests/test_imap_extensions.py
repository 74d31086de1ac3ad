"""The IMAP extensions gponsim advertises after login, used through imaplib:
ESEARCH, WITHIN, SORT (and SORT=DISPLAY), THREAD=ORDEREDSUBJECT and
THREAD=REFERENCES, MULTIAPPEND, BINARY; and nothing advertised is answered
as an unknown command.

The expected orders and thread trees below were worked out by hand from
RFC 5256's rules for the six messages of the "Ext" folder, not taken from the
server.
"""

from __future__ import annotations

import imaplib
import re

import pytest

from imapclient import Raw
from labproc import LabProcess

from test_imap import POST

pytestmark = pytest.mark.slow          # end to end: `gponsim serve` and imaplib


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    proc = LabProcess(tmp_path_factory.mktemp("imapext") / "gponlab").start()
    yield proc
    proc.stop()


def login(lab) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    m.login("user2", "pass")
    return m


# (internal date, flags, message). Sent dates (Date:) and arrival dates differ on purpose.
EXT = [
    ("05-Jan-2024 12:00:00 +0000", r"(\Seen)",
     "Subject: Practica GPON\r\nFrom: Ana Zoe <zoe@gponlab.local>\r\nTo: user2@gponlab.local\r\n"
     "Cc: bea@gponlab.local\r\nDate: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <a@t>\r\n"
     "\r\nuno\r\n"),
    ("01-Jan-2024 12:00:00 +0000", None,
     "Subject: Re: Practica GPON\r\nFrom: ana@gponlab.local\r\nTo: carlos@gponlab.local\r\n"
     "Date: Wed, 03 Jan 2024 10:00:00 +0000\r\nMessage-ID: <b@t>\r\nIn-Reply-To: <a@t>\r\n"
     "\r\ndos dos dos dos\r\n"),
    ("03-Jan-2024 12:00:00 +0000", r"(\Seen)",
     "Subject: [lab] Horario\r\nFrom: Bruno <bruno@gponlab.local>\r\nTo: ana@gponlab.local\r\n"
     "Date: Mon, 01 Jan 2024 09:00:00 +0100\r\nMessage-ID: <c@t>\r\n\r\ntres\r\n"),
    ("02-Jan-2024 12:00:00 +0000", None,
     "Subject: Fwd: Horario (fwd)\r\nFrom: Carla <carla@gponlab.local>\r\n"
     "Date: Thu, 04 Jan 2024 10:00:00 +0000\r\nMessage-ID: <d@t>\r\nReferences: <zz@t>\r\n"
     "\r\ncuatro cuatro cuatro cuatro cuatro cuatro\r\n"),
    ("04-Jan-2024 12:00:00 +0000", None,
     "Subject: Re: Practica GPON\r\nFrom: zoe@gponlab.local\r\n"
     "Date: Wed, 03 Jan 2024 09:00:00 +0000\r\nMessage-ID: <e@t>\r\n"
     "References: <a@t> <b@t>\r\n\r\ncinco\r\n"),
    ("06-Jan-2024 12:00:00 +0000", None,
     "Subject: Horario\r\nFrom: dario@gponlab.local\r\nTo: user2@gponlab.local\r\n"
     "Date: Fri, 05 Jan 2024 10:00:00 +0000\r\nMessage-ID: <f@t>\r\n\r\nseis seis\r\n"),
]


@pytest.fixture(scope="module")
def ext(lab):
    m = login(lab)
    m.create("Ext")
    for when, flags, text in EXT:
        typ, _ = m.append("Ext", flags, f'"{when}"', text.encode())
        assert typ == "OK"
    m.logout()
    return lab


def untagged(m, name):
    return [d.decode() if isinstance(d, bytes) else d for d in m.untagged_responses.pop(name, [])]


def run(m, command: str, args: str):
    typ, data = m._simple_command(command, args)
    return typ, data


# ------------------------------------------------------------------ SORT

@pytest.mark.parametrize("criteria, expected", [
    ("ARRIVAL", "2 4 3 5 1 6"),
    ("DATE", "3 1 5 2 4 6"),            # Date: converted to UTC: 09:00 +0100 is the earliest
    ("REVERSE DATE", "6 4 2 5 1 3"),
    ("SUBJECT", "3 4 6 1 2 5"),         # base subjects: HORARIO x3, PRACTICA GPON x3; ties: mailbox order
    ("SUBJECT DATE", "3 4 6 1 5 2"),
    ("FROM", "2 3 4 6 1 5"),            # the mailbox (local part) of the first From address
    ("REVERSE FROM", "1 5 6 4 3 2"),    # equal keys stay in mailbox order (RFC 5256 §3)
    ("DISPLAYFROM", "1 2 3 4 6 5"),     # display name, else the address (RFC 5957)
    ("TO", "4 5 3 2 1 6"),              # no To: sorts first
    ("CC", "2 3 4 5 6 1"),
])
def test_sort_keys(ext, criteria, expected):
    m = login(ext)
    m.select("Ext", readonly=True)
    typ, data = m.sort(f"({criteria})", "UTF-8", "ALL")
    assert typ == "OK" and data == [expected.encode()]
    m.logout()


def test_sort_size_with_search_criteria_and_uid_sort(ext):
    m = login(ext)
    m.select("Ext")
    typ, data = m.fetch("1:*", "(UID RFC822.SIZE)")
    sizes = {int(re.search(rb"^(\d+)", d).group(1)): int(re.search(rb"RFC822.SIZE (\d+)", d).group(1))
             for d in data}
    by_size = sorted(sizes, key=lambda seq: (sizes[seq], seq))
    assert m.sort("(SIZE)", "UTF-8", "ALL")[1] == [" ".join(map(str, by_size)).encode()]
    unseen = [seq for seq in by_size if seq not in (1, 3)]
    assert m.sort("(SIZE)", "US-ASCII", "UNSEEN")[1] == [" ".join(map(str, unseen)).encode()]
    # UID SORT lists UIDs: expunge message 2 so that UIDs and sequence numbers differ.
    m.create("Ext2")
    m.copy("1:*", "Ext2")
    m.select("Ext2")
    m.store("2", "+FLAGS", r"(\Deleted)")
    m.expunge()
    typ, data = m.uid("SORT", "(DATE)", "UTF-8", "ALL")
    assert data == [b"3 1 5 4 6"]
    assert m.sort("(DATE)", "UTF-8", "ALL")[1] == [b"2 1 4 3 5"]
    m.logout()


def test_sort_and_thread_bad_input(ext):
    m = login(ext)
    m.select("Ext", readonly=True)
    with pytest.raises(imaplib.IMAP4.error, match="Unknown sort argument: NAME"):
        m.sort("(NAME)", "UTF-8", "ALL")
    with pytest.raises(imaplib.IMAP4.error, match="Missing sort criteria"):
        m.sort("(REVERSE)", "UTF-8", "ALL")
    typ, data = m.sort("(DATE)", "X-NO-SUCH-CHARSET", "ALL")
    assert typ == "NO" and data[0].startswith(b"[BADCHARSET] Unknown charset (")
    with pytest.raises(imaplib.IMAP4.error, match="Unknown thread algorithm: REFZ"):
        m.thread("REFZ", "UTF-8", "ALL")
    assert m.noop()[0] == "OK"
    m.logout()


# ------------------------------------------------------------------ THREAD

def test_thread_orderedsubject(ext):
    m = login(ext)
    m.select("Ext", readonly=True)
    # Grouped by base subject; the earliest (sent date) is the parent of the others.
    assert m.thread("ORDEREDSUBJECT", "UTF-8", "ALL") == ("OK", [b"(3 (4)(6))(1 (5)(2))"])
    m.logout()


def test_thread_references(ext):
    m = login(ext)
    m.select("Ext", readonly=True)
    # 1 <- 2 <- 5 by References/In-Reply-To. 4 replies to a message not in the
    # folder (its dummy parent is pruned), and "Fwd: Horario (fwd)" joins 3 "[lab]
    # Horario" as a reply; 6 "Horario" is no reply, so 3 and 6 become siblings
    # under a dummy: ((3 4)(6)). Threads in order of their first sent date.
    assert m.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"((3 4)(6))(1 2 5)"])
    # With search criteria: without Zoe's messages, 2 (a reply to the missing 1) stands alone.
    assert m.thread("REFERENCES", "UTF-8", "NOT", "FROM", "zoe") == ("OK", [b"((3 4)(6))(2)"])
    assert m.uid("THREAD", "REFERENCES", "UTF-8", "ALL") == ("OK", [b"((3 4)(6))(1 2 5)"])
    m.logout()


# ------------------------------------------------------------------ ESEARCH, WITHIN

def test_esearch_return_options(ext):
    m = login(ext)
    m.select("Ext", readonly=True)
    tag = m._command("SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "UNSEEN")
    assert m._command_complete("SEARCH", tag)[0] == "OK"
    assert untagged(m, "ESEARCH") == [f'(TAG "{tag.decode()}") MIN 2 MAX 6 ALL 2,4:6 COUNT 4']
    tag = m._command("UID", "SEARCH", "RETURN", "(COUNT)", "FROM", "nobody-here")
    assert m._command_complete("UID", tag)[0] == "OK"
    assert untagged(m, "ESEARCH") == [f'(TAG "{tag.decode()}") UID COUNT 0']
    tag = m._command("SEARCH", "RETURN", "()", "SEEN")        # () means ALL
    assert m._command_complete("SEARCH", tag)[0] == "OK"
    assert untagged(m, "ESEARCH") == [f'(TAG "{tag.decode()}") ALL 1,3']
    with pytest.raises(imaplib.IMAP4.error, match="Unknown return option: PARTIAL"):
        m._simple_command("SEARCH", "RETURN", "(PARTIAL 1:2)", "ALL")   # CONTEXT=SEARCH
    # A plain SEARCH still answers * SEARCH.
    assert m.search(None, "SEEN") == ("OK", [b"1 3"])
    m.logout()


def test_within_younger_older(ext):
    m = login(ext)
    m.select("Ext")
    typ, data = m.append("Ext", None, None, b"Subject: ahora\r\n\r\nnuevo\r\n")
    assert typ == "OK"
    m.noop()
    assert m.search(None, "YOUNGER", "3600") == ("OK", [b"7"])
    assert m.search(None, "OLDER", "3600") == ("OK", [b"1 2 3 4 5 6"])
    m.store("7", "+FLAGS", r"(\Deleted)")
    m.expunge()
    m.logout()


# ------------------------------------------------------------------ MULTIAPPEND

def test_multiappend_all_in_one_command(lab):
    m = login(lab)
    m.create("Multi")
    one, two, three = (b"Subject: m1\r\n\r\nuno\r\n", b"Subject: m2\r\n\r\nFrom dos\r\n",
                       b"Subject: m3\r\n\r\ntres\r\n")
    tag = m._new_tag()
    # Synchronizing literals: the server asks for each one with "+ OK".
    m.send(tag + b" APPEND Multi (\\Seen) {%d}\r\n" % len(one))
    assert m.readline().startswith(b"+ ")
    m.send(one + b' (\\Flagged $Work) "01-Feb-2024 10:00:00 +0100" {%d}\r\n' % len(two))
    assert m.readline().startswith(b"+ ")
    # ...and a LITERAL+ one to finish.
    m.send(two + b" {%d+}\r\n" % len(three) + three + b"\r\n")
    typ, data = m._command_complete("APPEND", tag)
    assert typ == "OK"
    validity = m.status("Multi", "(UIDVALIDITY)")[1][0]
    number = re.search(rb"UIDVALIDITY (\d+)", validity).group(1)
    assert data[0].startswith(b"[APPENDUID " + number + b" 1:3] Append completed")
    m.select("Multi", readonly=True)
    typ, data = m.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
    items = [d for d in data if isinstance(d, tuple)]
    assert [i[1] for i in items] == [one, b"Subject: m2\r\n\r\n>From dos\r\n", three]
    # (new here: \Recent, between the system flags and the keywords)
    assert b"\\Seen \\Recent" in items[0][0] and b"\\Flagged \\Recent $Work" in items[1][0]
    assert b'INTERNALDATE "01-Feb-2024' in items[1][0]
    m.logout()


def test_multiappend_with_a_bad_date_appends_nothing(lab):
    m = login(lab)
    m.create("Multi2")
    one = b"Subject: x\r\n\r\nx\r\n"
    tag = m._new_tag()
    m.send(tag + b" APPEND Multi2 {%d+}\r\n" % len(one) + one
           + b' "31-Foo-2024 99:00:00 +0000" {%d+}\r\n' % len(one) + one + b"\r\n")
    with pytest.raises(imaplib.IMAP4.error, match="Invalid internal date"):
        m._command_complete("APPEND", tag)
    assert m.status("Multi2", "(MESSAGES)")[1] == [b'Multi2 (MESSAGES 0)']
    m.logout()


# ------------------------------------------------------------------ BINARY

MIME = (b"Subject: adjuntos\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
        b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Hola, esto es una pr=C3=A1ctica=\r\n de GPON.\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwRHUE9O\r\n"
        b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "línea en 8 bits".encode() + b"\r\n"
        b"--XX\r\nContent-Type: application/x-foo\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
        b"begin 644 x\r\n--XX--\r\n")


def test_binary_fetch_undoes_transfer_encodings(lab):
    m = login(lab)
    m.create("Bin")
    m.append("Bin", None, None, MIME)
    m.select("Bin")
    typ, data = m.fetch("1", "(BINARY.PEEK[1] BINARY.PEEK[2] BINARY.PEEK[3] BINARY.SIZE[2])")
    assert typ == "OK"
    parts = [d for d in data if isinstance(d, tuple)]
    assert parts[0][1] == "Hola, esto es una práctica de GPON.".encode()
    assert parts[1][1] == b"\x00\x01\x02\x03\x04GPON"
    assert parts[1][0].endswith(b"BINARY[2] ~{9}")          # literal8: it has a NUL
    assert parts[2][1] == "línea en 8 bits".encode()
    assert parts[2][0].endswith(b"BINARY[3] {%d}" % len("línea en 8 bits".encode()))
    assert data[-1].endswith(b"BINARY.SIZE[2] 9)")
    typ, data = m.fetch("1", "(BINARY.PEEK[1]<6.4> FLAGS)")
    # A decoded part (quoted-printable here) goes as a literal8, as Dovecot sends it.
    assert data[0][0].endswith(b"BINARY[1]<6> ~{4}") and data[0][1] == b"esto"
    assert b"\\Seen" not in data[1]
    typ, whole = m.fetch("1", "(BINARY.PEEK[])")
    assert whole[0][1] == MIME
    typ, data = m.fetch("1", "(BINARY.PEEK[4])")
    assert typ == "NO" and data[0].startswith(b"[UNKNOWN-CTE] ")
    # Without PEEK, as BODY[], the message becomes \Seen.
    typ, data = m.fetch("1", "(BINARY[3])")
    assert b"\\Seen" in b"".join(d if isinstance(d, bytes) else d[0] for d in data)
    with pytest.raises(imaplib.IMAP4.error):
        m.fetch("1", "(BINARY.SIZE[1]<0.3>)")
    m.logout()


def test_append_literal8(lab):
    c = Raw(lab.ports["imap"])
    c.line()
    assert c.cmd("a", "LOGIN user2 pass")[-1].startswith("a OK")
    content = b"Subject: bin\r\n\r\ncero\x00cero\r\n"
    c.send(b"b APPEND INBOX ~{%d+}\r\n" % len(content) + content + b"\r\n")
    reply = c.until("b ")[-1]
    assert reply.startswith("b OK [APPENDUID ")
    uid = reply.split()[4].rstrip("]")
    c.cmd("c", "SELECT INBOX")
    c.send(f"d UID FETCH {uid} (BINARY.PEEK[1])\r\n")
    assert c.line().endswith("BINARY[1] ~{11}")        # cero NUL cero CRLF, kept as sent
    c.close()


# ------------------------------------------------------------------ what is advertised works

def test_every_advertised_command_extension_is_understood(ext):
    m = login(ext)
    caps = set(m._simple_command("CAPABILITY") and m.untagged_responses.pop("CAPABILITY")[-1]
               .decode().split())
    assert caps == set(POST.split())
    for gone in ("CONDSTORE", "QRESYNC", "NOTIFY", "CATENATE", "URL-PARTIAL", "CONTEXT=SEARCH"):
        assert gone not in caps
    m.select("Ext")
    probes = {
        "SORT": ("SORT", "(DATE) UTF-8 ALL"), "THREAD=REFERENCES": ("THREAD", "REFERENCES UTF-8 ALL"),
        "THREAD=ORDEREDSUBJECT": ("THREAD", "ORDEREDSUBJECT UTF-8 ALL"),
        "SORT=DISPLAY": ("SORT", "(DISPLAYTO) UTF-8 ALL"), "ESEARCH": ("SEARCH", "RETURN (COUNT) ALL"),
        "WITHIN": ("SEARCH", "OLDER 1"), "BINARY": ("FETCH", "1 (BINARY.SIZE[1])"),
        "NAMESPACE": ("NAMESPACE", ""), "MOVE": ("UID", "MOVE 999 Ext"),
        "LIST-STATUS": ("LIST", '"" "Ext" RETURN (STATUS (MESSAGES SIZE))'),
        "STATUS=SIZE": ("STATUS", "Ext (SIZE)"), "ID": ("ID", "NIL"),
        "ESORT": ("SORT", "RETURN (MIN COUNT) (SIZE) UTF-8 ALL"),
        "SEARCHRES": ("SEARCH", "RETURN (SAVE) ALL"), "THREAD=REFS": ("THREAD", "REFS UTF-8 ALL"),
        "PREVIEW": ("FETCH", "1 (PREVIEW)"), "PREVIEW=FUZZY": ("FETCH", "1 (PREVIEW (LAZY))"),
        "SNIPPET=FUZZY": ("FETCH", "1 (SNIPPET (FUZZY))"), "SAVEDATE": ("FETCH", "1 (SAVEDATE)"),
        "UNSELECT": ("UNSELECT", ""),
    }
    imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
    for cap, (command, args) in probes.items():
        assert cap in caps
        typ, data = m._simple_command(command, *([args] if args else []))
        assert typ == "OK", (cap, data)
    m.logout()


def test_new_commands_and_replies_are_narrated(ext):
    from gponsim.commentary import catalog
    m = login(ext)
    m.select("Ext", readonly=True)
    m.sort("(DATE)", "UTF-8", "ALL")
    m.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
    m._simple_command("SEARCH", "RETURN", "(COUNT)", "ALL")
    m.fetch("1", "(BINARY.SIZE[1])")
    m.logout()
    steps = [s for s in ext.steps() if s.proto == "imap"]
    keys = {s.key for s in steps}
    for key in ("imap.cmd.SORT", "imap.cmd.UID_THREAD", "imap.untagged.SORT",
                "imap.untagged.THREAD", "imap.untagged.ESEARCH"):
        assert key in keys
        step = next(s for s in steps if s.key == key)
        note = catalog().resolve(step)
        assert note is not None


def test_examine_reports_recent_without_taking_it_and_status_as_dovecot(lab):
    import smtplib
    from labproc import wait_until
    with smtplib.SMTP("127.0.0.1", lab.ports["smtp"], timeout=10) as s:
        s.sendmail("user2@gponlab.local", ["user1@gponlab.local"],
                   b"Subject: reciente\r\n\r\nhola\r\n")
    lab.wait_for_mail("user1", 1)
    m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    m.login("user1", "pass")
    assert m.select("INBOX", readonly=True) == ("OK", [b"1"])
    assert m.untagged_responses.pop("RECENT") == [b"1"]
    assert b"\\Recent" in m.fetch("1", "(FLAGS)")[1][0]
    # STATUS items come in Dovecot's order; on the selected folder: [CLIENTBUG].
    typ, data = m.status("INBOX", "(UIDNEXT MESSAGES RECENT)")
    assert typ == "OK" and data == [b"INBOX (MESSAGES 1 RECENT 1 UIDNEXT 2)"]
    tag = m._command("STATUS", "INBOX", "(MESSAGES)")
    assert m._command_complete("STATUS", tag)[1][0].startswith(
        b"[CLIENTBUG] Status on selected mailbox completed")
    m.logout()
    # The first read-write SELECT still gets it as \Recent, and takes it: the next does not.
    for expected in (b"1", b"0"):
        m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
        m.login("user1", "pass")
        m.select("INBOX")
        assert m.untagged_responses.pop("RECENT") == [expected]
        m.logout()
    wait_until(lambda: b"Status: O" in lab.mbox_path("user1").read_bytes(), 5, "Status: O")
