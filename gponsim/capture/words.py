"""`gponsim analyze`'s own messages (words.toml beside this module, es + en)."""

from __future__ import annotations

from gponsim.lessons.words import load_words


def word(key: str, lang: str, **values) -> str:
    """The message ``key`` in ``lang`` (es or en), filled with ``values``."""
    entry = load_words(__package__)[key]
    return (entry.get(lang) or entry["en"]).format(**values)
