"""The mailbox interface: what IMAP, POP3 and LMTP ask of a user's mail.

Dovecot's protocols never touch a mailbox format; they talk to lib-storage
(``src/lib-storage/mail-storage.h``), and mbox, Maildir or dbox sit behind
it. gponsim keeps the same seam: :mod:`gponsim.server.dovecot` imports this
module and :mod:`.location` (which opens a user's store from
``mail_location``), never a format's module. A format is one module that
subclasses :class:`MailStore` and :class:`Folder` (:mod:`.mbox` today) and is
named in :data:`.location.FORMATS`.

- :class:`MailStore`: one user's folders (list, create, delete, rename,
  subscriptions, open one);
- :class:`Folder`: one folder, its messages, UIDs and flags; every call sees
  the folder as it is now (what another session or a delivery changed
  included) and changes it at once;
- :class:`FolderState` and :class:`Message`: what :meth:`Folder.sync`
  returns, a snapshot the caller may keep and change;
- the IMAP flag names, and :class:`StoreError` for a refused operation.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Protocol, Sequence

#: IMAP system flags (RFC 3501 §2.3.2).
SEEN, ANSWERED, FLAGGED, DELETED, DRAFT, RECENT = (
    "\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent")
#: The flags a client may set, in the order Dovecot lists them.
SYSTEM_FLAGS = (ANSWERED, FLAGGED, DELETED, SEEN, DRAFT)

#: :meth:`Folder.store` modes: FLAGS, +FLAGS, -FLAGS.
REPLACE, ADD, REMOVE = 0, 1, -1

_KEYWORD = re.compile(r"^[!#$&'+-Z^-z|~]+$")   # atom chars without \ ( ) { % * " ]


class StoreError(Exception):
    """A refused folder operation; ``code`` is the IMAP response code
    (RFC 5530: NONEXISTENT, ALREADYEXISTS, INUSE, CANNOT, SERVERBUG...)."""

    def __init__(self, text: str, code: str = "CANNOT") -> None:
        super().__init__(text)
        self.code = code


def split_flags(flags: Iterable[str]) -> tuple[list[str], list[str]]:
    """(system flags, keywords); \\Recent and unknown \\flags are dropped."""
    system, keywords = [], []
    for flag in flags:
        if flag.startswith("\\"):
            for known in SYSTEM_FLAGS:
                if flag.lower() == known.lower() and known not in system:
                    system.append(known)
        elif _KEYWORD.match(flag) and flag not in keywords:
            keywords.append(flag)
    return system, keywords


def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


# --------------------------------------------------------------------------
# What a sync returns

class Message(Protocol):
    """One message of a folder, as the protocols see it."""

    uid: int
    flags: set            # system flags (SEEN, ANSWERED...), never RECENT
    keywords: list        # keyword flags, in the order they were set
    recent: bool          # \Recent: this session is the first to see it
    headers: bytes        # the header block shown to clients, LF line ends, ends with "\n"
    body: bytes           # LF line ends

    @property
    def content(self) -> bytes:
        """Headers, blank line, body (LF line ends)."""

    def wire(self) -> bytes:
        """The message with CRLF line ends, as IMAP and POP3 send it."""

    @property
    def size(self) -> int:
        """RFC822.SIZE: the length of :meth:`wire`."""

    @property
    def internal_date(self) -> float:
        """When it was delivered or appended (epoch seconds; 0 if unknown)."""


class FolderState(Protocol):
    """A folder at one moment: ``messages`` in sequence order."""

    uidvalidity: int
    uidnext: int
    messages: list        # of Message
    keywords: list        # every keyword defined in the folder


@dataclass
class FolderInfo:
    """One LIST entry."""

    name: str
    selectable: bool      # False: \Noselect (a directory that only holds folders)
    children: bool


class Watch(Protocol):
    """A subscription made by :meth:`Folder.watch`."""

    def cancel(self) -> None:
        """Stop calling back."""


# --------------------------------------------------------------------------
# A folder and a user's store

class Folder(ABC):
    """One folder of a user. ``name`` is its IMAP name (``INBOX``, ``Sent``, ``a/b``)."""

    name: str

    @abstractmethod
    def sync(self, mark_old: bool = False, wait: bool = True) -> FolderState:
        """The folder now; messages that arrived since the last look get
        their UIDs. ``mark_old``: a read-write SELECT has reported the
        \\Recent ones, so they stop being recent for later sessions (the
        returned state still says which were). ``wait=False``: raise
        StoreError(INUSE) at once rather than wait for a writer (a delivery)."""

    @abstractmethod
    def append_many(self, messages: Sequence[tuple[bytes, Iterable[str], float | None]],
                    envelope: str = "") -> tuple[int, list[int]]:
        """Add ``[(content, flags, internal date or None)]`` all or none
        (APPEND, MULTIAPPEND); ``envelope``: the sender to record. Returns
        (UIDVALIDITY, [new UIDs])."""

    def append(self, content: bytes, flags: Iterable[str] = (), when: float | None = None,
               envelope: str = "") -> tuple[int, int]:
        """Add one message; returns (UIDVALIDITY, UID)."""
        validity, uids = self.append_many([(content, flags, when)], envelope)
        return validity, uids[0]

    @abstractmethod
    def store(self, uids: Iterable[int], flags: Iterable[str], mode: int) -> dict[int, list[str]]:
        """Set (REPLACE), add (ADD) or remove (REMOVE) flags; returns
        {uid: its flags now} for the messages that exist."""

    @abstractmethod
    def define_keywords(self, keywords: Iterable[str]) -> None:
        """Make keywords known to the folder without setting them on any
        message (a SEARCH KEYWORD names them): later sessions list them."""

    @abstractmethod
    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove the \\Deleted messages (only those in ``uids`` if given:
        UID EXPUNGE); returns the UIDs removed."""

    @abstractmethod
    def add_messages(self, messages: Sequence[Message]) -> tuple[int, list[int]]:
        """Copy messages in (COPY, MOVE): new UIDs here, flags kept, not
        \\Recent. Returns (UIDVALIDITY, [new UIDs])."""

    @abstractmethod
    def remove(self, uids: Iterable[int]) -> list[int]:
        """Remove messages whatever their flags (the second half of MOVE)."""

    @abstractmethod
    def stamp(self) -> Hashable | None:
        """A cheap token that changes when the folder may have changed
        (no lock, nothing parsed); None if it cannot be told."""

    @abstractmethod
    def watch(self, reactor, callback: Callable[[], None]) -> Watch | None:
        """Call ``callback()`` (in the reactor) soon after a writer has
        finished changing the folder; None when the platform cannot push
        changes, and the caller must poll :meth:`stamp`."""


class MailStore(ABC):
    """The folders of one user (Dovecot's mailbox list)."""

    user: str

    @abstractmethod
    def folder(self, name: str, create: bool = False) -> Folder:
        """Open a folder (StoreError NONEXISTENT if missing and not ``create``)."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def list(self) -> list[FolderInfo]:
        """Every folder, INBOX first, parents before their children."""

    @abstractmethod
    def create(self, name: str) -> None:
        """A new folder; a name ending in ``/`` makes one that only holds folders."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def rename(self, old: str, new: str) -> None: ...

    @abstractmethod
    def subscriptions(self) -> list[str]: ...

    @abstractmethod
    def subscribe(self, name: str) -> None: ...

    @abstractmethod
    def unsubscribe(self, name: str) -> None: ...

    def ensure(self, name: str, subscribe: bool = False) -> None:
        """Create a folder if missing (Dovecot's ``auto = create|subscribe``)."""
        if not self.exists(name):
            self.create(name)
        if subscribe and name not in self.subscriptions():
            self.subscribe(name)
