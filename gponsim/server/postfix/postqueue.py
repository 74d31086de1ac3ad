"""Queue control from outside the running lab: ``mailq``, ``postqueue -f``, ``postsuper -d``.

- **List** (``mailq``): reads the spool directly, like Postfix's showq
  (:func:`gponsim.server.postfix.queuefile.list_queue`); works whether the lab runs or not.
- **Flush** (``postqueue -f``): on the real server postqueue asks the
  ``flush`` service through the socket ``/var/spool/postfix/public/flush``,
  and qmgr then retries every deferred message. The lab listens on the same
  path under its root (a Unix socket) and understands one line, ``FLUSH``;
  it answers ``OK <n>`` (n = deferred messages scheduled). Without a
  running lab there is no socket: postqueue's ``fatal: Cannot flush mail
  queue - mail system is down``, and the mail is retried at the next start.
- **Delete** (``postsuper -d QID``): postsuper removes the queue file itself,
  no daemon involved; so does gponsim. A running lab notices the missing
  file at its next attempt. A message in the ``active`` queue is being
  delivered right now and is not deleted (try again a moment later).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

from gponsim.server.unixpath import socket_address
from gponsim.server.maillog import MailLog
from gponsim.server.postfix.queuefile import SPOOL, list_queue
from gponsim.server.postfix.queueid import hash_dir, is_queue_id

FLUSH_SOCKET = SPOOL / "public" / "flush"


class QueueControlError(Exception):
    pass


def flush_socket(root: Path) -> Path:
    return Path(root) / FLUSH_SOCKET


def listen_flush(reactor, root: Path, flush: Callable[[], int]):
    """Listen on ``public/flush``; returns the listening port."""
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineOnlyReceiver

    class _Flush(LineOnlyReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip().upper() == b"FLUSH":
                n = flush()
                self.sendLine(f"OK {n}".encode())
            else:
                self.sendLine(b"ERROR unknown request")
            self.transport.loseConnection()

    path = flush_socket(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    return reactor.listenUNIX(socket_address(path), Factory.forProtocol(_Flush), mode=0o666)


def request_flush(root: Path, timeout: float = 10.0) -> int:
    """``postqueue -f``: ask the running lab to retry its deferred mail."""
    path = flush_socket(root)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_address(path))
        sock.sendall(b"FLUSH\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise QueueControlError("Cannot flush mail queue - mail system is down") from exc
    finally:
        sock.close()
    text = data.decode().strip()
    if not text.startswith("OK"):
        raise QueueControlError(text or "no answer from the lab")
    return int(text.split()[1]) if len(text.split()) > 1 else 0


def delete(root: Path, qid: str, log: MailLog | None = None) -> str:
    """``postsuper -d QID``: remove a queued message. Returns the queue it was in."""
    if not is_queue_id(qid):
        raise QueueControlError(f"invalid queue id: {qid}")
    spool = Path(root) / SPOOL
    candidates = [("deferred", spool / "deferred" / hash_dir(qid) / qid),
                  ("hold", spool / "hold" / qid),
                  ("incoming", spool / "incoming" / qid)]
    if (spool / "active" / qid).exists():
        raise QueueControlError(f"{qid}: the message is being delivered now (active queue); "
                                f"try again in a moment")
    for state, path in candidates:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        if log is not None:
            log.write("postfix/postsuper", os.getpid(), f"{qid}: removed")
        return state
    raise QueueControlError(f"{qid}: no such message in the queue")


def mailq_text(root: Path, now: float | None = None) -> str:
    """The queue as ``mailq`` (``postqueue -p``) prints it."""
    entries = list_queue(root)
    if not entries:
        return "Mail queue is empty\n"
    out = ["-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    total = 0
    for e in entries:
        mark = {"active": "*", "hold": "!"}.get(e.state, "")
        stamp = time.strftime("%a %b %e %H:%M:%S", time.localtime(e.arrival))
        out.append(f"{(e.qid + mark):<11s} {e.size:>8d} {stamp}  {e.sender or 'MAILER-DAEMON'}")
        if e.reason:
            out.append(f"({e.reason})")
        for r in e.recipients:
            out.append(f"{'':<41s}{r}")
        out.append("")
        total += e.size
    kb = (total + 1023) // 1024
    n = len(entries)
    out.append(f"-- {kb} Kbytes in {n} Request{'s' if n != 1 else ''}.")
    return "\n".join(out) + "\n"
