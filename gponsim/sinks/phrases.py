"""gponsim's own words inside Step lines, in the narrator's language.

A Step's ``line`` is what crossed the wire, in the protocol's own words
(English, as the server sent it). A few lines are gponsim's: the summary it
shows instead of a whole message (``[message: 1234 bytes, 20 lines, ...]``),
the Gmail simulator's events. ``phrases.toml`` beside this module says how
each reads in Spanish and English; :func:`localize` applies it.
"""

from __future__ import annotations

import re
import tomllib
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _phrases() -> list[tuple[re.Pattern, dict[str, str]]]:
    data = tomllib.loads(resources.files(__package__).joinpath("phrases.toml")
                         .read_text(encoding="utf-8"))
    return [(re.compile(p["pattern"]), {"en": p["en"], "es": p["es"]}) for p in data["phrase"]]


def localize(line: str, lang: str) -> str:
    """``line`` with gponsim's own phrases in ``lang`` (es or en)."""
    if lang != "es" or not line:
        return line
    for pattern, texts in _phrases():
        if pattern.search(line):
            line = pattern.sub(texts["es"], line)
    return line
