"""Capturing without root: a user and network namespace of the process's own (Linux).

An unprivileged user may create a user namespace, in which it is root, together
with a network namespace that namespace owns. There it may open capture
sockets (what tcpdump does), but only on the namespace's own interfaces: a
loopback that nobody else uses. Whatever the process does afterwards — a
lesson's lab, its clients, the capture — happens in there, and nothing of the
computer's other traffic can be seen. This is what ``unshare --user
--map-root-user --net`` does, done on the running process.

The kernel refuses it where unprivileged user namespaces are switched off
(``kernel.unprivileged_userns_clone = 0``, ``user.max_user_namespaces = 0``),
restricted (Ubuntu's ``kernel.apparmor_restrict_unprivileged_userns``), inside
a chroot, or in a process that already runs threads. :func:`unavailable`
tries it first in a throw-away child process, so a refusal never leaves this
process half-moved.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import sys
import threading

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
ETH_P_ALL = 0x0003


class NamespaceUnavailable(Exception):
    """The kernel (or this process's state) does not allow a namespace of its own."""


def enter() -> None:
    """Move this process into a new user + network namespace, as its root, loopback up.

    Afterwards the process can capture on ``lo`` and listen on any port there.
    Only for a process without threads (the kernel refuses others). Raises
    :class:`NamespaceUnavailable` saying why not.
    """
    if not sys.platform.startswith("linux"):
        raise NamespaceUnavailable("user and network namespaces are a Linux feature")
    if threading.active_count() > 1:
        raise NamespaceUnavailable("this process already runs threads")
    uid, gid = os.geteuid(), os.getegid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceUnavailable(f"the kernel refused a user namespace ({errno.errorcode.get(err, err)}: "
                                   f"{os.strerror(err)})")
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
        _loopback_up()
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
    except OSError as exc:
        raise NamespaceUnavailable(f"the new namespace gives no capture rights ({exc.strerror or exc})") from exc


def unavailable() -> str | None:
    """None when :func:`enter` works here; else the reason, as the kernel gave it.

    Tried in a child process (a fork that enters, then exits), so this process
    stays where it is whatever happens.
    """
    if not sys.platform.startswith("linux"):
        return "user and network namespaces are a Linux feature"
    if threading.active_count() > 1:
        return "this process already runs threads"
    return refused_in_child(enter)


def refused_in_child(attempt) -> str | None:
    """Run ``attempt()`` in a forked child that then exits (this process stays
    where it is): None when it worked, else the exception's text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: try, report, vanish
        code = 0
        try:
            os.close(read_end)
            attempt()
        except BaseException as exc:              # noqa: BLE001 - reported to the parent
            os.write(write_end, str(exc).encode()[:1000])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        reason = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return reason or f"the trial in a child process ended with status {status}"

def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _loopback_up() -> None:
    """``ip link set lo up``: a new network namespace starts with its loopback down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
