"""Commentary: explanations of protocol steps, kept as data (es + en).

Each ``*.toml`` file beside this module holds entries keyed by a dotted
commentary key::

    ["smtp.reply.RCPT.554-5.7.1"]
    match = "Relay access denied"      # optional: a substring of the line
    rfc = "RFC 5321 §3.6.2"
    actor = "smtpd"                      # the lab-document component acting
    en = "..."
    es = "..."

Several entries may share a key when they differ by ``match``; such an
entry is stored under ``key`` plus ``#n`` in the file (``["smtp.reply.554#2"]``)
and chosen when its ``match`` text occurs in the line.

An entry may instead carry ``when = "flag"`` (or ``"!flag"``): it is chosen
when the Step's ``meta[flag]`` is true (false).

Texts speak of the line they explain: ``{{qid}}``, ``{{address}}``,
``{{client}}``... are filled from the Step (:mod:`.template`); call
:meth:`Entry.render` with the Step rather than :meth:`Entry.text`.

Keys are resolved from the most specific to the most general (see
:meth:`Catalog.candidates`), so a new explanation is usually one entry added
to a data file, never code.
"""

from __future__ import annotations

import locale
import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from gponsim.commentary import template
from gponsim.steps import Step

LANGS = ("en", "es")


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    en: str
    es: str
    rfc: str = ""
    actor: str = ""
    match: str = ""
    when: str = ""

    def text(self, lang: str) -> str:
        """The template as written (``{{name}}`` placeholders unfilled)."""
        return self.es if lang == "es" else self.en

    def render(self, lang: str, step: Step | None) -> str:
        """The explanation of ``step``: the template filled from it."""
        return template.fill(self.text(lang), step)


class Catalog:
    def __init__(self, entries: dict[str, list[Entry]]) -> None:
        self._entries = entries
        self._matching = {key for key, options in entries.items()
                          if any(e.match or e.when for e in options)}
        self._memo: dict[tuple, Entry | None] = {}
        self._texts: dict[tuple, tuple[str, ...]] = {}
        self._when_texts: dict[tuple, tuple[str, ...]] = {}
        self._by_line: dict[tuple, Entry | None] = {}

    @classmethod
    def load(cls) -> "Catalog":
        entries: dict[str, list[Entry]] = {}
        folder = resources.files(__package__)
        for item in sorted(folder.iterdir(), key=lambda p: p.name):
            if not item.name.endswith(".toml"):
                continue
            try:
                data = tomllib.loads(item.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"commentary file {item.name}: {exc}") from exc
            for raw_key, body in data.items():
                key = raw_key.split("#", 1)[0]
                missing = [f for f in ("en", "es") if not body.get(f)]
                if missing:
                    raise ValueError(f"commentary {item.name} [{raw_key}]: missing {', '.join(missing)}")
                entry = Entry(key=key, en=body["en"].strip(), es=body["es"].strip(),
                              rfc=body.get("rfc", ""), actor=body.get("actor", ""),
                              match=body.get("match", ""), when=body.get("when", ""))
                entries.setdefault(key, []).append(entry)
        return cls(entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def get(self, key: str | None, line: str = "", step: Step | None = None) -> Entry | None:
        if not key:
            return None
        options = self._entries.get(key)
        if not options:
            return None
        if step is not None:
            # a variant chosen by the Step's meta (``when``) comes first
            for entry in options:
                if entry.when and template.applies(entry.when, step) and \
                        (not entry.match or entry.match.lower() in line.lower()):
                    return entry
        options = [e for e in options if not e.when]
        for entry in options:
            if entry.match and entry.match.lower() in line.lower():
                return entry
        for entry in options:
            if not entry.match:
                return entry
        return None

    @staticmethod
    def candidates(step: Step) -> list[str]:
        """Keys to try for a Step, most specific first.

        Commands: ``<proto>.cmd.<VERB>`` then ``<proto>.cmd.unknown``.
        Replies: ``<proto>.reply.<VERB>.<code>-<enh>``, ``<proto>.reply.<code>-<enh>``,
        ``<proto>.reply.<VERB>.<code>``, ``<proto>.reply.<code>``,
        ``<proto>.reply.<VERB>.<d>xx``, ``<proto>.reply.<d>xx`` (``<VERB>`` is the command being answered;
        ``<code>`` is the numeric code or the status word: OK, NO, +OK, ...).
        Other kinds: ``<proto>.<kind>.<verb>`` then ``<proto>.<kind>``.
        An explicit ``step.key`` always comes first.
        """
        if step.meta and step.meta.get("foreign"):
            # a server that is not the lab's software (a capture of Exim,
            # Gmail...): only the RFCs' explanations, never the lab's
            plain = Step(t=step.t, session=step.session, proto=step.proto, src=step.src,
                         dst=step.dst, dir=step.dir, kind=step.kind, line=step.line,
                         verb=step.verb, code=step.code, enhanced=step.enhanced,
                         status=step.status)
            return ["rfc." + key for key in Catalog.candidates(plain)]
        out: list[str] = []
        if step.key:
            out.append(step.key)
        p = step.proto
        if step.kind == "command":
            if step.verb:
                out.append(f"{p}.cmd.{step.verb}")
            out.append(f"{p}.cmd.unknown")
        elif step.kind == "reply":
            code = str(step.code) if step.code is not None else (step.status or "")
            verb = step.verb or ""
            if step.enhanced and code:
                if verb:
                    out.append(f"{p}.reply.{verb}.{code}-{step.enhanced}")
                out.append(f"{p}.reply.{code}-{step.enhanced}")
            if verb and code:
                out.append(f"{p}.reply.{verb}.{code}")
            if code:
                out.append(f"{p}.reply.{code}")
            if step.code is not None:
                if verb:
                    out.append(f"{p}.reply.{verb}.{str(step.code)[0]}xx")
                out.append(f"{p}.reply.{str(step.code)[0]}xx")
        else:
            if step.verb:
                out.append(f"{p}.{step.kind}.{step.verb}")
            out.append(f"{p}.{step.kind}")
        return out

    def resolve(self, step: Step) -> Entry | None:
        """The best explanation for a Step, or None.

        Most Steps resolve by their fields alone (no ``match`` text involved),
        so those answers are remembered: a busy lab resolves each kind of
        Step once. The others are remembered by which match texts their line holds.
        """
        return self.explain(step)[0]

    def explain(self, step: Step) -> tuple[Entry | None, bool]:
        """``(entry, fixed)``: the Step's explanation, and whether every Step with the same
        fields gets it (False: it depends on the line's text)."""
        signature = (step.key, step.proto, step.kind, step.verb, step.code, step.enhanced,
                     step.status, bool(step.meta and step.meta.get("foreign")))
        entry = self._memo.get(signature, _UNKNOWN)
        if entry is _BY_LINE:
            return self._by_line_text(signature, step), False
        if entry is not _UNKNOWN:
            return entry, True
        for key in self.candidates(step):
            if key in self._matching:
                self._memo[signature] = _BY_LINE
                return self._by_line_text(signature, step), False
            options = self._entries.get(key)
            if options:
                self._memo[signature] = options[0]
                return options[0], True
        self._memo[signature] = None
        return None, True

    def _by_line_text(self, signature: tuple, step: Step) -> Entry | None:
        """Chosen by the line: by which of the match texts it holds (remembered so)."""
        line = step.line.lower()
        seen = (signature, tuple(m in line for m in self._match_texts(signature, step)),
                tuple(template.applies(w, step) for w in self._whens(signature, step)))
        entry = self._by_line.get(seen, _UNKNOWN)
        if entry is _UNKNOWN:
            if len(self._by_line) > 20000:
                self._by_line.clear()
            entry = self._by_line[seen] = self._resolve_by_line(step)
        return entry

    def _resolve_by_line(self, step: Step) -> Entry | None:
        line = step.line
        for key in self.candidates(step):
            options = self._entries.get(key)
            if not options:
                continue
            if len(options) == 1 and not options[0].match and not options[0].when:
                return options[0]                          # the common case
            entry = self.get(key, line, step)
            if entry is not None:
                return entry
        return None

    def _whens(self, signature: tuple, step: Step) -> tuple[str, ...]:
        """The ``when`` conditions that can decide a Step with these fields."""
        whens = self._when_texts.get(signature)
        if whens is None:
            found = []
            for key in self.candidates(step):
                for entry in self._entries.get(key, ()):
                    if entry.when and entry.when not in found:
                        found.append(entry.when)
            whens = self._when_texts[signature] = tuple(found)
        return whens

    def _match_texts(self, signature: tuple, step: Step) -> tuple[str, ...]:
        """The ``match`` texts that can decide a Step with these fields (lower case)."""
        texts = self._texts.get(signature)
        if texts is None:
            found = []
            for key in self.candidates(step):
                for entry in self._entries.get(key, ()):
                    if entry.match and entry.match.lower() not in found:
                        found.append(entry.match.lower())
            texts = self._texts[signature] = tuple(found)
        return texts

    def key_for(self, step: Step) -> str | None:
        entry = self.resolve(step)
        return entry.key if entry else None


_UNKNOWN = object()      # a signature not resolved yet (None is a resolved "no entry")
_BY_LINE = object()      # a signature whose entry depends on the line's text


@lru_cache(maxsize=1)
def catalog() -> Catalog:
    """The shipped catalog, loaded once."""
    return Catalog.load()


def annotate(step: Step) -> Step:
    """Set ``step.key`` to the resolved commentary key (sources call this)."""
    key = catalog().key_for(step)
    if key:
        step.key = key
    return step


def default_lang() -> str:
    """``es`` when the locale is Spanish, else ``en``."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE"):
        value = os.environ.get(var)
        if value:
            return "es" if value.lower().startswith("es") else "en"
    try:
        loc = locale.getlocale()[0] or ""
    except ValueError:
        loc = ""
    return "es" if loc.lower().startswith("es") else "en"
