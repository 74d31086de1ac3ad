"""Postfix short queue ids (``enable_long_queue_ids = no``, the default).

A queue id is five uppercase hex digits of the microseconds of the time the
queue file was created, followed by the file's inode number in uppercase
hex (Postfix ``src/global/mail_queue.h``, ``MQID_SH_*``): ``4F1A2C0D9E`` is a
file created at ``.324002`` s (``4F1A2``) whose inode is 0xC0D9E. The id *is*
the queue file's name, unique while the file exists because no two live
files share an inode.

Hashed queues (``hash_queue_names = deferred, defer``, depth 1) keep a file
under a subdirectory named after the first character of its id:
``deferred/4/4F1A2C0D9E``.
"""

from __future__ import annotations

import re

_SHORT_ID = re.compile(r"[0-9A-F]{6,}\Z")


def short_queue_id(microseconds: int, inode: int) -> str:
    """``%05X`` of the microseconds + ``%X`` of the inode number."""
    if not 0 <= microseconds < 1_000_000:
        raise ValueError(f"microseconds out of range: {microseconds}")
    return f"{microseconds:05X}{inode:X}"


def is_queue_id(name: str) -> bool:
    """True for a name that looks like a short queue id."""
    return bool(_SHORT_ID.match(name))


def hash_dir(qid: str, depth: int = 1) -> str:
    """The hashed subdirectory path for ``qid`` (``"4"`` or ``"4/F"``)."""
    return "/".join(qid[:depth])
