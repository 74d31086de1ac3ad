"""The reference: Debian's Postfix 3.7 and Dovecot 2.3, configured from the lab profile.

A differential test runs the same client script against gponsim and against
this throwaway instance of the real programs, and compares what both said.
The instance is built from the *same files* gponsim reads:

- ``postfix/main.cf`` and ``master.cf`` of the profile, unchanged except
  for what cannot be the same on a shared test machine: paths (every absolute
  path ``/x`` of the lab server becomes ``<root>/x``, as gponsim's lab root
  does), the listening addresses (``127.0.0.1:<free port>`` instead of
  ``smtp``/``submission``), the relay's port (the Gmail simulator's), no
  chroot (the jail would need the same hosts file copied in), and logging to
  a file of its own (``maillog_file``);
- Dovecot's ``dovecot.conf`` and ``conf.d/*`` of the profile, with the same
  path mapping, ports of its own, its own ``base_dir`` and ``log_path``;
- the lab root's ``etc/passwd``, ``etc/aliases``, ``etc/hosts``, its users
  file (uid, gid and home filled in), its certificates, and the Gmail
  simulator's CA in ``ca-certificates.crt``.

The system resolver and the password database cannot be pointed elsewhere by
configuration, so the instance runs in a **mount namespace of its own**
(``unshare --mount --propagation private``) where the lab root's ``etc/hosts``,
a passwd file holding the lab's users, and an ``nsswitch.conf`` that says
``files`` (never DNS) are bind-mounted over the system's. Nothing outside the
temporary folder changes; the namespace ends with the last of its processes.

Postfix logs with ``maillog_file`` and Dovecot with ``log_path``; both are
read back as the lab's rsyslog would write them to ``/var/log/mail.log``
(``program[pid]: text``; Dovecot's syslog output drops the ``Info: `` level
prefix, ``src/lib/failures.c``).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from labproc import poll_until

POSTFIX = "/usr/sbin/postfix"
DOVECOT = "/usr/sbin/dovecot"
POSTMAP = "/usr/sbin/postmap"
POSTALIAS = "/usr/sbin/postalias"
WAIT = 30.0

#: Services of master.cf that listen, and the Dovecot listeners.
SMTPD_SERVICES = ("smtp", "submission")
DOVECOT_LISTENERS = ("imap", "imaps", "pop3", "pop3s")


def available() -> str | None:
    """Why the real programs cannot run here (None when they can)."""
    for path in (POSTFIX, DOVECOT, "/usr/lib/dovecot/imap", "/usr/lib/dovecot/pop3",
                 "/usr/lib/postfix/sbin/local", "/usr/bin/unshare"):
        if not os.path.exists(path):
            return f"{path} is missing (scripts/bootstrap --test installs it)"
    if os.geteuid() != 0:
        return "a throwaway Postfix + Dovecot (local(8) delivering as the lab's users) needs root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (without connecting: a
    probe would be logged, as any connection is)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            return True
    return False


def _wait_port(port: int, deadline: float) -> bool:
    return bool(poll_until(lambda: _listening(port), deadline - time.monotonic()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _without(main_cf: str, names) -> str:
    """main.cf with the definitions of ``names`` (and their continuation lines)
    commented out, so that the instance's own values are the only ones."""
    out, dropping = [], False
    for line in main_cf.splitlines():
        if line[:1].isspace() and line.strip() and not line.lstrip().startswith("#"):
            out.append("#" + line if dropping else line)
            continue
        name = line.split("=", 1)[0].strip()
        dropping = "=" in line and not line.startswith("#") and name in names
        out.append("#" + line if dropping else line)
    return "\n".join(out) + "\n"


_ABS_PATH = re.compile(r"(?<![\w./])/(?:etc|var|home)/[^\s,]*")


class RealLab:
    """Postfix + Dovecot of Debian, from the lab profile, under ``root``.

    ``lab_root``: the gponsim lab root whose files (etc/passwd, etc/aliases,
    etc/hosts, users, certificates) the instance shares; ``profile``: the
    profile folder (both run the same one); ``gmail_port``: where the Gmail
    simulator listens (``relayhost`` points there).
    """

    def __init__(self, root: Path, lab_root: Path, profile: Path, gmail_port: int | None = None):
        self.root = Path(root)
        self.lab_root = Path(lab_root)
        self.profile = Path(profile)
        self.gmail_port = gmail_port
        self.ports = {name: free_port() for name in SMTPD_SERVICES + DOVECOT_LISTENERS}
        self.postfix_log = self.root / "var/log/postfix.log"
        self.dovecot_log = self.root / "var/log/dovecot.log"
        self.postfix_pid: int | None = None
        self.dovecot_pid: int | None = None
        self._marks = (0, 0)

    # ------------------------------------------------------------ helpers

    def path(self, lab_path: str) -> Path:
        """The instance's file for a lab server path (``/etc/aliases``)."""
        return self.root / lab_path.lstrip("/")

    def map_paths(self, text: str) -> str:
        return _ABS_PATH.sub(lambda m: str(self.path(m.group(0))), text)

    def _copy_from_lab(self, lab_path: str, mode: int | None = None) -> Path:
        dest = self.path(lab_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.lab_root / lab_path.lstrip("/"), dest)
        if mode is not None:
            dest.chmod(mode)
        return dest

    def _lab_users(self) -> list[list[str]]:
        """The lab root's etc/passwd entries that are not system accounts here."""
        system = {line.split(":", 1)[0] for line in Path("/etc/passwd").read_text().splitlines()}
        users = []
        for line in (self.lab_root / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 7 and not line.startswith("#") and fields[0] not in system:
                users.append(fields)
        return users

    # ------------------------------------------------------------- files

    def _write_system_files(self) -> None:
        ns = self.root / "ns"
        ns.mkdir(parents=True)
        passwd = Path("/etc/passwd").read_text()
        for fields in self._lab_users():
            fields[5] = str(self.path(fields[5]))
            home = Path(fields[5])
            home.mkdir(parents=True, exist_ok=True)
            os.chown(home, int(fields[2]), int(fields[3]))
            passwd += ":".join(fields) + "\n"
        (ns / "passwd").write_text(passwd)
        # files only: the resolver never asks DNS, the lab's users are the system's
        (ns / "nsswitch.conf").write_text(
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\n"
            "protocols: db files\nservices: db files\n")
        shutil.copyfile(self.lab_root / "etc/hosts", ns / "hosts")
        for sub in ("var/log", "var/spool/postfix", "var/lib/postfix", "var/lib/dovecot",
                    "run/dovecot"):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        postfix = pwd.getpwnam("postfix")
        os.chown(self.path("var/lib/postfix"), postfix.pw_uid, postfix.pw_gid)
        mail = self.path("var/mail")
        mail.mkdir(parents=True)
        os.chown(mail, 0, 8)                  # root:mail 2775, as Debian has it
        mail.chmod(0o2775)

    def _write_postfix(self) -> None:
        etc = self.path("etc/postfix")
        shutil.copytree("/etc/postfix", etc, symlinks=True)
        profile_main = (self.profile / "postfix/main.cf").read_text()
        relay = re.search(r"^relayhost\s*=\s*(.*)$", profile_main, re.M)
        main = self.map_paths(profile_main)
        overrides = {
            # where this instance keeps its files (the lab server's paths, moved)
            "queue_directory": self.path("/var/spool/postfix"),
            "data_directory": self.path("/var/lib/postfix"),
            "mail_spool_directory": self.path("/var/mail"),
            "maillog_file": self.postfix_log,
            "maillog_file_prefixes": self.root,
            # the relay host's address from /etc/hosts, never DNS
            "smtp_host_lookup": "native",
        }
        sasl_passwd = (self.profile / "postfix/sasl_passwd").read_text()
        if relay and relay.group(1).strip() and self.gmail_port:
            nexthop = relay.group(1).strip()
            moved = f"{nexthop.rsplit(':', 1)[0]}:{self.gmail_port}"
            overrides["relayhost"] = moved
            # sasl_passwd is looked up by next hop, port included
            sasl_passwd = re.sub(rf"^{re.escape(nexthop)}(?=\s)", moved, sasl_passwd, flags=re.M)
        main = _without(main, overrides)
        main += "\n# gponsim differential test: paths, ports and logging of this instance\n"
        main += "".join(f"{k} = {v}\n" for k, v in overrides.items())
        (etc / "main.cf").write_text(main)
        (etc / "master.cf").write_text(self._master_cf())
        # the profile's sasl_passwd and mailname; the lab root's aliases
        (etc / "sasl_passwd").write_text(sasl_passwd)
        shutil.copyfile(self.profile / "mailname", self.path("etc/mailname"))
        subprocess.run([POSTMAP, "-c", str(etc), f"hash:{etc / 'sasl_passwd'}"], check=True)
        self._copy_from_lab("/etc/aliases")
        subprocess.run([POSTALIAS, "-c", str(etc), f"hash:{self.path('/etc/aliases')}"],
                       check=True)
        for lab_path in ("/etc/ssl/certs/ssl-cert-snakeoil.pem",
                         "/etc/ssl/certs/ca-certificates.crt"):
            self._copy_from_lab(lab_path)
        self._copy_from_lab("/etc/ssl/private/ssl-cert-snakeoil.key", 0o600)

    def _master_cf(self) -> str:
        out = []
        for line in (self.profile / "postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
                if fields[1] == "inet" and fields[0] in self.ports:
                    fields[0] = f"127.0.0.1:{self.ports[fields[0]]}"
                if fields[4] == "y":
                    fields[4] = "n"          # no chroot jail
                line = "  ".join(fields)
            out.append(self.map_paths(line))
        return "\n".join(out) + "\n"

    def _write_dovecot(self) -> None:
        etc = self.path("etc/dovecot")
        shutil.copytree(self.profile / "dovecot", etc)
        for conf in [etc / "dovecot.conf", *sorted((etc / "conf.d").iterdir())]:
            text = self.map_paths(conf.read_text())
            if conf.name == "10-master.conf":
                for name in DOVECOT_LISTENERS:
                    text = re.sub(rf"(inet_listener {name} {{)",
                                  rf"\1\n    port = {self.ports[name]}", text)
            conf.write_text(text)
        with open(etc / "dovecot.conf", "a") as fh:
            fh.write(f"\n# gponsim differential test: this instance's addresses and files\n"
                     f"listen = 127.0.0.1\nbase_dir = {self.path('/run/dovecot')}\n"
                     f"state_dir = {self.path('/var/lib/dovecot')}\n"
                     f"log_path = {self.dovecot_log}\n")
        # the lab's users file, with the uid, gid and home local(8) uses too
        accounts = {fields[0]: fields for fields in self._lab_users()}
        for fields in accounts.values():
            fields[5] = str(self.path(fields[5]))
        lines = []
        for line in (self.lab_root / "etc/dovecot/users").read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 2 and fields[0] in accounts:
                user = accounts[fields[0]]
                fields = fields[:2] + [user[2], user[3], "", user[5], "", ""]
            lines.append(":".join(fields))
        self.path("/etc/dovecot/users").write_text("\n".join(lines) + "\n")
        self._copy_from_lab("/etc/dovecot/private/dovecot.pem")
        self._copy_from_lab("/etc/dovecot/private/dovecot.key", 0o600)

    # ---------------------------------------------------------- lifecycle

    def start(self, attempts: int = 3) -> "RealLab":
        """Start both; a port that another program took between :func:`free_port`
        and the daemons' bind ("Address already in use") means new ports and
        another try."""
        for attempt in range(attempts):
            try:
                return self._start()
            except AssertionError as exc:
                if "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self.ports = {name: free_port() for name in self.ports}
                shutil.rmtree(self.root)          # (stopped: written again from the start)
        raise AssertionError("unreachable")

    def _start(self) -> "RealLab":
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self._write_system_files()
        self._write_postfix()
        self._write_dovecot()
        ns = self.root / "ns"
        script = "\n".join([
            "set -e",
            f"mount --bind {ns / 'passwd'} /etc/passwd",
            f"mount --bind {ns / 'hosts'} /etc/hosts",
            f"mount --bind {ns / 'nsswitch.conf'} /etc/nsswitch.conf",
            f"{POSTFIX} -c {self.path('/etc/postfix')} start",
            f"{DOVECOT} -c {self.path('/etc/dovecot/dovecot.conf')}",
        ])
        # the daemons keep the output open: a file, not a pipe
        with open(self.root / "start.out", "w+") as output:
            out = subprocess.run(["unshare", "--mount", "--propagation", "private",
                                  "sh", "-c", script],
                                 stdout=output, stderr=subprocess.STDOUT, text=True, timeout=60)
            output.seek(0)
            out.stderr = output.read()
        deadline = time.monotonic() + WAIT
        self.postfix_pid = self._read_pid(self.path("/var/spool/postfix/pid/master.pid"), deadline)
        self.dovecot_pid = self._read_pid(self.path("/run/dovecot/master.pid"), deadline)
        if out.returncode != 0 or self.postfix_pid is None or self.dovecot_pid is None:
            self.stop()
            raise AssertionError(f"the real Postfix/Dovecot did not start: {out.stderr}\n"
                                 f"{self.raw_logs()}")
        for name, port in self.ports.items():
            if not _wait_port(port, deadline):
                self.stop()
                raise AssertionError(f"{name} does not listen on {port}\n{self.raw_logs()}")
        self.settle()
        return self

    @staticmethod
    def _read_pid(path: Path, deadline: float) -> int | None:
        def pid() -> int | None:
            try:
                return int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
        return poll_until(pid, deadline - time.monotonic())

    def stop(self) -> None:
        """SIGTERM to the two masters we started (``postfix stop`` does the same)."""
        for pid in (self.postfix_pid, self.dovecot_pid):
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + WAIT
        for pid in (self.postfix_pid, self.dovecot_pid):
            if pid is not None:
                poll_until(lambda: not _alive(pid), deadline - time.monotonic())
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.postfix_pid = self.dovecot_pid = None

    # ------------------------------------------------------------- logs

    def raw_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.postfix_log, self.dovecot_log)
                         if p.exists())

    def settle(self) -> None:
        """Forget what was logged so far (start-up): the next lines are the test's."""
        self._marks = tuple(p.stat().st_size if p.exists() else 0
                            for p in (self.postfix_log, self.dovecot_log))

    def maillog(self) -> list[str]:
        """Lines logged since :meth:`settle`, as ``program[pid]: text`` (rsyslog's
        view of them, without the time stamp and host name)."""
        lines = []
        postfix, dovecot = (self._tail(p, m) for p, m in
                            zip((self.postfix_log, self.dovecot_log), self._marks))
        for line in postfix:
            # "Mmm dd hh:mm:ss host program[pid]: text"
            parts = line.split(" ", 4)
            line = parts[4] if len(parts) == 5 else line
            if self.gmail_port:
                # the relay's port is the simulator's here; the lab's is 587
                line = line.replace(f"]:{self.gmail_port}", "]:587")
            lines.append(line)
        for line in dovecot:
            # "Mmm dd hh:mm:ss prefix: Level: text" -> "dovecot[pid]: prefix: text"
            text = line[16:] if len(line) > 16 else line
            text = re.sub(r"^((?:[^ ]+: )??)Info: ", r"\1", text, count=1)
            lines.append(f"dovecot[{self.dovecot_pid or 0}]: {text}")
        return lines

    @staticmethod
    def _tail(path: Path, mark: int) -> list[str]:
        if not path.exists():
            return []
        with open(path, "rb") as fh:
            fh.seek(mark)
            return fh.read().decode("utf-8", "replace").splitlines()
