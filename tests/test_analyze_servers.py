"""`gponsim analyze` tells whose server a capture is of (issue #17, item 9):
the lab's software (Postfix, Dovecot) is explained with the lab's
configuration, any other server by the RFCs, named; a client's software is
what the client itself said, never a message it downloaded."""

from __future__ import annotations

from pathlib import Path

from gponsim.capture.analyze import analyze
from gponsim.capture.servers import identify
from gponsim.commentary import catalog
from gponsim.sinks.memory import ListSink

from conftest import PCAPS, needs_pcaps

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
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
    assert ehlo and "SIZE 52428800 (RFC 1870)" in ehlo[0] and "this server's own settings" in ehlo[0]


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


@needs_pcaps
def test_a_client_speaking_before_the_greeting_is_not_explained_as_the_lab():
    """smtp-errors-smtperr.pcap, connection 1: a spambot sends garbage before Sendmail's
    220; those commands were explained as Postfix's ("A command Postfix does not know")."""
    analysis, steps, texts = _explained(PCAPS / "suricata-verify/smtp-errors-smtperr.pcap")
    first = analysis.connections[0]
    assert first.server.name.startswith("Sendmail") and not first.server.lab
    said = texts[first.session]
    early = [(step, text) for step, text in said if step.kind == "command"]
    assert early and early[0][0].packets == [4]            # before the greeting (#6)
    for step, text in said:
        if step.kind != "event":
            assert "Postfix" not in text or "lab's Postfix" in text or "Postfix del lab" in text, \
                (step.line, text)
            assert not any(word in text for word in LAB_WORDS), (step.line, text)


@needs_pcaps
def test_ehlo_reply_explanation_lists_only_what_the_server_offered():
    """Exim in zeek/smtp.pcap offers SIZE, PIPELINING, AUTH, STARTTLS, HELP and no more."""
    _analysis, steps, texts = _explained(PCAPS / "zeek/smtp.pcap")
    session = steps[0].session
    [(step, en), (_, es)] = [(s, t) for s, t in texts[session]
                             if s.kind == "reply" and s.verb == "EHLO"]
    offered = ["SIZE 52428800 (RFC 1870)", "PIPELINING (RFC 2920)", "AUTH PLAIN LOGIN (RFC 4954)",
               "STARTTLS (RFC 3207)", "HELP (RFC 5321)"]
    for text in (en, es):
        for item in offered:
            assert item in text, text
        for absent in ("8BITMIME", "ENHANCEDSTATUSCODES", "DSN", "SMTPUTF8", "CHUNKING"):
            assert absent not in text, text
    # Another server, another list: vger's Exim offers CHUNKING and 8BITMIME.
    _analysis, steps, texts = _explained(PCAPS / "zeek/smtp-bdat-pipeline-8bitmime.pcap")
    [en] = [t for s, t in texts[steps[0].session] if s.kind == "reply" and s.verb == "EHLO"][:1]
    assert "CHUNKING (RFC 3030)" in en and "8BITMIME (RFC 6152)" in en and "AUTH" not in en


@needs_pcaps
def test_replies_to_mail_rcpt_and_the_message_say_what_they_answer():
    """zeek/smtp.pcap: #17 "250 OK" answers MAIL FROM, #19 "250 Accepted" RCPT TO, #52
    "250 OK id=..." the final dot; only the last one is the server taking the message."""
    _analysis, steps, texts = _explained(PCAPS / "zeek/smtp.pcap")
    session = steps[0].session
    replies = {step.packets[0]: (step, text) for step, text in texts[session][0::2]
               if step.kind == "reply" and step.packets}
    mail, rcpt, dot = replies[17], replies[19], replies[52]
    assert (mail[0].verb, rcpt[0].verb, dot[0].verb) == ("MAIL", "RCPT", "DATA")
    for step, text in texts[session]:
        if step.kind == "reply" and step.verb in ("MAIL", "RCPT"):
            assert "final dot" not in text and "punto final" not in text, (step.line, text)
    assert "sender" in mail[1] and "recipient" in rcpt[1]
    assert "final dot" in dot[1] and "responsibility" in dot[1] and "Exim 4.69" in dot[1]
    es = {step.packets[0]: text for step, text in texts[session][1::2]
          if step.kind == "reply" and step.packets}
    assert "remitente" in es[17] and "destinatario" in es[19] and "punto final" in es[52]
