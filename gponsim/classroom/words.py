"""The classroom's own words (words.toml beside this module, es + en)."""

from __future__ import annotations

from gponsim.lessons.words import load_words

LANGS = ("es", "en")


def word(key: str, lang: str, **values) -> str:
    entry = load_words(__package__)[key]
    return (entry.get(lang) or entry["en"]).format(**values)


def both(key: str, **values) -> dict[str, str]:
    """The text in every language: ``{"es": ..., "en": ...}`` (pages pick theirs)."""
    return {lang: word(key, lang, **values) for lang in LANGS}


def table(prefix: str, lang: str) -> dict[str, str]:
    """Every word whose key starts with ``prefix``, for one page's language."""
    words = load_words(__package__)
    return {key: (entry.get(lang) or entry["en"]) for key, entry in words.items()
            if key.startswith(prefix)}
