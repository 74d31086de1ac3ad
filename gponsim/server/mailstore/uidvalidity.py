"""A user's next UIDVALIDITY, kept as Dovecot 2.3 keeps it
(``src/lib-storage/mailbox-uidvalidity.c``, ``mailbox_uidvalidity_next()``).

Dovecot's mbox storage asks for one when it syncs a mailbox whose file is
empty and whose index has none yet: a mailbox just created (at its first
SELECT, STATUS or APPEND, not at CREATE), a missing or empty INBOX. (A file
that holds messages but no ``X-IMAPbase:``, such as a first delivery by
local(8), takes the current time instead, ``mbox-sync-parse.c``.) The file
is ``dovecot-uidvalidity`` in the mailbox list's control directory, which
for ``mbox:~/mail`` is ``~/mail/.imap``:

- ``dovecot-uidvalidity`` holds the last value given, ``%08x`` with no
  newline (mode: the mail directory's, without execute bits);
- an empty file ``dovecot-uidvalidity.<the same %08x>`` (mode 0444) is the
  lock-free counter: the next value is the one whose rename from
  ``.<value>`` to ``.<value + 1>`` succeeds, so two sessions never get the
  same one (the loser finds the file gone and tries the next name).

When the main file is missing or unreadable, or the renames fail ten times,
the folder is scanned for ``dovecot-uidvalidity.<hex>`` files: the highest
is renamed one up (the lowest of two or more is deleted); with none, a new
one is made from the current time (or the last such value plus one, if that
is not smaller: in Dovecot a per-process counter, here one for the lab's
process). Nothing here fails a sync: a value is always returned.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

#: The file's name (``MBOX_UIDVALIDITY_FNAME``) and its folder under the mail root.
FILE_NAME = "dovecot-uidvalidity"
CONTROL_DIR = ".imap"

RETRY_COUNT = 10

_fallback_lock = threading.Lock()
_fallback_last = 0


def _fallback() -> int:
    """The current time, or one more than the last fallback if that is not
    smaller (``mailbox_uidvalidity_next_fallback()``)."""
    global _fallback_last
    with _fallback_lock:
        now = int(time.time()) & 0xFFFFFFFF
        _fallback_last = now if _fallback_last < now else _fallback_last + 1
        return _fallback_last


def _hex(value: int) -> str:
    return f"{value & 0xFFFFFFFF:08x}"


def _parse_hex(text: str) -> int | None:
    """``str_to_uint32_hex()``: hex digits only, at least one, 32 bits."""
    if not text or any(c not in "0123456789abcdefABCDEF" for c in text):
        return None
    value = int(text, 16)
    return value if value <= 0xFFFFFFFF else None


def _rename_up(path: Path, value: int) -> int | None:
    """Rename ``<path>.<value>`` one up, trying the next names while the one
    to rename is gone (another session took it); the value it now names, or
    None."""
    for _ in range(RETRY_COUNT):
        src = f"{path}.{_hex(value)}"
        value = (value + 1) & 0xFFFFFFFF
        try:
            os.rename(src, f"{path}.{_hex(value)}")
            return value
        except FileNotFoundError:
            continue            # possibly a race: try the next value
        except OSError:
            return None
    return None


def _file_mode(control_dir: Path) -> int:
    """The mode Dovecot gives files it creates in the control directory: the
    mail root's permissions without execute bits
    (``mailbox_list_get_root_permissions()``)."""
    try:
        return control_dir.parent.stat().st_mode & 0o666
    except OSError:
        return 0o600


def _create(path: str, mode: int) -> int:
    """A new file with exactly ``mode`` (set after the open: the umask is the
    whole process's, and other threads create files meanwhile)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)
    return fd


def _write(path: Path, value: int) -> None:
    """``dovecot-uidvalidity`` now says ``value`` (written over its start, as pwrite does)."""
    try:
        try:
            fd = _create(os.fspath(path), _file_mode(path.parent))
        except FileExistsError:
            fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        os.pwrite(fd, _hex(value).encode(), 0)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rescan(path: Path) -> int:
    directory = path.parent
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        # made as Dovecot makes the control directory: the mail root's permissions
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(exist_ok=True)
            directory.chmod(directory.parent.stat().st_mode & 0o777)
            names = os.listdir(directory)
        except OSError:
            return _fallback()
    except OSError:
        return _fallback()
    prefix = path.name + "."
    values = [v for v in (_parse_hex(n[len(prefix):]) for n in names if n.startswith(prefix))
              if v is not None]
    if not values or max(values) == 0:
        # no counter file: start one
        for _ in range(RETRY_COUNT):
            value = _fallback()
            try:
                fd = _create(f"{path}.{_hex(value)}", 0o444)
            except FileExistsError:
                continue
            except OSError:
                return value
            os.close(fd)
            break
        else:
            return value
        _write(path, value)
        return value
    low, high = min(values), max(values)
    if low != high:
        # duplicate counter files: delete the oldest
        try:
            os.unlink(f"{path}.{_hex(low)}")
        except OSError:
            pass
    value = _rename_up(path, high)
    if value is None:
        return _fallback()
    _write(path, value)
    return value


def uidvalidity_next(path: Path) -> int:
    """The next UIDVALIDITY of the mailbox list whose counter is ``path``
    (``<mail root>/.imap/dovecot-uidvalidity``), recorded there."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return _rescan(path)
    try:
        try:
            data = os.read(fd, 8)
        except OSError:
            return _rescan(path)
        # read_full(): fewer than 8 bytes is a broken value too
        value = _parse_hex(data.decode("ascii", "replace").split("\0", 1)[0])
        if len(data) < 8 or value is None:
            return _rescan(path)            # broken value
        value = _rename_up(path, value)
        if value is None:
            return _rescan(path)
        try:
            os.pwrite(fd, _hex(value).encode(), 0)
        except OSError:
            pass
        return value
    finally:
        os.close(fd)
