"""Dovecot 2.3 configuration files, read the way Dovecot reads them.

Syntax (doc.dovecot.org "Configuration file syntax", ``src/config/config-parser.c``):

- ``key = value``; the value may be quoted (``"..."`` with backslash escapes,
  or ``'...'``); ``key = <path`` means "the contents of that file" and is kept
  here as a file reference (``DovecotSetting.file_ref``), never read;
- ``#`` outside quotes starts a comment; a line ending in ``\\`` continues on
  the next one;
- sections ``name {`` / ``name label {`` ... ``}``, nested (``service auth {
  unix_listener /var/spool/postfix/private/auth { mode = 0666 } }``); the
  label may be quoted (``mailbox "Sent Messages" {``); a labelled section
  opened again (``namespace inbox`` in 10-mail.conf and 15-mailboxes.conf)
  is the same section;
- ``!include path`` / ``!include_try path``, relative to the including file's
  folder, with shell globs (``conf.d/*.conf``, matches read in ASCII order);
  a missing ``!include`` is an error naming file:line, ``!include_try`` is
  silent;
- ``$name`` in a top-level value is replaced by the value set so far (Debian's
  ``protocols = $protocols imap``).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .postfix import ConfigError

__all__ = [
    "DovecotConfig",
    "DovecotInclude",
    "DovecotSection",
    "DovecotSetting",
    "parse_dovecot",
]


@dataclass(eq=False)
class DovecotSetting:
    key: str
    value: str              # unquoted; for a file reference, the path after "<"
    path: str
    line: int
    section: "DovecotSection" = field(repr=False)
    file_ref: bool = False  # the value was "<path": Dovecot reads that file's contents

    @property
    def written(self) -> str:
        """The value as an administrator writes it (``<path`` for a file reference)."""
        return f"<{self.value}" if self.file_ref else self.value

    @property
    def display_name(self) -> str:
        prefix = self.section.display_path
        return f"{prefix} / {self.key}" if prefix else self.key

    @property
    def generic_key(self) -> str:
        """Section names without labels plus the key, e.g.
        ``service/unix_listener/mode``: the key of the explanations data."""
        names = self.section.names
        return "/".join(names + [self.key])


@dataclass(eq=False, repr=False)
class DovecotSection:
    """A section; sections are compared by identity."""

    name: str                               # "" for the top level
    label: str | None
    path: str
    line: int
    parent: "DovecotSection | None" = None
    settings: dict[str, DovecotSetting] = field(default_factory=dict)
    sections: list["DovecotSection"] = field(default_factory=list)
    openings: list[tuple[str, int]] = field(default_factory=list)   # every (file, line) that opened it

    def __repr__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"DovecotSection({self.display_path or '<top level>'!r} at {where})"

    # -- identity -----------------------------------------------------------

    @property
    def title(self) -> str:
        return f"{self.name} {self.label}" if self.label is not None else self.name

    @property
    def names(self) -> list[str]:
        chain: list[str] = []
        node: DovecotSection | None = self
        while node is not None and node.parent is not None:
            chain.append(node.name)
            node = node.parent
        return list(reversed(chain))

    @property
    def display_path(self) -> str:
        chain: list[str] = []
        node: DovecotSection | None = self
        while node is not None and node.parent is not None:
            chain.append(node.title)
            node = node.parent
        return " / ".join(reversed(chain))

    @property
    def generic_key(self) -> str:
        return "/".join(self.names)

    # -- access -------------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        setting = self.settings.get(key)
        return setting.value if setting is not None else default

    def setting(self, key: str) -> DovecotSetting | None:
        return self.settings.get(key)

    def find(self, name: str, label: str | None = None) -> list["DovecotSection"]:
        """Child sections called ``name`` (with that label, if given)."""
        return [s for s in self.sections
                if s.name == name and (label is None or s.label == label)]

    def section(self, name: str, label: str | None = None) -> "DovecotSection | None":
        found = self.find(name, label)
        return found[0] if found else None

    def walk(self) -> Iterator["DovecotSection"]:
        """This section and all sections below it, depth first."""
        yield self
        for child in self.sections:
            yield from child.walk()


@dataclass(frozen=True)
class DovecotInclude:
    path: str           # file holding the directive
    line: int
    target: str         # as written
    optional: bool      # !include_try
    files: tuple[str, ...]


@dataclass
class DovecotConfig:
    path: str
    root: DovecotSection
    files: list[str] = field(default_factory=list)          # every file read, in order
    includes: list[DovecotInclude] = field(default_factory=list)
    settings: list[DovecotSetting] = field(default_factory=list)   # read order, duplicates kept
    section_openings: list[tuple[DovecotSection, str, int]] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.root.get(key, default)


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

_KEY_RE = re.compile(r"[A-Za-z0-9_./!-]+")
_VAR_RE = re.compile(r"\$([A-Za-z0-9_]+)")


def _strip_comment(text: str, path: str, line: int) -> str:
    quote = None
    index = 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\" and quote == '"':
                index += 2
                continue
            if char == quote:
                quote = None
        elif char in ('"', "'"):
            quote = char
        elif char == "#":
            return text[:index]
        index += 1
    return text  # like Dovecot, an unclosed quote just runs to the end of the line


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in ('"', "'"):
        body = text[1:-1]
        if text[0] == '"':
            body = re.sub(r"\\(.)", r"\1", body)
        return body
    return text


def _read_label(text: str, path: str, line: int) -> tuple[str, str]:
    """Read one (possibly quoted) word; return (word, rest)."""
    text = text.lstrip()
    if text[:1] in ('"', "'"):
        quote = text[0]
        index = 1
        while index < len(text):
            if text[index] == "\\" and quote == '"':
                index += 2
                continue
            if text[index] == quote:
                return _unquote(text[:index + 1]), text[index + 1:]
            index += 1
        raise ConfigError(path, line, f"missing closing quote {quote}",
                          es=f"falta la comilla de cierre {quote}")
    match = re.match(r"[^\s{]+", text)
    if not match:
        return "", text
    return match.group(), text[match.end():]


def _physical_lines(text: str) -> Iterator[tuple[int, str]]:
    pending: list[str] = []
    first = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            first = number
        stripped = raw.rstrip()
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(raw)
        yield first, " ".join(part.strip() for part in pending)
        pending = []
    if pending:
        yield first, " ".join(part.strip() for part in pending)


class _Parser:
    def __init__(self, resolve: Callable[[str, Path], list[str] | None],
                 defaults: Callable[[str], str | None]) -> None:
        self._resolve = resolve
        self._defaults = defaults
        self._stack: list[str] = []

    def parse(self, path: str) -> DovecotConfig:
        root = DovecotSection("", None, path, 0)
        self.config = DovecotConfig(path, root)
        self._file(path, root, None)
        return self.config

    def _file(self, path: str, section: DovecotSection, included_from: tuple[str, int] | None) -> None:
        resolved = str(Path(path).resolve())
        if resolved in self._stack:
            where_path, where_line = included_from or (path, None)
            raise ConfigError(where_path, where_line, f"recursive include of {path}",
                              es=f"inclusión recursiva de {path}")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            if included_from:
                raise ConfigError(included_from[0], included_from[1], f"include file not found: {path}",
                                  es=f"no existe el archivo incluido: {path}") from None
            raise ConfigError(path, None, "file not found", es="no existe el archivo") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, None, f"cannot read: {exc}", es=f"no se puede leer: {exc}") from None
        self._stack.append(resolved)
        self.config.files.append(path)
        opened: list[DovecotSection] = []
        base = Path(path).parent
        for number, line in _physical_lines(text):
            content = _strip_comment(line, path, number).strip()
            if not content:
                continue
            if content.startswith("!include"):
                self._include(content, path, number, base, opened[-1] if opened else section)
                continue
            current = opened[-1] if opened else section
            if content == "}":
                if not opened:
                    raise ConfigError(path, number, "unexpected '}': no section is open here",
                                      es="'}' inesperada: no hay ninguna sección abierta aquí")
                opened.pop()
                continue
            match = _KEY_RE.match(content)
            if not match:
                raise ConfigError(path, number, f'expecting a setting or a section, got "{content}"',
                                  es=f'se esperaba un parámetro o una sección; se leyó "{content}"')
            key, rest = match.group(), content[match.end():].lstrip()
            if rest.startswith("="):
                self._setting(current, key, rest[1:].strip(), path, number)
                continue
            label: str | None = None
            if not rest.startswith("{"):
                label, rest = _read_label(rest, path, number)
                rest = rest.lstrip()
            if not rest.startswith("{"):
                raise ConfigError(path, number, f"expecting '=' or '{{' after \"{key}\"",
                                  es=f"se esperaba '=' o '{{' tras \"{key}\"")
            if rest[1:].strip() == "}":          # "name {}" on one line
                self._open(current, key, label, path, number)
                continue
            if rest[1:].strip():
                raise ConfigError(path, number, f"unexpected text after '{{': \"{rest[1:].strip()}\"",
                                  es=f"texto inesperado tras '{{': \"{rest[1:].strip()}\"")
            opened.append(self._open(current, key, label, path, number))
        if opened:
            unclosed = opened[-1]
            line = next(l for f, l in reversed(unclosed.openings) if f == path)
            raise ConfigError(path, line,
                              f"section \"{unclosed.title}\" is never closed: missing '}}'",
                              es=f"la sección \"{unclosed.title}\" no se cierra: falta '}}'")
        self._stack.pop()

    def _open(self, parent: DovecotSection, name: str, label: str | None,
              path: str, line: int) -> DovecotSection:
        section = parent.section(name, label) if label is not None else None
        if section is None:
            section = DovecotSection(name, label, path, line, parent)
            parent.sections.append(section)
        section.openings.append((path, line))
        self.config.section_openings.append((section, path, line))
        return section

    def _setting(self, section: DovecotSection, key: str, value: str, path: str, line: int) -> None:
        file_ref = False
        if value.startswith("<"):
            file_ref = True
            value = value[1:].strip()
        else:
            value = _unquote(value)
            if section.parent is None and "$" in value:
                value = _VAR_RE.sub(lambda m: self._variable(m, section), value)
        setting = DovecotSetting(key, value, path, line, section, file_ref)
        section.settings[key] = setting
        self.config.settings.append(setting)

    def _variable(self, match: re.Match, root: DovecotSection) -> str:
        name = match.group(1)
        if name in root.settings:
            return root.settings[name].value
        default = self._defaults(name)
        return default if default is not None else match.group(0)

    def _include(self, content: str, path: str, line: int, base: Path, section: DovecotSection) -> None:
        directive, _, target = content.partition(" ")
        target = _unquote(target.strip())
        if directive not in ("!include", "!include_try") or not target:
            raise ConfigError(path, line, f'bad include directive: "{content}"',
                              es=f'directiva de inclusión no válida: "{content}"')
        optional = directive == "!include_try"
        files = self._resolve(target, base)
        if not files:
            if optional:
                self.config.includes.append(DovecotInclude(path, line, target, True, ()))
                return
            raise ConfigError(path, line, f"include file not found: {target}",
                              es=f"no existe el archivo incluido: {target}")
        self.config.includes.append(DovecotInclude(path, line, target, optional, tuple(files)))
        for included in files:
            self._file(included, section, (path, line))


def default_resolver(target: str, base: Path) -> list[str]:
    """Files an include names: relative to ``base``, globs sorted."""
    pattern = target if Path(target).is_absolute() else str(base / target)
    if glob.has_magic(pattern):
        return sorted(p for p in glob.glob(pattern) if Path(p).is_file())
    return [pattern] if Path(pattern).is_file() else []


def parse_dovecot(path: str | Path, *,
                  resolve: Callable[[str, Path], list[str] | None] | None = None,
                  defaults: Callable[[str], str | None] | None = None) -> DovecotConfig:
    """Parse a Dovecot configuration file and everything it includes.

    ``resolve(target, base_dir)`` lists the files an include names (the lab
    profile uses it to map absolute paths); ``defaults(name)`` gives the
    default value a ``$name`` refers to when the file has not set it.
    """
    parser = _Parser(resolve or default_resolver, defaults or (lambda name: None))
    return parser.parse(str(path))
