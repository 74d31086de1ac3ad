"""Postfix configuration files, read the way Postfix reads them.

- ``main.cf`` (postconf(5)): ``name = value`` lines, comment lines whose first
  non-blank character is ``#``, blank lines, and continuation lines that start
  with whitespace. Values are kept raw and expanded lazily: ``$name``,
  ``${name}``, ``$(name)``, ``$$``, ``${name?value}``, ``${name:value}``,
  ``${name?{value1}:{value2}}`` and the relational form
  ``${{text1} op {text2} ? {value1} : {value2}}`` (``==``, ``!=``, ``<``,
  ``<=``, ``>``, ``>=`` and their ``...level`` variants for compatibility
  levels), which Postfix 3.7's own defaults use.
- ``master.cf`` (master(5)): one service per logical line, eight or more
  fields (service type private unpriv chroot wakeup maxproc command + args),
  ``-o name=value`` and ``-o { name = value }`` parameter overrides.
- Postfix lookup-table source files such as ``sasl_passwd`` (postmap(1)
  input: ``key whitespace value``).

Every syntax error is a :class:`ConfigError` whose text is ``path:line:
message`` in English (``str``) or Spanish (``text("es")``).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

__all__ = [
    "ConfigError",
    "MacroError",
    "MacroExpander",
    "MainCf",
    "MainEntry",
    "MasterCf",
    "MasterService",
    "Override",
    "TableEntry",
    "Warning_",
    "WELL_KNOWN_PORTS",
    "parse_main_cf",
    "parse_master_cf",
    "parse_table",
    "split_list",
]


class ConfigError(Exception):
    """A configuration file problem, located at ``path:line``.

    ``str(error)`` is ``path:line: message`` (English); ``error.text("es")``
    gives the same in Spanish. ``line`` is None for a problem with a whole
    file (e.g. a missing file): the text is then ``path: message``.
    """

    def __init__(self, path: str | Path, line: int | None, message: str,
                 *, es: str | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        self.message_es = es if es is not None else message
        super().__init__(self.text("en"))

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    def text(self, lang: str = "en") -> str:
        message = self.message_es if lang == "es" else self.message
        return f"{self.location}: {message}"

    def __str__(self) -> str:
        return self.text("en")

    def __reduce__(self):  # keep pickling (multiprocessing, pytest-xdist) working
        return (_rebuild_config_error, (self.path, self.line, self.message, self.message_es))


def _rebuild_config_error(path, line, message, es):
    return ConfigError(path, line, message, es=es)


@dataclass(frozen=True)
class Warning_:
    """A non-fatal remark about a file, like the warnings Postfix prints."""

    path: str
    line: int | None
    message: str
    message_es: str

    def text(self, lang: str = "en") -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message_es if lang == 'es' else self.message}"


# ---------------------------------------------------------------------------
# Logical lines (shared by main.cf, master.cf and table source files)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _LogicalLine:
    line: int                                   # first physical line
    segments: tuple[tuple[int, str], ...]       # (line number, text) per physical line

    @property
    def text(self) -> str:
        # Postfix drops the newline and keeps the continuation's indentation.
        return "".join(text for _, text in self.segments)

    def line_at(self, offset: int) -> int:
        """Physical line of the character at ``offset`` in :attr:`text`."""
        starts = []
        pos = 0
        for _, text in self.segments:
            starts.append(pos)
            pos += len(text)
        index = bisect.bisect_right(starts, offset) - 1
        return self.segments[max(index, 0)][0]


def _logical_lines(text: str, path: str) -> Iterator[_LogicalLine]:
    current: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank and comment lines, also inside a continued line
        if raw[0] in " \t":
            if not current:
                raise ConfigError(
                    path, number,
                    f'logical line must not start with whitespace: "{raw}"',
                    es=f'una línea lógica no puede empezar con espacios: "{raw}"'
                       " (en Postfix, una línea que empieza con espacios continúa la anterior)")
            current.append((number, raw))
            continue
        if current:
            yield _LogicalLine(current[0][0], tuple(current))
        current = [(number, raw)]
    if current:
        yield _LogicalLine(current[0][0], tuple(current))


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found", es="no existe el archivo") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"not UTF-8 text ({exc.reason})",
                          es=f"no es texto UTF-8 ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}",
                          es=f"no se puede leer: {exc.strerror}") from None


# ---------------------------------------------------------------------------
# Macro expansion ($name and friends)
# ---------------------------------------------------------------------------

class MacroError(ValueError):
    """A malformed ``$`` expression. ``owner`` is the parameter whose text
    contains it (None for text that is not a parameter value)."""

    def __init__(self, message: str, es: str, owner: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.message_es = es
        self.owner = owner


_NAME_RE = re.compile(r"[A-Za-z0-9_]+")
_OPERATOR_RE = re.compile(r"\s*(==|!=|<=|>=|<|>)(level)?\s*")
_LEVEL_RE = re.compile(r"^\d+(\.\d+){0,2}$")
_INT_RE = re.compile(r"^[+-]?\d+$")
MAX_NESTING = 100


def _matching(text: str, start: int, open_char: str, close_char: str) -> int:
    """Index of the bracket closing the one at ``start``, or -1."""
    depth = 0
    for index in range(start, len(text)):
        char = text[index]
        if char == open_char:
            depth += 1
        elif char == close_char:
            depth -= 1
            if depth == 0:
                return index
    return -1


def _compare_levels(left: str, right: str, owner: str | None) -> int:
    parts = []
    for text in (left, right):
        if not _LEVEL_RE.match(text):
            raise MacroError(f'malformed compatibility level syntax: "{text}"',
                             f'nivel de compatibilidad mal escrito: "{text}"', owner)
        numbers = [int(piece) for piece in text.split(".")]
        parts.append(tuple(numbers + [0] * (3 - len(numbers))))
    return (parts[0] > parts[1]) - (parts[0] < parts[1])


class MacroExpander:
    """Expands Postfix ``$`` expressions.

    ``lookup(name)`` returns the raw (unexpanded) text of a parameter, or
    None when the parameter is undefined; the expansion of ``$name`` is the
    recursive expansion of that text. ``on_undefined(name)`` is called for an
    undefined name (Postfix warns "undefined parameter" and uses "").
    """

    def __init__(self, lookup: Callable[[str], str | None],
                 on_undefined: Callable[[str], None] | None = None) -> None:
        self._lookup = lookup
        self._on_undefined = on_undefined
        self._active: list[str] = []

    def param(self, name: str) -> str:
        return self._param(name, 0)

    def expand(self, text: str, owner: str | None = None) -> str:
        return self._expand(text, owner, 0)

    # -- internals --------------------------------------------------------

    def _param(self, name: str, depth: int) -> str:
        raw = self._lookup(name)
        if raw is None:
            if self._on_undefined:
                self._on_undefined(name)
            return ""
        if name in self._active:
            chain = " -> ".join(self._active[self._active.index(name):] + [name])
            raise MacroError(f"unreasonable macro call nesting: circular reference {chain}",
                             f"anidamiento de macros excesivo: referencia circular {chain}", name)
        self._active.append(name)
        try:
            return self._expand(raw, name, depth + 1)
        finally:
            self._active.pop()

    def _defined(self, name: str) -> bool:
        if self._lookup(name) is None:
            if self._on_undefined:
                self._on_undefined(name)
            return False
        return True

    def _expand(self, text: str, owner: str | None, depth: int) -> str:
        if depth > MAX_NESTING:
            raise MacroError(f'unreasonable macro call nesting: "{text}"',
                             f'anidamiento de macros excesivo (¿una referencia circular?): "{text}"',
                             owner)
        out: list[str] = []
        index, length = 0, len(text)
        while index < length:
            dollar = text.find("$", index)
            if dollar < 0:
                out.append(text[index:])
                break
            out.append(text[index:dollar])
            following = text[dollar + 1: dollar + 2]
            if following == "$":
                out.append("$")
                index = dollar + 2
            elif following in ("{", "("):
                close = "}" if following == "{" else ")"
                end = _matching(text, dollar + 1, following, close)
                if end < 0:
                    raise MacroError(f'truncated macro reference: "{text}"',
                                     f'referencia a macro sin cerrar (falta "{close}"): "{text}"',
                                     owner)
                out.append(self._braced(text[dollar + 2:end], text, owner, depth))
                index = end + 1
            else:
                match = _NAME_RE.match(text, dollar + 1)
                if not match:
                    raise MacroError(f'empty macro name: "{text}"',
                                     f'nombre de macro vacío tras "$" (escriba "$$" para un "$" literal): "{text}"',
                                     owner)
                out.append(self._param(match.group(), depth))
                index = match.end()
        return "".join(out)

    def _braced(self, inner: str, whole: str, owner: str | None, depth: int) -> str:
        stripped = inner.lstrip()
        if stripped.startswith("{"):
            condition, rest = self._relational(stripped, whole, owner, depth)
            if not rest.strip():
                raise MacroError(f'"?" or ":" expected after the comparison in "{whole}"',
                                 f'falta "?" o ":" tras la comparación en "{whole}"', owner)
            return self._choose(condition, rest, whole, owner, depth)
        match = _NAME_RE.match(inner)
        if not match:
            raise MacroError(f'empty macro name: "{whole}"',
                             f'nombre de macro vacío: "{whole}"', owner)
        name, rest = match.group(), inner[match.end():]
        if not rest:
            return self._param(name, depth)
        if rest.lstrip()[:1] not in ("?", ":"):
            raise MacroError(f'attribute name syntax error at: "...{name}>>>{rest}"',
                             f'error de sintaxis tras el nombre "{name}": "{rest}"', owner)
        condition = self._defined(name) and self._param(name, depth) != ""
        return self._choose(condition, rest, whole, owner, depth)

    def _relational(self, text: str, whole: str, owner, depth) -> tuple[bool, str]:
        end = _matching(text, 0, "{", "}")
        if end < 0:
            raise MacroError(f'truncated macro reference: "{whole}"',
                             f'referencia a macro sin cerrar: "{whole}"', owner)
        left = self._expand(text[1:end].strip(), owner, depth)
        match = _OPERATOR_RE.match(text, end + 1)
        if not match:
            raise MacroError(f'"==", "!=", "<", "<=", ">=" or ">" expected in "{whole}"',
                             f'se esperaba "==", "!=", "<", "<=", ">=" o ">" en "{whole}"', owner)
        operator, level = match.group(1), bool(match.group(2))
        start = match.end()
        if text[start:start + 1] != "{":
            raise MacroError(f'"{{" expected after "{operator}" in "{whole}"',
                             f'se esperaba "{{" tras "{operator}" en "{whole}"', owner)
        close = _matching(text, start, "{", "}")
        if close < 0:
            raise MacroError(f'truncated macro reference: "{whole}"',
                             f'referencia a macro sin cerrar: "{whole}"', owner)
        right = self._expand(text[start + 1:close].strip(), owner, depth)
        if level:
            order = _compare_levels(left, right, owner)
        elif operator in ("==", "!="):
            order = 0 if left == right else 1
        elif _INT_RE.match(left) and _INT_RE.match(right):
            order = (int(left) > int(right)) - (int(left) < int(right))
        else:  # Postfix falls back to comparing the text
            order = (left > right) - (left < right)
        result = {"==": order == 0, "!=": order != 0, "<": order < 0,
                  "<=": order <= 0, ">": order > 0, ">=": order >= 0}[operator]
        return result, text[close + 1:]

    def _choose(self, condition: bool, rest: str, whole: str, owner, depth) -> str:
        rest = rest.lstrip()
        kind, body = rest[0], rest[1:]
        if not body.lstrip().startswith("{"):
            # Legacy form: ${name?value} / ${name:value}, value runs to the end.
            wanted = condition if kind == "?" else not condition
            return self._expand(body, owner, depth) if wanted else ""
        body = body.lstrip()
        end = _matching(body, 0, "{", "}")
        if end < 0:
            raise MacroError(f'truncated macro reference: "{whole}"',
                             f'referencia a macro sin cerrar: "{whole}"', owner)
        first, tail = body[1:end], body[end + 1:].strip()
        second = None
        if tail:
            if kind == "?" and tail.startswith(":") and tail[1:].lstrip().startswith("{"):
                alternative = tail[1:].lstrip()
                close = _matching(alternative, 0, "{", "}")
                if close < 0:
                    raise MacroError(f'truncated macro reference: "{whole}"',
                                     f'referencia a macro sin cerrar: "{whole}"', owner)
                second, extra = alternative[1:close], alternative[close + 1:].strip()
                if extra:
                    raise MacroError(f'unexpected input at: "...}}>>>{extra}"',
                                     f'texto inesperado: "{extra}" en "{whole}"', owner)
            else:
                raise MacroError(f'unexpected input at: "...}}>>>{tail}"',
                                 f'texto inesperado: "{tail}" en "{whole}"', owner)
        if kind == "?":
            chosen = first if condition else (second or "")
        else:
            chosen = "" if condition else first
        return self._expand(chosen.strip(), owner, depth)


# ---------------------------------------------------------------------------
# Lists
# ---------------------------------------------------------------------------

def split_list(value: str) -> list[str]:
    """Split a Postfix list on commas and whitespace; ``{...}`` stays one
    element (braces included, as written)."""
    items: list[str] = []
    index, length = 0, len(value)
    while index < length:
        char = value[index]
        if char in ", \t\r\n":
            index += 1
            continue
        start = index
        while index < length and value[index] not in ", \t\r\n":
            if value[index] == "{":
                close = _matching(value, index, "{", "}")
                index = length if close < 0 else close + 1
            else:
                index += 1
        items.append(value[start:index])
    return items


# ---------------------------------------------------------------------------
# main.cf
# ---------------------------------------------------------------------------

_PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class MainEntry:
    name: str
    value: str          # raw text, not expanded
    path: str
    line: int


@dataclass
class MainCf:
    path: str
    entries: dict[str, MainEntry] = field(default_factory=dict)   # effective (last wins)
    all_entries: list[MainEntry] = field(default_factory=list)    # file order, duplicates kept
    warnings: list[Warning_] = field(default_factory=list)

    def get(self, name: str) -> MainEntry | None:
        return self.entries.get(name)


def _split_name_value(text: str, path: str, line: int) -> tuple[str, str]:
    if "=" not in text:
        name = text.strip()
        raise ConfigError(path, line, f'missing \'=\' after attribute name: "{name}"',
                          es=f'falta "=" tras el nombre del parámetro: "{name}"'
                             ' (se espera "nombre = valor")')
    name, value = text.split("=", 1)
    name, value = name.strip(), value.strip()
    if not name:
        raise ConfigError(path, line, f'missing attribute name: "{text.strip()}"',
                          es=f'falta el nombre del parámetro: "{text.strip()}"')
    if not _PARAM_NAME_RE.match(name):
        raise ConfigError(path, line, f'bad parameter name: "{name}" (letters, digits and "_" only)',
                          es=f'nombre de parámetro no válido: "{name}" (solo letras, dígitos y "_")')
    return name, value


def parse_main_cf(path: str | Path, text: str | None = None) -> MainCf:
    """Parse a main.cf file (or ``text`` as if it were that file)."""
    path = str(path)
    if text is None:
        text = _read(path)
    result = MainCf(path)
    for logical in _logical_lines(text, path):
        name, value = _split_name_value(logical.text, path, logical.line)
        entry = MainEntry(name, value, path, logical.line)
        previous = result.entries.get(name)
        if previous is not None:
            result.warnings.append(Warning_(
                path, logical.line,
                f"overriding earlier entry: {name}={previous.value} (line {previous.line})",
                f"esta línea reemplaza la anterior: {name}={previous.value} (línea {previous.line})"))
        if re.search(r"\s#", value):
            result.warnings.append(Warning_(
                path, logical.line,
                f'"#" does not start a comment inside a value: {name} = {value}',
                f'"#" no inicia un comentario dentro de un valor: {name} = {value}'
                " (en Postfix un comentario ocupa su propia línea)"))
        result.entries[name] = entry
        result.all_entries.append(entry)
    return result


# ---------------------------------------------------------------------------
# master.cf
# ---------------------------------------------------------------------------

#: Service names Postfix's master(8) resolves through /etc/services
#: (Debian 12 spelling; gponsim never reads the machine's files for this).
WELL_KNOWN_PORTS: dict[str, int] = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "smtps": 465,
    "ssmtp": 465,
    "lmtp": 24,
    "qmqp": 628,
    "pop3": 110,
    "pop3s": 995,
    "imap": 143,
    "imap2": 143,
    "imaps": 993,
}

_SERVICE_TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")
_YES_NO_RE = re.compile(r"^[yn-]$")
_WAKEUP_RE = re.compile(r"^(-|\d+\??)$")
_MAXPROC_RE = re.compile(r"^(-|\d+)$")


@dataclass(frozen=True)
class Override:
    """One ``-o name=value`` of a master.cf service."""

    name: str
    value: str
    path: str
    line: int


@dataclass
class MasterService:
    name: str
    type: str
    private: str
    unpriv: str
    chroot: str
    wakeup: str
    maxproc: str
    command: str
    args: list[str]                     # arguments after the command, -o pairs removed
    overrides: dict[str, Override]
    path: str
    line: int
    host: str | None = None             # inet only: the part before ":" in host:port
    port: int | None = None             # inet only

    @property
    def key(self) -> str:
        """``name/type``, as postconf -M/-P write it."""
        return f"{self.name}/{self.type}"

    @property
    def fields(self) -> list[str]:
        return [self.name, self.type, self.private, self.unpriv, self.chroot,
                self.wakeup, self.maxproc, self.command]

    @property
    def override_values(self) -> dict[str, str]:
        return {name: item.value for name, item in self.overrides.items()}


@dataclass
class MasterCf:
    path: str
    services: list[MasterService] = field(default_factory=list)

    def find(self, name: str, type_: str | None = None) -> list[MasterService]:
        return [s for s in self.services
                if s.name == name and (type_ is None or s.type == type_)]


def _tokens(logical: _LogicalLine, path: str) -> list[tuple[str, int, bool]]:
    """Split a master.cf logical line into (token, line, was_braced)."""
    text = logical.text
    result: list[tuple[str, int, bool]] = []
    index, length = 0, len(text)
    while index < length:
        if text[index] in " \t":
            index += 1
            continue
        line = logical.line_at(index)
        if text[index] == "{":
            close = _matching(text, index, "{", "}")
            if close < 0:
                raise ConfigError(path, line, f'missing "}}" in: "{text[index:].strip()}"',
                                  es=f'falta "}}" en: "{text[index:].strip()}"')
            result.append((text[index + 1:close].strip(), line, True))
            index = close + 1
            continue
        start = index
        while index < length and text[index] not in " \t":
            index += 1
        result.append((text[start:index], line, False))
    return result


def _inet_address(name: str, path: str, line: int) -> tuple[str | None, int]:
    host: str | None = None
    port_text = name
    if ":" in name:
        host, port_text = name.rsplit(":", 1)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise ConfigError(path, line, f'empty host in service name "{name}"',
                              es=f'host vacío en el nombre de servicio "{name}"')
    if port_text.isdigit():
        port = int(port_text)
        if not 0 < port < 65536:
            raise ConfigError(path, line, f'port out of range in service name "{name}"',
                              es=f'puerto fuera de rango en el nombre de servicio "{name}"')
        return host, port
    if port_text in WELL_KNOWN_PORTS:
        return host, WELL_KNOWN_PORTS[port_text]
    raise ConfigError(
        path, line,
        f'"{port_text}" is not a port number nor a known service name'
        f' ({", ".join(sorted(WELL_KNOWN_PORTS))})',
        es=f'"{port_text}" no es un número de puerto ni un nombre de servicio conocido'
           f' ({", ".join(sorted(WELL_KNOWN_PORTS))})')


def parse_master_cf(path: str | Path, text: str | None = None) -> MasterCf:
    """Parse a master.cf file (or ``text`` as if it were that file)."""
    path = str(path)
    if text is None:
        text = _read(path)
    result = MasterCf(path)
    seen: dict[str, int] = {}
    for logical in _logical_lines(text, path):
        tokens = _tokens(logical, path)
        line = logical.line
        if len(tokens) < 8 or any(braced for _, _, braced in tokens[:8]):
            raise ConfigError(
                path, line,
                f"bad field count: {len(tokens)} field(s), a service needs 8: "
                "service type private unpriv chroot wakeup maxproc command",
                es=f"número de campos incorrecto: {len(tokens)}, un servicio necesita 8: "
                   "servicio tipo private unpriv chroot wakeup maxproc comando")
        name, type_, private, unpriv, chroot, wakeup, maxproc, command = (t for t, _, _ in tokens[:8])
        if type_ not in _SERVICE_TYPES:
            raise ConfigError(path, line,
                              f'invalid type field "{type_}" (expected {", ".join(_SERVICE_TYPES)})',
                              es=f'campo de tipo no válido "{type_}" (se espera {", ".join(_SERVICE_TYPES)})')
        for label, value in (("private", private), ("unpriv", unpriv), ("chroot", chroot)):
            if not _YES_NO_RE.match(value):
                raise ConfigError(path, line, f'invalid {label} field "{value}" (expected y, n or -)',
                                  es=f'campo {label} no válido "{value}" (se espera y, n o -)')
        if not _WAKEUP_RE.match(wakeup):
            raise ConfigError(path, line, f'invalid wakeup field "{wakeup}" (expected seconds, seconds? or -)',
                              es=f'campo wakeup no válido "{wakeup}" (se esperan segundos, segundos? o -)')
        if not _MAXPROC_RE.match(maxproc):
            raise ConfigError(path, line, f'invalid maxproc field "{maxproc}" (expected a number or -)',
                              es=f'campo maxproc no válido "{maxproc}" (se espera un número o -)')
        key = f"{name}/{type_}"
        if key in seen:
            raise ConfigError(path, line, f"duplicate service {key} (first defined at line {seen[key]})",
                              es=f"servicio {key} duplicado (ya definido en la línea {seen[key]})")
        seen[key] = line
        host, port = _inet_address(name, path, line) if type_ == "inet" else (None, None)

        args: list[str] = []
        overrides: dict[str, Override] = {}
        rest = tokens[8:]
        index = 0
        while index < len(rest):
            token, token_line, braced = rest[index]
            if token == "-o" and not braced:
                if index + 1 >= len(rest):
                    raise ConfigError(path, token_line, '"-o" needs a name=value argument',
                                      es='"-o" necesita un argumento nombre=valor')
                pair, pair_line, _ = rest[index + 1]
                if "=" not in pair:
                    raise ConfigError(path, pair_line, f'missing "=" in "-o {pair}" (expected -o name=value)',
                                      es=f'falta "=" en "-o {pair}" (se espera -o nombre=valor)')
                pname, pvalue = (part.strip() for part in pair.split("=", 1))
                if not _PARAM_NAME_RE.match(pname):
                    raise ConfigError(path, pair_line, f'bad parameter name in "-o {pair}"',
                                      es=f'nombre de parámetro no válido en "-o {pair}"')
                overrides[pname] = Override(pname, pvalue, path, pair_line)
                index += 2
                continue
            args.append(token)
            index += 1
        result.services.append(MasterService(
            name=name, type=type_, private=private, unpriv=unpriv, chroot=chroot,
            wakeup=wakeup, maxproc=maxproc, command=command, args=args,
            overrides=overrides, path=path, line=line, host=host, port=port))
    return result


# ---------------------------------------------------------------------------
# Lookup-table source files (what postmap(1) reads)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TableEntry:
    key: str
    value: str
    path: str
    line: int


def parse_table(path: str | Path, text: str | None = None) -> dict[str, TableEntry]:
    """Parse a postmap(1) source file: ``key whitespace value`` per logical
    line. Keys are folded to lowercase, as postmap does by default."""
    path = str(path)
    if text is None:
        text = _read(path)
    result: dict[str, TableEntry] = {}
    for logical in _logical_lines(text, path):
        parts = logical.text.strip().split(None, 1)
        if len(parts) < 2:
            raise ConfigError(path, logical.line,
                              f'expected format: key whitespace value, got "{logical.text.strip()}"',
                              es=f'formato esperado: clave espacio valor; se leyó "{logical.text.strip()}"')
        key = parts[0].lower()
        result[key] = TableEntry(key, parts[1].strip(), path, logical.line)
    return result
