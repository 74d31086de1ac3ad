"""``alias_maps = hash:/etc/aliases``: the lab's aliases(5) file, read as Postfix reads it.

Debian's Postfix package writes ``/etc/aliases`` with one entry,
``postmaster:    root``, so mail for postmaster (which RFC 5321 requires
every server to accept) reaches root's mailbox. The lab root keeps it as
``etc/aliases``; gponsim reads the text itself (no ``newaliases`` needed)
and again whenever it changes.

Format (aliases(5), ``postalias``): ``name: value, value, ...``; a line
starting with white space continues the one before; ``#`` starts a comment
line; names are case-insensitive (stored in lower case); a name may be
quoted. Values are addresses or local names (``root``), ``/file``,
``|command`` or ``:include:/file``; gponsim delivers to addresses and local
names (what local(8) does after expanding them) and reports the other
kinds as not simulated.
"""

from __future__ import annotations

import os
from pathlib import Path

from gponsim.server.parsedfile import ParsedFile

RELATIVE_PATH = Path("etc/aliases")
#: What Debian's postfix package writes (postfix.postinst).
DEBIAN_ALIASES = "# See man 5 aliases for format\npostmaster:    root\n"


def parse(text: str) -> dict[str, list[str]]:
    """aliases(5) text → {name: [value, ...]} (names in lower case; the first
    definition of a name wins, as postalias warns about duplicates and keeps it)."""
    entries: list[tuple[str, str]] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[:1].isspace():
            if entries:
                name, value = entries[-1]
                entries[-1] = (name, value + " " + raw.strip())
            continue
        if raw.startswith('"'):
            end = raw.find('"', 1)
            name, rest = raw[1:end], raw[end + 1:]
        else:
            name, colon, rest = raw.partition(":")
            rest = colon + rest
        rest = rest.lstrip()
        if not rest.startswith(":"):
            continue                               # postalias: "need name:value pair"
        entries.append((name.strip().lower(), rest[1:].strip()))
    table: dict[str, list[str]] = {}
    for name, value in entries:
        table.setdefault(name, [v.strip() for v in _split(value) if v.strip()])
    return table


def _split(value: str) -> list[str]:
    """Split at commas (and white space) outside double quotes."""
    out, cur, quoted = [], "", False
    for ch in value:
        if ch == '"':
            quoted = not quoted
            cur += ch
        elif ch in ", \t" and not quoted:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


class Aliases:
    """The lab's alias table (re-read when the file changes)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = ParsedFile(self.path, parse)

    def lookup(self, name: str) -> list[str] | None:
        return self._file.get().get(name.lower())

    def __contains__(self, name: str) -> bool:
        return self.lookup(name) is not None


def ensure(lab_root: str | os.PathLike) -> Aliases:
    path = Path(lab_root) / RELATIVE_PATH
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DEBIAN_ALIASES)
    return Aliases(path)
