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
