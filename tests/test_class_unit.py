"""The classroom's pieces, in memory: rosters and accounts, a lesson's [class] table,
who a session belongs to, the password mask, Moodle's CSV and GIFT by their rules."""

from __future__ import annotations

import csv
import io
import re
import stat

import pytest

from gponsim.classroom.attribution import Attributor
from gponsim.classroom.gift import gift
from gponsim.classroom.hub import PasswordMask
from gponsim.classroom.plan import load_plan
from gponsim.classroom.roster import Roster, RosterError, Student, new_password
from gponsim.lessons.model import LessonError, find_lesson, lesson_files, load_lesson
from gponsim.server.dovecot.passwd import Users
from gponsim.steps import Step

# ---------------------------------------------------------------------- roster


def test_numbered_students_have_a_receiver_of_their_own():
    roster = Roster.numbered(12)
    first = roster.students[0]
    assert (first.login, first.reader, first.send_to, first.reads_from) == (
        "student01", "student01b", "student01b", "student01")
    assert roster.student_of("student12b").login == "student12"
    assert roster.student_of("user1") is None
    assert [a for _s, a, _r in roster.accounts()][:3] == ["student01", "student01b", "student02"]


def test_passwords_are_random_and_typeable():
    words = {new_password() for _ in range(200)}
    assert len(words) == 200
    assert all(re.fullmatch(r"[bcdfghjkmnprstvz][aeiu]([bcdfghjkmnprstvz][aeiu]){3}\d\d", w) for w in words)


def test_a_roster_with_partners(tmp_path):
    path = tmp_path / "class.csv"
    path.write_text("login;name;partner;email\nana;Ana Pérez;luis;ana@uni.es\nluis;Luis Gil;;luis@uni.es\n"
                    "eva;Eva Sanz;;eva@uni.es\n", encoding="utf-8")
    roster = Roster.from_csv(path)
    ana, luis, eva = roster.students
    assert (ana.send_to, ana.reader, ana.reads_from) == ("luis", "ana", "luis")
    assert (luis.partner, luis.send_to, luis.reads_from) == ("ana", "ana", "ana")   # made mutual
    assert (eva.reader, eva.send_to) == ("evab", "evab")
    assert ana.email == "ana@uni.es" and ana.name == "Ana Pérez"


@pytest.mark.parametrize("text, message", [
    ("name\nAna\n", "1: the roster needs a header line with a 'login' column"),
    ("login,age\nana,20\n", "1: unknown column(s) age"),
    ("login\nana\nAna Maria\n", "3: invalid user name 'ana maria'"),
    ("login\nana\nana\n", "3: ana is already on line 2"),
    ("login\nana\nroot\n", "3: root is a name the mail system keeps for itself"),
    ("login,name\nPostmaster,Jefa\n", "2: postmaster is a name the mail system keeps for itself"),
    ("login,partner\nuser1,ana\nana,\n", "2: user1 is one of the lab's own users (user1, user2"),
    ("login,partner\nana,pepe\n", "2: partner pepe of ana is not on the roster"),
    ("login,partner\nana,luis\nluis,eva\neva,\n", "2: ana names luis as partner, but luis names eva"),
    ("login,name,partner\nana,Ana,luis\nluis,Luis,\nmarta,Marta,luis\n",
     "4: marta names luis as partner, but luis is already the partner of ana"),
    ("login,partner\nluis,\nana,luis\nmarta,luis\n", "4: marta names luis as partner, but luis is already"),
    ("login\nana\nanab\n", "the receiver account anab of ana is also a student"),
    ("login\n\n", "the roster has no students"),
])
def test_roster_mistakes_name_the_line(tmp_path, text, message):
    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(RosterError, match=re.escape(message)):
        Roster.from_csv(path, lab_accounts=True)


def test_a_roster_for_the_real_servers_captures_may_name_its_accounts(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("login,partner\nuser1,user2\nuser2,\n")
    assert [s.login for s in Roster.from_csv(path).students] == ["user1", "user2"]


def test_accounts_file_round_trip_and_passwd_file(tmp_path):
    roster = Roster([Student("ana", partner="luis", email="a@x"), Student("luis", partner="ana"), Student("eva")])
    users = Users.ensure_default(tmp_path / "users")
    made = roster.create_accounts(users)
    assert made == ["ana", "luis", "eva", "evab"]
    assert users.verify("evab", roster.passwords["evab"]) and not users.verify("evab", "pass")
    path = roster.write_accounts(tmp_path / "accounts.csv")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = Roster.read_accounts(path)
    assert back.passwords == roster.passwords
    assert [(s.login, s.partner, s.reader, s.send_to, s.email) for s in back.students] == [
        (s.login, s.partner, s.reader, s.send_to, s.email) for s in roster.students]
    # again: the same accounts get new passwords, nobody is added twice
    again = Roster.read_accounts(path)
    again.passwords.clear()
    assert again.create_accounts(users) == []
    assert users.verify("ana", again.passwords["ana"])


# ---------------------------------------------------------------------- lessons in a class


def test_the_thunderbird_lesson_can_be_taught_to_a_class():
    plan = load_plan(find_lesson("thunderbird"))
    assert [t.step for t in plan.tasks] == ["autoconfig", "certificate", "send", "receive"]
    assert [e.id for e in plan.graded] == ["certificate", "starttls-before-auth", "auth-ok", "queued",
                                           "delivered", "imap-login", "imap-fetch"]
    assert all(t.do["es"] and t.do["en"] for t in plan.tasks)


def test_a_lesson_without_a_class_table_says_so():
    with pytest.raises(LessonError, match="has no \\[class\\] table"):
        load_plan(find_lesson("mbox"))


@pytest.mark.parametrize("change, message", [
    ('kind = "autoconfig"', 'unknown kind \'autoconfig2\''),
    ('task = "autoconfig"', "task must be one of autoconfig, certificate, send, receive, not 'nowhere'"),
    ("{sender_address}", "unknown placeholder {sender_adress}"),
])
def test_class_table_mistakes_name_the_line(tmp_path, change, message):
    source = next(p for p in lesson_files() if p.stem == "thunderbird").read_text()
    broken = {'kind = "autoconfig"': 'kind = "autoconfig2"', 'task = "autoconfig"': 'task = "nowhere"',
              "{sender_address}": "{sender_adress}"}[change]
    path = tmp_path / "thunderbird.toml"
    path.write_text(source.replace(change, broken, 1))
    with pytest.raises(LessonError, match=re.escape(message)) as err:
        load_plan(load_lesson(path))
    assert re.search(r"thunderbird\.toml:\d+: ", str(err.value))


# ---------------------------------------------------------------------- attribution


def _step(session, proto, kind, line="", **kw):
    src, dst = ("client", proto) if kind == "command" else (proto, "client")
    if proto == "smtp":
        src, dst = ("client", "smtpd") if kind in ("command", "event") else ("smtpd", "client")
    if proto == "sasl":
        src, dst = "auth", "smtpd"
    return Step(t=kw.pop("t", 1.0), session=session, proto=proto, src=src, dst=dst,
                dir="internal" if kind == "event" else ("c2s" if kind == "command" else "s2c"),
                kind=kind, line=line, **kw)


def _connect(session, ip, proto="smtp", service="submission"):
    return _step(session, proto, "event", f"connect from unknown[{ip}]", verb="CONNECT",
                 meta={"client_ip": ip, "service": service})


def _sasl(session, status, user):
    return _step(session, "sasl", "reply", f"{status}\t1\tuser={user}", status=status, verb=status,
                 meta={"params": {"user": user}})


def test_a_login_names_the_student_and_releases_the_session_so_far():
    who = Attributor(Roster.numbered(3))
    event, released = who.feed(_connect("s1", "10.0.0.7"))
    assert event.student is None and released == []
    who.feed(_step("s1", "smtp", "command", "EHLO pc7", verb="EHLO"))
    event, released = who.feed(_sasl("s1", "OK", "student02b"))
    assert event.student == "student02" and event.account == "student02b"
    assert [e.step.verb for e in released] == ["CONNECT", "EHLO"]
    assert all(e.student == "student02" for e in released)
    # not a client's session: no event
    assert who.feed(_step("lab", "sasl", "reply", "DONE", verb="DONE")) == (None, [])


def test_the_address_of_a_students_pc_names_their_sessions_without_login():
    who = Attributor(Roster.numbered(3))
    who.feed(_connect("early", "10.0.0.7"))          # a 530 before anybody logged in from there
    who.feed(_step("early", "smtp", "reply", "530 5.7.0 Must issue a STARTTLS command first", code=530))
    who.feed(_connect("s2", "10.0.0.7"))
    _e, released = who.feed(_sasl("s2", "OK", "student03"))
    assert {e.step.session for e in released} == {"early", "s2"}
    assert all(e.student == "student03" and e.how in ("address", "login") for e in released)
    event, _ = who.feed(_connect("later", "10.0.0.7"))
    assert event.student == "student03" and event.how == "address"
    # a second student on the same address: it is shared, it names nobody any more
    who.feed(_connect("s3", "10.0.0.7"))
    who.feed(_sasl("s3", "OK", "student01"))
    event, _ = who.feed(_connect("after", "10.0.0.7"))
    assert event.student is None


def test_a_failed_attempt_names_the_student_it_tried_and_a_password_typed_as_user_is_masked():
    roster = Roster.numbered(2)
    roster.passwords["student01"] = "bakunemo47"
    who = Attributor(roster)
    who.feed(_connect("s1", "10.0.0.8"))
    event, released = who.feed(_sasl("s1", "FAIL", "student01"))
    assert event.student == "student01" and event.how == "claim"
    who.feed(_connect("s2", "10.0.0.9"))
    event, _ = who.feed(_sasl("s2", "FAIL", "bakunemo47"))
    assert event.student is None and event.account == "********"
    assert PasswordMask(roster.passwords.values())("FAIL\t1\tuser=bakunemo47") == "FAIL\t1\tuser=********"


# ---------------------------------------------------------------------- Moodle


def parse_gift(text: str) -> list[dict]:
    """A strict reader of GIFT multiple-choice questions, by the format's rules: blank
    lines separate questions; // comments and $CATEGORY lines; ::title::; [format];
    the text up to an unescaped {; choices = (right) or ~ (wrong), #feedback,
    ####general feedback; ~ = # { } : and \\ are special unless escaped."""
    questions = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [ln for ln in block.split("\n") if not ln.lstrip().startswith("//")]
        lines = [ln for ln in lines if not ln.startswith("$CATEGORY:")]
        if not lines:
            continue
        body = "\n".join(lines)
        m = re.match(r"::((?:[^:\\]|\\.)*)::(\[(?:plain|html|markdown|moodle)\])?", body)
        assert m, f"no ::title:: in {body[:80]!r}"
        rest = body[m.end():]
        tokens = re.findall(r"\\.|[{}~=#]|[^\\{}~=#]+", rest)
        text_part, i = [], 0
        while tokens[i] != "{":
            assert tokens[i] not in "~=#}", f"unescaped {tokens[i]!r} in the question text"
            text_part.append(tokens[i])
            i += 1
        i += 1
        choices, general = [], None
        current = None
        while tokens[i] != "}":
            tok = tokens[i]
            if tok in "=~":
                current = {"right": tok == "=", "text": "", "feedback": None}
                choices.append(current)
            elif tok == "#":
                if tokens[i:i + 4] == ["#", "#", "#", "#"]:
                    general, i = "", i + 3
                    current = "general"
                else:
                    current["feedback"] = ""
            elif tok == "{":
                raise AssertionError("unescaped { inside the answers")
            else:
                piece = re.sub(r"\\(.)", r"\1", tok)
                if current == "general":
                    general += piece
                elif current is not None and current["feedback"] is not None:
                    current["feedback"] += piece
                elif current is not None:
                    current["text"] += piece
                else:
                    assert not tok.strip(), f"text before the first choice: {tok!r}"
            i += 1
        assert i == len(tokens) - 1 or not "".join(tokens[i + 1:]).strip(), "text after the closing }"
        question = re.sub(r"\\(.)", r"\1", "".join(text_part)).strip()
        assert ":" not in "".join(t for t in text_part if not t.startswith("\\")), "unescaped : in text"
        questions.append({"title": re.sub(r"\\(.)", r"\1", m.group(1)), "text": question,
                          "choices": [(c["right"], c["text"].strip()) for c in choices],
                          "general": (general or "").strip()})
    return questions


@pytest.mark.parametrize("lang", ["es", "en"])
def test_the_quizzes_as_gift_parse_back_to_the_lessons(lang):
    lessons = [load_lesson(p) for p in lesson_files()]
    questions = parse_gift(gift(lessons, lang))
    expected = [(lesson, q) for lesson in lessons for q in lesson.quiz]
    assert len(questions) == len(expected) > 20
    for got, (lesson, q) in zip(questions, expected):
        assert got["text"] == " ".join(q.question[lang].split("\n")).strip()
        assert [c for _r, c in got["choices"]] == [" ".join(c.split("\n")).strip() for c in q.choices[lang]]
        assert [r for r, _c in got["choices"]].index(True) == q.answer - 1
        assert sum(r for r, _c in got["choices"]) == 1
        assert got["general"] == " ".join(q.explain[lang].split("\n")).strip()
    # the texts do use GIFT's special characters: escaping is really needed
    assert re.search(r"\\[:=]", gift(lessons, lang))


def moodle_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """Moodle's CSV grade import rules: a header; at least two columns; no column twice;
    every row as wide as the header; a grade that is a number from 0 to 100 (or - / empty)."""
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    assert len(header) >= 2 and len(set(h.strip() for h in header)) == len(header)
    assert all(len(r) == len(header) for r in body), "csvweirdcolumns"
    return header, body


def test_moodle_csv_follows_the_import_rules(tmp_path):
    from gponsim.classroom.grading import Grades, write_moodle
    from gponsim.classroom.state import ClassState

    plan = load_plan(find_lesson("thunderbird"))
    roster = Roster([Student("ana", name="Ana, \"la\" Pérez", email="ana@uni.es", idnumber="A1"),
                     Student("luis", email="luis@uni.es")])
    state = ClassState(roster, plan)
    state.progress["ana"].marks["auth-ok"].passed = True
    state.progress["ana"].marks["queued"].passed = True
    grades = Grades(plan, roster, state, "test")
    path = write_moodle(grades, tmp_path / "moodle.csv", "es")
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    header, body = moodle_rows(raw.decode("utf-8"))
    assert header[:3] == ["Username", "Email address", "ID number"]
    grade = header.index(plan.lesson.title["es"])
    assert [r[0] for r in body] == ["ana", "luis"] and body[0][1] == "ana@uni.es"
    assert [float(r[grade]) for r in body] == [pytest.approx(28.6), 0.0]
    assert all(0 <= float(r[grade]) <= 100 for r in body)
    missing = body[0][grade + 1].split("Falta: ", 1)[1]
    assert "Sesión IMAP iniciada" in missing and "AUTH aceptado (235)" not in missing


def test_an_imap_fetch_step_says_which_message_it_delivered():
    """The server's FETCH literal keeps only its size in the line; From, Subject and
    Message-ID go to meta (how grading knows which message a student downloaded)."""
    from gponsim.wire.imap import ImapConversation

    conv = ImapConversation("imap-1")
    conv.client_data(b"a1 FETCH 1 (BODY.PEEK[HEADER])\r\n")
    head = (b"From: student01@gponlab.local\r\nSubject: Hola =?utf-8?q?t=C3=BA?=\r\n"
            b"Message-ID: <abc@gponlab.local>\r\n\r\n")
    steps = conv.server_data(b"* 1 FETCH (BODY[HEADER] {%d}\r\n" % len(head) + head[:20])
    steps += conv.server_data(head[20:] + b")\r\na1 OK Fetch completed.\r\n")
    fetch = steps[0]
    assert fetch.line == f"* 1 FETCH (BODY[HEADER] {{{len(head)}}}[literal: {len(head)} bytes])"
    assert fetch.meta["message_id"] == "<abc@gponlab.local>"
    assert fetch.meta["from"] == "student01@gponlab.local"
    assert fetch.meta["subject"].startswith("Hola")
    assert "message_id" not in steps[1].meta


# ---------------------------------------------------------------------- the hub's streams


def _events(chunks: list[bytes]) -> list[tuple[str, dict]]:
    import json

    out = []
    for chunk in chunks:
        text = chunk.decode()
        if text.startswith(":"):
            continue
        name, data = text.split("\n")[0][7:], text.split("\n")[1][6:]
        out.append((name, json.loads(data)))
    return out


def test_each_page_gets_each_line_once_and_only_its_own():
    from gponsim.classroom.hub import ClassHub, Subscriber
    from gponsim.classroom.state import ClassState

    roster = Roster.numbered(2)
    roster.passwords.update({"student01": "bakunemo47"})
    hub = ClassHub(ClassState(roster, load_plan(find_lesson("thunderbird"))))
    streams = {name: [] for name in ("teacher", "mine", "theirs", "projector")}
    hub.subscribe(Subscriber("teacher", streams["teacher"].append))
    hub.subscribe(Subscriber("student", streams["mine"].append, student="student01"))
    hub.subscribe(Subscriber("student", streams["theirs"].append, student="student02"))
    hub.subscribe(Subscriber("projector", streams["projector"].append, follow="student01"))
    hub.step(_connect("s1", "10.0.0.7"))
    hub.step(_step("s1", "smtp", "command", "EHLO pc7", verb="EHLO"))
    hub.step(_step("s1", "smtp", "reply", "250 mail.gponlab.local", code=250, verb="EHLO"))
    hub.step(_sasl("s1", "OK", "student01"))                       # now it is student01's
    hub.step(_step("s1", "smtp", "reply", "235 2.7.0 Authentication successful", code=235, verb="AUTH"))
    hub.step(_sasl("s2", "FAIL", "bakunemo47"))                    # not a client's session: no owner
    lines = {name: [d["n"] for kind, d in _events(chunks) if kind == "line"] for name, chunks in streams.items()}
    assert lines["teacher"] == [1, 2, 3, 4, 5, 6]
    assert lines["mine"] == [1, 2, 3, 4, 5]                        # the session so far, once, in order
    assert lines["projector"] == [1, 2, 3, 4, 5]
    assert lines["theirs"] == []
    mine = [d for kind, d in _events(streams["mine"]) if kind == "line"]
    assert all(d["who"] == "student01" for d in mine)
    marks = [d for kind, d in _events(streams["mine"]) if kind == "student"][-1]["marks"]
    assert marks["auth-ok"]["passed"] is True
    teacher = _events(streams["teacher"])
    assert [d["student"] for kind, d in teacher if kind == "session"] == ["student01"]
    assert all("bakunemo47" not in d.get("line", "") for _k, d in teacher)
    # a page that went away gets nothing more, and the others go on
    def broken(_data):
        raise ConnectionError("gone")
    gone = hub.subscribe(Subscriber("teacher", lambda data: None))
    gone.write = broken
    hub.step(_step("s1", "smtp", "command", "QUIT", verb="QUIT"))
    assert not gone.alive and gone not in hub.subscribers
    assert [d["n"] for kind, d in _events(streams["mine"]) if kind == "line"][-1] == 7


def test_the_web_view_needs_nothing_from_outside():
    """Every page, script and style is served by gponsim itself: no CDN, no font or
    script from another host, so the class works with no internet; the pages' policy
    (Content-Security-Policy: default-src 'self') would refuse one anyway."""
    from importlib import resources

    from gponsim.classroom.web import CSP

    folder = resources.files("gponsim.classroom").joinpath("web")
    names = [f.name for f in folder.iterdir()]
    assert {"teacher.html", "projector.html", "student.html", "login.html", "replay.html"} <= set(names)
    for name in names:
        text = folder.joinpath(name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text.replace("http://www.w3.org/2000/svg", "")), name
        for ref in re.findall(r'(?:src|href)="([^"]+)"', text):
            assert ref.startswith("/static/") or ref.startswith("/") or ref == "#", (name, ref)
            if ref.startswith("/static/"):
                assert ref[len("/static/"):] in names, (name, ref)
    assert "default-src 'self'" in CSP and "connect-src 'self'" in CSP


def test_the_recording_masks_a_password_typed_as_user_and_still_the_password():
    """`LOGIN <a class password> "<a wrong one>"`: the first is masked as a class password,
    the second as the credential it is, in the JSON-lines recording."""
    from gponsim.classroom.run import MaskedSink
    from gponsim.sinks.memory import ListSink

    line = 'a1 LOGIN bakunemo47 "wrongpass"'
    step = Step(t=1.0, session="imap-1", proto="imap", src="client", dst="imap", dir="c2s", kind="command",
                line=line, verb="LOGIN", args='bakunemo47 "wrongpass"', tag="a1",
                secret=(line.index("wrongpass"), line.index("wrongpass") + 9))
    kept = ListSink()
    MaskedSink(kept, PasswordMask(["bakunemo47"])).step(step)
    out = kept.steps[0].to_json()
    assert "bakunemo47" not in out and "wrongpass" not in out
    assert kept.steps[0].line == 'a1 LOGIN ******** "********"'
    plain = Step(t=1.0, session="imap-1", proto="imap", src="client", dst="imap", dir="c2s", kind="command",
                 line="a2 NOOP", verb="NOOP", tag="a2")
    MaskedSink(kept, PasswordMask(["bakunemo47"])).step(plain)
    assert kept.steps[1] is plain                       # nothing to mask: the Step as it was


def test_the_event_streams_explain_each_line_with_its_own_values():
    """The projector's and student's event streams (and the teacher's page) give each line's explanation
    filled from that line (its client, address...), in both languages: never a template's
    ``{{placeholder}}``, and a password never gets into one."""
    from gponsim.classroom.hub import ClassHub, Subscriber
    from gponsim.classroom.state import ClassState

    roster = Roster.numbered(2)
    roster.passwords.update({"student01": "bakunemo47"})
    hub = ClassHub(ClassState(roster, load_plan(find_lesson("thunderbird"))))
    streams = {name: [] for name in ("teacher", "projector", "student")}
    hub.subscribe(Subscriber("teacher", streams["teacher"].append))
    hub.subscribe(Subscriber("projector", streams["projector"].append, follow="latest"))
    hub.subscribe(Subscriber("student", streams["student"].append, student="student01"))
    hub.step(_step("s1", "smtp", "event", "connect from pc7[10.0.0.7]", verb="CONNECT",
                   meta={"client_ip": "10.0.0.7", "service": "submission"}))
    hub.step(_sasl("s1", "OK", "student01"))
    for to in ("student01b", "student02b"):
        hub.step(_step("s1", "smtp", "command", f"RCPT TO:<{to}@gponlab.local>", verb="RCPT",
                       args=f"TO:<{to}@gponlab.local>"))
    for name, chunks in streams.items():
        events = _events(chunks)
        # the projector's and a student's streams carry the explanations; the teacher's
        # page asks for one by its id (/explain.json?id=...)
        explained = [d for kind, d in events if kind == "explain"] or [
            hub.explanation(d["x"]) for kind, d in events if kind == "line" and d["x"]]
        assert explained, name
        for d in explained:
            for lang in ("es", "en"):
                assert "{{" not in d[lang] and "bakunemo47" not in d[lang], (name, d["id"], d[lang])
        texts = " ".join(d["en"] + d["es"] for d in explained)
        assert "pc7[10.0.0.7]" in texts, name
        assert "RCPT TO:<student01b@gponlab.local>" in texts and "RCPT TO:<student02b@gponlab.local>" in texts
        lines = {d["line"]: d["x"] for kind, d in events if kind == "line"}
        by_id = {d["id"]: d for d in explained}
        assert "student02b@gponlab.local" in by_id[lines["RCPT TO:<student02b@gponlab.local>"]]["en"]


def test_replay_refuses_a_file_that_is_no_recording(tmp_path):
    from gponsim.classroom.replay import validate_paths

    text = tmp_path / "hostname"
    text.write_text("lab-pc\n")
    steps = tmp_path / "steps.jsonl"
    steps.write_text(_step("s1", "smtp", "command", "EHLO pc", verb="EHLO").to_json() + "\n")
    assert validate_paths([steps]) == []
    assert validate_paths([text]) == [f"{text}: neither a run's folder, a steps.jsonl nor a capture "
                                      "(.pcap, .pcapng, .cap): its first line is not a Step"]


def test_a_handout_names_the_student_once_when_the_roster_has_no_name():
    from gponsim.classroom.handout import sheet

    plan = load_plan(find_lesson("thunderbird"))
    lab = {"host": "127.0.0.1", "ports": {"submission": 587, "imap": 143}}
    roster = Roster([Student("student01"), Student("ana", name="Ana Pérez")])
    assert "Sheet for <b>student01</b></div>" in sheet(roster.students[0], roster, plan, lab, "en")
    assert "Hoja de <b>Ana Pérez</b> (ana)</div>" in sheet(roster.students[1], roster, plan, lab, "es")


def test_a_roster_not_saved_as_utf8_says_how_to_save_it(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("login,name\nana,Ana\nmaria,Mar".encode() + b"\xeda\n")     # Latin-1 'í'
    with pytest.raises(RosterError) as caught:
        Roster.from_csv(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: the roster is not UTF-8 text; save the CSV as UTF-8")
    assert "guarda el CSV como UTF-8" in message and "codec" not in message


def test_an_unknown_lesson_names_the_folder_it_looked_in_not_a_file():
    from gponsim.lessons.model import LESSONS_DIR

    with pytest.raises(LessonError) as caught:
        find_lesson("nope")
    text = str(caught.value)
    assert text.startswith(f"{LESSONS_DIR}: no lesson 'nope' in this folder (lessons: ")
    assert "nope.toml" not in text and "send-mail" in text
