"""A first tour of the lab: start it, send one mail from user1 to user2, look.

What ``gponsim demo`` runs: the lab's own server in this process (free
loopback ports, a fresh lab root), the scripted client in a worker thread
doing what Thunderbird does on port 587, and the narration of both. Then it
shows the mbox file and the log lines, as a student would open them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gponsim.clients.smtp import build_message, send_mail
from gponsim.server.lab import Lab, LabOptions
from gponsim.steps import ListSink, StepBus


@dataclass
class TourResult:
    queue_id: str | None
    mbox: Path
    log: Path
    steps: list


def run_tour(lab_root: Path, bus: StepBus, *, sender: str = "user1", recipient: str = "user2",
             subject: str = "Hola desde el laboratorio GPON", timeout: float = 30.0) -> TourResult:
    """Run the tour with a private reactor loop; returns when the mail is in the mbox."""
    from twisted.internet import reactor, threads

    record = bus.add(ListSink())
    lab = Lab(LabOptions(lab_root=lab_root, ports={"smtp": 0, "submission": 0}),
              emit=bus.emit, reactor=reactor)
    outcome: dict = {}
    domain = "gponlab.local"

    def client(ports):
        # Only the server's side is narrated: the client's lines are the same lines.
        message = build_message(f"{sender}@{domain}", [f"{recipient}@{domain}"], subject,
                                "Hola,\n\nEste mensaje recorrió el camino del laboratorio:\n"
                                "587 -> STARTTLS -> SASL -> cola -> local -> mbox.\n")
        result = send_mail(host="127.0.0.1", port=ports["submission"], sender=f"{sender}@{domain}",
                           recipients=[f"{recipient}@{domain}"], message=message,
                           user=sender, password="pass")
        delivered = record.wait_for(lambda s: s.src == "local" and s.dst == "mailbox"
                                    and s.meta.get("qid") == result.queue_id, timeout)
        if delivered is None:
            raise TimeoutError(f"the message {result.queue_id} did not reach the mailbox in {timeout:.0f} s")
        return result

    def go():
        d = lab.start()
        d.addCallback(lambda ports: threads.deferToThread(client, ports))
        d.addCallback(lambda result: outcome.setdefault("result", result))
        d.addErrback(lambda f: outcome.setdefault("error", f.value))
        d.addBoth(lambda _: lab.stop())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=True)
    bus.remove(record)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    return TourResult(queue_id=result.queue_id, mbox=lab.root / "var/mail" / recipient,
                      log=lab.root / "var/log/mail.log", steps=record.steps)
