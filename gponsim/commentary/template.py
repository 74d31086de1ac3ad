"""Commentary templates: an explanation speaks of the line it explains.

An entry's text may name values of its Step as ``{{name}}``; they are filled
from the Step being explained, never from a fixed example::

    en = "{{qid}} is the queue id ..."        ->  "66514210941 is the queue id ..."
    en = "RCPT TO:<{{address}}> adds ..."     ->  "RCPT TO:<bob@gmail.com> adds ..."

Names: the Step's own fields (``line verb args code enhanced status tag
session src dst``), every key of its ``meta``, and values read from its
line: ``address`` (the first ``<...>``), ``qid`` (a Postfix queue id),
``client`` (``name[address]``), ``client_name``, ``client_ip``. A name the
Step does not have becomes ``…`` (the entry is still readable).

An entry may also say ``when = "flag"`` (or ``"!flag"``): it is chosen only
when the Step's ``meta[flag]`` is true (false), e.g. a TLS summary that
Postfix logs only at ``smtpd_tls_loglevel`` >= 1.
"""

from __future__ import annotations

import re

from gponsim.steps import Step

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_ADDRESS = re.compile(r"<([^<>]*)>")
_QID = re.compile(r"(?:queued as |^|\s)([0-9A-F]{10,12})(?::|\b)")
_CLIENT = re.compile(r"([\w.-]+)\[([0-9A-Fa-f.:]+)\]")
MISSING = "…"


def values(step: Step) -> dict[str, str]:
    """What a template may name, for one Step."""
    out: dict[str, str] = {}
    for name in ("line", "verb", "args", "code", "enhanced", "status", "tag", "session",
                 "src", "dst"):
        value = getattr(step, name)
        if value not in (None, ""):
            out[name] = str(value)
    line = step.shown_line()
    if (m := _ADDRESS.search(line)) is not None:
        out["address"] = m.group(1)
    if (m := _QID.search(line)) is not None:
        out["qid"] = m.group(1)
    if (m := _CLIENT.search(line)) is not None:
        out["client"], out["client_name"], out["client_ip"] = m.group(0), m.group(1), m.group(2)
    for key, value in (step.meta or {}).items():
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            out[key] = str(value)
    return out


def fill(text: str, step: Step | None) -> str:
    """``text`` with every ``{{name}}`` replaced by the Step's value."""
    if "{{" not in text:
        return text
    known = values(step) if step is not None else {}
    return PLACEHOLDER.sub(lambda m: known.get(m.group(1), MISSING), text)


def applies(when: str, step: Step) -> bool:
    """Whether an entry's ``when`` condition holds for ``step``."""
    if not when:
        return True
    negate = when.startswith("!")
    flag = bool((step.meta or {}).get(when.lstrip("!")))
    return flag != negate
