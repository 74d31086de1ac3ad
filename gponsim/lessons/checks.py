"""Checkpoints: facts about the observed Steps and the lab's files."""

from __future__ import annotations

import mailbox
import re
from email.header import decode_header, make_header
from dataclasses import dataclass
from pathlib import Path

from gponsim.lessons.model import Check, is_text, text
from gponsim.steps import Step


@dataclass
class Outcome:
    check: Check
    passed: bool | None            # None: could not be checked here (said why in detail)
    detail: str = ""

    def to_dict(self, lang: str) -> dict:
        return {"what": self.check.what, "says": text(self.check.says, lang), "passed": self.passed,
                "detail": self.detail}


def session_users(steps: list[Step]) -> dict[str, str]:
    """Who logged in on each session: the auth socket's OK (or FAIL) names the user."""
    users: dict[str, str] = {}
    for s in steps:
        if s.proto == "sasl" and s.kind == "reply" and s.status in ("OK", "FAIL"):
            user = (s.meta or {}).get("params", {}).get("user")
            if user:
                users[s.session] = str(user)
    return users


def _matches(step: Step, check: Check) -> bool:
    for name, want in check.where.items():
        have = step.meta.get(name[5:]) if name.startswith("meta.") else getattr(step, name)
        if have != want:
            return False
    return not check.line_contains or check.line_contains in step.line


def _wanted(check: Check, lang: str) -> list[str]:
    """The texts ``contains`` asks for: the lesson's language's; a capture may also be the
    lesson's recording, made in either language, so either of its texts will do."""
    if not is_text(check.contains):
        return [check.contains] if check.contains else []
    if check.what == "capture":
        return list(dict.fromkeys([text(check.contains, lang), *check.contains.values()]))
    return [text(check.contains, lang)]


def evaluate(check: Check, steps: list[Step], lab_root: Path, results: dict | None = None,
             every: list[Step] | None = None, lang: str = "en") -> Outcome:
    """``steps``: the Steps in the check's scope; ``every``: all of the lesson's (to know
    who logged in on a session that began earlier); ``lang``: the lesson's language."""
    wanted = _wanted(check, lang)
    if check.what in ("step", "no_step"):
        found = [s for s in steps if _matches(s, check)]
        if check.user:
            users = session_users(every if every is not None else steps)
            found = [s for s in found if users.get(s.session) == check.user]
        if check.what == "step":
            ok = len(found) >= check.count
            detail = found[0].shown_line().split("\n")[0] if found else "no such step was observed"
        else:
            ok = not found
            detail = "" if ok else f"observed: {found[0].shown_line().splitlines()[0]}"
        return Outcome(check, ok, detail)
    if check.what == "mailbox":
        path = lab_root / "var" / "mail" / check.user
        if not path.exists():
            return Outcome(check, False, f"{path} does not exist")
        box = mailbox.mbox(str(path), create=False)
        try:
            subjects = [str(make_header(decode_header(m.get("Subject", "")))) for m in box]
        finally:
            box.close()
        ok = any(w in s for w in wanted for s in subjects) if wanted else bool(subjects)
        return Outcome(check, ok, f"{len(subjects)} message(s) in var/mail/{check.user}")
    if check.what == "log":
        path = lab_root / "var" / "log" / "mail.log"
        log = path.read_text(errors="replace") if path.exists() else ""
        m = re.search(check.pattern, log, re.M)
        return Outcome(check, bool(m), m.group(0) if m else "no matching line in mail.log")
    if check.what == "capture":
        results = results or {}
        if check.mac:            # the lab network: Ethernet frames of that station on enp0s3
            macs = results.get("capture_macs")
            if macs is None:
                return Outcome(check, None, "no capture on the server's interface")
            return Outcome(check, check.mac.lower() in macs,
                           f"Ethernet sources seen: {', '.join(sorted(macs)) or 'none'}")
        if "capture" not in results:
            return Outcome(check, None, results.get("capture_unavailable", "nothing was captured"))
        analysis = results["capture"]["keys" if check.keys else "plain"]
        in_clear = sum(1 for c in analysis.credentials if not c.inside_tls)
        inside = sum(1 for c in analysis.credentials if c.inside_tls)
        ok = (check.in_clear is None or in_clear == check.in_clear) and \
             (check.inside_tls is None or inside == check.inside_tls) and \
             (not wanted or any(w in m.get("subject", "") for w in wanted for m in analysis.messages))
        return Outcome(check, ok, f"credentials in clear: {in_clear}, inside TLS: {inside}; "
                                  f"messages: {len(analysis.messages)}")
    if check.what == "packets":
        results = results or {}
        if "capture" not in results:
            return Outcome(check, None, results.get("capture_unavailable", "nothing was captured"))
        from gponsim.packets.lesson import PacketRows, check as packet_fact

        if "packet_rows" not in results:
            path, keys = results["capture_files"]
            results["packet_rows"] = PacketRows(path, keys)
        ok, detail = packet_fact(check.fact, results["packet_rows"], check.at_least)
        return Outcome(check, ok, detail)
    if check.what == "autoconfig":
        results = results or {}
        if check.address in results.get("autoconfig_by_hand", []):
            return Outcome(check, None, "the settings were typed by hand")
        path = lab_root / "var" / "log" / "mail.log"
        log = path.read_text(errors="replace") if path.exists() else ""
        m = re.search(rf"autoconfig: \S*config-v1\.1\.xml for {re.escape(check.address)} from \S+", log)
        return Outcome(check, bool(m), m.group(0) if m else f"nobody asked for the settings of {check.address}")
    if check.what == "file":
        path = (lab_root / check.file).resolve()
        if lab_root.resolve() not in path.parents or not path.exists():
            return Outcome(check, False, f"{check.file} is not a file of the lab")
        found = all(w in path.read_text(errors="replace") for w in wanted)
        return Outcome(check, found, f"{check.file}: {'found' if found else 'not found'}: {' '.join(map(repr, wanted))}")
    raise ValueError(f"unknown check {check.what}")
