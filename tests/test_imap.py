"""Dovecot-faithful IMAP of `gponsim serve`, against Python's imaplib, curl and raw bytes."""

from __future__ import annotations

import base64
import imaplib
import re
import shutil
import smtplib
import ssl
import subprocess
import threading
import uuid

import pytest

from imapclient import Raw
from labproc import LabProcess, wait_until

pytestmark = pytest.mark.slow          # end to end: `gponsim serve`, imaplib and curl

PRE_SECURED = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
               "AUTH=PLAIN AUTH=LOGIN")
PRE_REMOTE = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED"
#: Dovecot's list without what gponsim does not implement (docs/imap.md).
POST = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
        "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND UNSELECT CHILDREN NAMESPACE UIDPLUS "
        "LIST-EXTENDED I18NLEVEL=1 ESEARCH ESORT SEARCHRES WITHIN LIST-STATUS BINARY MOVE "
        "SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ SPECIAL-USE")
TIMING = r" \(\d+\.\d{3} \+ 0\.000 secs\)\."


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    proc = LabProcess(tmp_path_factory.mktemp("imap") / "gponlab").start()
    yield proc
    proc.stop()


def insecure():
    return ssl._create_unverified_context()


def send_mail(lab, subject: str, body: str = "Hola user2\r\n", to: str = "user2") -> str:
    msgid = f"<{uuid.uuid4().hex}@test>"
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=10) as s:
        s.starttls(context=insecure())
        s.login("user1", "pass")
        s.sendmail("user1@gponlab.local", [f"{to}@gponlab.local"],
                   f"Subject: {subject}\r\nMessage-ID: {msgid}\r\n\r\n{body}".encode())
    return msgid


def login(lab, user="user2") -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    m.login(user, "pass")
    return m


# ------------------------------------------------------------------ greeting, TLS, auth

def test_greeting_and_capabilities_local_client_counts_as_secured(lab):
    m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    assert m.welcome.decode() == f"* OK [CAPABILITY {PRE_SECURED}] Dovecot (Debian) ready."
    typ, data = m.login("user2", "pass")
    # imaplib asked CAPABILITY itself before logging in: imap-login's rule
    # (client_ignores_capability_resp_code) gives it an untagged CAPABILITY
    assert typ == "OK" and data[0].decode() == "Logged in"
    assert m.untagged_responses["CAPABILITY"][-1].decode() == POST
    typ, data = m._simple_command("CAPABILITY")
    assert m.untagged_responses["CAPABILITY"][-1].decode() == POST
    assert re.fullmatch("Capability completed" + TIMING, data[0].decode())
    m.logout()


def test_remote_client_sees_logindisabled_and_plaintext_refusal(lab):
    c = Raw(lab.ports["imap"], source="127.0.0.2")
    assert c.line() == f"* OK [CAPABILITY {PRE_REMOTE}] Dovecot (Debian) ready."
    assert c.cmd("a1", "LOGIN user2 pass") == [
        "* BAD [ALERT] Plaintext authentication not allowed without SSL/TLS, but your client "
        "did it anyway. If anyone was listening, the password was exposed.",
        "a1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) "
        "connections."]
    assert c.cmd("a2", "AUTHENTICATE PLAIN AHVzZXIyAHBhc3M=")[-1].startswith(
        "a2 NO [PRIVACYREQUIRED]")
    assert c.cmd("a3", "STARTTLS") == ["a3 OK Begin TLS negotiation now."]
    c.starttls()
    assert c.cmd("a4", "CAPABILITY") == [
        "* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN",
        "a4 OK Pre-login capabilities listed, post-login capabilities have more."]
    # CAPABILITY after STARTTLS only: the capabilities go in the tagged reply
    assert c.cmd("a5", "LOGIN user2 pass")[-1] == f"a5 OK [CAPABILITY {POST}] Logged in"
    c.close()


def test_login_reply_follows_imap_logins_capability_rule(lab):
    """Dovecot's imap-login: a client that sent CAPABILITY before STARTTLS
    (imaplib, curl) gets ``* CAPABILITY ...`` then ``OK Logged in``; one that
    read the greeting's capabilities (Thunderbird) gets them in the OK."""
    asked = Raw(lab.ports["imap"])
    asked.line()
    asked.cmd("a1", "CAPABILITY")
    assert asked.cmd("a2", "LOGIN user2 pass") == [f"* CAPABILITY {POST}", "a2 OK Logged in"]
    asked.close()
    silent = Raw(lab.ports["imaps"], tls=True)
    silent.line()
    assert silent.cmd("b1", "LOGIN user2 pass") == [f"b1 OK [CAPABILITY {POST}] Logged in"]
    silent.close()


def test_imaps_993_and_starttls_with_imaplib(lab):
    m = imaplib.IMAP4_SSL("127.0.0.1", lab.ports["imaps"], ssl_context=insecure())
    assert "AUTH=PLAIN" in m.welcome.decode() and "STARTTLS" not in m.welcome.decode()
    m.login("user2", "pass")
    assert m.select("INBOX")[0] == "OK"
    m.logout()
    m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    m.starttls(ssl_context=insecure())
    m.login("user2", "pass")
    m.logout()
    wait_until(lambda: ", TLS, session=<" in lab.log_text(), 10, "a TLS login in mail.log")


def test_authenticate_mechanisms_through_the_auth_socket(lab):
    c = Raw(lab.ports["imap"])
    c.line()
    plain = base64.b64encode(b"\0user2\0pass").decode()
    assert c.cmd("a1", f"AUTHENTICATE PLAIN {plain}")[-1].startswith("a1 OK [CAPABILITY")
    c.close()
    c = Raw(lab.ports["imap"])          # Thunderbird's way: no SASL-IR
    c.line()
    c.send("b1 AUTHENTICATE PLAIN\r\n")
    assert c.line() == "+ "
    c.send(plain + "\r\n")
    assert c.until("b1 ")[-1].startswith("b1 OK [CAPABILITY")
    c.close()
    c = Raw(lab.ports["imap"])
    c.line()
    c.send("c1 AUTHENTICATE LOGIN\r\n")
    assert c.line() == "+ VXNlcm5hbWU6"
    c.send(base64.b64encode(b"user2").decode() + "\r\n")
    assert c.line() == "+ UGFzc3dvcmQ6"
    c.send(base64.b64encode(b"pass").decode() + "\r\n")
    assert c.until("c1 ")[-1].startswith("c1 OK [CAPABILITY")
    c.close()
    c = Raw(lab.ports["imap"])
    c.line()
    c.send("d1 AUTHENTICATE PLAIN\r\n")
    c.line()
    c.send("*\r\n")
    assert c.until("d1 ") == ["d1 BAD Authentication aborted by client."]
    assert c.cmd("d2", "AUTHENTICATE CRAM-MD5") == ["d2 NO [ALERT] Unsupported authentication mechanism."]
    c.close()
    steps = lab.steps()
    sasl = [s for s in steps if s.proto == "sasl" and s.line.startswith("AUTH\t")
            and "service=imap" in s.line]
    assert sasl and all(s.src == "imap" and s.dst == "auth" for s in sasl)
    assert all("resp=********" in s.shown_line() for s in sasl if "resp=" in s.line)


def test_wrong_password_gets_dovecot_failure_and_session_goes_on(lab):
    c = Raw(lab.ports["imap"])
    c.line()
    assert c.cmd("a1", "LOGIN user2 wrong") == ["a1 NO [AUTHENTICATIONFAILED] Authentication failed."]
    assert c.cmd("a2", "LOGIN user2 pass")[-1].startswith("a2 OK")
    c.close()
    m = imaplib.IMAP4("127.0.0.1", lab.ports["imap"])
    with pytest.raises(imaplib.IMAP4.error):
        m.login("nobody", "x")
    m.shutdown()
    wait_until(lambda: "imap-login: Disconnected: Connection closed (auth failed, 1 attempts in"
               in lab.log_text(),
               10, "the auth-failed log line")


def test_login_secret_masked_in_steps_and_log_lines(lab):
    m = login(lab)
    m.logout()
    wait_until(lambda: "Disconnected: Logged out in=" in lab.log_text(), 10, "logout log line")
    steps = lab.steps()
    logins = [s for s in steps if s.proto == "imap" and s.verb == "LOGIN" and s.kind == "command"]
    assert logins and all(s.shown_line().endswith("********") or '"********"' in s.shown_line()
                          for s in logins)
    assert all("pass" not in s.to_json() for s in logins)
    log = lab.log_text()
    assert re.search(r"dovecot\[\d+\]: imap-login: Login: user=<user2>, method=PLAIN, "
                     r"rip=127\.0\.0\.1, lip=127\.0\.0\.1, mpid=\d+, secured, session=<[^>]+>", log)
    assert re.search(r"imap\(user2\)<\d+><[^>]+>: Disconnected: Logged out in=\d+ out=\d+", log)
    keyed = [s for s in steps if s.proto == "imap" and s.kind in ("command", "reply")]
    assert keyed and all(s.key for s in keyed)


# ------------------------------------------------------------------ mail flow

def test_mail_sent_through_587_appears_in_inbox_with_partial_fetch(lab):
    msgid = send_mail(lab, "Practica GPON", "linea uno\r\nFrom here\r\n")
    m = login(lab)
    def found():
        m.select("INBOX")
        typ, data = m.uid("SEARCH", None, "HEADER", "Message-ID", msgid)
        return data[0].split()
    uid = wait_until(found, 15, "the message in user2's INBOX")[0]
    typ, data = m.uid("FETCH", uid, "(RFC822.SIZE BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert data[0][1] == b"Subject: Practica GPON\r\n\r\n"
    size = int(re.search(rb"RFC822.SIZE (\d+)", data[0][0]).group(1))
    typ, data = m.uid("FETCH", uid, "(BODY.PEEK[])")
    whole = data[0][1]
    assert len(whole) == size and whole.endswith(b"linea uno\r\n>From here\r\n")
    assert b"X-UID" not in whole and b"Delivered-To: user2@gponlab.local" in whole
    # Thunderbird fetches in chunks: the reply must say BODY[]<origin> (RFC 3501 §7.4.2).
    typ, data = m.uid("FETCH", uid, "(BODY.PEEK[]<10.20>)")
    assert data[0][0].endswith(b"BODY[]<10> {20}") and data[0][1] == whole[10:30]
    # A non-peek fetch sets \Seen and reports it, before the text as Dovecot does.
    typ, data = m.uid("FETCH", uid, "(BODY[TEXT])")
    assert re.match(rb"\d+ \(UID \d+ FLAGS \(\\Seen[^)]*\) BODY\[TEXT\] \{\d+\}$", data[0][0])
    typ, data = m.uid("FETCH", uid, "(FLAGS)")
    assert b"\\Seen" in data[0]
    m.logout()


def test_select_responses_exactly_as_dovecot(lab):
    send_mail(lab, "for select")
    lab.wait_for_mail("user2")
    c = Raw(lab.ports["imap"])
    c.line()
    c.cmd("a", "LOGIN user2 pass")
    lines = c.cmd("b", "SELECT INBOX")
    assert lines[0] == "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
    assert lines[1] == ("* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]"
                        " Flags permitted.")
    assert re.fullmatch(r"\* \d+ EXISTS", lines[2]) and re.fullmatch(r"\* \d+ RECENT", lines[3])
    rest = [x for x in lines[4:-1] if "UNSEEN" not in x]
    assert re.fullmatch(r"\* OK \[UIDVALIDITY \d+\] UIDs valid", rest[0])
    assert re.fullmatch(r"\* OK \[UIDNEXT \d+\] Predicted next UID", rest[1])
    assert re.fullmatch(r"b OK \[READ-WRITE\] Select completed" + TIMING, lines[-1])
    lines = c.cmd("c", "EXAMINE INBOX")
    assert lines[0] == "* OK [CLOSED] Previous mailbox closed."     # INBOX was selected
    assert lines[2] == "* OK [PERMANENTFLAGS ()] Read-only mailbox."
    assert lines[-1].startswith("c OK [READ-ONLY] Examine completed (")
    assert c.cmd("d", "ID (\"name\" \"Thunderbird\")")[0] == '* ID ("name" "Dovecot")'
    assert c.cmd("e", "NAMESPACE")[0] == '* NAMESPACE (("" "/")) NIL NIL'
    assert c.cmd("f", "UNSELECT")[-1].startswith("f OK Unselect completed")
    assert re.fullmatch("g BAD No mailbox selected" + TIMING, c.cmd("g", "FETCH 1 FLAGS")[0])
    bye, done = c.cmd("h", "LOGOUT")
    assert bye == "* BYE Logging out" and re.fullmatch("h OK Logout completed" + TIMING, done)
    c.close()


def test_idle_pushes_new_mail_and_ends_only_with_done(lab):
    lab.wait_queue_empty()      # the shared lab: earlier tests' mail must not arrive mid-IDLE
    c = Raw(lab.ports["imap"])
    c.line()
    c.cmd("a", "LOGIN user2 pass")
    before = int(re.search(r"(\d+) EXISTS", " ".join(c.cmd("b", "SELECT INBOX"))).group(1))
    c.send("c IDLE\r\n")
    assert c.line() == "+ idling"
    send_mail(lab, "pushed while idling")
    pushed = c.until("* ", timeout=10)
    assert pushed[-1] == f"* {before + 1} EXISTS"
    c.send("NOOP\r\n")                  # not DONE: an error, IDLE over
    assert re.fullmatch("c BAD Expected DONE" + TIMING, c.until("c ")[-1])
    c.send("d IDLE\r\n")
    assert c.line() == "+ idling"
    c.send("DONE\r\n")
    assert re.fullmatch(r"d OK Idle completed" + TIMING, c.until("d ")[-1])
    c.close()


def test_uids_survive_a_restart(lab_factory):
    lab = lab_factory("restart").start()
    send_mail(lab, "one")
    send_mail(lab, "two")
    lab.wait_for_mail("user2", 2)
    m = login(lab)
    m.select("INBOX")
    m.uid("STORE", "2", "+FLAGS", "(\\Flagged)")
    uids = m.uid("SEARCH", None, "ALL")[1][0].split()
    validity = m.untagged_responses.get("UIDVALIDITY") or m.response("UIDVALIDITY")[1]
    m.logout()
    lab.stop()
    lab.start()
    m = login(lab)
    typ, data = m.select("INBOX")
    assert m.response("UIDVALIDITY")[1] == validity
    assert m.uid("SEARCH", None, "ALL")[1][0].split() == uids == [b"1", b"2"]
    assert m.uid("SEARCH", None, "FLAGGED")[1][0] == b"2"
    send_mail(lab, "three")
    wait_until(lambda: (m.noop(), m.uid("SEARCH", None, "ALL")[1][0].split())[1] == [b"1", b"2", b"3"],
               15, "UID 3 for the new mail")
    m.logout()


def test_concurrent_delivery_while_selected_no_loss_no_duplicates(lab):
    m = login(lab)
    m.select("INBOX")
    start = set(m.uid("SEARCH", None, "ALL")[1][0].split())
    ids = []
    errors = []

    def sender():
        try:
            for i in range(15):
                ids.append(send_mail(lab, f"burst {i}"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    t = threading.Thread(target=sender)
    t.start()
    while t.is_alive():
        m.noop()
        m.uid("STORE", "1:*", "+FLAGS.SILENT", "(\\Seen)")   # rewrites the file meanwhile
    t.join()
    assert not errors

    def all_there():
        m.noop()
        uids = [int(u) for u in m.uid("SEARCH", None, "ALL")[1][0].split()]
        return uids if len(set(uids) - {int(u) for u in start}) >= 15 else None
    uids = wait_until(all_there, 20, "the 15 messages")
    assert uids == sorted(set(uids))
    found = []
    for msgid in ids:
        found += m.uid("SEARCH", None, "HEADER", "Message-ID", msgid)[1][0].split()
    assert len(found) == 15 == len(set(found))
    m.logout()


# ------------------------------------------------------------------ folders

def test_folders_special_use_append_copy_move(lab):
    m = login(lab, "user1")
    for box in ("Sent", "Trash"):
        m.create(box)
    m.subscribe("Sent")
    typ, data = m._simple_command("LIST", "(SUBSCRIBED)", '""', '"*"', "RETURN", "(SPECIAL-USE)")
    lines = m.untagged_responses.pop("LIST", [])
    # as Dovecot with mbox (checked in test_differential): a folder file
    # cannot hold folders; walking the subscriptions marks new mail
    assert b'(\\Subscribed \\NoInferiors \\UnMarked \\Sent) "/" Sent' in lines
    assert not any(b"Trash" in x for x in lines)
    typ, data = m.list()
    assert b'(\\NoInferiors \\Trash) "/" Trash' in data
    typ, data = m.append("Sent", "(\\Seen)", None, b"Subject: sent copy\r\n\r\nFrom body\r\n")
    assert re.fullmatch(rb"\[APPENDUID \d+ 1\] Append completed" + TIMING.encode(), data[0])
    assert m.append("Nope", None, None, b"x")[1][0].startswith(b"[TRYCREATE]")
    m.select("Sent")
    typ, data = m._simple_command("UID", "COPY", "1", "Trash")
    assert re.match(rb"\[COPYUID \d+ 1 1\] Copy completed", data[0])
    typ, data = m._simple_command("UID", "MOVE", "1", "Trash")
    assert re.match(rb"Move completed", data[0])
    assert m.select("Sent")[1] == [b"0"]
    m.select("Trash")
    assert m.uid("SEARCH", None, "ALL")[1][0].split() == [b"1", b"2"]
    m.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    typ, data = m._simple_command("UID", "EXPUNGE", "1:*")
    assert typ == "OK" and m.uid("SEARCH", None, "ALL")[1][0].split() == [b"2"]
    typ, data = m.status("Trash", "(MESSAGES UIDNEXT UNSEEN)")
    assert data[0] == b"Trash (MESSAGES 1 UIDNEXT 3 UNSEEN 0)"
    m.logout()
    assert (lab.root / "home/user1/mail/Trash").is_file()


def test_bad_input_gets_protocol_errors_and_server_is_unharmed(lab):
    c = Raw(lab.ports["imap"])
    c.line()
    assert c.cmd("a", "FOO") == ["a BAD Error in IMAP command received by server."]
    assert c.cmd("b", "LOGIN {abc}")[-1].startswith("b BAD")
    c.cmd("c", "LOGIN user1 pass")
    assert re.fullmatch("d BAD Error in IMAP command BLAH: Unknown command" + TIMING,
                        c.cmd("d", "BLAH x")[0])
    assert re.fullmatch("e BAD Error in IMAP command: Literal too large" + TIMING,
                        c.cmd("e", "APPEND INBOX {999999999}")[0])
    c.send("e2 APPEND INBOX {60000000+}\r\n")      # LITERAL+: the bytes come anyway
    chunk = b"x" * 1_000_000
    for _ in range(60):
        c.send(chunk)
    c.send(b"\r\n")
    assert re.fullmatch("e2 BAD Error in IMAP command: Literal too large" + TIMING,
                        c.until("e2 ")[0])
    for n, name in enumerate(("../../../etc/evil", "/tmp/evil", "a/../../x", ".subscriptions")):
        reply = c.cmd(f"f{n}", f'CREATE "{name}"')[-1]
        assert reply.startswith(f"f{n} NO [CANNOT] Invalid mailbox name"), reply
        assert c.cmd(f"g{n}", f'SELECT "{name}"')[-1].startswith(f"g{n} NO")
    assert c.cmd("h", "SELECT INBOX")[-1].startswith("h OK")
    assert re.fullmatch("i BAD Error in IMAP command FETCH: Invalid messageset" + TIMING,
                        c.cmd("i", "FETCH 999 FLAGS")[0])
    assert c.cmd("j", "FETCH 1:* (FLAGS").pop().startswith("j BAD")
    c.send("k APPEND INBOX {4+}\r\nab\r\n\r\n")          # LITERAL+: no continuation
    assert c.until("k ")[-1].startswith("k OK [APPENDUID")
    assert c.cmd("l", "NOOP")[-1].startswith("l OK NOOP completed")
    c.close()
    assert not (lab.root.parent / "etc").exists() and not (lab.root / "etc/evil").exists()
    m = login(lab, "user1")
    assert m.noop()[0] == "OK"
    m.logout()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_imap_and_imaps(lab):
    send_mail(lab, "para curl", "cuerpo para curl\r\n")
    lab.wait_for_mail("user2")
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-u", "user2:pass",
                          f"imap://127.0.0.1:{lab.ports['imap']}/INBOX;UID=1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Delivered-To: user2@gponlab.local" in out.stdout
    out = subprocess.run(["curl", "-sS", "--insecure", "--max-time", "20", "-u", "user2:pass",
                          f"imaps://127.0.0.1:{lab.ports['imaps']}/"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert '"/" INBOX' in out.stdout
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "--ssl-reqd", "--insecure",
                          "-u", "user2:pass", "-X", "EXAMINE INBOX",
                          f"imap://127.0.0.1:{lab.ports['imap']}/"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "UIDVALIDITY" in out.stdout


def test_thunderbird_command_sequence(lab):
    """The commands Thunderbird sends (lab-facts §5.2), lower-case and numeric tags."""
    send_mail(lab, "para Thunderbird")
    lab.wait_for_mail("user2")
    c = Raw(lab.ports["imap"])
    c.line()
    assert c.cmd("5", "STARTTLS")[-1] == "5 OK Begin TLS negotiation now."
    c.starttls()
    assert "AUTH=PLAIN" in c.cmd("6", "capability")[0]
    c.send("7 authenticate PLAIN\r\n")
    assert c.line() == "+ "
    c.send(base64.b64encode(b"\0user2\0pass").decode() + "\r\n")
    assert c.until("7 ")[-1].startswith("7 OK [CAPABILITY IMAP4rev1")
    assert c.cmd("8", "namespace")[-1].startswith("8 OK Namespace completed")
    assert c.cmd("9", 'ID ("name" "Thunderbird" "version" "128.5.0")')[0] == '* ID ("name" "Dovecot")'
    listed = c.cmd("10", 'list (subscribed) "" "*" return (special-use)')
    assert listed[-1].startswith("10 OK List completed")
    sel = c.cmd("11", 'select "INBOX"')
    assert sel[-1].startswith("11 OK [READ-WRITE] Select completed")
    flags = c.cmd("12", "UID fetch 1:* (FLAGS)")
    assert flags[-1].startswith("12 OK Fetch completed") and re.fullmatch(
        r"\* 1 FETCH \(UID 1 FLAGS \(.*\)\)", flags[0])
    hdr = c.cmd("13", "UID fetch 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc "
                      "Bcc Subject Date Message-ID Priority X-Priority References Newsgroups "
                      "In-Reply-To Content-Type Reply-To Received)])")
    assert hdr[-1].startswith("13 OK Fetch completed")
    assert any("BODY[HEADER.FIELDS (FROM TO CC BCC SUBJECT DATE MESSAGE-ID PRIORITY X-PRIORITY "
               "REFERENCES NEWSGROUPS IN-REPLY-TO CONTENT-TYPE REPLY-TO RECEIVED)] {" in x
               for x in hdr)
    body = c.cmd("14", "UID fetch 1 (UID RFC822.SIZE BODY[]<0.16384>)")
    assert re.match(r"\* 1 FETCH \(UID 1 RFC822.SIZE \d+ BODY\[\]<0> \{\d+\}", body[0])
    assert body[-1].startswith("14 OK Fetch completed")
    c.send("15 IDLE\r\n")
    assert c.line() == "+ idling"
    c.send("DONE\r\n")
    assert c.until("15 ")[-1].startswith("15 OK Idle completed")
    assert c.cmd("16", "logout")[0] == "* BYE Logging out"
    c.close()


def test_commands_pipelined_after_starttls_are_discarded(lab):
    c = Raw(lab.ports["imap"])
    c.line()
    c.send("a STARTTLS\r\nb LOGIN user2 pass\r\n")
    assert c.line() == "a OK Begin TLS negotiation now."
    c.starttls()
    assert c.cmd("c", "NOOP") == ["c OK NOOP completed."]     # still not logged in, no 'b' reply
    c.close()


def test_login_with_literals_synchronizing_and_literal_plus(lab):
    c = Raw(lab.ports["imap"])
    c.line()
    c.send("a LOGIN {5}\r\n")
    assert c.line() == "+ OK"
    c.send("user2 {4}\r\n")
    assert c.line() == "+ OK"
    c.send("pass\r\n")
    assert c.until("a ")[-1].startswith("a OK [CAPABILITY")
    c.close()
    c = Raw(lab.ports["imap"])
    c.line()
    c.send("b LOGIN {5+}\r\nuser2 {4+}\r\npass\r\n")       # no continuation requests
    assert c.until("b ") == [f"b OK [CAPABILITY {POST}] Logged in"]
    c.close()


def test_auth_replies_to_imap_login_are_narrated_for_imap_not_postfix(lab):
    from gponsim.commentary import catalog
    m = login(lab)
    m.logout()
    c = Raw(lab.ports["imap"])
    c.line()
    c.send("a AUTHENTICATE PLAIN\r\n")
    assert c.line() == "+ "
    c.send(base64.b64encode(b"\0user2\0wrong").decode() + "\r\n")
    assert c.until("a ")[-1] == "a NO [AUTHENTICATIONFAILED] Authentication failed."
    c.close()
    replies = [s for s in lab.steps() if s.proto == "sasl" and s.kind == "reply"
               and s.dst == "imap"]
    by_verb = {s.verb: s for s in replies}
    assert {"OK", "CONT", "FAIL"} <= set(by_verb)
    for verb in ("OK", "CONT", "FAIL"):
        step = by_verb[verb]
        assert step.key == f"sasl.reply.{verb}.imap"
        entry = catalog().resolve(step)
        assert "imap-login" in entry.en and "imap-login" in entry.es
        assert "Postfix" not in entry.en + entry.es
