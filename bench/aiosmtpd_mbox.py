#!/usr/bin/env python3
"""Peer server for the SMTP throughput benchmark: aiosmtpd + mbox append.

A deliberately simple, fair baseline: an aiosmtpd server on a loopback
address that accepts any sender and any recipient and, for every message,
appends it to one mbox file the way a local delivery agent does (open for
append, ``flock``, a ``From_`` line, the message with ``>From`` quoting and LF
line ends, a blank line, close).  No queue, no fsync, no logging.

    python bench/aiosmtpd_mbox.py --mbox /tmp/x/mbox --port 0 --ready-file /tmp/x/ready.json

With ``--port 0`` the kernel picks a free port; the bound port is written to
``--ready-file`` as ``{"smtp": PORT, "pid": PID}`` once the server listens.
Stop it with SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import re
import signal
import time

from aiosmtpd.smtp import SMTP

_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


class MboxHandler:
    """aiosmtpd handler: accept everything, append each message to one mbox."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        body = envelope.original_content or envelope.content
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogateescape")
        body = body.replace(b"\r\n", b"\n")
        body = _FROM_LINE.sub(rb">\1", body)  # mboxrd quoting
        if not body.endswith(b"\n"):
            body += b"\n"
        sender = envelope.mail_from or "MAILER-DAEMON"
        from_line = "From %s  %s\n" % (sender, time.asctime())
        data = from_line.encode("utf-8", "surrogateescape") + body + b"\n"
        with open(self.path, "ab") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            fh.write(data)
            fh.flush()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        self.count += 1
        return "250 2.0.0 Ok: queued"


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    handler = MboxHandler(args.mbox)

    def factory() -> SMTP:
        # An explicit hostname: aiosmtpd would otherwise call socket.getfqdn()
        # (a DNS lookup) for every connection.
        return SMTP(handler, hostname=args.hostname, loop=loop)

    server = await loop.create_server(factory, host=args.host, port=args.port,
                                      reuse_address=True, backlog=128)
    port = server.sockets[0].getsockname()[1]
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"smtp": port, "pid": os.getpid()}, fh)
        os.replace(tmp, args.ready_file)
    else:
        print("listening on %s:%d" % (args.host, port), flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--hostname", default="mail.gponlab.local",
                    help="name in the greeting and EHLO reply")
    ap.add_argument("--mbox", required=True, help="mbox file to append to")
    ap.add_argument("--ready-file", help="write {'smtp': port} here once listening")
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
