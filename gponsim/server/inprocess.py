"""Connections between two services of the one lab process.

On the real server Postfix's lmtp(8) and Dovecot's lmtp are two programs, and
each writes its own log lines. In gponsim both ends of such a connection may
live in this process, and then each line must be narrated once, in one
session. The connecting side :func:`announce`-s the Unix socket it is about
to connect to, with its session id; the listening side, when it accepts a
connection on that socket, :func:`claim`-s the announcement: that connection
comes from the lab itself (it then leaves the wire Steps to the client and
uses the client's session for its own). A connection nobody announced — real
Postfix connecting to the lab's socket — is narrated by the listening side.

Connections on one listening socket are accepted in the order they were
made, so announcements are claimed in order (first in, first out).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path

_lock = threading.Lock()
_announced: dict[str, deque] = {}


def _key(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(Path(path)))


def announce(path: str | os.PathLike, session: str) -> tuple[str, object]:
    """The lab is about to connect to the socket ``path`` as ``session``;
    returns a handle for :func:`withdraw`."""
    token = object()
    key = _key(path)
    with _lock:
        _announced.setdefault(key, deque()).append((token, session))
    return key, token


def withdraw(handle: tuple[str, object]) -> None:
    """The announced connection failed: forget it."""
    key, token = handle
    with _lock:
        queue = _announced.get(key)
        if queue is None:
            return
        for item in list(queue):
            if item[0] is token:
                queue.remove(item)
        if not queue:
            _announced.pop(key, None)


def claim(path: str | os.PathLike) -> str | None:
    """A connection arrived on ``path``: the session of the lab's client that
    made it, or None (someone outside the lab)."""
    key = _key(path)
    with _lock:
        queue = _announced.get(key)
        if not queue:
            return None
        _token, session = queue.popleft()
        if not queue:
            _announced.pop(key, None)
        return session
