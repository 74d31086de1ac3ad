"""The diagrams' words, from labels.toml (es + en)."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _labels() -> dict:
    return tomllib.loads(resources.files(__package__).joinpath("labels.toml").read_text("utf-8"))


def _pick(entry: dict, lang: str) -> str:
    return entry.get(lang) or entry["en"]


def participant_name(actor: str, lang: str) -> str:
    entry = _labels()["participants"].get(actor)
    return _pick(entry, lang) if entry else actor


def component_name(component: str, lang: str) -> str:
    return _pick(_labels()["components"][component], lang)


def edge_name(edge: str, lang: str) -> str:
    return _pick(_labels()["edges"][edge], lang)


def caption(name: str, lang: str, **values) -> str:
    return _pick(_labels()["captions"][name], lang).format(**values)


def phase_name(phase: str, lang: str) -> str:
    return _pick(_labels()["phases"][phase], lang)


def service_name(service: str, lang: str) -> str:
    entry = _labels()["services"].get(service)
    return _pick(entry, lang) if entry else service


def message(name: str, lang: str, **values) -> str:
    """What ``gponsim diagram`` says to the user (es + en)."""
    return _pick(_labels()["messages"][name], lang).format(**values)
