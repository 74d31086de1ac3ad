"""What a killed lab can leave in a mail folder, and how it is recognised.

Writers of a mail folder (a mailbox rewrite, local(8)'s dotlock) first write
a temporary file named for their process, ``.<name>.gponsim-<pid>.tmp``, and
then rename or link it into place. A process killed in between leaves that
file behind; :func:`remove_stale_temporaries` deletes those of processes that
are gone (the lab does it at start, a folder's next writer for its own name).
:func:`pid_alive` also tells a dotlock whose owner is gone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.gponsim-(?P<pid>\d+)\.tmp$")


def temporary_name(path: Path) -> str:
    """The name of this process's temporary file for ``path`` (same folder)."""
    return f".{path.name}.gponsim-{os.getpid()}.tmp"


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Delete the temporary files a killed rewrite left in ``folder`` (only
    those of ``name`` when given; only those of processes that are gone
    unless ``name`` is given, whose caller holds that folder's lock)."""
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry)
        if not m or (name is not None and m.group("name") != name):
            continue
        if name is None and pid_alive(int(m.group("pid"))):
            continue
        try:
            os.unlink(folder / entry)
            removed.append(folder / entry)
        except OSError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """True unless no process ``pid`` exists (this one counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
