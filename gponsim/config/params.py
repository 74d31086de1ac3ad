"""What gponsim knows about each Postfix parameter and Dovecot setting.

The knowledge is data (``config/data/postfix.toml`` and ``dovecot.toml``):
default value, type, whether gponsim simulates it, and an explanation in
Spanish and English. This module loads it and converts typed values (booleans,
Postfix and Dovecot times, sizes, CIDR networks) with clear, bilingual errors.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Info",
    "ListenerDefault",
    "ValueProblem",
    "Catalog",
    "catalog",
    "check_value",
    "parse_bool",
    "parse_cidr",
    "parse_dovecot_time",
    "parse_postfix_time",
    "parse_size",
    "default_myhostname",
    "domain_of",
    "LANGS",
]

DATA_DIR = Path(__file__).parent / "data"
LANGS = ("es", "en")


class ValueProblem(ValueError):
    """A value that does not fit its parameter's type (bilingual message)."""

    def __init__(self, message: str, es: str) -> None:
        super().__init__(message)
        self.message = message
        self.message_es = es


@dataclass(frozen=True)
class Info:
    """Catalog entry for one parameter, setting, section or service."""

    name: str
    kind: str                     # "postfix", "service", "dovecot", "section"
    simulated: bool
    explanation: dict[str, str]
    note: dict[str, str] = field(default_factory=dict)
    default: str | None = None
    type: str = "string"
    unit: str | None = None
    choices: tuple[str, ...] = ()
    dynamic: bool = False

    def text(self, lang: str) -> str:
        return self.explanation.get(lang) or self.explanation.get("en", "")

    def note_text(self, lang: str) -> str:
        return self.note.get(lang) or self.note.get("en", "")


@dataclass(frozen=True)
class ListenerDefault:
    name: str
    service: str
    protocol: str
    port: int
    ssl: bool


def _info(name: str, kind: str, table: dict) -> Info:
    return Info(
        name=name,
        kind=kind,
        simulated=bool(table.get("simulated", False)),
        explanation={lang: table[lang] for lang in LANGS if lang in table},
        note={lang: table[f"note_{lang}"] for lang in LANGS if f"note_{lang}" in table},
        default=table.get("default"),
        type=table.get("type", "string"),
        unit=table.get("unit"),
        choices=tuple(table.get("choices", ())),
        dynamic=bool(table.get("dynamic", False)),
    )


class Catalog:
    """The parameter knowledge of gponsim."""

    def __init__(self, postfix_data: dict, dovecot_data: dict) -> None:
        self.postfix_params = {name: _info(name, "postfix", table)
                               for name, table in postfix_data.get("parameters", {}).items()}
        self.postfix_services = {name: _info(name, "service", table)
                                 for name, table in postfix_data.get("services", {}).items()}
        self.dovecot_settings = {name: _info(name, "dovecot", table)
                                 for name, table in dovecot_data.get("settings", {}).items()}
        self.dovecot_sections = {name: _info(name, "section", table)
                                 for name, table in dovecot_data.get("sections", {}).items()}
        self.listeners = {
            name: ListenerDefault(name, table["service"], table["protocol"],
                                  int(table["port"]), bool(table["ssl"]))
            for name, table in dovecot_data.get("listeners", {}).items()}

    def postfix(self, name: str) -> Info | None:
        return self.postfix_params.get(name)

    def service(self, command: str) -> Info | None:
        return self.postfix_services.get(command)

    def dovecot(self, generic_key: str) -> Info | None:
        return self.dovecot_settings.get(generic_key)

    def section(self, generic_key: str, label: str | None = None) -> Info | None:
        if label is not None and f"{generic_key}:{label}" in self.dovecot_sections:
            return self.dovecot_sections[f"{generic_key}:{label}"]
        return self.dovecot_sections.get(generic_key)

    def postfix_default(self, name: str) -> str | None:
        """Raw default of a Postfix parameter (dynamic ones computed here)."""
        info = self.postfix_params.get(name)
        if info is None:
            return None
        if name == "myhostname":
            return default_myhostname()
        if name == "mydomain":
            return domain_of(default_myhostname())
        return info.default


@functools.cache
def catalog() -> Catalog:
    with open(DATA_DIR / "postfix.toml", "rb") as handle:
        postfix_data = tomllib.load(handle)
    with open(DATA_DIR / "dovecot.toml", "rb") as handle:
        dovecot_data = tomllib.load(handle)
    return Catalog(postfix_data, dovecot_data)


# ---------------------------------------------------------------------------
# Dynamic defaults (no DNS: gethostname() is a system call, not a lookup)
# ---------------------------------------------------------------------------

def default_myhostname() -> str:
    name = socket.gethostname() or "localhost"
    return name if "." in name else f"{name}.localdomain"


def domain_of(hostname: str) -> str:
    """Postfix's default mydomain: myhostname minus its first label."""
    return hostname.split(".", 1)[1] if "." in hostname else "localdomain"


# ---------------------------------------------------------------------------
# Typed values
# ---------------------------------------------------------------------------

_POSTFIX_TIME_RE = re.compile(r"^(\d+)([smhdw]?)$")
_TIME_FACTORS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DOVECOT_UNITS = {
    "ms": 0.001, "msec": 0.001, "msecs": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_LEVEL_RE = re.compile(r"^\d+(\.\d+){0,2}$")
_TABLE_RE = re.compile(
    r"^(hash|btree|lmdb|cdb|dbm|sdbm|texthash|inline|static|cidr|regexp|pcre|proxy|ldap|mysql"
    r"|pgsql|sqlite|memcache|nis|nisplus|netinfo|unix|tcp|socketmap|randmap|pipemap|unionmap"
    r"|fail|environ|internal):")


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered == "yes":
        return True
    if lowered == "no":
        return False
    raise ValueProblem(f'bad boolean value "{value}" (expected yes or no)',
                       f'valor booleano no válido "{value}" (se espera yes o no)')


def parse_postfix_time(value: str, unit: str = "s") -> float:
    """Postfix time: a number with an optional unit s, m, h, d or w
    (``unit`` when none is written). Returns seconds."""
    match = _POSTFIX_TIME_RE.match(value.strip())
    if not match:
        raise ValueProblem(
            f'bad time value "{value}" (expected a number with an optional unit:'
            " s, m, h, d or w)",
            f'valor de tiempo no válido "{value}" (se espera un número con una unidad'
            " opcional: s, m, h, d o w)")
    number, written = match.groups()
    return float(int(number) * _TIME_FACTORS[written or unit])


def parse_dovecot_time(value: str, unit: str = "s") -> float:
    """Dovecot time: ``2 secs``, ``5 mins``, ``1 hour``, ``30s``, ``100ms``..."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$", value)
    if match:
        number, written = match.groups()
        factor = _DOVECOT_UNITS.get(written.lower() if written else unit)
        if factor is not None:
            return float(number) * factor
    raise ValueProblem(
        f'bad time value "{value}" (expected e.g. "2 secs", "5 mins", "1 hour")',
        f'valor de tiempo no válido "{value}" (se espera, por ejemplo, "2 secs", "5 mins", "1 hour")')


def parse_size(value: str) -> int:
    text = value.strip()
    if not text.isdigit():
        raise ValueProblem(f'bad size value "{value}" (expected a number of bytes)',
                           f'tamaño no válido "{value}" (se espera un número de bytes)')
    return int(text)


def parse_int(value: str) -> int:
    text = value.strip()
    if not re.match(r"^-?\d+$", text):
        raise ValueProblem(f'bad number "{value}"', f'número no válido "{value}"')
    return int(text)


def parse_cidr(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One mynetworks entry: ``192.168.0.0/16``, ``[::1]/128``,
    ``[::ffff:127.0.0.0]/104`` or a single address."""
    text = entry.strip()
    address, slash, length = text.partition("/")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    elif ":" in address:
        raise ValueProblem(
            f'IPv6 network "{entry}" must be written in brackets, like [::1]/128',
            f'la red IPv6 "{entry}" debe ir entre corchetes, como [::1]/128')
    try:
        return ipaddress.ip_network(f"{address}{slash}{length}", strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ValueProblem(
                f'"{entry}" has host bits set after the prefix length (write the network address)',
                f'"{entry}" tiene bits de host tras la longitud de prefijo (escriba la dirección de red)') from None
        raise ValueProblem(
            f'"{entry}" is not a network in CIDR notation (address/length)',
            f'"{entry}" no es una red en notación CIDR (dirección/longitud)') from None


def check_value(info: Info, value: str) -> None:
    """Raise ValueProblem when ``value`` does not fit ``info.type``.

    Only the types gponsim relies on are checked; free text is not."""
    kind = info.type
    if kind == "bool":
        parse_bool(value)
    elif kind == "time":
        if info.kind == "dovecot":
            parse_dovecot_time(value, info.unit or "s")
        else:
            parse_postfix_time(value, info.unit or "s")
    elif kind == "size":
        parse_size(value)
    elif kind == "int":
        parse_int(value)
    elif kind == "level":
        if not _LEVEL_RE.match(value.strip()):
            raise ValueProblem(f'bad compatibility level "{value}" (expected e.g. 3.6)',
                               f'nivel de compatibilidad no válido "{value}" (se espera, por ejemplo, 3.6)')
    elif kind == "choice":
        if value.strip() not in info.choices:
            shown = ", ".join(c if c else '""' for c in info.choices)
            raise ValueProblem(f'bad value "{value}" (expected one of: {shown})',
                               f'valor no válido "{value}" (se espera uno de: {shown})')
    elif kind == "choice_list":
        from .postfix import split_list
        for item in split_list(value):
            if item not in info.choices:
                raise ValueProblem(
                    f'bad value "{item}" in "{value}" (expected: {", ".join(info.choices)})',
                    f'valor no válido "{item}" en "{value}" (se espera: {", ".join(info.choices)})')
    elif kind == "cidr_list":
        from .postfix import split_list
        for item in split_list(value):
            if item.startswith(("!", "/")) or _TABLE_RE.match(item):
                raise ValueProblem(
                    f'"{item}": gponsim accepts only networks in CIDR notation here'
                    " (no negation, files or lookup tables)",
                    f'"{item}": gponsim solo acepta aquí redes en notación CIDR'
                    " (sin negaciones, archivos ni tablas)")
            parse_cidr(item)
