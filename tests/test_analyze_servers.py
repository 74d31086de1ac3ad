"""`gponsim analyze` tells whose server a capture is of (issue #17, item 9):
the lab's software (Postfix, Dovecot) is explained with the lab's
configuration, any other server by the RFCs, named; a client's software is
what the client itself said, never a message it downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from gponsim.capture.analyze import analyze
from gponsim.capture.servers import identify
from gponsim.commentary import catalog
from gponsim.sinks.memory import ListSink

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"
CAPTURES = Path(__file__).resolve().parents[1] / "captures"
needs_pcaps = pytest.mark.skipif(not PCAPS.is_dir(), reason=f"no shared captures at {PCAPS}")
#: What only the lab's own configuration would say.
LAB_WORDS = ("smtpd_banner", "Debian/GNU", "message_size_limit", "Dovecot announces", "587",
             "main.cf", "mynetworks", "10-auth.conf", "the lab's 10-")


def _explained(path: Path, keylog: Path | None = None):
    sink = ListSink()
    analysis = analyze(path, sink.step, keylog=keylog)
    cat = catalog()
    texts = {}
    for step in sink.steps:
        entry = cat.resolve(step)
        for lang in ("en", "es"):
            texts.setdefault(step.session, []).append(
                (step, entry.render(lang, step) if entry else ""))
    return analysis, sink.steps, texts


def test_identify_servers_by_what_they_say():
    assert identify("smtp", "220 mail.gponlab.local ESMTP Postfix (Debian/GNU)").lab
    exim = identify("smtp", "220-xc90.websitewelcome.com ESMTP Exim 4.69 #1 Mon, 05 Oct 2009")
    assert exim.name == "Exim 4.69" and not exim.lab
    assert identify("smtp", "220 mx.google.com ESMTP hf10si4097299icc.190 - gsmtp").name == "Gmail"
    assert identify("smtp", "250-smtp.gmail.com at your service, [1.2.3.4]").name == "Gmail"
    assert identify("imap", "* OK [CAPABILITY IMAP4rev1] Dovecot (Debian) ready.").lab
    assert identify("imap", "* OK Microsoft Exchange IMAP4rev1 server version 5.5").name == \
        "Microsoft Exchange"
    assert identify("smtp", "220 mail.example.org ready") is None


@needs_pcaps
def test_exim_is_explained_by_the_rfcs_not_as_the_lab():
    analysis, steps, texts = _explained(PCAPS / "zeek/smtp.pcap")
    first = analysis.connections[0]
    assert first.server.name == "Exim 4.69" and not first.server.lab
    said = texts[first.session]
    banner = next(text for step, text in said if step.kind == "reply" and step.verb == "CONNECT")
    assert "Exim 4.69" in banner and "not the lab's Postfix" in banner
    for step, text in said:
        if step.kind != "event":
            assert not any(word in text for word in LAB_WORDS), (step.line, text)
    ehlo = [text for step, text in said if step.kind == "reply" and step.verb == "EHLO"]
    assert ehlo and "this server's own message size limit" in ehlo[0]


@needs_pcaps
def test_gmail_size_is_gmails_not_message_size_limit():
    analysis, steps, texts = _explained(PCAPS / "zeek/smtp-starttls.pcap")
    [conn] = analysis.connections
    assert conn.server.name == "Gmail"
    for step, text in texts[conn.session]:
        assert "message_size_limit" not in text and "Dovecot" not in text, text


def test_the_labs_own_capture_keeps_the_labs_explanations():
    analysis, steps, texts = _explained(CAPTURES / "swaks-smtp25-plain.pcap")
    [conn] = analysis.connections
    assert conn.server.name == "Postfix" and conn.server.lab
    assert any("smtpd_banner" in text for _step, text in texts[conn.session])


def test_a_client_is_not_the_software_of_the_mail_it_downloads():
    """curl fetched a message swaks had sent: the client is not swaks."""
    analysis, steps, _texts = _explained(CAPTURES / "curl-imaps-fetch.pcap",
                                         CAPTURES / "curl-imaps-fetch.keys")
    [conn] = analysis.connections
    assert conn.messages >= 1 and conn.software == []
    assert conn.server.name == "Dovecot"
