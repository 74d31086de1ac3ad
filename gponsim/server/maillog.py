"""The lab's ``/var/log/mail.log``: syslog lines exactly as Debian writes them.

Debian's rsyslog uses the "traditional" file format::

    Nov 27 23:40:46 mail postfix/smtpd[2101]: connect from unknown[127.0.0.1]

``%b %e %H:%M:%S`` in local time (``%e``: the day padded with a space, so
``Jan  1``), the short host name, the program tag with the process id, and
the message. rsyslog escapes control characters in the message as ``#ooo``
(octal: a TAB becomes ``#011``), so one event is always one line.

Students ``tail -f`` this file while they work: every line is written with a
single ``write(2)`` on a file opened with ``O_APPEND``, so lines from several
threads never interleave and are visible at once (no buffering).

Postfix runs every component as its own process, so the log shows different
pids for smtpd, cleanup, qmgr and local. gponsim runs in one process;
:func:`pid_for` gives each component a stable fake pid (our pid plus a fixed
offset) so the log reads like the real server's.

This module also formats the delivery status line that every Postfix
delivery agent writes (``log_adhoc`` in Postfix): :func:`format_delay` and
:func:`delivery_line`.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

from gponsim.server.postfix.address import quote_822_local

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: Offsets added to our own pid, in roughly the order Postfix starts its
#: processes (master first, qmgr/pickup at boot, smtpd and friends on demand).
_PID_OFFSETS = {
    "master": 0,
    "qmgr": 3,
    "pickup": 4,
    "tlsmgr": 7,
    "anvil": 9,
    "smtpd": 11,
    "submission/smtpd": 12,
    "proxymap": 13,
    "trivial-rewrite": 14,
    "cleanup": 15,
    "local": 18,
    "error": 19,
    "retry": 19,
    "bounce": 20,
    "smtp": 22,
    "dovecot": 30,
    "auth": 31,
    "imap-login": 32,
    "imap": 33,
    "pop3-login": 34,
    "pop3": 35,
}


_our_pid = [os.getpid()]      # getpid() is a system call; kept current across fork()
os.register_at_fork(after_in_child=lambda: _our_pid.__setitem__(0, os.getpid()))


@functools.lru_cache(maxsize=256)
def _pid_offset(component: str) -> int:
    name = component.split("/", 1)[1] if component.startswith("postfix/") else component
    offset = _PID_OFFSETS.get(name)
    return offset if offset is not None else 40 + zlib.crc32(name.encode()) % 50


def pid_for(component: str) -> int:
    """A stable fake pid for a Postfix/Dovecot component.

    ``component`` is the process name as it appears in the log, with or
    without the ``postfix/`` prefix (``smtpd``, ``postfix/submission/smtpd``,
    ``cleanup``...). The same name always gives the same pid within one run.
    """
    return _our_pid[0] + _pid_offset(component)


def syslog_timestamp(when: float) -> str:
    """``Nov 27 23:40:46`` / ``Jan  1 09:05:00`` (local time, C locale)."""
    return _second_stamp(int(when))


@functools.lru_cache(maxsize=4)
def _second_stamp(second: int) -> str:
    tm = time.localtime(second)
    return (f"{_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} "
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}")


def _escape_controls(text: str) -> str:
    """rsyslog's $EscapeControlCharactersOnReceive: ``\\n`` -> ``#012``."""
    if text.isprintable():
        return text
    return "".join(f"#{ord(c):03o}" if (ord(c) < 0x20 or ord(c) == 0x7F) else c
                   for c in text)


class MailLog:
    """Appends syslog-style lines to ``<lab root>/var/log/mail.log``.

    ``path=None`` keeps no file (a lab run with logging off still works).
    Thread-safe; every line is flushed to the file as it is written.
    """

    def __init__(self, path: str | Path | None, hostname: str = "mail",
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self.hostname = hostname.split(".", 1)[0] or "mail"
        self.clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def format(self, program: str, pid: int, text: str, when: float | None = None) -> str:
        stamp = syslog_timestamp(self.clock() if when is None else when)
        return f"{stamp} {self.hostname} {program}[{pid}]: {_escape_controls(text)}"

    def write(self, program: str, pid: int, text: str) -> str:
        """Write one line; returns it (without the newline)."""
        line = self.format(program, pid, text)
        data = (line + "\n").encode("utf-8", "replace")
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, data)
        return line

    def postfix(self, component: str, text: str, syslog_name: str = "postfix") -> str:
        """``write`` for a Postfix daemon: ``postfix(cleanup)`` -> ``postfix/cleanup[pid]``."""
        return self.write(f"{syslog_name}/{component}", pid_for(component), text)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "MailLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# Delivery status lines (Postfix src/global/log_adhoc.c, src/util/format_tv.c)

def format_delay(seconds: float, sig_digits: int = 2, max_decimals: int = 2) -> str:
    """A delay as Postfix logs it: two significant digits, at most two decimals.

    Large values are rounded to whole seconds (``12``), small ones keep two
    significant digits (``3.1``, ``0.03``) and trailing zeros are dropped;
    anything under the 0.01 s resolution prints as ``0``.
    (``delay_logging_resolution_limit = 2``.)
    """
    micros = max(0, round(seconds * 1_000_000))
    sec, usec = divmod(micros, 1_000_000)
    resolution = 1_000_000 // 10 ** max_decimals
    width = 10 ** sig_digits
    if resolution < 1_000_000:
        if sec > 0:
            # Each integer digit uses up one of the significant digits.
            scale = 1
            while sec >= scale and scale <= width // 10:
                scale *= 10
            resolution = (1_000_000 // width) * scale
        else:
            while usec >= width * resolution:
                resolution *= 10
    if resolution > 1:
        usec += resolution // 2
        if usec >= 1_000_000:
            sec += 1
            usec -= 1_000_000
    out = str(sec)
    if usec >= resolution:
        digits = []
        rem, unit = usec, 100_000
        while rem >= resolution and unit > 0:
            digits.append(str(rem // unit))
            rem %= unit
            unit //= 10
        out += "." + "".join(digits)
    return out


def delivery_line(qid: str, to: str, *, relay: str, delays: tuple[float, float, float, float],
                  dsn: str, status: str, reason: str, orig_to: str | None = None) -> str:
    """``QID: to=<a>, [orig_to=<b>, ]relay=R, delay=T, delays=a/b/c/d, dsn=X, status=S (why)``.

    ``delays`` are: before the active queue, in the queue manager, connection
    setup, transmission; ``delay`` is their sum (end-to-end).
    ``orig_to`` is shown only when it differs from ``to`` (case-insensitive).
    Both are written as RFC 5322 has them (a local part quoted when it needs
    it: ``""@gponlab.local``).
    """
    parts = [f"{qid}: to=<{quote_822_local(to)}>"]
    if orig_to and orig_to.lower() != to.lower():
        parts.append(f"orig_to=<{quote_822_local(orig_to)}>")
    parts.append(f"relay={relay}")
    parts.append(f"delay={format_delay(sum(delays))}")
    parts.append("delays=" + "/".join(format_delay(d) for d in delays))
    parts.append(f"dsn={dsn}")
    parts.append(f"status={status} ({reason})")
    return ", ".join(parts)
