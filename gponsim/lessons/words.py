"""The lesson runner's own words (words.toml beside this module, es + en)."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _words() -> dict:
    return tomllib.loads(resources.files(__package__).joinpath("words.toml").read_text("utf-8"))


def word(key: str, lang: str, **values) -> str:
    entry = _words()[key]
    return (entry.get(lang) or entry["en"]).format(**values)
