"""The lab profile: the lab server's Postfix and Dovecot files, parsed.

A profile folder mirrors the lab server's /etc::

    <config dir>/
      mailname                      /etc/mailname (myorigin = /etc/mailname)
      postfix/main.cf               /etc/postfix/main.cf
      postfix/master.cf             /etc/postfix/master.cf
      postfix/sasl_passwd           /etc/postfix/sasl_passwd (text; no postmap needed)
      dovecot/dovecot.conf          /etc/dovecot/dovecot.conf (includes conf.d/*.conf)
      dovecot/conf.d/10-auth.conf, 10-mail.conf, 10-master.conf, 10-ssl.conf,
      dovecot/conf.d/15-mailboxes.conf, 20-lmtp.conf, auth-passwdfile.conf.ext

``load_profile(None)`` reads the profile shipped with gponsim (the lab
document's configuration); ``init_config(dir)`` copies it so that an
instructor can edit it exactly like on the real server.

Paths inside the files are the lab server's: an absolute path such as
/etc/ssl/certs/ssl-cert-snakeoil.pem or /var/mail means that path under the lab
root folder (:meth:`LabProfile.path`). The configuration files themselves
(/etc/postfix/*, /etc/dovecot/* except the users file, /etc/mailname) are read
from the profile folder (:meth:`LabProfile.config_file`).
"""

from __future__ import annotations

import builtins
import os
import posixpath
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from gponsim.server.mailstore.interface import StoreError
from gponsim.server.mailstore.location import FORMATS as MAIL_FORMATS
from gponsim.server.mailstore.location import MailLocation, check_format, parse_mail_location

from . import params as _params
from .dovecot import DovecotConfig, DovecotSection, DovecotSetting, default_resolver, parse_dovecot
from .params import Catalog, Info, ValueProblem, catalog
from .postfix import (
    WELL_KNOWN_PORTS,
    ConfigError,
    MacroError,
    MacroExpander,
    MainCf,
    MasterCf,
    MasterService,
    Warning_,
    parse_main_cf,
    parse_master_cf,
    parse_table,
    split_list,
)

__all__ = [
    "DovecotDb",
    "DovecotListener",
    "DovecotUnixListener",
    "LabProfile",
    "MailLocation",
    "Mailbox",
    "PasswdFile",
    "RelayHost",
    "LMTP_SWITCH",
    "SHIPPED_PROFILE",
    "Unsimulated",
    "apply_switch",
    "init_config",
    "load_profile",
]

SHIPPED_PROFILE = Path(__file__).parent / "profile"

MAIN_CF = PurePosixPath("postfix/main.cf")
MASTER_CF = PurePosixPath("postfix/master.cf")
DOVECOT_CONF = PurePosixPath("dovecot/dovecot.conf")

# Lab-server paths whose file lives in the profile folder, not under the lab root.
_PROFILE_PATHS = {
    "/etc/postfix/": "postfix/",
    "/etc/dovecot/": "dovecot/",
}
_PROFILE_FILES = {"/etc/mailname": "mailname"}
# ...except these, which gponsim writes at run time (they live under the lab root).
_STATE_FILES = {"/etc/dovecot/users", "/etc/dovecot/private/dovecot.pem",
                "/etc/dovecot/private/dovecot.key"}

_FILE_TABLE_TYPES = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash")


class Unsimulated(NamedTuple):
    file: str
    line: int
    name: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.name}"


@dataclass(frozen=True)
class RelayHost:
    host: str
    port: int
    mx_lookup: bool          # False when the host is in [brackets]
    nexthop: str             # as written, e.g. "[smtp.gmail.com]:587"


@dataclass(frozen=True)
class DovecotListener:
    name: str                # inet_listener label: imap, imaps, pop3, pop3s...
    service: str             # imap-login, pop3-login...
    protocol: str            # imap, pop3, submission
    port: int
    ssl: bool                # implicit TLS from the first byte
    address: str             # "" = the global "listen"


@dataclass(frozen=True)
class DovecotUnixListener:
    service: str
    path: str                # as written (label of the unix_listener section)
    mode: int
    user: str
    group: str
    section: DovecotSection = field(repr=False)


@dataclass(frozen=True)
class DovecotDb:
    kind: str                # "passdb" or "userdb"
    driver: str
    args: str
    options: dict[str, str]  # key=value words of args
    file: str | None         # the bare word of args (passwd-file path)
    section: DovecotSection = field(repr=False)


@dataclass(frozen=True)
class PasswdFile:
    path: str                # lab-server path, e.g. /etc/dovecot/users
    scheme: str              # e.g. BLF-CRYPT
    username_format: str


@dataclass(frozen=True)
class Mailbox:
    name: str
    special_use: str
    auto: str


def _error_for(location: tuple[str, int], name: str, value: str, problem: ValueProblem) -> ConfigError:
    return ConfigError(location[0], location[1], f"{name} = {value}: {problem.message}",
                       es=f"{name} = {value}: {problem.message_es}")


class LabProfile:
    """The parsed lab profile and the accessors the servers use."""

    def __init__(self, directory: Path, main_cf: MainCf, master_cf: MasterCf,
                 dovecot_config: DovecotConfig, shipped: bool = False,
                 data: Catalog | None = None) -> None:
        self.directory = Path(directory)
        self.main_cf = main_cf
        self.master_cf = master_cf
        self.dovecot_config = dovecot_config
        self.shipped = shipped
        self.catalog = data or catalog()
        self._undefined: dict[str, None] = {}

    # ------------------------------------------------------------------
    # Files
    # ------------------------------------------------------------------

    def file(self, relative: str | PurePosixPath) -> Path:
        """A file of the profile folder, e.g. ``file("postfix/main.cf")``."""
        return self.directory / relative

    def files(self) -> list[Path]:
        """Every file the profile consists of, in reading order."""
        found = [self.file(MAIN_CF), self.file(MASTER_CF)]
        for extra in ("postfix/sasl_passwd", "mailname"):
            if self.file(extra).is_file():
                found.append(self.file(extra))
        found.extend(Path(p) for p in self.dovecot_config.files)
        return found

    def config_file(self, value: str) -> Path | None:
        """Profile file for a lab-server path (/etc/postfix/..., /etc/dovecot/...,
        /etc/mailname), or None when that path lives under the lab root."""
        normalized = posixpath.normpath(value)
        if normalized in _STATE_FILES:
            return None
        if normalized in _PROFILE_FILES:
            return self.directory / _PROFILE_FILES[normalized]
        for prefix, folder in _PROFILE_PATHS.items():
            if normalized.startswith(prefix):
                return self.directory / folder / normalized[len(prefix):]
        return None

    @staticmethod
    def path(value: str, lab_root: str | os.PathLike, relative_to: str | None = None) -> Path:
        """Map a lab-server path to the lab root folder.

        ``path("/var/mail", root)`` is ``root/var/mail``;
        ``path("private/auth", root, relative_to="/var/spool/postfix")`` is
        ``root/var/spool/postfix/private/auth``. A relative ``value`` needs
        ``relative_to`` (itself absolute). The result never leaves the root.
        """
        if not value:
            raise ValueError("empty path / ruta vacía")
        if not value.startswith("/"):
            if relative_to is None:
                raise ValueError(f"relative path {value!r} needs relative_to"
                                 f" / la ruta relativa {value!r} necesita relative_to")
            if not relative_to.startswith("/"):
                raise ValueError(f"relative_to must be absolute: {relative_to!r}"
                                 f" / relative_to debe ser absoluta: {relative_to!r}")
            value = posixpath.join(relative_to, value)
        normalized = posixpath.normpath(value)
        if normalized.startswith("//"):
            normalized = "/" + normalized.lstrip("/")
        if normalized == "/":
            return Path(lab_root)
        # normpath resolves ".." against "/" as the kernel does ("/.." is "/"),
        # so the result always stays inside the lab root.
        return Path(lab_root).joinpath(*PurePosixPath(normalized).parts[1:])

    # ------------------------------------------------------------------
    # Postfix: values
    # ------------------------------------------------------------------

    def _resolve_service(self, service: str | MasterService | None) -> MasterService | None:
        if service is None or isinstance(service, MasterService):
            return service
        return self.service(service)

    def _lookup(self, service: MasterService | None):
        def lookup(name: str) -> str | None:
            if service is not None:
                if name in service.overrides:
                    return service.overrides[name].value
                if name == "service_name":
                    return service.name
            entry = self.main_cf.entries.get(name)
            if entry is not None:
                return entry.value
            if name == "mydomain":
                # Postfix derives it from the effective myhostname.
                return _params.domain_of(self._value("myhostname", service))
            return self.catalog.postfix_default(name)
        return lookup

    def _expander(self, service: MasterService | None) -> MacroExpander:
        return MacroExpander(self._lookup(service), self._undefined.setdefault)

    def is_known(self, name: str) -> bool:
        """Set in main.cf or known to gponsim's catalog."""
        return name in self.main_cf.entries or self.catalog.postfix(name) is not None

    def raw(self, name: str, service: str | MasterService | None = None) -> str:
        """The value as written (main.cf, the service's -o, or the default),
        not expanded."""
        svc = self._resolve_service(service)
        if not self.is_known(name) and not (svc and name in svc.overrides):
            raise KeyError(self._unknown_message(name))
        return self._lookup(svc)(name) or ""

    def main(self, name: str) -> str:
        """main.cf value of ``name``, expanded; the Postfix default when unset.

        ``myorigin`` follows Debian's rule: a value starting with "/" names a
        file whose first line is the origin (/etc/mailname)."""
        return self._value(name, None)

    def service_param(self, service: str | MasterService, name: str) -> str:
        """Like :meth:`main`, with that master.cf service's ``-o`` overrides
        applied (also to the values other parameters refer to)."""
        svc = self._resolve_service(service)
        return self._value(name, svc)

    def _value(self, name: str, service: MasterService | None) -> str:
        if not self.is_known(name) and not (service and name in service.overrides):
            raise KeyError(self._unknown_message(name))
        try:
            value = self._expander(service).param(name)
        except MacroError as exc:
            raise self._macro_error(exc, name, service) from None
        if name == "myorigin" and value.startswith("/"):
            value = self._read_mailname(value, service)
        return value

    def _unknown_message(self, name: str) -> str:
        return (f"{name}: not set in main.cf and unknown to gponsim"
                f" (gponsim/config/data/postfix.toml) / {name}: no está en main.cf"
                " y gponsim no lo conoce")

    def _location(self, name: str, service: MasterService | None) -> tuple[str, int | None]:
        if service is not None and name in service.overrides:
            item = service.overrides[name]
            return item.path, item.line
        entry = self.main_cf.entries.get(name)
        if entry is not None:
            return entry.path, entry.line
        return self.main_cf.path, None

    def _macro_error(self, exc: MacroError, name: str, service: MasterService | None) -> ConfigError:
        owner = exc.owner or name
        path, line = self._location(owner, service)
        if line is None:
            path, line = self._location(name, service)
        return ConfigError(path, line, f"{owner}: {exc.message}", es=f"{owner}: {exc.message_es}")

    def _read_mailname(self, value: str, service: MasterService | None) -> str:
        path, line = self._location("myorigin", service)
        target = self.config_file(value)
        if target is None:
            raise ConfigError(path, line,
                              f"myorigin = {value}: gponsim reads this file from the profile only"
                              " (use /etc/mailname)",
                              es=f"myorigin = {value}: gponsim solo lee este archivo del perfil"
                                 " (use /etc/mailname)")
        try:
            lines = target.read_text(encoding="utf-8").splitlines()
        except OSError:
            raise ConfigError(path, line, f"myorigin = {value}: cannot read {target}",
                              es=f"myorigin = {value}: no se puede leer {target}") from None
        first = lines[0].strip() if lines else ""
        if not first:
            raise ConfigError(path, line, f"myorigin = {value}: {target} is empty",
                              es=f"myorigin = {value}: {target} está vacío")
        return first

    def _info(self, name: str) -> Info | None:
        return self.catalog.postfix(name)

    def bool(self, name: str, service: str | MasterService | None = None) -> bool:
        return self._typed(name, service, _params.parse_bool)

    def time(self, name: str, service: str | MasterService | None = None) -> float:
        """A Postfix time in seconds (``300s``, ``5d``; a bare number uses the
        parameter's default unit, e.g. days for maximal_queue_lifetime)."""
        info = self._info(name)
        unit = info.unit if info and info.unit else "s"
        return self._typed(name, service, lambda value: _params.parse_postfix_time(value, unit))

    def size(self, name: str, service: str | MasterService | None = None) -> int:
        return self._typed(name, service, _params.parse_size)

    def int(self, name: str, service: str | MasterService | None = None) -> int:
        return self._typed(name, service, _params.parse_int)

    def list(self, name: str, service: str | MasterService | None = None) -> builtins.list[str]:
        """Split on commas and whitespace; ``{...}`` stays one element."""
        return split_list(self._value(name, self._resolve_service(service)))

    @staticmethod
    def split_list(value: str) -> builtins.list[str]:
        """Split a Postfix list value (commas and whitespace; ``{...}`` kept)."""
        return split_list(value)

    @staticmethod
    def time_value(value: str, unit: str = "s") -> float:
        """Seconds of a Postfix time value such as ``300s`` or ``5d``
        (``unit`` applies to a bare number). Raises ValueProblem."""
        return _params.parse_postfix_time(value, unit)

    def myorigin(self, service: str | MasterService | None = None) -> str:
        """The effective origin domain (Debian reads /etc/mailname)."""
        return self._value("myorigin", self._resolve_service(service))

    def mynetworks(self, service: str | MasterService | None = None):
        """mynetworks as ipaddress networks."""
        return self._typed("mynetworks", service,
                           lambda value: [_params.parse_cidr(item) for item in split_list(value)])

    def _typed(self, name: str, service, convert):
        svc = self._resolve_service(service)
        value = self._value(name, svc)
        try:
            return convert(value)
        except ValueProblem as problem:
            raise _error_for(self._location(name, svc), name, value, problem) from None

    def relayhost(self) -> RelayHost | None:
        """relayhost parsed; None when empty (direct delivery)."""
        value = self.main("relayhost").strip()
        if not value:
            return None
        return self._parse_relayhost(value)

    def _parse_relayhost(self, value: str) -> RelayHost:
        path, line = self._location("relayhost", None)
        first = split_list(value)[0]
        match = re.match(r"^(\[([^\]]+)\]|([^:\[\]]+))(?::(\w+))?$", first)
        if not match:
            raise ConfigError(path, line, f'relayhost = {value}: expected host, [host], host:port or [host]:port',
                              es=f'relayhost = {value}: se espera host, [host], host:port o [host]:port')
        host = match.group(2) or match.group(3)
        port_text = match.group(4) or "smtp"
        if port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        elif port_text in WELL_KNOWN_PORTS:
            port = WELL_KNOWN_PORTS[port_text]
        else:
            raise ConfigError(path, line, f'relayhost = {value}: "{port_text}" is not a port',
                              es=f'relayhost = {value}: "{port_text}" no es un puerto')
        return RelayHost(host, port, match.group(2) is None, first)

    # ------------------------------------------------------------------
    # Postfix: master.cf
    # ------------------------------------------------------------------

    def services(self) -> builtins.list[MasterService]:
        return builtins.list(self.master_cf.services)

    def service(self, name: str) -> MasterService:
        """A master.cf service by ``name/type`` (``smtp/unix``) or by ``name``
        alone: the only entry with that name or, when there are several, its
        inet entry (``smtp`` is ``smtp/inet``, the port 25 smtpd)."""
        base, _, type_ = name.partition("/")
        found = self.master_cf.find(base, type_ or None)
        if not found:
            raise KeyError(f"no master.cf service {name!r} / no hay servicio {name!r} en master.cf")
        if len(found) > 1 and not type_:
            found = [s for s in found if s.type == "inet"] or found
        if len(found) > 1:
            keys = ", ".join(s.key for s in found)
            raise KeyError(f"ambiguous master.cf service {name!r}: use one of {keys}"
                           f" / servicio ambiguo {name!r}: use {keys}")
        return found[0]

    def smtpd_services(self) -> builtins.list[MasterService]:
        """master.cf inet services whose command is smtpd (port, host and
        overrides on each), in file order."""
        return [s for s in self.master_cf.services if s.type == "inet" and s.command == "smtpd"]

    # ------------------------------------------------------------------
    # Postfix: SMTP client credentials
    # ------------------------------------------------------------------

    def sasl_passwd(self) -> dict[str, tuple[str, str]]:
        """smtp_sasl_password_maps read from the text file(s):
        next-hop → (user, password).

        On the real server ``postmap /etc/postfix/sasl_passwd`` compiles the
        text into sasl_passwd.db, and Postfix reads only the .db; gponsim reads
        the text directly, so no postmap step is needed here."""
        result: dict[str, tuple[str, str]] = {}
        path, line = self._location("smtp_sasl_password_maps", None)
        for table in self.list("smtp_sasl_password_maps"):
            kind, _, target = table.partition(":")
            if kind not in _FILE_TABLE_TYPES or not target:
                raise ConfigError(path, line,
                                  f"smtp_sasl_password_maps: gponsim can only read file tables"
                                  f" ({', '.join(_FILE_TABLE_TYPES)}), not {table}",
                                  es=f"smtp_sasl_password_maps: gponsim solo lee tablas en archivo"
                                     f" ({', '.join(_FILE_TABLE_TYPES)}), no {table}")
            source = self.config_file(target)
            if source is None:
                raise ConfigError(path, line,
                                  f"smtp_sasl_password_maps: {target} must be under /etc/postfix",
                                  es=f"smtp_sasl_password_maps: {target} debe estar en /etc/postfix")
            if not source.is_file():
                raise ConfigError(path, line,
                                  f"smtp_sasl_password_maps: table {table} is unavailable ({source} not found)",
                                  es=f"smtp_sasl_password_maps: la tabla {table} no está disponible"
                                     f" (no existe {source})")
            for key, entry in parse_table(source).items():
                if key in result:
                    continue  # the first table that has the key wins
                user, _, password = entry.value.partition(":")
                result[key] = (user, password)
        return result

    def sasl_credentials(self, host: str, nexthop: str | None = None) -> tuple[str, str] | None:
        """Credentials for a relay, looked up like Postfix: by host name
        first, then by next-hop (``[smtp.gmail.com]:587``)."""
        table = self.sasl_passwd()
        for key in (host, nexthop):
            if key and key.lower() in table:
                return table[key.lower()]
        return None

    # ------------------------------------------------------------------
    # Dovecot
    # ------------------------------------------------------------------

    @property
    def dovecot_root(self) -> DovecotSection:
        return self.dovecot_config.root

    def dovecot_setting(self, name: str, section: DovecotSection | None = None) -> DovecotSetting | None:
        return (section or self.dovecot_root).setting(name)

    def dovecot(self, name: str, section: DovecotSection | None = None) -> str:
        """A Dovecot setting as written (``<path`` for a file reference),
        or its default. ``section`` looks inside that section instead of the
        top level."""
        node = section or self.dovecot_root
        setting = node.setting(name)
        if setting is not None:
            return setting.written
        generic = "/".join(node.names + [name])
        info = self.catalog.dovecot(generic)
        if info is None:
            raise KeyError(f"{generic}: not set and unknown to gponsim / no está definido"
                           " y gponsim no lo conoce")
        return info.default or ""

    def dovecot_file(self, name: str, section: DovecotSection | None = None) -> str | None:
        """The path of a ``name = <path`` setting (ssl_cert, ssl_key), or None."""
        setting = (section or self.dovecot_root).setting(name)
        if setting is None:
            value = self.dovecot(name, section)
            return value[1:].strip() if value.startswith("<") else None
        return setting.value if setting.file_ref else None

    def _dovecot_typed(self, name: str, section, convert):
        value = self.dovecot(name, section)
        try:
            return convert(value)
        except ValueProblem as problem:
            setting = (section or self.dovecot_root).setting(name)
            location = (setting.path, setting.line) if setting else (self.dovecot_config.path, None)
            raise _error_for(location, name, value, problem) from None

    def dovecot_bool(self, name: str, section: DovecotSection | None = None) -> bool:
        return self._dovecot_typed(name, section, _params.parse_bool)

    def dovecot_time(self, name: str, section: DovecotSection | None = None) -> float:
        return self._dovecot_typed(name, section, _params.parse_dovecot_time)

    def dovecot_list(self, name: str, section: DovecotSection | None = None) -> builtins.list[str]:
        return [item for item in re.split(r"[\s,]+", self.dovecot(name, section)) if item]

    def dovecot_section(self, name: str, label: str | None = None) -> DovecotSection | None:
        return self.dovecot_root.section(name, label)

    def dovecot_sections(self, name: str, label: str | None = None) -> builtins.list[DovecotSection]:
        return self.dovecot_root.find(name, label)

    def protocols(self) -> builtins.list[str]:
        return self.dovecot_list("protocols")

    def auth_mechanisms(self) -> builtins.list[str]:
        """auth_mechanisms in Dovecot's MECH spelling: ``["PLAIN", "LOGIN"]``."""
        return [mechanism.upper() for mechanism in self.dovecot_list("auth_mechanisms")]

    def mail_max_userip_connections(self, protocol: str) -> int:
        """The limit for ``protocol`` (imap, pop3): from its ``protocol NAME { }``
        section if set there, else the top-level setting (0 = no limit)."""
        section = self.dovecot_section("protocol", protocol)
        if section is not None and section.setting("mail_max_userip_connections") is not None:
            return self._dovecot_typed("mail_max_userip_connections", section, _params.parse_int)
        return self._dovecot_typed("mail_max_userip_connections", None, _params.parse_int)

    def protocol_setting(self, protocol: str, name: str) -> str:
        """A setting as the ``protocol`` service sees it: from its
        ``protocol NAME { }`` section if set there, else the top level."""
        section = self.dovecot_section("protocol", protocol)
        if section is not None and section.setting(name) is not None:
            return self.dovecot(name, section)
        return self.dovecot(name)

    def lmtp_enabled(self) -> bool:
        """Dovecot serves LMTP (``lmtp`` in ``protocols``)."""
        return "lmtp" in self.protocols()

    def lmtp_socket_paths(self) -> builtins.list[tuple[str, DovecotUnixListener]]:
        """(lab-server path, listener) of each ``unix_listener`` of ``service
        lmtp``; a relative one lives in ``base_dir`` (/run/dovecot/lmtp)."""
        base = self.dovecot("base_dir") or "/run/dovecot"
        return [(posixpath.normpath(listener.path if listener.path.startswith("/")
                                    else posixpath.join(base, listener.path)), listener)
                for listener in self.unix_listeners("lmtp")]

    def mailbox_transport_socket(self) -> str | None:
        """The lab-server path of main.cf's ``mailbox_transport =
        lmtp:unix:PATH`` (relative to queue_directory), or None."""
        name, _, nexthop = self.main("mailbox_transport").strip().partition(":")
        kind, _, address = nexthop.partition(":")
        if name != "lmtp" or kind != "unix" or not address:
            return None
        if address.startswith("/"):
            return posixpath.normpath(address)
        return posixpath.normpath(posixpath.join(self.main("queue_directory"), address))

    def auth_failure_delay(self) -> float:
        return self.dovecot_time("auth_failure_delay")

    def auth_socket_path(self, lab_root: str | os.PathLike) -> Path:
        """Where Dovecot's auth socket for Postfix lives under the lab root
        (smtpd_sasl_path relative to queue_directory)."""
        return self.path(self.postfix_sasl_socket(), lab_root)

    def inet_listeners(self, protocol: str | None = None) -> builtins.list[DovecotListener]:
        """Dovecot's TCP listeners for the enabled protocols: the built-in
        ones (imap 143, imaps 993, pop3 110, pop3s 995) with the profile's
        ``service X-login { inet_listener NAME { port, ssl, address } }``
        applied; port 0 disables a listener."""
        enabled = set(self.protocols())
        result: builtins.list[DovecotListener] = []
        seen: set[tuple[str, str]] = set()
        defaults = self.catalog.listeners
        for name, default in defaults.items():
            seen.add((default.service, name))
            result.append(self._listener(default.service, default.protocol, name,
                                         default.port, default.ssl))
        for service in self.dovecot_sections("service"):
            for listener in service.find("inet_listener"):
                if (service.label, listener.label) in seen or service.label is None:
                    continue
                protocol = service.label.removesuffix("-login")
                result.append(self._listener(service.label, protocol, listener.label or "", 0, False))
        return [item for item in result
                if item.port and item.protocol in enabled and (protocol is None or item.protocol == protocol)]

    def _listener(self, service_name: str, protocol: str, name: str, port: int, ssl: bool) -> DovecotListener:
        address = ""
        service = self.dovecot_section("service", service_name)
        section = service.section("inet_listener", name) if service else None
        if section is not None:
            if section.setting("port") is not None:
                port = self._dovecot_typed("port", section, _params.parse_int)
            if section.setting("ssl") is not None:
                ssl = self.dovecot_bool("ssl", section)
            address = section.get("address", "") or ""
        return DovecotListener(name, service_name, protocol, port, ssl, address)

    def unix_listeners(self, service: str = "auth") -> builtins.list[DovecotUnixListener]:
        result = []
        for section in self.dovecot_sections("service", service):
            for listener in section.find("unix_listener"):
                mode_text = self.dovecot("mode", listener)
                try:
                    mode = int(mode_text, 8)
                except ValueError:
                    setting = listener.setting("mode")
                    raise ConfigError(setting.path if setting else self.dovecot_config.path,
                                      setting.line if setting else None,
                                      f'mode = {mode_text}: expected an octal mode such as 0666',
                                      es=f'mode = {mode_text}: se espera un modo octal como 0666') from None
                result.append(DovecotUnixListener(service, listener.label or "", mode,
                                                  self.dovecot("user", listener),
                                                  self.dovecot("group", listener), listener))
        return result

    def postfix_auth_listener(self) -> DovecotUnixListener | None:
        """The Dovecot auth socket that Postfix's smtpd_sasl_path points at
        (/var/spool/postfix/private/auth in the lab), if Dovecot defines it."""
        wanted = self.postfix_sasl_socket()
        for listener in self.unix_listeners("auth"):
            if posixpath.normpath(listener.path) == wanted:
                return listener
        return None

    def postfix_sasl_socket(self) -> str:
        """Lab-server path of smtpd_sasl_path (relative to queue_directory)."""
        value = self.main("smtpd_sasl_path")
        if value.startswith("/"):
            return posixpath.normpath(value)
        return posixpath.normpath(posixpath.join(self.main("queue_directory"), value))

    def _dbs(self, kind: str) -> builtins.list[DovecotDb]:
        result = []
        for section in self.dovecot_sections(kind):
            args = section.get("args", "") or ""
            options: dict[str, str] = {}
            bare: str | None = None
            for word in args.split():
                key, eq, value = word.partition("=")
                if eq:
                    options[key] = value
                else:
                    bare = word
            result.append(DovecotDb(kind, section.get("driver", "") or "", args, options, bare, section))
        return result

    def passdbs(self) -> builtins.list[DovecotDb]:
        return self._dbs("passdb")

    def userdbs(self) -> builtins.list[DovecotDb]:
        return self._dbs("userdb")

    def passwd_file(self) -> str:
        """Lab-server path of the passwd-file holding the users
        (/etc/dovecot/users; map it with :meth:`path`)."""
        return self.passdb_file().path

    def passdb_file(self) -> PasswdFile:
        """The passwd-file passdb gponsim keeps its users in (path, scheme)."""
        for db in self.passdbs():
            if db.driver == "passwd-file" and db.file:
                return PasswdFile(db.file, db.options.get("scheme", "CRYPT"),
                                  db.options.get("username_format", "%u"))
        raise ConfigError(self.dovecot_config.path, None,
                          "no passdb with driver = passwd-file: gponsim keeps its users in one"
                          " (see conf.d/10-auth.conf, !include auth-passwdfile.conf.ext)",
                          es="no hay un passdb con driver = passwd-file: gponsim guarda en él sus"
                             " usuarios (vea conf.d/10-auth.conf, !include auth-passwdfile.conf.ext)")

    def mail_location(self) -> MailLocation:
        """mail_location split: ``mbox:~/mail:INBOX=/var/mail/%u`` →
        format mbox, root ~/mail, options {INBOX: /var/mail/%u}. A format
        gponsim does not simulate is a ConfigError (empty means the lab's mbox)."""
        value = self.dovecot("mail_location")
        location = parse_mail_location(value)
        try:
            check_format(location)
        except StoreError:
            setting = self.dovecot_setting("mail_location")
            have = ", ".join(sorted(MAIL_FORMATS))
            raise ConfigError(setting.path if setting else self.dovecot_config.path,
                              setting.line if setting else None,
                              f"mail_location = {value}: mailbox format {location.format!r} "
                              f"is not simulated (gponsim has: {have})",
                              es=f"mail_location = {value}: el formato de buzón "
                                 f"{location.format!r} no está simulado (gponsim tiene: {have})"
                              ) from None
        return location

    def mailboxes(self, namespace: str = "inbox") -> builtins.list[Mailbox]:
        """``mailbox NAME { special_use, auto }`` of a namespace (Debian's
        15-mailboxes.conf: Drafts, Junk, Trash, Sent, "Sent Messages")."""
        section = self.dovecot_section("namespace", namespace)
        if section is None:
            return []
        return [Mailbox(box.label or "", box.get("special_use", "") or "", box.get("auto", "no") or "no")
                for box in section.find("mailbox")]

    # ------------------------------------------------------------------
    # What is not simulated, and other remarks
    # ------------------------------------------------------------------

    def unsimulated(self) -> builtins.list[Unsimulated]:
        """(file, line, name) of every parameter set in the files that
        gponsim does not simulate (unknown ones included), each name once;
        also master.cf inet services that are not smtpd."""
        result: builtins.list[Unsimulated] = []
        seen: set[str] = set()

        def add(path: str, line: int, name: str) -> None:
            if name not in seen:
                seen.add(name)
                result.append(Unsimulated(path, line, name))

        for entry in self.main_cf.all_entries:
            info = self.catalog.postfix(entry.name)
            if info is None or not info.simulated:
                add(entry.path, entry.line, entry.name)
        for service in self.master_cf.services:
            if service.type == "inet" and service.command != "smtpd":
                add(service.path, service.line, f"{service.key} ({service.command})")
            for item in service.overrides.values():
                info = self.catalog.postfix(item.name)
                if info is None or not info.simulated:
                    add(item.path, item.line, item.name)
        for setting in self.dovecot_config.settings:
            info = self.catalog.dovecot(setting.generic_key)
            if info is None or not info.simulated:
                add(setting.path, setting.line, setting.display_name)
        return result

    def warnings(self) -> builtins.list[Warning_]:
        """Non-fatal remarks: entries that override earlier ones, "#" inside
        values, undefined $names, a SASL socket Dovecot does not create."""
        found = builtins.list(self.main_cf.warnings)
        for name in self._undefined:
            found.append(Warning_(self.main_cf.path, None, f"undefined parameter: {name}",
                                  f"parámetro no definido: {name}"))
        uses_dovecot = any(self.service_param(s, "smtpd_sasl_auth_enable").lower() == "yes"
                           for s in self.smtpd_services()) and self.main("smtpd_sasl_type") == "dovecot"
        if uses_dovecot and self.postfix_auth_listener() is None:
            path, line = self._location("smtpd_sasl_path", None)
            socket = self.postfix_sasl_socket()
            found.append(Warning_(
                path, line,
                f"Dovecot defines no unix_listener {socket} in service auth: AUTH will fail"
                " with 454 4.7.0 Temporary authentication failure",
                f"Dovecot no define ningún unix_listener {socket} en service auth: AUTH fallará"
                " con 454 4.7.0 Temporary authentication failure"))
        socket = self.mailbox_transport_socket()
        if socket is not None:
            served = self.lmtp_enabled() and any(path == socket
                                                  for path, _l in self.lmtp_socket_paths())
            if not served:
                path, line = self._location("mailbox_transport", None)
                why = ("protocols has no lmtp" if not self.lmtp_enabled()
                       else "no service lmtp { unix_listener } has that path")
                why_es = ("protocols no incluye lmtp" if not self.lmtp_enabled()
                          else "ningún service lmtp { unix_listener } tiene esa ruta")
                found.append(Warning_(
                    path, line,
                    f"mailbox_transport delivers over LMTP to {socket}, but Dovecot does not "
                    f"create that socket ({why}): local mail will be deferred (connect to ...: "
                    f"No such file or directory)",
                    f"mailbox_transport entrega por LMTP a {socket}, pero Dovecot no crea ese "
                    f"socket ({why_es}): el correo local quedará diferido (connect to ...: "
                    f"No such file or directory)"))
        return found

    # ------------------------------------------------------------------
    # Validation (run by load_profile)
    # ------------------------------------------------------------------

    def validate(self) -> None:
        """Expand every value and check the types gponsim relies on;
        the first problem is raised as ConfigError naming file:line."""
        for entry in self.main_cf.entries.values():
            self._check(entry.name, None, (entry.path, entry.line))
        for service in self.master_cf.services:
            for item in service.overrides.values():
                self._check(item.name, service, (item.path, item.line))
        if self.main_cf.get("relayhost") is not None and self.main("relayhost").strip():
            self.relayhost()
        self.main("myorigin")                       # reads /etc/mailname when named
        if self.bool("smtp_sasl_auth_enable"):
            self.sasl_passwd()                      # the relay will need it
        for setting in self.dovecot_config.settings:
            info = self.catalog.dovecot(setting.generic_key)
            if info is not None and not setting.file_ref:
                try:
                    _params.check_value(info, setting.value)
                except ValueProblem as problem:
                    raise _error_for((setting.path, setting.line), setting.key, setting.value,
                                     problem) from None
        self.unix_listeners("auth")
        self.mail_location()                        # a format gponsim has
        for listener_service in self.dovecot_sections("service"):
            for listener in listener_service.find("inet_listener"):
                if listener.setting("port") is not None:
                    self._dovecot_typed("port", listener, _params.parse_int)

    def _check(self, name: str, service: MasterService | None, location: tuple[str, int]) -> None:
        try:
            value = self._expander(service).param(name)
        except MacroError as exc:
            owner = exc.owner or name
            where = self._location(owner, service)
            if where[1] is None:
                where = location
            raise ConfigError(where[0], where[1], f"{owner}: {exc.message}",
                              es=f"{owner}: {exc.message_es}") from None
        info = self.catalog.postfix(name)
        if info is None:
            return
        try:
            _params.check_value(info, value)
        except ValueProblem as problem:
            raise _error_for(location, name, value, problem) from None


# ---------------------------------------------------------------------------
# Loading and copying
# ---------------------------------------------------------------------------

def _dovecot_resolver(directory: Path):
    def resolve(target: str, base: Path) -> list[str]:
        if target.startswith("/"):
            for prefix, folder in _PROFILE_PATHS.items():
                if target.startswith(prefix) and folder == "dovecot/":
                    return default_resolver(target[len(prefix):], directory / folder)
            return []   # outside the profile (e.g. /usr/share/...): not available
        return default_resolver(target, base)
    return resolve


def load_profile(config_dir: str | os.PathLike | None = None) -> LabProfile:
    """Load a lab profile: None = the one shipped with gponsim, or a folder
    written by :func:`init_config`. Raises ConfigError (file:line) on any
    syntax or value problem."""
    shipped = config_dir is None
    directory = SHIPPED_PROFILE if shipped else Path(config_dir)
    if not directory.is_dir():
        raise ConfigError(directory, None, "profile folder not found",
                          es="no existe la carpeta del perfil")
    data = catalog()
    main_cf = parse_main_cf(directory / MAIN_CF)
    master_cf = parse_master_cf(directory / MASTER_CF)

    def dovecot_default(name: str) -> str | None:
        info = data.dovecot(name)
        return info.default if info else None

    dovecot_config = parse_dovecot(directory / DOVECOT_CONF, resolve=_dovecot_resolver(directory),
                                   defaults=dovecot_default)
    profile = LabProfile(directory, main_cf, master_cf, dovecot_config, shipped=shipped, data=data)
    profile.validate()
    return profile


def _shipped_files() -> list[PurePosixPath]:
    """The shipped profile's files: Postfix's first (main.cf, master.cf...),
    then mailname, then Dovecot's."""
    files = []
    for path in SHIPPED_PROFILE.rglob("*"):
        relative = path.relative_to(SHIPPED_PROFILE)
        if path.is_file() and not any(part.startswith((".", "__")) for part in relative.parts):
            files.append(PurePosixPath(relative.as_posix()))
    first = [MAIN_CF, MASTER_CF]
    rank = {"postfix": 0, "mailname": 1, "dovecot": 2}
    return sorted(files, key=lambda p: (rank.get(p.parts[0], 3), p not in first,
                                        first.index(p) if p in first else 0, p.as_posix()))


#: Delivery through Dovecot's LMTP (``gponsim config init --lmtp``): the edits an
#: administrator makes on the real server after ``apt install dovecot-lmtpd``,
#: as (profile file, text as shipped, text after the edit). The shipped files
#: carry these lines commented out.
LMTP_SWITCH = (
    ("postfix/main.cf", "\n#mailbox_transport = lmtp:unix:private/dovecot-lmtp\n",
     "\nmailbox_transport = lmtp:unix:private/dovecot-lmtp\n"),
    ("dovecot/dovecot.conf", "\nprotocols = imap pop3\n", "\n#protocols = imap pop3\n"),
    ("dovecot/dovecot.conf", "\n#protocols = imap pop3 lmtp\n", "\nprotocols = imap pop3 lmtp\n"),
    ("dovecot/conf.d/10-master.conf",
     "  #unix_listener /var/spool/postfix/private/dovecot-lmtp {\n  #  mode = 0600\n"
     "  #  user = postfix\n  #  group = postfix\n  #}\n",
     "  unix_listener /var/spool/postfix/private/dovecot-lmtp {\n    mode = 0600\n"
     "    user = postfix\n    group = postfix\n  }\n"),
    ("dovecot/conf.d/20-lmtp.conf", "\n  #auth_username_format = %Ln\n",
     "\n  auth_username_format = %Ln\n"),
)


def apply_switch(directory: str | os.PathLike, edits=LMTP_SWITCH) -> list[Path]:
    """Make ``edits`` in the profile at ``directory``; returns the files changed.
    Raises ConfigError when a file does not hold the text to replace."""
    changed: list[Path] = []
    for relative, old, new in edits:
        path = Path(directory) / relative
        text = path.read_text(encoding="utf-8")
        if old not in text:
            raise ConfigError(path, None, f"does not contain {old.strip()!r}: edit it by hand",
                              es=f"no contiene {old.strip()!r}: edítelo a mano")
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
        if path not in changed:
            changed.append(path)
    return changed


def init_config(dest_dir: str | os.PathLike, force: bool = False, lmtp: bool = False) -> list[Path]:
    """Copy the shipped profile into ``dest_dir`` (created if needed).

    Refuses (ConfigError naming the first existing file) to overwrite any
    file unless ``force``. Returns the files written. sasl_passwd gets mode
    0600, as the lab document does with chmod 600. ``lmtp``: with the
    :data:`LMTP_SWITCH` made (mail delivered through Dovecot's LMTP)."""
    destination = Path(dest_dir)
    if destination.exists() and not destination.is_dir():
        raise ConfigError(destination, None, "exists and is not a folder",
                          es="existe y no es una carpeta")
    files = _shipped_files()
    if not force:
        existing = [destination / relative for relative in files if (destination / relative).exists()]
        if existing:
            more = len(existing) - 1
            en_more = f" (and {more} more profile file{'s' if more > 1 else ''})" if more else ""
            es_more = f" (y {more} archivo{'s' if more > 1 else ''} más del perfil)" if more else ""
            raise ConfigError(existing[0], None,
                              f"already exists{en_more}: nothing was written (use --force to replace them)",
                              es=f"ya existe{es_more}: no se ha escrito nada (use --force para reemplazarlos)")
    written = []
    for relative in files:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHIPPED_PROFILE / relative, target)
        if relative.name == "sasl_passwd":
            target.chmod(0o600)
        written.append(target)
    if lmtp:
        apply_switch(destination)
    return written
