"""Commentary speaks of the line it explains: templates filled from the Step
(issue #17, item 8), never a fixed example that contradicts the live line."""

from __future__ import annotations

import re
import tomllib
from importlib import resources

import pytest

from gponsim.commentary import catalog, template
from gponsim.steps import Step
from gponsim.wire import smtp as wire

#: Values a template may name besides the Step's meta keys listed here.
META_NAMES = {"version", "cipher", "qid", "recipient", "mailbox", "user", "port", "host",
              "simulator_port", "service", "status", "dsn", "reason", "software",
              "extensions"}
NAMES = {"line", "verb", "args", "code", "enhanced", "status", "tag", "session", "src", "dst",
         "address", "qid", "client", "client_name", "client_ip"} | META_NAMES


def _entries():
    folder = resources.files("gponsim.commentary")
    for item in folder.iterdir():
        if item.name.endswith(".toml"):
            for key, body in tomllib.loads(item.read_text(encoding="utf-8")).items():
                yield item.name, key, body


def test_templates_name_only_known_values():
    for name, key, body in _entries():
        for lang in ("en", "es"):
            for placeholder in template.PLACEHOLDER.findall(body[lang]):
                assert placeholder in NAMES, f"{name} [{key}] {lang}: {{{{{placeholder}}}}}"
            # the same values in both languages
        assert sorted(template.PLACEHOLDER.findall(body["en"])) == \
            sorted(template.PLACEHOLDER.findall(body["es"])), f"{name} [{key}]"


@pytest.mark.parametrize("fixed", ["4F1A2C0D9E", "<user2@gponlab.local>", "<user1@gponlab.local>",
                                   "(user2@gponlab.local)",
                                   "unknown[192.168.1.50]", "unknown[IP]"])
def test_no_fixed_example_of_a_live_value(fixed):
    for name, key, body in _entries():
        for lang in ("en", "es"):
            assert fixed not in body[lang], f"{name} [{key}] {lang} quotes {fixed}"


def _explain(step: Step, lang: str = "en") -> str:
    entry = catalog().resolve(step)
    assert entry is not None
    return entry.render(lang, step)


def test_queued_as_names_the_live_queue_id():
    step = wire.reply_step(["250 2.0.0 Ok: queued as 66514210941"], session="s", answers="DATA",
                           src="smtpd", dst="client", tls=True, proto="smtp")
    for lang in ("en", "es"):
        text = _explain(step, lang)
        assert "66514210941" in text and not re.search(r"\b[0-9A-F]{10}\b(?<!66514210941)", text)


def test_rcpt_names_the_live_recipient():
    step = wire.command_step("RCPT TO:<bob@gmail.com>", session="s", src="client", dst="smtpd",
                             tls=True, proto="smtp")
    assert "RCPT TO:<bob@gmail.com>" in _explain(step)
    assert "RCPT TO:<bob@gmail.com>" in _explain(step, "es")


def test_connect_names_the_live_client():
    step = wire.event_step("CONNECT", "connect from localhost[127.0.0.1]", session="s",
                           src="client", dst="smtpd")
    assert "connect from localhost[127.0.0.1]" in _explain(step)


def test_a_missing_value_reads_as_an_ellipsis():
    step = Step(t=0, session="s", proto="smtp", src="client", dst="smtpd", dir="c2s",
                kind="command", verb="RCPT", line="RCPT")
    assert template.fill("RCPT TO:<{{address}}>", step) == "RCPT TO:<…>"
