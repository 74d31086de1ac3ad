#!/usr/bin/env python3
"""SMTP throughput benchmark: gponsim against real Postfix and aiosmtpd+mbox, in the same run.

For each server, in a fresh temporary directory and on a free loopback port,
Postfix's ``smtp-source`` sends MESSAGES messages of SIZE bytes over SESSIONS
parallel sessions to the server's port 25 (SMTP, no AUTH, no TLS).  The clock
starts when smtp-source is started and stops when the recipient's mbox holds
all the messages (``From_`` lines counted as the file grows).  The figure is
messages per second, delivered.  Afterwards the mbox is parsed and checked:
exactly MESSAGES messages, all Message-Ids distinct (smtp-source numbers
them), every body of the right size.

Servers:

* ``gponsim``: ``python -m gponsim serve --quiet --steps steps.jsonl`` -- one
  process, every Step recorded to JSON lines, terminal narration off; mail
  for user2@gponlab.local goes through the queue to
  ``<lab root>/var/mail/user2``.
* ``gponsim-narrated``: the same with the narration on (``--lang en``,
  explanations the first time), written to a file as a terminal would get it.
* ``postfix``: a throwaway real Postfix instance (own config, queue and data
  directories in the temp dir, its own port; the system's Postfix is not
  touched) delivering with virtual(8) to an mbox.  Needs root and the Debian
  postfix package; measured by default when both are there.
* ``aiosmtpd``: ``bench/aiosmtpd_mbox.py`` -- aiosmtpd whose handler appends
  each message to an mbox (no queue, no fsync): a reference.

The target is a ratio in the same run, never an absolute figure: gponsim
(narration off) >= 1.0 x real Postfix (median of the per-repeat ratios).
Exit status: 0 PASS (or no ratio to judge), 1 FAIL, 2 error.

    .venv/bin/python bench/smtp_throughput.py
    .venv/bin/python bench/smtp_throughput.py --repeat 3 --json results.json
    .venv/bin/python bench/smtp_throughput.py --only aiosmtpd --messages 200
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchutil import write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SENDER = "user1@gponlab.local"
RECIPIENT = "user2@gponlab.local"
SERVERS = ("gponsim", "gponsim-narrated", "postfix", "aiosmtpd")
TARGET = 1.0


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# helpers

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAB_PORTS = (25, 80, 110, 143, 465, 587, 993, 995)   # the lab's standard ports


def free_port_offset() -> int:
    """A --port-offset that puts the lab's other services (IMAP, POP3,
    autoconfig...) on free ports, so the benchmark runs beside a real mail
    server or another lab."""
    rng = random.Random()
    for _ in range(200):
        offset = rng.randrange(20000, 60000)
        try:
            for port in LAB_PORTS:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return offset
    raise BenchError("no free --port-offset for the lab's other services")


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.settimeout(5)
            banner = s.recv(512)
            if banner.startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                return
        time.sleep(0.05)
    raise BenchError(f"nothing answers 220 on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float | None:
    """user+system CPU of a process tree (live descendants and reaped children), Linux."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[1] = ppid; [11:15] = utime stime cutime cstime
        stats[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    if pid not in stats:
        return None
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += stats[p][1]
        todo.extend(c for c, (pp, _) in stats.items() if pp == p)
    return total / os.sysconf("SC_CLK_TCK")


def find_port(obj, name: str = "smtp") -> int | None:
    """The port for `name` in a ready-file of unknown exact shape."""
    if isinstance(obj, dict):
        for key in (name, f"{name}_port", str(25)):
            v = obj.get(key)
            if isinstance(v, int):
                return v
            if isinstance(v, dict):
                p = find_port(v, "port")
                if p:
                    return p
            if isinstance(v, str) and v.rsplit(":", 1)[-1].isdigit():
                return int(v.rsplit(":", 1)[-1])
        for v in obj.values():
            if isinstance(v, (dict, list)):
                p = find_port(v, name)
                if p:
                    return p
    if isinstance(obj, list):
        for v in obj:
            p = find_port(v, name)
            if p:
                return p
    return None


class MboxCounter:
    """Counts messages (From_ lines) in a growing mbox, reading only new bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending = b""
        self.count = 0
        self.fh = None

    def poll(self) -> int:
        if self.fh is None:
            try:
                self.fh = open(self.path, "rb")
            except FileNotFoundError:
                return 0
        try:
            size = os.fstat(self.fh.fileno()).st_size
        except OSError:
            return self.count
        if size < self.offset:  # replaced or truncated: start over
            self.fh.close()
            self.fh, self.offset, self.pending, self.count = None, 0, b"", 0
            return self.poll()
        if size > self.offset:
            self.fh.seek(self.offset)
            data = self.fh.read(size - self.offset)
            self.offset += len(data)
            chunk = self.pending + data
            cut = chunk.rfind(b"\n") + 1
            done, self.pending = chunk[:cut], chunk[cut:]
            if done:
                self.count += (b"\n" + done).count(b"\nFrom ")
        return self.count

    @property
    def at_line_end(self) -> bool:
        return self.pending == b""

    def close(self) -> None:
        if self.fh:
            self.fh.close()
            self.fh = None


def verify_mbox(path: Path, messages: int, size: int) -> dict:
    """Parse the finished mbox: message count, distinct ids, body sizes."""
    raw = path.read_bytes()
    parts = re.split(rb"(?m)^From [^\n]*\n", raw)
    if parts and parts[0].strip() == b"":
        parts = parts[1:]
    parser = email.parser.BytesHeaderParser()
    ids, bad_sizes = set(), 0
    for part in parts:
        head, _, body = part.partition(b"\n\n")
        msg = parser.parsebytes(head + b"\n\n")
        ids.add(msg.get("Message-Id", "").strip())
        body = body[:-1] if body.endswith(b"\n\n") else body  # mbox separator line
        if not size * 0.9 <= len(body) <= size * 1.1 + 64:
            bad_sizes += 1
    problems = []
    if len(parts) != messages:
        problems.append(f"{len(parts)} messages in the mbox, expected {messages}")
    if len(ids) != len(parts):
        problems.append(f"only {len(ids)} distinct Message-Ids among {len(parts)} messages")
    if bad_sizes:
        problems.append(f"{bad_sizes} messages with a body far from {size} bytes")
    return {"messages": len(parts), "distinct_ids": len(ids), "bytes": len(raw),
            "problems": problems}


# --------------------------------------------------------------------------
# servers

@dataclass
class Server:
    name: str
    workdir: Path
    python: str
    proc: subprocess.Popen | None = None
    port: int = 0
    mbox: Path = field(default_factory=Path)
    extra: dict = field(default_factory=dict)

    def start(self, timeout: float) -> None: ...
    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = (self.workdir / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _spawn(self, argv: list[str]) -> None:
        log = open(self.workdir / "server.log", "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def _wait_ready(self, ready: Path, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.proc.returncode} "
                                 f"before it was ready:\n{self.log_tail()}")
            if ready.exists():
                with contextlib.suppress(ValueError, OSError):
                    return json.loads(ready.read_text())
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not write {ready} within {timeout:.0f}s:\n"
                         f"{self.log_tail()}")


class GponsimServer(Server):
    def start(self, timeout: float) -> None:
        root = self.workdir / "gponlab"
        ready = self.workdir / "ready.json"
        port = free_port()
        narration = ["--lang", "en"] if self.extra.get("narrated") else ["--quiet"]
        self._spawn([self.python, "-m", "gponsim", "serve", "--lab-root", str(root),
                     *narration, "--steps", str(self.workdir / "steps.jsonl"),
                     "--port", f"smtp={port}", "--port", "submission=0",
                     "--port-offset", str(free_port_offset()),
                     "--ready-file", str(ready)])
        info = self._wait_ready(ready, timeout)
        self.port = find_port(info, "smtp") or port
        self.mbox = root / "var" / "mail" / RECIPIENT.split("@")[0]
        self.extra["ready"] = info

    def stop(self) -> None:
        super().stop()
        steps = self.workdir / "steps.jsonl"
        if steps.exists():
            with open(steps, "rb") as fh:
                self.extra["steps_recorded"] = sum(1 for _ in fh)


class AiosmtpdServer(Server):
    def start(self, timeout: float) -> None:
        ready = self.workdir / "ready.json"
        self.mbox = self.workdir / "mbox"
        self._spawn([self.python, str(HERE / "aiosmtpd_mbox.py"), "--port", "0",
                     "--mbox", str(self.mbox), "--ready-file", str(ready)])
        self.port = self._wait_ready(ready, timeout)["smtp"]


POSTFIX_MAIN = """\
compatibility_level = 3.6
config_directory = {d}/etc
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.gponlab.local
mydomain = gponlab.local
myorigin = $mydomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
disable_dns_lookups = yes
biff = no
alias_maps =
alias_database =
local_recipient_maps =
relayhost =
smtpd_banner = $myhostname ESMTP Postfix
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
virtual_mailbox_domains = gponlab.local
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = static:user2
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
# like local(8) for one user in the lab: at most 2 deliveries to the mbox at a time
virtual_destination_recipient_limit = 1
virtual_destination_concurrency_limit = 2
"""


class PostfixServer(Server):
    """A throwaway Postfix instance; never touches /etc/postfix or /var/spool/postfix."""

    def start(self, timeout: float) -> None:
        if os.geteuid() != 0:
            raise BenchError("postfix: a throwaway Postfix instance needs root")
        postfix = shutil.which("postfix") or "/usr/sbin/postfix"
        if not os.path.exists(postfix):
            raise BenchError("postfix: /usr/sbin/postfix not found (apt-get install postfix)")
        d = self.workdir / "pf"
        etc = d / "etc"
        etc.mkdir(parents=True)
        (d / "mail").mkdir()
        (d / "spool").mkdir()
        (d / "data").mkdir()
        shutil.chown(d / "data", "postfix")
        uid, gid = 65534, 65534  # nobody:nogroup owns the mbox
        os.chown(d / "mail", uid, gid)
        os.chmod(self.workdir, 0o755)
        os.chmod(d, 0o755)
        self.port = free_port()
        (etc / "main.cf").write_text(POSTFIX_MAIN.format(d=d, uid=uid, gid=gid))
        master = Path("/etc/postfix/master.cf").read_text()
        lines, skipping = [], False
        for line in master.splitlines():
            f = line.split()
            if line[:1].isspace():  # continuation (-o ...) of the entry above
                lines.append(("#" if skipping else "") + line)
                continue
            skipping = False
            if len(f) >= 8 and not line.startswith("#"):
                if f[1] == "inet":
                    if f[0] not in ("smtp", "25"):
                        skipping = True  # no submission/smtps/... listeners
                        lines.append("#" + line)
                        continue
                    f[0] = f"127.0.0.1:{self.port}"
                f[4] = "n"  # chroot off: no chroot jail to populate
                line = " ".join(f)
            lines.append(line)
        (etc / "master.cf").write_text("\n".join(lines) + "\n")
        env = dict(os.environ, MAIL_CONFIG=str(etc))
        self.extra["env"] = env
        r = subprocess.run([postfix, "-c", str(etc), "start"], env=env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"postfix start failed:\n{r.stdout}{r.stderr}")
        pidfile = d / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + timeout
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError, ValueError):
            self.extra["master_pid"] = int(pidfile.read_text().split()[0])
        wait_port(self.port, deadline)
        self.mbox = d / "mail" / "user2"

    @property
    def pid(self) -> int | None:
        return self.extra.get("master_pid")

    def stop(self) -> None:
        etc = self.workdir / "pf" / "etc"
        if (etc / "main.cf").exists():
            subprocess.run([shutil.which("postfix") or "/usr/sbin/postfix", "-c", str(etc),
                            "stop"], env=self.extra.get("env"), capture_output=True, timeout=60)
            pid = self.extra.get("master_pid")
            deadline = time.monotonic() + 20
            while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = (self.workdir / "pf" / "maillog").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


SERVER_CLASSES = {"gponsim": GponsimServer, "gponsim-narrated": GponsimServer,
                  "aiosmtpd": AiosmtpdServer, "postfix": PostfixServer}


# --------------------------------------------------------------------------
# one measurement

def measure(name: str, args: argparse.Namespace, repeat: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=args.tmpdir))
    server = SERVER_CLASSES[name](name=name, workdir=workdir, python=args.python,
                                  extra={"narrated": name == "gponsim-narrated"})
    result: dict = {"server": name, "repeat": repeat, "workdir": str(workdir)}
    src = None
    try:
        server.start(args.start_timeout)
        cmd = [args.smtp_source, "-s", str(args.sessions), "-l", str(args.size),
               "-m", str(args.messages), "-f", SENDER, "-t", RECIPIENT,
               "-M", "client.gponlab.local"]
        if args.reuse:
            cmd.append("-d")
        cmd.append(f"127.0.0.1:{server.port}")
        result["command"] = " ".join(cmd)
        counter = MboxCounter(server.mbox)
        cpu0 = cpu_seconds(server.pid) if server.pid else None
        src_err = open(workdir / "smtp-source.err", "w+b")
        t0 = time.perf_counter()
        src = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=src_err)
        src_done = None
        last_count, last_change = 0, t0
        while True:
            n = counter.poll()
            now = time.perf_counter()
            if n >= args.messages and counter.at_line_end:
                break
            if n != last_count:
                last_count, last_change = n, now
            if src_done is None and src.poll() is not None:
                src_done = now - t0
                if src.returncode != 0:
                    src_err.seek(0)
                    raise BenchError(f"smtp-source exited with {src.returncode} against "
                                     f"{name}:\n{src_err.read().decode(errors='replace')}\n"
                                     f"{server.log_tail()}")
            if server.proc is not None and server.proc.poll() is not None:
                raise BenchError(f"{name} died during the run:\n{server.log_tail()}")
            if now - last_change > args.stall_timeout:
                state = ("smtp-source still running (waiting for a reply?)"
                         if src_done is None else "smtp-source finished OK")
                raise BenchError(f"{name}: mbox stuck at {n}/{args.messages} messages for "
                                 f"{args.stall_timeout:.0f}s; {state}\n{server.log_tail()}")
            time.sleep(args.poll_interval)
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_seconds(server.pid) if server.pid else None
        if src.wait(60) != 0:
            src_err.seek(0)
            raise BenchError(f"smtp-source exited with {src.returncode}: "
                             f"{src_err.read().decode(errors='replace')}")
        if src_done is None:
            src_done = time.perf_counter() - t0  # upper bound: finished while we waited
        counter.close()
        time.sleep(0.2)  # anything extra (duplicates) would show up now
        check = verify_mbox(server.mbox, args.messages, args.size)
        result.update({
            "seconds": round(elapsed, 4),
            "msg_per_s": round(args.messages / elapsed, 1),
            "smtp_source_seconds": round(src_done, 4),
            "server_cpu_s": round(cpu1 - cpu0, 3) if cpu0 is not None and cpu1 is not None else None,
            "mbox_bytes": check["bytes"],
            "verified": not check["problems"],
            "problems": check["problems"],
        })
        if check["problems"]:
            raise BenchError(f"{name}: mbox check failed: {'; '.join(check['problems'])}")
    finally:
        if src is not None and src.poll() is None:
            src.kill()
            src.wait()
        server.stop()
        if "steps_recorded" in server.extra:
            result["steps_recorded"] = server.extra["steps_recorded"]
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="SMTP throughput (smtp-source -> mbox): gponsim vs real Postfix and "
                    "aiosmtpd+mbox.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--messages", "-m", type=int, default=2000, help="messages per run")
    ap.add_argument("--sessions", "-s", type=int, default=10, help="parallel SMTP sessions")
    ap.add_argument("--size", "-l", type=int, default=2048, help="payload bytes per message")
    ap.add_argument("--repeat", "-n", type=int, default=1,
                    help="runs per server; the median is reported")
    ap.add_argument("--only", action="append", choices=SERVERS,
                    help="measure only this server (repeatable)")
    ap.add_argument("--no-postfix", action="store_true",
                    help="leave out the real Postfix instance (measured by default as root)")
    ap.add_argument("--reuse", action="store_true",
                    help="smtp-source -d: send all of a session's messages over one "
                         "connection instead of one connection per message")
    ap.add_argument("--target", type=float, default=TARGET,
                    help="PASS if gponsim/postfix >= this")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="write the results as JSON to FILE (or stdout when no FILE)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter that runs gponsim and aiosmtpd")
    ap.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    ap.add_argument("--tmpdir", default=None, help="where the temporary directories go")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    ap.add_argument("--poll-interval", type=float, default=0.005, help=argparse.SUPPRESS)
    ap.add_argument("--start-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--stall-timeout", type=float, default=60.0,
                    help="give up when the mbox does not grow for this many seconds")
    args = ap.parse_args(argv)

    if not os.path.exists(args.smtp_source):
        print("smtp-source not found: apt-get install postfix (it is in /usr/sbin)",
              file=sys.stderr)
        return 2
    servers = args.only or ["gponsim", "gponsim-narrated", "aiosmtpd"]
    if not args.only and not args.no_postfix:
        if os.geteuid() == 0 and shutil.which("postfix", path="/usr/sbin:/usr/bin"):
            servers.insert(2, "postfix")
        else:
            print("note: real Postfix left out (it needs root and Debian's postfix package)",
                  file=sys.stderr)
    servers = list(dict.fromkeys(servers))
    quiet = args.json == "-"
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if quiet else \
        (lambda *a: print(*a, flush=True))

    say(f"smtp-source: {args.messages} messages x {args.size} bytes, "
        f"{args.sessions} sessions{' (-d: reused connections)' if args.reuse else ''}; "
        f"servers: {', '.join(servers)}; repeat {args.repeat}")
    runs: list[dict] = []
    try:
        for r in range(args.repeat):
            order = servers if r % 2 == 0 else servers[::-1]  # alternate to cancel drift
            for name in order:
                res = measure(name, args, r + 1)
                runs.append(res)
                cpu = f", server CPU {res['server_cpu_s']:.2f}s" if res.get("server_cpu_s") else ""
                say(f"  run {r + 1} {name:9s} {res['msg_per_s']:8.1f} msg/s "
                    f"({res['seconds']:.2f}s; smtp-source done at "
                    f"{res['smtp_source_seconds']:.2f}s{cpu})")
    except BenchError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2

    median = {n: statistics.median(x["msg_per_s"] for x in runs if x["server"] == n)
              for n in servers}
    summary: dict = {"median_msg_per_s": {n: round(v, 1) for n, v in median.items()}}
    status = 0
    def ratios_of(a: str, b: str) -> list[float]:
        out = []
        for r in range(1, args.repeat + 1):
            x = next(x for x in runs if x["server"] == a and x["repeat"] == r)
            y = next(x for x in runs if x["server"] == b and x["repeat"] == r)
            out.append(x["msg_per_s"] / y["msg_per_s"])
        return out
    if "gponsim" in servers and "postfix" in servers:
        ratios = ratios_of("gponsim", "postfix")
        ratio = statistics.median(ratios)
        summary.update(ratio=round(ratio, 3), ratios=[round(x, 3) for x in ratios],
                       target=args.target, passed=ratio >= args.target)
        status = 0 if ratio >= args.target else 1
    for a, b in (("gponsim-narrated", "postfix"), ("gponsim", "aiosmtpd"),
                 ("gponsim-narrated", "gponsim"), ("postfix", "aiosmtpd")):
        if a in servers and b in servers:
            summary[f"{a}/{b}"] = round(statistics.median(ratios_of(a, b)), 3)

    say("median msg/s: " + ", ".join(f"{n} {v:.1f}" for n, v in median.items()))
    if "ratio" in summary:
        say(f"gponsim/postfix = {summary['ratio']:.3f} (target >= {args.target}): "
            f"{'PASS' if summary['passed'] else 'FAIL'}")
    for key, value in summary.items():
        if "/" in key:
            say(f"{key} = {value:.3f}")

    if args.json:
        doc = {
            "benchmark": "smtp_throughput",
            "config": {"messages": args.messages, "sessions": args.sessions,
                       "size": args.size, "repeat": args.repeat, "reuse": args.reuse,
                       "servers": servers},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "runs": runs,
            **summary,
        }
        write_json(doc, args.json)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
