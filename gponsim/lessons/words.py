"""The lesson runner's own words (words.toml beside this module, es + en)."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def load_words(package: str) -> dict:
    """``words.toml`` of ``package``: ``{key: {"es": ..., "en": ...}}``."""
    return tomllib.loads(resources.files(package).joinpath("words.toml").read_text("utf-8"))


def word(key: str, lang: str, **values) -> str:
    entry = load_words(__package__)[key]
    return (entry.get(lang) or entry["en"]).format(**values)
