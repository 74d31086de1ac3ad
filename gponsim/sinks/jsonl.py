"""The JSON-lines recorder (``--steps FILE``): one ``Step.to_json()`` per line."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import IO

from gponsim.steps import Step


def drop_cut_line(path: str | Path) -> int:
    """Drop a last line cut short (a recorder killed in the middle of a write: the file
    does not end with a newline), so what is appended next starts on a line of its own.
    Returns the number of bytes dropped (0: the file was whole, or there is none)."""
    path = Path(path)
    try:
        fh = open(path, "r+b")
    except FileNotFoundError:
        return 0
    with fh:
        size = fh.seek(0, 2)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        # Look back in blocks for the last newline; everything after it is the cut line.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            fh.seek(start)
            block = fh.read(end - start)
            at = block.rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        else:
            keep = 0
        fh.truncate(keep)
        return size - keep


class JsonlRecorder:
    """Sink writing one JSON object per Step (``--steps FILE``).

    Writes are buffered and flushed at most ``flush_interval`` seconds after
    a Step arrives (a small thread does it), so a lesson or a test reading
    the file while the lab runs sees every Step almost at once, and a busy
    lab does not pay a system call per Step.
    """

    def __init__(self, path: str | Path, reveal: bool = False, append: bool = True,
                 flush_interval: float = 0.1) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        #: bytes of a line cut by a crash that were dropped before appending
        self.dropped = drop_cut_line(self.path) if append else 0
        # A line that was not valid UTF-8 on the wire keeps its bytes as lone surrogates
        # ("\udcff"); they are written as JSON escapes, so the file stays UTF-8 and JSON.
        self._fh: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8",
                                 errors="backslashreplace")
        self.reveal = reveal
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: list[Step] = []
        self._dirty = threading.Event()
        self._closing = False
        self._interval = flush_interval
        self._flusher = threading.Thread(target=self._flush_loop, name="gponsim-jsonl", daemon=True)
        self._flusher.start()

    def step(self, step: Step) -> None:
        # Encoding waits for the flusher thread: the lab's reactor only queues the Step.
        # (Steps are not changed after they are emitted.) Only the first Step of a
        # burst wakes the flusher: the others would pay for waking a sleeping thread.
        with self._lock:
            first = not self._pending
            self._pending.append(step)
        if first:
            self._dirty.set()

    def _flush_loop(self) -> None:
        while not self._closing:
            self._dirty.wait()
            if self._closing:
                return
            time.sleep(self._interval)      # gather a burst of Steps into one write
            self._dirty.clear()
            self.flush()

    def flush(self) -> None:
        with self._write_lock:       # one flush at a time keeps the file in order
            with self._lock:         # held only to take the batch: step() never waits on encoding
                pending, self._pending = self._pending, []
            if self._fh.closed or not pending:
                return
            reveal = self.reveal
            self._fh.write("".join(s.to_json(reveal) + "\n" for s in pending))
            self._fh.flush()

    def close(self) -> None:
        self._closing = True
        self._dirty.set()
        self.flush()
        with self._write_lock:
            if not self._fh.closed:
                self._fh.close()
