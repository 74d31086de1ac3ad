"""The few Linux system calls the lab network needs, through ctypes.

- :func:`setns` / :func:`in_netns`: move *the calling thread* into a host's network
  namespace (a socket made there stays there), and back;
- :func:`spawn_holder`: a small process that owns one new network namespace (a
  "host"); it dies with its parent, and the namespace with it;
- :func:`enter_host`: what ``ip netns exec`` does, for a process about to run a
  command in a host: its user namespace (rootless), its network namespace, a
  mount namespace of its own with the host's /etc/resolv.conf and /etc/hosts
  bound over the computer's, its host name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


class KernelError(OSError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise KernelError(err, f"{what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")


def setns(path: str | os.PathLike, nstype: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


@contextlib.contextmanager
def in_netns(path: str | os.PathLike):
    """Run the block with the calling thread in the network namespace ``path``.

    Sockets created inside keep that namespace after the block. Only this
    thread moves; it comes back to where it was, even on an error.
    """
    import threading

    back = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(path, CLONE_NEWNET)
        try:
            yield
        finally:
            _check(_libc.setns(back, CLONE_NEWNET), "setns back")
    finally:
        os.close(back)


def spawn_holder() -> int:
    """Fork a process that makes a new network namespace and just waits in it.

    The namespace is ``/proc/<pid>/ns/net``. The holder is killed when its parent
    dies (PR_SET_PDEATHSIG), so no namespace outlives the network that made it
    (unless it was also given a name with ``ip netns attach``).
    """
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:                                # the holder
        try:
            os.close(read_end)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)
            unshare(CLONE_NEWNET)
            os.write(write_end, b"ok")
            os.close(write_end)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.execvp("sleep", ["sleep", "infinity"])
        except BaseException as exc:            # noqa: BLE001 - reported through the pipe
            try:
                os.write(write_end, f"error: {exc}".encode()[:500])
            finally:
                os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        said = fh.read().decode(errors="replace")
    if said != "ok":
        os.waitpid(pid, 0)
        raise KernelError(errno.EPERM, f"cannot make a network namespace: {said or 'holder died'}")
    return pid


def enter_host(netns: str, *, userns: str | None = None, etc: Path | None = None,
               hostname: str | None = None) -> None:
    """Move this (single-threaded) process into a host, as ``ip netns exec`` does.

    ``userns``: the rootless network's user namespace, entered first (there this
    process is root). Then the host's network namespace, a private mount
    namespace where every file of ``etc`` (resolv.conf, hosts) is bound over
    /etc's own and /sys shows the host's interfaces, and a UTS namespace with the
    host's name. Nothing of this is seen outside the process and its children.
    """
    if userns:
        setns(userns, CLONE_NEWUSER)
    setns(netns, CLONE_NEWNET)
    unshare(CLONE_NEWNS | CLONE_NEWUTS)
    mount(None, "/", None, MS_REC | MS_SLAVE)
    if etc is not None and etc.is_dir():
        for item in sorted(etc.iterdir()):
            target = Path("/etc") / item.name
            if target.exists():
                mount(str(item), str(target), None, MS_BIND)
    _libc.umount2(b"/sys", MNT_DETACH)          # a fresh /sys lists this host's interfaces
    with contextlib.suppress(OSError):
        mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if hostname:
        sethostname(hostname)
