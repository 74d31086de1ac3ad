#!/usr/bin/env python3
"""A class of Thunderbird-like IMAP clients against `gponsim serve`.

One ``python -m gponsim serve --quiet --steps FILE`` on free loopback ports.
CLIENTS threads (default 40), each one student:

1. connect to port 143, ``STARTTLS``, ``AUTHENTICATE PLAIN`` without SASL-IR
   (Thunderbird's way: the credentials after the ``+`` continuation);
2. ``SELECT INBOX``; ``UID FETCH 1:* (FLAGS)``;
   ``UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From To Subject Date Message-ID)])``;
3. ``IDLE``. On ``* n EXISTS`` it does what Thunderbird does: ``DONE``, a
   ``UID FETCH last+1:* (FLAGS)`` and a header fetch of the new messages, and
   ``IDLE`` again.

Meanwhile one sender delivers a message every second (DURATION seconds) over
SMTP to port 25 (smtplib, plain, no AUTH). Figures:

- command latency p50/p99: every command above, from sending it to its tagged
  reply (``DONE`` counts as the command that ends IDLE);
- new-mail notification delay p50/p99: from the ``250`` after DATA to the
  ``* n EXISTS`` each idling client sees for that message;
- then, separately, WORKERS threads doing login-fetch-logout sessions for
  SESSION_SECONDS (STARTTLS, AUTHENTICATE PLAIN, SELECT, UID FETCH 1:* (FLAGS),
  LOGOUT): sessions per second.

Accounts: ``--accounts own`` (default) gives every client its own user
(alumno01...alumno40, added to the lab's passwd-file with the lab's hash
scheme) and each delivery is one message to all of them; ``--accounts
shared`` logs every client in as user2 and delivers to user2 only (one mbox,
40 sessions on it). The hash scheme is read from the users file and reported.
Every client connects from its own loopback address (127.0.1.N; the session
workers from 127.0.2.N), as each student's machine would: Dovecot's
mail_max_userip_connections (10) counts a user's sessions per address.

Targets (issue 4, for a 2-core machine): command p99 < 100 ms, notification
p99 < 1 s. Exit status 0 when both are met, 1 when not, 2 on error.

    .venv/bin/python bench/imap_class.py
    .venv/bin/python bench/imap_class.py --clients 40 --duration 25 --json out.json
    .venv/bin/python bench/imap_class.py --accounts shared --duration 10
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchutil import write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVICES = ("smtp", "submission", "imap", "imaps", "pop3", "pop3s", "autoconfig")
HEADERS = "BODY.PEEK[HEADER.FIELDS (From To Subject Date Message-ID)]"
TARGET_COMMAND_P99 = 0.100
TARGET_NOTIFY_P99 = 1.0


def connect(port: int, source: str, timeout: float) -> imaplib.IMAP4:
    """imaplib to the lab's port from ``source`` (an address of the loopback network)."""
    class FromSource(imaplib.IMAP4):
        def _create_socket(self, timeout):
            return socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0))
    return FromSource("127.0.0.1", port, timeout=timeout)


class BenchError(RuntimeError):
    pass


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[k]


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


# --------------------------------------------------------------------------
# the lab

class Lab:
    def __init__(self, workdir: Path, python: str, extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.root = workdir / "gponlab"
        self.python = python
        self.extra = list(extra or [])        # more `serve` options (bench/capture_loss.py)
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    def start(self, timeout: float = 60) -> None:
        ready = self.workdir / "ready.json"
        cmd = [self.python, "-m", "gponsim", "serve", "--lab-root", str(self.root), "--quiet",
               "--steps", str(self.workdir / "steps.jsonl"), "--ready-file", str(ready)]
        for svc in SERVICES:
            cmd += ["--port", f"{svc}=0"]
        cmd += self.extra
        log = open(self.workdir / "serve.log", "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise BenchError(f"gponsim serve exited with {self.proc.returncode}:\n"
                                 f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"gponsim serve not ready after {timeout:.0f}s")
            time.sleep(0.05)
        self.ports = json.loads(ready.read_text())["ports"]

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.workdir / "serve.log").read_text(errors="replace")
                             .splitlines()[-n:])
        return ""

    def cpu_seconds(self) -> float | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def hash_scheme(self) -> str:
        path = self.root / "etc" / "dovecot" / "users"
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                password = line.split(":")[1]
                m = re.match(r"(\{[A-Z0-9.-]+\})?(\$2[aby]?\$(\d\d)\$)?", password)
                scheme = m.group(1) or "{CRYPT}"
                if m.group(2):
                    return f"{scheme} bcrypt cost {int(m.group(3))} ({m.group(2)})"
                return scheme
        return "unknown"


def add_users(root: Path, names: list[str]) -> None:
    """As the teacher would: ``adduser`` (the lab's etc/passwd, which Postfix's
    local_recipient_maps reads) and an entry in Dovecot's passwd-file."""
    sys.path.insert(0, str(REPO))
    from gponsim.server import accounts
    from gponsim.server.dovecot.passwd import Users
    users = Users.ensure_default(root / "etc" / "dovecot" / "users")
    system = accounts.Accounts(accounts.path_for(root))
    for name in names:
        system.add_user(name)
        if not users.exists(name):
            users.add(name, "pass")


# --------------------------------------------------------------------------
# one Thunderbird-like client

class Client(threading.Thread):
    def __init__(self, bench: "Bench", user: str, index: int) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.bench = bench
        self.user = user
        self.index = index
        self.latencies: list[tuple[str, float]] = []
        self.seen: list[tuple[int, float]] = []          # (EXISTS count, when)
        self.error: str | None = None
        self.idling = threading.Event()
        self.last_uid = 0
        self.imap: imaplib.IMAP4 | None = None

    def abort(self) -> None:
        """End the client at the end of the run (it is idling, blocked in a read)."""
        if self.imap is not None:
            with contextlib.suppress(OSError):
                self.imap.sock.shutdown(2)

    def timed(self, name: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.latencies.append((name, time.perf_counter() - start))
        if isinstance(result, tuple) and result and result[0] != "OK":
            raise BenchError(f"{self.user}: {name} answered {result}")
        return result

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:   # reported in the summary
            if not self.bench.stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
            self.idling.set()

    def _run(self) -> None:
        m = connect(self.bench.lab.ports["imap"], f"127.0.1.{self.index + 1}", 60)
        self.imap = m
        self.timed("STARTTLS", m.starttls, self.bench.tls)
        self.timed("AUTHENTICATE", m.authenticate, "PLAIN",
                   lambda _challenge: f"\0{self.user}\0pass".encode())
        self.timed("SELECT", m.select, "INBOX")
        typ, data = self.timed("UID FETCH FLAGS", m.uid, "FETCH", "1:*", "(FLAGS)")
        uids = [int(x) for x in re.findall(rb"UID (\d+)", b" ".join(
            d if isinstance(d, bytes) else d[0] for d in data if d))]
        self.last_uid = max(uids, default=0)
        self.timed("UID FETCH headers", m.uid, "FETCH", "1:*", f"({HEADERS})")
        sock_file = m
        while not self.bench.stop.is_set():
            tag = m._new_tag()
            start = time.perf_counter()
            m.send(tag + b" IDLE\r\n")
            line = sock_file.readline()
            if not line.startswith(b"+"):
                raise BenchError(f"{self.user}: IDLE answered {line!r}")
            self.latencies.append(("IDLE", time.perf_counter() - start))
            self.idling.set()
            got = None
            while got is None:
                line = sock_file.readline()       # blocks; stop() shuts the socket down
                if not line:
                    if self.bench.stop.is_set():
                        return
                    raise BenchError(f"{self.user}: connection closed while idling")
                found = re.match(rb"\* (\d+) EXISTS", line)
                if found:
                    got = int(found.group(1))
                    self.seen.append((got, time.monotonic()))
            start = time.perf_counter()
            m.send(b"DONE\r\n")
            while True:
                line = sock_file.readline()
                if line.startswith(tag + b" "):
                    break
                found = re.match(rb"\* (\d+) EXISTS", line)
                if found:
                    self.seen.append((int(found.group(1)), time.monotonic()))
            self.latencies.append(("DONE", time.perf_counter() - start))
            if not line.startswith(tag + b" OK"):
                raise BenchError(f"{self.user}: DONE answered {line!r}")
            new = f"{self.last_uid + 1}:*"
            typ, data = self.timed("UID FETCH FLAGS", m.uid, "FETCH", new, "(FLAGS)")
            uids = [int(x) for x in re.findall(rb"UID (\d+)", b" ".join(
                d if isinstance(d, bytes) else d[0] for d in data if d))]
            self.timed("UID FETCH headers", m.uid, "FETCH", new, f"({HEADERS})")
            self.last_uid = max(uids + [self.last_uid])


# --------------------------------------------------------------------------
# the run

class Bench:
    def __init__(self, args, lab: Lab) -> None:
        self.args = args
        self.lab = lab
        self.stop = threading.Event()
        cert = lab.root / "etc" / "ssl" / "certs" / "ssl-cert-snakeoil.pem"
        self.tls = ssl.create_default_context(cafile=str(cert))

    def send(self, recipients: list[str], subject: str) -> float:
        with smtplib.SMTP("127.0.0.1", self.lab.ports["smtp"], local_hostname="profesor.test",
                          timeout=30) as s:
            s.sendmail("profesor@gponlab.local", [f"{r}@gponlab.local" for r in recipients],
                       f"From: profesor@gponlab.local\r\nSubject: {subject}\r\n"
                       f"Message-ID: <{subject.replace(' ', '.')}@bench>\r\n\r\n"
                       f"Texto de la practica.\r\n".encode())
            return time.monotonic()          # sendmail returned: the 250 after DATA

    def wait_delivered(self, users: list[str], count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for user in users:
            path = self.lab.root / "var" / "mail" / user
            while True:
                with contextlib.suppress(OSError):
                    data = path.read_bytes()
                    if data.count(b"\nSubject: seed ") + data.startswith(b"Subject: seed ") >= count:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"seed messages not delivered to {user}")
                time.sleep(0.05)

    def run_class(self) -> dict:
        a = self.args
        users = ([f"alumno{i:02d}" for i in range(1, a.clients + 1)] if a.accounts == "own"
                 else ["user2"])
        if a.accounts == "own":
            add_users(self.lab.root, users)
        for i in range(a.seed):
            self.send(users, f"seed {i}")
        self.wait_delivered(users, a.seed)
        clients = [Client(self, users[i % len(users)], i) for i in range(a.clients)]
        t0 = time.monotonic()
        for c in clients:
            c.start()
        for c in clients:
            c.idling.wait(60)
        setup = time.monotonic() - t0
        broken = [c for c in clients if c.error]
        if broken:
            raise BenchError(f"{len(broken)} clients failed: {broken[0].error}")
        cpu0 = self.lab.cpu_seconds()
        deliveries: list[float] = []
        start = time.monotonic()
        for k in range(a.duration):
            deliveries.append(self.send(users, f"aviso {k}"))
            pause = start + k + 1 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        # Let the last notifications arrive (bounded), then stop the clients.
        expected = a.seed + len(deliveries)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                c.seen and c.seen[-1][0] >= expected for c in clients if not c.error):
            time.sleep(0.05)
        cpu1 = self.lab.cpu_seconds()
        self.stop.set()
        for c in clients:
            c.abort()
        for c in clients:
            c.join(30)
        errors = [c.error for c in clients if c.error]
        latencies = [t for c in clients for _n, t in c.latencies]
        by_command: dict[str, list[float]] = {}
        for c in clients:
            for name, t in c.latencies:
                by_command.setdefault(name, []).append(t)
        delays, missed = [], 0
        for c in clients:
            for k, sent in enumerate(deliveries):
                count = a.seed + k + 1
                when = next((t for n, t in c.seen if n >= count), None)
                if when is None:
                    missed += 1
                else:
                    delays.append(when - sent)
        return {
            "clients": a.clients, "accounts": a.accounts, "deliveries": len(deliveries),
            "seed_messages": a.seed, "setup_seconds": round(setup, 3),
            "commands": len(latencies),
            "command_p50": percentile(latencies, 50), "command_p99": percentile(latencies, 99),
            "command_max": max(latencies) if latencies else None,
            "by_command": {k: {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
                           for k, v in sorted(by_command.items())},
            "notify_p50": percentile(delays, 50), "notify_p99": percentile(delays, 99),
            "notify_max": max(delays) if delays else None,
            "notifications": len(delays), "notifications_missed": missed,
            "server_cpu_seconds_during_idle_phase": (round(cpu1 - cpu0, 2)
                                                     if cpu0 is not None and cpu1 is not None
                                                     else None),
            "client_errors": errors,
        }

    def run_sessions(self) -> dict:
        a = self.args
        count = [0] * a.workers
        errors: list[str] = []
        stop = time.monotonic() + a.session_seconds
        user = "alumno01" if a.accounts == "own" else "user2"

        def worker(i: int) -> None:
            while time.monotonic() < stop:
                try:
                    m = connect(self.lab.ports["imap"], f"127.0.2.{i + 1}", 30)
                    if a.session_tls:
                        m.starttls(self.tls)
                    m.authenticate("PLAIN", lambda _c: f"\0{user}\0pass".encode())
                    m.select("INBOX")
                    m.uid("FETCH", "1:*", "(FLAGS)")
                    m.logout()
                    count[i] += 1
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
        threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                   for i in range(a.workers)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(a.session_seconds + 60)
        elapsed = time.monotonic() - t0
        return {"workers": a.workers, "sessions": sum(count), "seconds": round(elapsed, 2),
                "sessions_per_second": round(sum(count) / elapsed, 1),
                "starttls": a.session_tls, "errors": errors[:5]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--duration", type=int, default=25,
                    help="seconds of deliveries (one per second) while the clients idle")
    ap.add_argument("--seed", type=int, default=20, help="messages in each INBOX beforehand")
    ap.add_argument("--accounts", choices=("own", "shared"), default="own")
    ap.add_argument("--workers", type=int, default=8, help="login-fetch-logout workers")
    ap.add_argument("--session-seconds", type=int, default=10)
    ap.add_argument("--no-session-tls", dest="session_tls", action="store_false",
                    help="login-fetch-logout sessions without STARTTLS (loopback counts as secured)")
    ap.add_argument("--skip-sessions", action="store_true")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--keep", action="store_true", help="keep the temporary lab")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE")
    args = ap.parse_args(argv)
    out = sys.stderr if args.json == "-" else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="gponsim-imapbench-"))
    lab = Lab(workdir, args.python)
    result: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        lab.start()
        result["hash_scheme"] = lab.hash_scheme()
        say(f"gponsim serve on 127.0.0.1 (imap {lab.ports['imap']}, smtp {lab.ports['smtp']}); "
            f"passwords {result['hash_scheme']}")
        bench = Bench(args, lab)
        say(f"{args.clients} clients ({args.accounts} accounts), {args.seed} messages each, "
            f"then a delivery every second for {args.duration} s ...")
        result["class"] = c = bench.run_class()
        say(f"  command latency  p50 {ms(c['command_p50'])}  p99 {ms(c['command_p99'])}  "
            f"max {ms(c['command_max'])}  ({c['commands']} commands)")
        for name, v in c["by_command"].items():
            say(f"    {name:<18} n={v['n']:<5} p50 {ms(v['p50'])}  p99 {ms(v['p99'])}")
        say(f"  new-mail notice  p50 {ms(c['notify_p50'])}  p99 {ms(c['notify_p99'])}  "
            f"max {ms(c['notify_max'])}  ({c['notifications']} seen, "
            f"{c['notifications_missed']} missed)")
        say(f"  server CPU during the idle phase: {c['server_cpu_seconds_during_idle_phase']} s "
            f"in {args.duration} s")
        if not args.skip_sessions:
            say(f"login-fetch-logout with {args.workers} workers for {args.session_seconds} s "
                f"({'STARTTLS + ' if args.session_tls else ''}AUTHENTICATE PLAIN) ...")
            result["sessions"] = s = bench.run_sessions()
            say(f"  {s['sessions_per_second']} sessions/s ({s['sessions']} in {s['seconds']} s)"
                + (f"; errors: {s['errors']}" if s["errors"] else ""))
        ok = (c["command_p99"] is not None and c["command_p99"] < TARGET_COMMAND_P99
              and c["notify_p99"] is not None and c["notify_p99"] < TARGET_NOTIFY_P99
              and not c["notifications_missed"] and not c["client_errors"])
        result["pass"] = ok
        say(f"{'PASS' if ok else 'FAIL'}: command p99 < {TARGET_COMMAND_P99 * 1000:.0f} ms, "
            f"notification p99 < {TARGET_NOTIFY_P99:.0f} s")
    except BenchError as exc:
        say(f"error: {exc}")
        result["error"] = str(exc)
        return 2
    finally:
        lab.stop()
        if args.json:
            write_json(result, args.json)
        if not args.keep:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"lab kept in {workdir}")
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
