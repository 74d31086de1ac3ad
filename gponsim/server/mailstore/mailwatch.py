"""Being told when an mbox file changes: inotify where there is one, polling elsewhere.

The mbox folder's :meth:`~gponsim.server.mailstore.mbox.MboxFolder.watch` (what a
selected IMAP folder subscribes with) uses :meth:`MailWatch.watch`; the callback
runs (in the reactor) soon after a writer has *finished* with the file: the
mbox closed after writing (local(8)'s delivery), renamed over (a rewrite by
gponsim or Dovecot), created, or its dotlock removed. Events of one burst are
coalesced into one call per subscriber.

One inotify instance per reactor watches each mail directory once, whatever
the number of sessions. Where inotify is unavailable (not Linux, or the
per-user instance limit reached) :meth:`MailWatch.watch` returns None and the
caller keeps polling.
"""

from __future__ import annotations

import os
from typing import Callable

#: Delay to gather one writer's events (close, dotlock removal) into one check.
COALESCE = 0.005

_WATCHES: dict[int, "MailWatch"] = {}


class MailWatch:
    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self._notifier = None
        self._failed = False
        self._dirs: dict[str, dict[str, set]] = {}   # directory -> file name -> callbacks
        self._pending: dict[Callable, object] = {}

    @classmethod
    def for_reactor(cls, reactor) -> "MailWatch":
        watch = _WATCHES.get(id(reactor))
        if watch is None or watch.reactor is not reactor:
            watch = _WATCHES[id(reactor)] = cls(reactor)
        return watch

    @classmethod
    def release(cls, reactor) -> None:
        """Forget ``reactor``'s watcher, if it has one: pending calls are
        cancelled and its inotify descriptor closed (a reactor that is done
        with, such as a test's in-memory one)."""
        watch = _WATCHES.pop(id(reactor), None)
        if watch is None or watch.reactor is not reactor:
            return
        for call in watch._pending.values():
            if call.active():
                call.cancel()
        watch._pending.clear()
        watch._dirs.clear()
        if watch._notifier is not None:
            from twisted.internet.main import CONNECTION_DONE
            from twisted.python.failure import Failure
            watch._notifier.connectionLost(Failure(CONNECTION_DONE))
            watch._notifier = None
        watch._failed = True

    def _start(self) -> bool:
        if self._notifier is not None:
            return True
        if self._failed:
            return False
        try:
            from twisted.internet import inotify
            self._notifier = inotify.INotify(self.reactor)
            self._notifier.startReading()
            self._inotify = inotify
        except Exception:            # ImportError off Linux, INotifyError at the limit
            self._failed = True
            return False
        return True

    def watch(self, path: str | os.PathLike, callback: Callable[[], None]):
        """Call ``callback()`` when ``path`` may have changed; a handle for
        :meth:`unwatch`, or None when only polling can tell."""
        if not self._start():
            return None
        path = os.fspath(path)
        directory, name = os.path.split(path)
        names = self._dirs.get(directory)
        if names is None:
            from twisted.python.filepath import FilePath
            ino = self._inotify
            mask = (ino.IN_CLOSE_WRITE | ino.IN_MOVED_TO | ino.IN_CREATE | ino.IN_DELETE
                    | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF)
            try:
                self._notifier.watch(FilePath(directory), mask=mask, callbacks=[self._event])
            except Exception:
                return None
            names = self._dirs[directory] = {}
        names.setdefault(name, set()).add(callback)
        return (directory, name, callback)

    def unwatch(self, handle) -> None:
        if handle is None:
            return
        directory, name, callback = handle
        names = self._dirs.get(directory)
        if not names:
            return
        callbacks = names.get(name)
        if callbacks is not None:
            callbacks.discard(callback)
            if not callbacks:
                del names[name]
        call = self._pending.pop(callback, None)
        if call is not None and call.active():
            call.cancel()
        if not names:
            del self._dirs[directory]
            from twisted.python.filepath import FilePath
            try:
                self._notifier.ignore(FilePath(directory).asBytesMode())
            except Exception:        # not watched any more, or the notifier is gone
                pass

    def _event(self, _watch, filepath, _mask) -> None:
        name = filepath.basename()
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        directory = os.fspath(filepath.dirname())
        if isinstance(directory, bytes):
            directory = directory.decode("utf-8", "surrogateescape")
        names = self._dirs.get(directory)
        if not names:
            return
        target = name[:-5] if name.endswith(".lock") else name
        for callback in list(names.get(target, ())):
            if callback not in self._pending:
                self._pending[callback] = self.reactor.callLater(COALESCE, self._fire, callback)

    def _fire(self, callback) -> None:
        self._pending.pop(callback, None)
        callback()
