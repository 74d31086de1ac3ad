"""Whose is this session? Steps of a class, each named with its student.

A client session (one that starts with a CONNECT of SMTP, IMAP or POP3)
belongs to the student whose account logged in on it. Until then it is kept
aside; what decides, strongest first:

1. a successful login (the auth service's ``OK … user=``, or from a capture,
   the credentials the analyzer read and the server accepted);
2. the user name of a failed attempt (``FAIL … user=``, IMAP ``LOGIN name``,
   POP3 ``USER name``): the 535 of a mistyped password is that student's;
3. the client's address, once exactly one student has logged in from it (a
   student's PC: their 530 or their refused certificate, before any login).

An address from which two students logged in is shared (a NAT, the teacher's
own computer) and never decides again. A session that a stronger reason
later names for another student moves to them from then on.

Every Step comes out as an :class:`Event`: the Step, its session's student
(or None), the account (the one that logged in, else the name tried — masked
when it is one of the class's passwords), the client's address and the
service. :class:`MessageBook` follows the class's messages across sessions
(who sent what to whom, where it was delivered, who downloaded it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gponsim.classroom.roster import Roster
from gponsim.steps import MASK, Step

#: A capture knows the server's port only: the standard ones name the service.
STANDARD_SERVICES = {25: "smtp", 587: "submission", 465: "smtps", 143: "imap", 993: "imaps",
                     110: "pop3", 995: "pop3s"}
CLIENT_PROTOS = ("smtp", "imap", "pop3")
#: Steps of a session kept while nobody knows whose it is.
MAX_PENDING = 4000

LOGIN = "login"          # how a session was attributed (strongest first)
CLAIM = "claim"
ADDRESS = "address"
_RANK = {LOGIN: 3, CLAIM: 2, ADDRESS: 1, "": 0}


@dataclass(slots=True)
class Event:
    step: Step
    student: str | None
    account: str
    ip: str
    service: str
    how: str = ""            # login | address | claim


@dataclass
class SessionInfo:
    session: str
    proto: str
    ip: str = ""
    service: str = ""
    started: float = 0.0
    account: str = ""             # who logged in, else the last name tried
    logged_in: bool = False
    student: str | None = None
    how: str = ""
    ended: bool = False
    tls: bool = False
    pending: list = field(default_factory=list)

    def public(self) -> dict:
        return {"session": self.session, "proto": self.proto, "ip": self.ip, "service": self.service,
                "started": round(self.started, 3), "account": self.account,
                "logged_in": self.logged_in, "student": self.student, "how": self.how,
                "ended": self.ended, "tls": self.tls}


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] == '"':
        return re.sub(r'\\(.)', r"\1", word[1:-1])
    return word


class Attributor:
    """Turns Steps into Events that name their student (see the module's text)."""

    def __init__(self, roster: Roster, ports: dict[str, int] | None = None,
                 credentials: dict[str, tuple[str, bool]] | None = None) -> None:
        self.roster = roster
        self.services = {port: name for name, port in (ports or {}).items()}
        #: from a capture: session -> (user, accepted)
        self.credentials = credentials or {}
        self.sessions: dict[str, SessionInfo] = {}
        self.by_address: dict[str, set[str]] = {}    # ip -> students who logged in from it
        self._waiting_by_ip: dict[str, set[str]] = {}  # ip -> sessions nobody has claimed yet

    # ------------------------------------------------------------------ helpers

    def shown_account(self, name: str) -> str:
        return MASK if self.roster.is_password(name) else name

    def _service(self, step: Step) -> str:
        meta = step.meta or {}
        if meta.get("service"):
            return str(meta["service"])
        port = meta.get("port")
        if port is None and isinstance(meta.get("server"), list) and len(meta["server"]) > 1:
            port = meta["server"][1]
        if port in self.services:
            return self.services[port]
        return STANDARD_SERVICES.get(port, step.proto)

    @staticmethod
    def _ip(step: Step) -> str:
        meta = step.meta or {}
        if meta.get("client_ip"):
            return str(meta["client_ip"])
        client = meta.get("client")
        if isinstance(client, list) and client:
            return str(client[0])
        return ""

    def _learn(self, info: SessionInfo, step: Step) -> tuple[str, str] | None:
        """A login (or an attempt) in this Step: (account, how)."""
        if step.proto == "sasl" and step.kind == "reply" and step.status in ("OK", "FAIL"):
            user = str((step.meta or {}).get("params", {}).get("user", ""))
            if user:
                return user, LOGIN if step.status == "OK" else CLAIM
        cred = self.credentials.get(info.session)
        if cred and step.kind == "reply" and step.failed is False and not info.logged_in and cred[1] \
                and self._login_reply(step):
            return cred[0], LOGIN
        if cred and step.kind == "reply" and step.failed and self._login_reply(step):
            return cred[0], CLAIM
        if step.kind == "command" and not info.logged_in:
            if step.proto == "imap" and step.verb == "LOGIN" and step.args:
                return _unquote(step.args.split(" ", 1)[0]), CLAIM
            if step.proto == "pop3" and step.verb == "USER" and step.args:
                return step.args.strip(), CLAIM
        return None

    @staticmethod
    def _login_reply(step: Step) -> bool:
        if step.proto == "smtp":
            return step.verb == "AUTH" and step.code in (235, 535)
        if step.proto == "imap":
            return step.verb in ("LOGIN", "AUTHENTICATE") and step.tag is not None
        if step.proto == "pop3":
            return step.verb in ("PASS", "AUTH", "APOP")
        return False

    # ------------------------------------------------------------------ feeding

    def feed(self, step: Step) -> tuple[Event | None, list[Event]]:
        """``(event, released)``: the Step as an Event (None when it is not a client's
        session), and Events of earlier Steps whose student is known now (their
        session was just attributed), in order."""
        info = self.sessions.get(step.session)
        if info is None:
            if not (step.kind == "event" and step.verb == "CONNECT" and step.proto in CLIENT_PROTOS):
                return None, []
            info = self.sessions[step.session] = SessionInfo(
                session=step.session, proto=step.proto, ip=self._ip(step), service=self._service(step),
                started=step.t)
        if step.tls or step.proto == "tls":
            info.tls = True
        if step.kind == "event" and step.verb == "DISCONNECT" and step.proto == info.proto:
            info.ended = True
        released: list[Event] = []
        learned = self._learn(info, step)
        if learned:
            account, how = learned
            if how == LOGIN or not info.logged_in:
                info.account = account
            if how == LOGIN:
                info.logged_in = True
            student = self.roster.student_of(account)
            if student is not None and _RANK[how] >= _RANK[info.how] and info.student != student.login:
                released = self._attribute(info, student.login, how)
            elif student is not None and how == LOGIN:
                info.how = LOGIN
            if how == LOGIN and student is not None:
                released += self._bind(info.ip, student.login)
        if info.student is None and info.ip:
            owner = self._owner_of(info.ip)
            if owner:
                released += self._attribute(info, owner, ADDRESS)
        event = self._event(info, step)
        if info.student is None:
            if len(info.pending) < MAX_PENDING:
                info.pending.append(event)
            if info.ip:
                self._waiting_by_ip.setdefault(info.ip, set()).add(info.session)
        return event, released

    def _event(self, info: SessionInfo, step: Step) -> Event:
        return Event(step=step, student=info.student, account=self.shown_account(info.account),
                     ip=info.ip, service=info.service, how=info.how)

    def _attribute(self, info: SessionInfo, student: str, how: str) -> list[Event]:
        info.student, info.how = student, how
        pending, info.pending = info.pending, []
        waiting = self._waiting_by_ip.get(info.ip)
        if waiting:
            waiting.discard(info.session)
        out = []
        for event in pending:
            event.student, event.how = student, how
            event.account = self.shown_account(info.account)
            out.append(event)
        return out

    def _owner_of(self, ip: str) -> str | None:
        students = self.by_address.get(ip)
        return next(iter(students)) if students and len(students) == 1 else None

    def _bind(self, ip: str, student: str) -> list[Event]:
        """``student`` logged in from ``ip``: their earlier sessions from it are theirs."""
        if not ip:
            return []
        known = self.by_address.setdefault(ip, set())
        known.add(student)
        if len(known) != 1:
            return []
        out: list[Event] = []
        for session in sorted(self._waiting_by_ip.pop(ip, set()),
                              key=lambda s: self.sessions[s].started):
            info = self.sessions[session]
            if info.student is None:
                out += self._attribute(info, student, ADDRESS)
        return out

    def unattributed(self) -> list[SessionInfo]:
        return [i for i in self.sessions.values() if i.student is None]


# ---------------------------------------------------------------------- messages

@dataclass
class Message:
    key: str                       # queue id, else the session and its count
    sender: str = ""               # the account that sent it (the session's login)
    session: str = ""
    subject: str = ""
    message_id: str = ""
    recipients: list = field(default_factory=list)
    delivered: dict = field(default_factory=dict)     # account -> the delivery Step
    downloads: list = field(default_factory=list)     # (account, proto, Step)


def _local(address: str) -> str:
    address = address.strip().strip("<>")
    return address.split("@", 1)[0].lower()


class MessageBook:
    """The class's messages: sent in one session, delivered by the queue, downloaded
    in another. Fed with every Step and its session's :class:`SessionInfo`."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._by_qid: dict[str, Message] = {}
        self._by_msgid: dict[str, Message] = {}
        self._open: dict[str, Message] = {}       # session -> the message being sent

    def _current(self, info: SessionInfo | None, step: Step) -> Message:
        msg = self._open.get(step.session)
        if msg is None:
            msg = Message(key=f"{step.session}#{len(self.messages)}", session=step.session,
                          sender=info.account if info is not None and info.logged_in else "")
            self.messages.append(msg)
            self._open[step.session] = msg
        return msg

    def feed(self, step: Step, info: SessionInfo | None) -> Message | None:
        """Returns the message this Step told something about, if any."""
        meta = step.meta or {}
        if step.proto == "smtp" and step.kind == "command" and step.verb == "MAIL" and info is not None:
            self._open.pop(step.session, None)
            return self._current(info, step)
        if step.proto == "smtp" and step.kind == "command" and step.verb == "RCPT" and step.args:
            msg = self._current(info, step)
            m = re.search(r"<([^>]*)>", step.args)
            if m:
                msg.recipients.append(_local(m.group(1)))
            return msg
        if step.proto == "smtp" and step.kind == "data" and step.verb == "DATA":
            msg = self._current(info, step)
            msg.subject = str(meta.get("subject", msg.subject))
            if meta.get("message_id"):
                self._index_msgid(msg, str(meta["message_id"]))
            return msg
        if step.proto == "queue" and meta.get("qid"):
            qid = str(meta["qid"])
            msg = self._by_qid.get(qid)
            if msg is None and step.session in self._open:
                msg = self._open[step.session]
                self._by_qid[qid] = msg
            if msg is None:
                return None
            if meta.get("message_id"):
                self._index_msgid(msg, str(meta["message_id"]))
            if meta.get("sasl_username") and not msg.sender:
                msg.sender = str(meta["sasl_username"])
            return msg
        if step.proto in ("delivery", "lmtp") and meta.get("qid") and meta.get("recipient") \
                and (step.verb == "DELIVERED" or (step.proto == "lmtp" and step.verb == "SENT")):
            msg = self._by_qid.get(str(meta["qid"]))
            if msg is not None:
                msg.delivered.setdefault(_local(str(meta["recipient"])), step)
            return msg
        if step.proto == "smtp" and step.kind == "reply" and step.verb == "DATA" and step.code == 250:
            msg = self._open.pop(step.session, None)
            queued = re.search(r"queued as (\w+)", step.line)
            if msg is not None and queued:
                self._by_qid.setdefault(queued.group(1), msg)
            return msg
        downloaded = self._download(step)
        if downloaded and info is not None and info.logged_in:
            msg = self.find(meta.get("message_id"), meta.get("subject"), info.account)
            if msg is not None:
                msg.downloads.append((info.account, step.proto, step))
            return msg
        return None

    @staticmethod
    def _download(step: Step) -> bool:
        if step.kind != "reply":
            return False
        if step.proto == "imap":
            return step.line.startswith("* ") and " FETCH (" in step.line \
                and ("BODY[" in step.line or "RFC822" in step.line)
        return step.proto == "pop3" and step.verb in ("RETR", "TOP") and step.status == "+OK"

    def _index_msgid(self, msg: Message, message_id: str) -> None:
        msg.message_id = message_id
        self._by_msgid[message_id.strip()] = msg

    def find(self, message_id, subject, reader: str) -> Message | None:
        """The message a download is of: by Message-ID, else by Subject among the
        messages written to the reader."""
        if message_id:
            msg = self._by_msgid.get(str(message_id).strip())
            if msg is not None:
                return msg
        if subject:
            for msg in reversed(self.messages):
                if msg.subject == subject and (reader in msg.recipients or reader in msg.delivered):
                    return msg
        return None

    def sent(self, sender: str, to: str) -> list[Message]:
        return [m for m in self.messages if m.sender == sender and to in m.recipients]
