"""``gponsim config explain``: every line of the lab profile, annotated.

:func:`explain_rows` turns the profile (or one Postfix/Dovecot file) into
rows: where the setting is, its value, what it does (Spanish or English),
whether gponsim simulates it and how. :func:`render_explain` prints them
with rich, as tables or as a listing, grouped by file. Settings gponsim does
not know are shown as such, never skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .dovecot import DovecotConfig, parse_dovecot
from .params import Catalog, Info
from .postfix import (
    ConfigError,
    MacroError,
    MacroExpander,
    MainCf,
    MasterCf,
    parse_main_cf,
    parse_master_cf,
    parse_table,
)
from .profile import LabProfile

__all__ = ["Row", "explain_rows", "render_explain", "HEADERS"]


@dataclass(frozen=True)
class Row:
    file: str                 # profile-relative path (e.g. postfix/main.cf) or the path given
    line: int | None
    name: str                 # parameter, "-o" parameter, service name/type, Dovecot path
    value: str                # as written
    explanation: str
    simulated: bool
    note: str = ""
    known: bool = True
    kind: str = "parameter"   # parameter, override, service, entry, setting, section, include
    context: str = ""         # the master.cf service of an override
    expanded: str | None = None   # the value after $name expansion, when it differs


HEADERS = {
    "es": {"line": "Línea", "name": "Parámetro", "value": "Valor", "explanation": "Explicación",
           "simulated": "¿Simulado?", "yes": "sí", "no": "no", "note": "En gponsim",
           "unknown": "Desconocido para gponsim: no se simula.",
           "expands": "se expande a", "file": "Archivo", "service_of": "para el servicio"},
    "en": {"line": "Line", "name": "Parameter", "value": "Value", "explanation": "Explanation",
           "simulated": "Simulated?", "yes": "yes", "no": "no", "note": "In gponsim",
           "unknown": "Unknown to gponsim: not simulated.",
           "expands": "expands to", "file": "File", "service_of": "for service"},
}

_TEXTS = {
    "sasl_entry": {
        "es": "Credenciales SASL (usuario:contraseña de aplicación) que el cliente SMTP de Postfix"
              " presenta a este relay. En el servidor real hay que ejecutar 'postmap' tras editarlo;"
              " gponsim lee el texto directamente.",
        "en": "SASL credentials (user:app password) the Postfix SMTP client presents to this relay."
              " On the real server run 'postmap' after editing it; gponsim reads the text directly.",
    },
    "mailname": {
        "es": "/etc/mailname: el nombre de correo del sistema. Con myorigin = /etc/mailname se usa su"
              " primera línea: el correo local de user1 sale como user1@{value}.",
        "en": "/etc/mailname: the system's mail name. With myorigin = /etc/mailname its first line"
              " is used: local mail from user1 goes out as user1@{value}.",
    },
    "include": {
        "es": "Inserta aquí el contenido de {files}.",
        "en": "Inserts the contents of {files} here.",
    },
    "include_none": {
        "es": "Ningún archivo coincide; con !include_try se omite sin error.",
        "en": "No file matches; with !include_try it is skipped without error.",
    },
    "inet_port": {
        "es": "Escucha en el puerto TCP {port}{host}.",
        "en": "Listens on TCP port {port}{host}.",
    },
}


def _t(key: str, lang: str, **values) -> str:
    return _TEXTS[key][lang if lang in ("es", "en") else "en"].format(**values)


def _info_texts(info: Info | None, lang: str) -> tuple[str, bool, str, bool]:
    if info is None:
        return HEADERS[lang]["unknown"], False, "", False
    return info.text(lang), info.simulated, info.note_text(lang), True


def _display(path: str, base: Path | None) -> str:
    if base is not None:
        try:
            return Path(path).resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


# ---------------------------------------------------------------------------
# Rows per file type
# ---------------------------------------------------------------------------

def _main_rows(main_cf: MainCf, data: Catalog, lang: str, base: Path | None,
               expand) -> list[Row]:
    rows = []
    for entry in main_cf.all_entries:
        text, simulated, note, known = _info_texts(data.postfix(entry.name), lang)
        expanded = None
        if entry is main_cf.entries.get(entry.name):
            try:
                value = expand(entry.name)
            except (MacroError, ConfigError, KeyError):
                value = None
            if value is not None and value != entry.value:
                expanded = value
        rows.append(Row(_display(entry.path, base), entry.line, entry.name, entry.value, text,
                        simulated, note, known, "parameter", "", expanded))
    return rows


def _master_rows(master_cf: MasterCf, data: Catalog, lang: str, base: Path | None) -> list[Row]:
    rows = []
    for service in master_cf.services:
        text, simulated, note, known = _info_texts(data.service(service.command), lang)
        if service.type == "inet" and service.port:
            host = f" ({service.host})" if service.host else ""
            text = f"{_t('inet_port', lang, port=service.port, host=host)} {text}"
        value = " ".join(service.fields[2:] + service.args)
        rows.append(Row(_display(service.path, base), service.line, service.key, value, text,
                        simulated, note, known, "service"))
        for item in service.overrides.values():
            text, simulated, note, known = _info_texts(data.postfix(item.name), lang)
            rows.append(Row(_display(item.path, base), item.line, item.name, item.value, text,
                            simulated, note, known, "override", service.key))
    return rows


def _table_rows(path: str, lang: str, base: Path | None) -> list[Row]:
    rows = []
    for key, entry in parse_table(path).items():
        user, _, _ = entry.value.partition(":")
        rows.append(Row(_display(entry.path, base), entry.line, key, f"{user}:********",
                        _t("sasl_entry", lang), True, "", True, "entry"))
    return rows


def _mailname_rows(path: Path, lang: str, base: Path | None) -> list[Row]:
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(lines, 1):
        if text.strip():
            return [Row(_display(str(path), base), number, "mailname", text.strip(),
                        _t("mailname", lang, value=text.strip()), True, "", True, "entry")]
    return []


def _dovecot_rows(config: DovecotConfig, data: Catalog, lang: str, base: Path | None,
                  only: str | None = None) -> list[Row]:
    order = {path: index for index, path in enumerate(config.files)}
    items: list[tuple[int, int, int, Row]] = []
    for sequence, setting in enumerate(config.settings):
        text, simulated, note, known = _info_texts(data.dovecot(setting.generic_key), lang)
        row = Row(_display(setting.path, base), setting.line, setting.display_name, setting.written,
                  text, simulated, note, known, "setting")
        items.append((order.get(setting.path, 0), setting.line, sequence, row))
    for sequence, (section, path, line) in enumerate(config.section_openings):
        text, simulated, note, known = _info_texts(data.section(section.generic_key, section.label), lang)
        row = Row(_display(path, base), line, section.display_path, "{ ... }", text, simulated,
                  note, known, "section")
        items.append((order.get(path, 0), line, -1, row))
    for include in config.includes:
        if include.files:
            shown = ", ".join(_display(f, base) for f in include.files)
            text = _t("include", lang, files=shown)
        else:
            text = _t("include_none", lang)
        row = Row(_display(include.path, base), include.line,
                  "!include_try" if include.optional else "!include", include.target,
                  text, True, "", True, "include")
        items.append((order.get(include.path, 0), include.line, -2, row))
    items.sort(key=lambda item: item[:3])
    rows = [item[3] for item in items]
    if only is not None:
        rows = [row for row in rows if row.file == only]
    return rows


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def explain_rows(profile: LabProfile, file: str | os.PathLike | None = None,
                 lang: str = "es") -> list[Row]:
    """Rows for every file of ``profile`` (``file=None``), for one of its
    files (by path, profile-relative path such as ``postfix/main.cf``, or
    bare name such as ``10-auth.conf``), or for any main.cf / master.cf /
    Dovecot .conf file given by path, explained alone."""
    lang = lang if lang in ("es", "en") else "en"
    data = profile.catalog
    base = profile.directory
    all_rows = (_main_rows(profile.main_cf, data, lang, base, profile.main)
                + _master_rows(profile.master_cf, data, lang, base))
    sasl = profile.file("postfix/sasl_passwd")
    if sasl.is_file():
        all_rows += _table_rows(str(sasl), lang, base)
    mailname = profile.file("mailname")
    if mailname.is_file():
        all_rows += _mailname_rows(mailname, lang, base)
    all_rows += _dovecot_rows(profile.dovecot_config, data, lang, base)
    if file is None:
        return all_rows

    wanted = _match_profile_file(profile, file)
    if wanted is not None:
        return [row for row in all_rows if row.file == wanted]
    return _standalone_rows(Path(file), data, lang)


def parameter_rows(profile: LabProfile, name: str, lang: str = "es") -> list[Row]:
    """One row explaining a Postfix parameter or a Dovecot setting by name,
    with its value in the profile (as ``postconf`` or ``doveconf`` would
    show it: the file's, else the default): for those the lab's files do
    not write, such as smtpd_client_connection_count_limit. Empty when
    gponsim does not know the name."""
    lang = lang if lang in ("es", "en") else "en"
    data = profile.catalog
    info = data.postfix(name)
    if info is not None:
        text, simulated, note, known = _info_texts(info, lang)
        entry = profile.main_cf.entries.get(name)
        written = entry.value if entry is not None else (data.postfix_default(name) or "")
        try:
            value = profile.main(name)
        except (MacroError, ConfigError, KeyError):
            value = None
        expanded = value if value is not None and value != written else None
        return [Row("postconf", entry.line if entry is not None else None, name, written, text,
                    simulated, note, known, "parameter", "", expanded)]
    info = data.dovecot(name)
    if info is not None:
        text, simulated, note, known = _info_texts(info, lang)
        return [Row("doveconf", None, name, profile.dovecot(name), text, simulated, note, known,
                    "setting")]
    return []


def _match_profile_file(profile: LabProfile, file: str | os.PathLike) -> str | None:
    given = Path(file)
    names = {_display(str(p), profile.directory): p for p in profile.files()}
    if given.exists():
        resolved = given.resolve()
        for display, path in names.items():
            if path.resolve() == resolved:
                return display
        return None
    text = given.as_posix()
    if text in names:
        return text
    matches = [display for display in names if display.rsplit("/", 1)[-1] == text]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(file, None,
                      "not a file of the profile (try postfix/main.cf, postfix/master.cf,"
                      " dovecot/conf.d/10-auth.conf...) nor an existing file",
                      es="no es un archivo del perfil (pruebe postfix/main.cf, postfix/master.cf,"
                         " dovecot/conf.d/10-auth.conf...) ni un archivo existente")


def _standalone_rows(path: Path, data: Catalog, lang: str) -> list[Row]:
    name = path.name
    if name == "main.cf" or name.endswith(".main.cf"):
        main_cf = parse_main_cf(path)

        def lookup(param: str) -> str | None:
            entry = main_cf.entries.get(param)
            return entry.value if entry is not None else data.postfix_default(param)

        expander = MacroExpander(lookup)
        return _main_rows(main_cf, data, lang, None, expander.param)
    if name == "master.cf" or name.endswith(".master.cf"):
        return _master_rows(parse_master_cf(path), data, lang, None)
    if name.endswith((".conf", ".ext")):
        config = parse_dovecot(path)
        return _dovecot_rows(config, data, lang, None, only=str(path))
    if name == "sasl_passwd":
        return _table_rows(str(path), lang, None)
    if name == "mailname":
        return _mailname_rows(path, lang, None)
    raise ConfigError(path, None,
                      "cannot tell which kind of file this is (main.cf, master.cf, sasl_passwd,"
                      " mailname or a Dovecot .conf/.ext file)",
                      es="no se sabe qué tipo de archivo es (main.cf, master.cf, sasl_passwd,"
                         " mailname o un archivo .conf/.ext de Dovecot)")


def render_explain(rows: list[Row], console: Console, lang: str = "es",
                   style: str = "auto") -> None:
    """Print ``rows`` grouped by file: ``style`` "table" (rich tables),
    "list" (a readable listing for narrow terminals or plain text), or
    "auto" (tables when the console is at least 120 columns wide)."""
    lang = lang if lang in ("es", "en") else "en"
    words = HEADERS[lang]
    if style == "auto":
        style = "table" if console.width >= 120 else "list"
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.file, []).append(row)
    for file, group in groups.items():
        if style == "table":
            _render_table(file, group, console, words)
        else:
            _render_list(file, group, console, words)


def _name_cell(row: Row, words: dict) -> str:
    if row.kind == "override":
        return f"  -o {row.name}"
    return row.name


def _value_text(row: Row, words: dict) -> Text:
    text = Text(row.value)
    if row.expanded is not None:
        text.append(f"\n({words['expands']}: {row.expanded})", style="dim")
    return text


def _explanation_text(row: Row, words: dict) -> Text:
    text = Text(row.explanation, style="" if row.known else "yellow")
    if row.kind == "override" and row.context:
        text = Text(f"[{words['service_of']} {row.context}] ", style="dim") + text
    if row.note:
        text.append(f"\n{words['note']}: {row.note}", style="dim italic")
    return text


def _render_table(file: str, group: list[Row], console: Console, words: dict) -> None:
    table = Table(title=f"{words['file']}: {file}", title_justify="left", show_lines=True,
                  expand=True)
    table.add_column(words["line"], justify="right", no_wrap=True)
    table.add_column(words["name"], overflow="fold", ratio=2)
    table.add_column(words["value"], overflow="fold", ratio=3)
    table.add_column(words["explanation"], ratio=6)
    table.add_column(words["simulated"], justify="center", no_wrap=True)
    for row in group:
        simulated = Text(words["yes"], style="green") if row.simulated else Text(words["no"], style="red")
        table.add_row(str(row.line or ""), _name_cell(row, words), _value_text(row, words),
                      _explanation_text(row, words), simulated)
    console.print(table)


def _render_list(file: str, group: list[Row], console: Console, words: dict) -> None:
    console.print(Text(f"{words['file']}: {file}", style="bold underline"))
    for row in group:
        head = Text(f"{row.line or '':>4}  ", style="dim")
        head.append(_name_cell(row, words).strip(), style="bold")
        if row.kind in ("parameter", "override", "setting", "entry"):
            head.append(f" = {row.value}")
        elif row.kind in ("service", "include"):
            head.append(f"  {row.value}")
        console.print(head)
        if row.expanded is not None:
            console.print(Text(f"      {words['expands']}: {row.expanded}", style="dim"))
        body = _explanation_text(row, words)
        state = Text(f"{words['simulated']} ", style="dim")
        state.append(words["yes"] if row.simulated else words["no"],
                     style="green" if row.simulated else "red")
        console.print(Padding(body, (0, 0, 0, 6)))
        console.print(Padding(state, (0, 0, 0, 6)))
    console.print()
