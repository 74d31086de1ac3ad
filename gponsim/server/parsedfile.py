"""A lab file kept parsed, and read again when it changes.

The lab's ``etc/passwd``, ``etc/aliases`` and ``etc/hosts`` are edited by
students while the lab runs; like Postfix noticing a changed lookup table,
the next lookup sees the new contents. The file's identity (mtime, size,
inode) is checked at each use; a missing or unreadable file parses as empty.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class ParsedFile(Generic[T]):
    """``parse(text)`` of ``path``, current at each :meth:`get`. Thread-safe:
    hold :attr:`lock` around a :meth:`get` and what depends on it."""

    def __init__(self, path: str | os.PathLike, parse: Callable[[str], T]) -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self._parse = parse
        self._identity: tuple | None = None
        self._value: T = parse("")

    def get(self) -> T:
        with self.lock:
            try:
                st = os.stat(self.path)
                identity = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                identity = None
            if identity != self._identity:
                try:
                    text = self.path.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    text = ""
                self._value, self._identity = self._parse(text), identity
            return self._value

    def changed(self) -> None:
        """The file was rewritten by this process: read it at the next use."""
        self._identity = None
