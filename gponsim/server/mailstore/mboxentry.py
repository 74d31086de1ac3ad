"""One mbox entry: the only place in gponsim that writes one.

An entry is (RFC 4155, lab-facts §2.5 and §4.3)::

    From <envelope sender>  Www Mmm dd hh:mm:ss yyyy     <- the From_ line
    <header lines>
    <blank line, then the body>                          <- mboxo-quoted
                                                         <- one blank line

Every writer of the lab builds its entries with :func:`mbox_entry`:

- Postfix's local(8) appending a delivery to ``/var/mail/<user>``
  (:func:`gponsim.server.postfix.local.render_entry`): its trace headers
  (``Return-Path``, ``X-Original-To``, ``Delivered-To``) as ``header``, the
  queued message as ``body``, quoted;
- Dovecot writing a folder (:func:`gponsim.server.mailstore.mbox.encode`,
  behind APPEND, COPY, flag changes and EXPUNGE): the message's headers plus
  Dovecot's private ones as ``header``, the body as stored (already quoted
  when it was first saved: ``quote=False``);
- the Gmail simulator's "internet" mailboxes, written like local(8)'s.

What differs between the writers is a parameter, not a copy of the code:

- the From_ line's date (:func:`from_line`): Postfix uses C's ``asctime()``,
  the day of the month padded with a space (``Jan  1``); Dovecot's own
  From_ lines (``src/lib-mail/mbox-from.c``) pad it with a zero (``Jan 01``);
- the quoting (``quote``): a message written for the first time gets the
  mboxo ``>From `` quoting (every line that starts with ``From `` gets a
  ``>``; ``>From`` lines are left alone, so it cannot be undone); a body that
  is already stored that way is written as it is.

A body without a final newline gets one; the blank line that separates the
entry from the next one always follows.
"""

from __future__ import annotations

import time

MAILER_DAEMON = "MAILER-DAEMON"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def from_line(envelope: str, when: float, *, zero_pad_day: bool) -> bytes:
    """``From <envelope>  <date>`` (no newline), the date in local time.

    ``zero_pad_day``: Dovecot's ``Mon Jan 01 12:00:00 2024``; otherwise
    Postfix's ``asctime()``, ``Mon Jan  1 12:00:00 2024``. An empty envelope
    (the null sender ``<>``) is written ``MAILER-DAEMON``, as both do.
    """
    tm = time.localtime(when)
    day = f"{tm.tm_mday:02d}" if zero_pad_day else f"{tm.tm_mday:2d}"
    date = (f"{_DAYS[tm.tm_wday]} {_MONTHS[tm.tm_mon - 1]} {day} "
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {tm.tm_year}")
    return f"From {envelope or MAILER_DAEMON}  {date}".encode("utf-8")


def mboxo_quote(data: bytes) -> bytes:
    """Prefix ``>`` to every line of ``data`` (LF line ends) that starts with ``From ``."""
    if data.startswith(b"From "):
        data = b">" + data
    return data.replace(b"\nFrom ", b"\n>From ")


def mbox_entry(from_line: bytes, header: bytes, body: bytes, *, quote: bool) -> bytes:
    """The bytes of one mbox entry (LF line ends).

    ``from_line``: without its newline (see :func:`from_line`). ``header``:
    complete lines put right after it, each ending in ``\\n`` (it may be
    empty, or hold the whole header block and the blank line that ends it).
    ``body``: the rest of the message; ``quote``: give it the mboxo quoting.
    """
    if quote:
        body = mboxo_quote(body)
    end = b"\n\n" if body and not body.endswith(b"\n") else b"\n"
    return b"".join((from_line, b"\n", header, body, end))
