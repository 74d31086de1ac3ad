"""bounce(8): the non-delivery notification (DSN) back to the sender.

When a recipient fails for good (a 5xx reply from the relay) or its message
stays in the deferred queue longer than ``maximal_queue_lifetime``, qmgr
calls its ``on_bounce`` hook (:class:`~gponsim.server.postfix.qmgr.BounceNotice`,
one per recipient). :class:`Bouncer` gathers the notices of one message and
queues one RFC 3464 ``multipart/report`` from ``MAILER-DAEMON`` (null
envelope sender ``<>``) to the original sender, with Postfix's default
failure template (``bounce.cf.default``)::

    postfix/bounce[pid]: QID: sender non-delivery notification: NEWQID

The report has three parts, as Postfix writes them: the human text
("This is the mail system at host mail.gponlab.local. I'm sorry to have to
inform you ..."), ``message/delivery-status`` (Reporting-MTA,
X-Postfix-Queue-ID, Arrival-Date; per recipient Final-Recipient, Action,
Status, Remote-MTA, Diagnostic-Code) and the returned message
(``message/rfc822``). A bounce of a bounce (null sender) is not sent back, and not logged.
"""

from __future__ import annotations

import re
import time
from typing import Any

from gponsim.commentary import annotate
from gponsim.server.postfix.cleanup import mail_date
from gponsim.server.maillog import MailLog
from gponsim.server.postfix.qmgr import BounceNotice
from gponsim.server.postfix.queuefile import Envelope
from gponsim.steps import Emit, Step, null_emit

TEMPLATE = """\
This is the mail system at host {host}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system
"""

_SAID = re.compile(r"(?:host|server) ([^\s\[]+)\[[^\]]*\](?::\d+)? said: (.*?)(?: \(in reply to .*\))?$")


def diagnostic(reason: str) -> tuple[str | None, str]:
    """(Remote-MTA host or None, Diagnostic-Code) from a Postfix reason text."""
    text = reason
    if text.startswith("message expired: "):
        text = text[len("message expired: "):]
    m = _SAID.search(text)
    if m:
        return m.group(1), f"smtp; {m.group(2)}"
    return None, f"X-Postfix; {text}"


def build_dsn(*, qid: str, sender: str, notices: list[BounceNotice], myhostname: str,
              arrival: float, content: bytes, now: float | None = None,
              new_qid: str | None = None) -> bytes:
    """The bounce message, bytes with LF line ends (``new_qid``: the queue id
    of the notification itself, for cleanup's ``Received: by ... id``)."""
    now = time.time() if now is None else now
    boundary = f"{qid}.{int(now)}/{myhostname}"
    date = mail_date(now)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    arrival_date = mail_date(arrival)
    lines = [f"Received: by {myhostname} (Postfix)", f"\tid {new_qid}; {date}"] if new_qid else []
    lines += [
        f"From: MAILER-DAEMON@{myhostname} (Mail Delivery System)",
        "Subject: Undelivered Mail Returned to Sender",
        f"To: {sender}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        f"Message-Id: <{stamp}.{qid}@{myhostname}>",
        f"Date: {date}",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        TEMPLATE.format(host=myhostname),
    ]
    for n in notices:
        lines.append(f"<{n.recipient}>: {n.reason.removeprefix('message expired: ')}")
    lines += ["", f"--{boundary}", "Content-Description: Delivery report",
              "Content-Type: message/delivery-status", "",
              f"Reporting-MTA: dns; {myhostname}",
              f"X-Postfix-Queue-ID: {qid}",
              f"X-Postfix-Sender: rfc822; {sender}",
              f"Arrival-Date: {arrival_date}"]
    for n in notices:
        mta, diag = diagnostic(n.reason)
        lines += ["", f"Final-Recipient: rfc822; {n.recipient}"]
        if n.orig_recipient:
            lines.append(f"Original-Recipient: rfc822;{n.orig_recipient}")
        lines += ["Action: failed", f"Status: {n.dsn}"]
        if mta:
            lines.append(f"Remote-MTA: dns; {mta}")
        lines.append(f"Diagnostic-Code: {diag}")
    lines += ["", f"--{boundary}", "Content-Description: Undelivered Message",
              "Content-Type: message/rfc822", "Content-Transfer-Encoding: 8bit", ""]
    body = "\n".join(lines).encode() + b"\n" + content.replace(b"\r\n", b"\n")
    if not body.endswith(b"\n"):
        body += b"\n"
    return body + f"\n--{boundary}--\n".encode()


class Bouncer:
    """qmgr's ``on_bounce`` hook (runs in the reactor thread); queues the
    notification through ``cleanup`` (:class:`~gponsim.server.postfix.cleanup.Cleanup`)."""

    def __init__(self, cleanup: Any, *, myhostname: str,
                 log: MailLog, emit: Emit = null_emit, reactor: Any = None,
                 syslog_name: str = "postfix") -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.cleanup = cleanup
        self.myhostname = myhostname
        self.log = log
        self.emit = emit
        self.reactor = reactor
        self.syslog_name = syslog_name
        self._pending: dict[str, list[BounceNotice]] = {}

    def __call__(self, notice: BounceNotice) -> None:
        first = notice.qid not in self._pending
        self._pending.setdefault(notice.qid, []).append(notice)
        if first:   # the other recipients of the message come in the same batch
            self.reactor.callLater(0, self._flush, notice.qid)

    def _step(self, verb: str, line: str, session: str, **meta: Any) -> None:
        self.emit(annotate(Step(t=time.time(), session=session, proto="queue", src="qmgr",
                                dst="local", dir="internal", kind="event", line=line,
                                verb=verb, meta={k: v for k, v in meta.items() if v is not None})))

    def _flush(self, qid: str) -> None:
        notices = self._pending.pop(qid, [])
        if not notices:
            return
        env = notices[0].envelope
        if not env.sender:
            # A bounce that bounced: Postfix 3.7 drops it without a log line
            # (no "2bounce" in notify_classes, bounce_notify_service.c).
            self._step("DISCARDED", f"{qid}: bounce of a bounce (null sender): not returned",
                       env.session, qid=qid, logged=False)
            return
        d = self.cleanup.open(Envelope(sender="", recipients=[env.sender], client_ip="",
                                       client_name="", protocol="", session=env.session,
                                       service="bounce"), log_client=False)

        def opened(qf):
            message = build_dsn(qid=qid, sender=env.sender, notices=notices,
                                myhostname=self.myhostname, arrival=env.arrival,
                                content=notices[0].content, new_qid=qf.qid)
            committing = qf.commit(message)
            # cleanup has taken the message (its message-id line is logged);
            # bounce(8) logs the new queue id now, before qmgr activates it.
            text = f"{qid}: sender non-delivery notification: {qf.qid}"
            self.log.postfix("bounce", text, self.syslog_name)
            self._step("BOUNCE", text, env.session, qid=qid, dsn_qid=qf.qid,
                       sender=env.sender, recipients=[n.recipient for n in notices],
                       status=[n.dsn for n in notices])
            return committing

        def failed(failure) -> None:
            self.log.postfix("bounce", f"warning: {qid}: cannot queue the non-delivery "
                             f"notification: {failure.getErrorMessage()}", self.syslog_name)
        d.addCallback(opened).addErrback(failed)
