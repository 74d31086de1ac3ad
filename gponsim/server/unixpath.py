"""Unix socket paths of any length.

A Unix socket address holds at most 108 bytes, and a lab root deep in a
student's home (or a lesson's run folder) easily makes
``<root>/var/spool/postfix/private/auth`` longer. On Linux a directory can be
named through an open descriptor, ``/proc/self/fd/N``, so a long path becomes
a short one that means the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Room left for the kernel's limit (108 bytes with the final NUL), with a margin.
LIMIT = 100
_dirs: dict[Path, int] = {}


def socket_address(path: str | os.PathLike) -> str:
    """``path`` itself when short enough, else ``/proc/self/fd/N/<name>``."""
    path = Path(path)
    text = str(path)
    if len(os.fsencode(text)) <= LIMIT or not Path("/proc/self/fd").is_dir():
        return text
    folder = path.parent.resolve()
    fd = _dirs.get(folder)
    if fd is None:
        # Kept open for the life of the process: one per socket folder.
        fd = _dirs[folder] = os.open(folder, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}"


def private_folder(folder: str | os.PathLike, owner: str = "postfix") -> Path:
    """Postfix's ``private/`` folder of its queue (``postfix-files``:
    ``$queue_directory/private:d:$mail_owner:-:700``): mode 0700, and, run
    as root, owned by the ``postfix`` user when it exists (its group left as
    it is: root, as on Debian), so only Postfix's daemons (and root) reach
    the sockets inside (Dovecot's auth and LMTP)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    if os.geteuid() == 0:
        import pwd

        try:
            entry = pwd.getpwnam(owner)
            os.chown(folder, entry.pw_uid, -1)
        except (KeyError, OSError):     # no postfix user; a user namespace's "root"
            pass
    return folder


def give_socket(path: str | os.PathLike, mode: int, user: str = "", group: str = "") -> None:
    """A listener's mode, and (run as root) its ``user`` and ``group`` when
    they exist, as Dovecot sets its ``unix_listener``s. (No file: a test's
    in-memory reactor listened, nothing to set.)"""
    if not os.path.lexists(path):
        return
    os.chmod(path, mode)
    if os.geteuid() != 0 or not (user or group):
        return
    import grp
    import pwd

    def lookup(getter, name, attr):
        try:
            return getattr(getter(name), attr) if name else -1
        except KeyError:
            return -1
    uid = lookup(pwd.getpwnam, user, "pw_uid")
    gid = lookup(grp.getgrnam, group, "gr_gid")
    if uid != -1 or gid != -1:
        try:
            os.chown(path, uid, gid)
        except OSError:                 # a user namespace's "root" cannot
            pass


def socket_folder(path: str | os.PathLike) -> Path:
    """Make the folder of a socket about to be created: Postfix's ``private/``
    (0700, the postfix user's) when that is where it goes, else a plain one."""
    folder = Path(path).parent
    if folder.name == "private" and folder.parent.name == "postfix":
        return private_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
