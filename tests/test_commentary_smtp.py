"""The SMTP commentary catalog (gponsim/commentary/smtp.toml).

Reply texts below are Postfix 3.7's (checked against the 3.7.11 sources):
every one must resolve to an explanation written for it, never to a bare
``smtp.reply.?xx`` class fallback, and shared keys must pick the right
``match`` variant.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources

import pytest

from gponsim.commentary import Catalog
from gponsim.steps import ACTORS, Step

SMTP_TOML = "smtp.toml"


def _raw() -> dict:
    text = resources.files("gponsim.commentary").joinpath(SMTP_TOML).read_text(encoding="utf-8")
    return tomllib.loads(text)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture(scope="module")
def raw() -> dict:
    return _raw()


def reply(verb, code, enhanced, line) -> Step:
    return Step(t=0, session="s", proto="smtp", src="smtpd", dst="client", dir="s2c",
                kind="reply", verb=verb, code=code, enhanced=enhanced, line=line)


# --- the file itself ---------------------------------------------------------

def test_loads_through_catalog(catalog):
    keys = catalog.keys()
    assert "smtp.reply.CONNECT.220" in keys
    assert "smtp.cmd.unknown" in keys
    for cls in ("2xx", "3xx", "4xx", "5xx"):
        assert f"smtp.reply.{cls}" in keys


def test_every_entry_is_complete(raw):
    assert len(raw) > 50
    for raw_key, body in raw.items():
        assert re.fullmatch(r"(smtp|tls)\.[A-Za-z0-9.\-]+(#\d+)?", raw_key), raw_key
        for field in ("en", "es", "rfc", "actor"):
            value = body.get(field)
            assert isinstance(value, str) and value.strip(), f"[{raw_key}] has no {field}"
        assert body["actor"] in ACTORS, f"[{raw_key}] actor {body['actor']!r}"
        assert body["en"].strip() != body["es"].strip(), f"[{raw_key}] es is a copy of en"
        assert not re.search(r"\busted(es)?\b", body["es"], re.I), f"[{raw_key}] uses usted"
        assert set(body) <= {"en", "es", "rfc", "actor", "match", "when"}, \
            f"[{raw_key}] {set(body)}"
        if "#" in raw_key:
            assert body.get("match") or body.get("when"), \
                f"[{raw_key}] a #n variant needs a match or a when"


def _variants(raw) -> dict[str, list[tuple[str, str]]]:
    """key → [(raw key, match)] in file order, the order the catalog tries them."""
    out: dict[str, list[tuple[str, str]]] = {}
    for raw_key, body in raw.items():
        if body.get("when"):
            continue            # chosen by the Step's meta, not by its line
        out.setdefault(raw_key.split("#", 1)[0], []).append((raw_key, body.get("match", "")))
    return out


def test_shared_keys_have_one_fallback_and_no_shadowed_variant(raw):
    for key, options in _variants(raw).items():
        fallbacks = [rk for rk, m in options if not m]
        assert len(fallbacks) == 1, f"{key}: fallbacks {fallbacks}"
        matches = [(rk, m) for rk, m in options if m]
        assert len({m.lower() for _, m in matches}) == len(matches), f"{key}: duplicate match"
        for i, (rk, m) in enumerate(matches):
            # An earlier variant whose match occurs inside this one's would always win.
            for earlier_rk, earlier_m in matches[:i]:
                assert earlier_m.lower() not in m.lower(), f"{rk} is shadowed by {earlier_rk}"


def test_ehlo_explains_every_keyword(raw):
    keywords = ("PIPELINING", "SIZE", "VRFY", "ETRN", "STARTTLS", "AUTH", "ENHANCEDSTATUSCODES",
                "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING")
    for raw_key in ("smtp.reply.EHLO.250", "smtp.reply.EHLO.250#2", "smtp.reply.EHLO.250#3"):
        for lang in ("en", "es"):
            text = raw[raw_key][lang]
            missing = [k for k in keywords if k not in text]
            assert not missing, f"[{raw_key}] {lang} does not explain {missing}"
            assert "587" in text and "25" in text


# --- replies -------------------------------------------------------------------

H = "mail.gponlab.local"

# (verb, code, enhanced, line, expected key, expected match; "" = the key's fallback)
REPLIES = [
    ("CONNECT", 220, None, f"220 {H} ESMTP Postfix (Debian/GNU)", "smtp.reply.CONNECT.220", ""),
    ("EHLO", 501, None, "501 Syntax: EHLO hostname", "smtp.reply.EHLO.501", ""),
    ("HELO", 501, None, "501 Syntax: HELO hostname", "smtp.reply.HELO.501", ""),
    ("HELO", 250, None, f"250 {H}", "smtp.reply.HELO.250", ""),
    # STARTTLS
    ("STARTTLS", 220, "2.0.0", "220 2.0.0 Ready to start TLS", "smtp.reply.220-2.0.0", ""),
    ("STARTTLS", 554, "5.5.1", "554 5.5.1 Error: TLS already active",
     "smtp.reply.554-5.5.1", "TLS already active"),
    ("STARTTLS", 501, "5.5.4", "501 5.5.4 Syntax: STARTTLS", "smtp.reply.501-5.5.4", "Syntax: STARTTLS"),
    ("STARTTLS", 454, "4.7.0", "454 4.7.0 TLS not available due to local problem",
     "smtp.reply.454-4.7.0", "TLS not available"),
    ("STARTTLS", 502, "5.5.1", "502 5.5.1 Error: command not implemented", "smtp.reply.502-5.5.1", ""),
    ("MAIL", 530, "5.7.0", "530 5.7.0 Must issue a STARTTLS command first", "smtp.reply.530-5.7.0", ""),
    ("AUTH", 530, "5.7.0", "530 5.7.0 Must issue a STARTTLS command first", "smtp.reply.530-5.7.0", ""),
    # AUTH
    ("AUTH", 503, "5.5.1", "503 5.5.1 Error: authentication not enabled",
     "smtp.reply.503-5.5.1", "authentication not enabled"),
    ("AUTH", 504, "5.5.4", "504 5.5.4 Encryption required for requested authentication mechanism",
     "smtp.reply.504-5.5.4", ""),
    ("AUTH", 503, "5.5.1", "503 5.5.1 Error: already authenticated",
     "smtp.reply.503-5.5.1", "already authenticated"),
    ("AUTH", 503, "5.5.1", "503 5.5.1 Error: MAIL transaction in progress",
     "smtp.reply.503-5.5.1", "MAIL transaction in progress"),
    ("AUTH", 501, "5.5.4", "501 5.5.4 Syntax: AUTH mechanism", "smtp.reply.501-5.5.4", "Syntax: AUTH"),
    ("AUTH", 334, None, "334 ", "smtp.reply.334", ""),
    ("AUTH", 334, None, "334 VXNlcm5hbWU6", "smtp.reply.334", "VXNlcm5hbWU6"),
    ("AUTH", 334, None, "334 UGFzc3dvcmQ6", "smtp.reply.334", "UGFzc3dvcmQ6"),
    ("AUTH", 235, "2.7.0", "235 2.7.0 Authentication successful", "smtp.reply.235-2.7.0", ""),
    ("AUTH", 535, "5.7.8", "535 5.7.8 Error: authentication failed: (reason unavailable)",
     "smtp.reply.535-5.7.8", "(reason unavailable)"),
    # What Postfix 3.7 + Dovecot SASL says for an unknown mechanism and for bad base64.
    ("AUTH", 535, "5.7.8", "535 5.7.8 Error: authentication failed: Invalid authentication mechanism",
     "smtp.reply.535-5.7.8", "Invalid authentication mechanism"),
    ("AUTH", 535, "5.7.8",
     "535 5.7.8 Error: authentication failed: Invalid base64 data in continued response",
     "smtp.reply.535-5.7.8", "Invalid base64 data"),
    ("AUTH", 535, "5.7.8",
     "535 5.7.8 Error: authentication failed: Invalid base64 data in initial response",
     "smtp.reply.535-5.7.8", "Invalid base64 data"),
    ("AUTH", 535, "5.7.8", "535 5.7.8 Error: authentication failed: Authentication backend error",
     "smtp.reply.535-5.7.8", ""),
    ("AUTH", 501, "5.7.0", "501 5.7.0 Authentication aborted", "smtp.reply.501-5.7.0", ""),
    ("AUTH", 454, "4.7.0",
     "454 4.7.0 Temporary authentication failure: Connection lost to authentication server",
     "smtp.reply.454-4.7.0", "Temporary authentication failure"),
    ("AUTH", 454, "4.7.0",
     "454 4.7.0 Temporary authentication failure: Can't connect to authentication server",
     "smtp.reply.454-4.7.0", "Temporary authentication failure"),
    ("AUTH", 500, "5.5.6", "500 5.5.6 SASL response limit exceeded", "smtp.reply.500-5.5.6", ""),
    # MAIL
    ("MAIL", 250, "2.1.0", "250 2.1.0 Ok", "smtp.reply.250-2.1.0", ""),
    ("MAIL", 503, "5.5.1", "503 5.5.1 Error: nested MAIL command",
     "smtp.reply.503-5.5.1", "nested MAIL command"),
    ("MAIL", 501, "5.5.4", "501 5.5.4 Syntax: MAIL FROM:<address>", "smtp.reply.501-5.5.4", "Syntax: MAIL"),
    ("MAIL", 501, "5.1.7", "501 5.1.7 Bad sender address syntax", "smtp.reply.501-5.1.7", ""),
    ("MAIL", 552, "5.3.4", "552 5.3.4 Message size exceeds fixed limit",
     "smtp.reply.552-5.3.4", "exceeds fixed limit"),
    ("MAIL", 555, "5.5.4", "555 5.5.4 Unsupported option: X", "smtp.reply.555-5.5.4", ""),
    ("MAIL", 501, "5.5.4", "501 5.5.4 Bad message size syntax",
     "smtp.reply.501-5.5.4", "Bad message size syntax"),
    ("MAIL", 503, "5.5.1", "503 5.5.1 Error: MAIL after BDAT", "smtp.reply.503-5.5.1", "after BDAT"),
    # RCPT
    ("RCPT", 250, "2.1.5", "250 2.1.5 Ok", "smtp.reply.250-2.1.5", ""),
    ("RCPT", 503, "5.5.1", "503 5.5.1 Error: need MAIL command", "smtp.reply.503-5.5.1", "need MAIL command"),
    ("RCPT", 501, "5.5.4", "501 5.5.4 Syntax: RCPT TO:<address>", "smtp.reply.501-5.5.4", "Syntax: RCPT"),
    ("RCPT", 501, "5.1.3", "501 5.1.3 Bad recipient address syntax", "smtp.reply.501-5.1.3", ""),
    ("RCPT", 454, "4.7.1", "454 4.7.1 <bob@gmail.com>: Relay access denied",
     "smtp.reply.454-4.7.1", "Relay access denied"),
    ("RCPT", 554, "5.7.1", "554 5.7.1 <bob@gmail.com>: Relay access denied",
     "smtp.reply.554-5.7.1", "Relay access denied"),
    ("RCPT", 554, "5.7.1", "554 5.7.1 <unknown[192.168.1.50]>: Client host rejected: Access denied",
     "smtp.reply.554-5.7.1", "Client host rejected"),
    ("RCPT", 554, "5.7.1", "554 5.7.1 <a@x.org>: Sender address rejected: Access denied",
     "smtp.reply.554-5.7.1", ""),
    ("RCPT", 550, "5.1.1", "550 5.1.1 <nosuchuser@gponlab.local>: Recipient address rejected: "
     "User unknown in local recipient table", "smtp.reply.550-5.1.1", ""),
    ("RCPT", 452, "4.5.3", "452 4.5.3 Error: too many recipients", "smtp.reply.452-4.5.3", ""),
    ("RCPT", 503, "5.5.1", "503 5.5.1 Error: RCPT after BDAT", "smtp.reply.503-5.5.1", "after BDAT"),
    # DATA
    ("DATA", 354, None, "354 End data with <CR><LF>.<CR><LF>", "smtp.reply.354", ""),
    ("DATA", 503, "5.5.1", "503 5.5.1 Error: need RCPT command", "smtp.reply.503-5.5.1", "need RCPT command"),
    ("DATA", 554, "5.5.1", "554 5.5.1 Error: no valid recipients",
     "smtp.reply.554-5.5.1", "no valid recipients"),
    ("DATA", 501, "5.5.4", "501 5.5.4 Syntax: DATA", "smtp.reply.501-5.5.4", "Syntax: DATA"),
    ("DATA", 250, "2.0.0", "250 2.0.0 Ok: queued as 4F1A2C0D9E", "smtp.reply.250-2.0.0", "queued as"),
    ("DATA", 552, "5.3.4", "552 5.3.4 Error: message file too big",
     "smtp.reply.552-5.3.4", "message file too big"),
    ("DATA", 451, "4.3.0", "451 4.3.0 Error: queue file write error",
     "smtp.reply.451-4.3.0", "queue file write error"),
    ("DATA", 503, "5.5.1", "503 5.5.1 Error: DATA after BDAT", "smtp.reply.503-5.5.1", "after BDAT"),
    # BDAT (Postfix 3.7: no "BDAT without MAIL" text; that case is "need RCPT command")
    ("BDAT", 250, "2.0.0", "250 2.0.0 Ok: 1234 bytes", "smtp.reply.250-2.0.0", "bytes"),
    ("BDAT", 250, "2.0.0", "250 2.0.0 Ok: 5678 bytes queued as 4F1A2C0D9E",
     "smtp.reply.250-2.0.0", "bytes queued as"),
    ("BDAT", 503, "5.5.1", "503 5.5.1 Error: need RCPT command", "smtp.reply.503-5.5.1", "need RCPT command"),
    ("BDAT", 554, "5.5.1", "554 5.5.1 Error: no valid recipients",
     "smtp.reply.554-5.5.1", "no valid recipients"),
    ("BDAT", 521, "5.5.4", "521 5.5.4 Syntax: BDAT count [LAST]", "smtp.reply.521-5.5.4", ""),
    ("BDAT", 551, "5.7.1", "551 5.7.1 Null BDAT request", "smtp.reply.551-5.7.1", ""),
    ("BDAT", 552, "5.3.4", "552 5.3.4 Chunk exceeds message size limit",
     "smtp.reply.552-5.3.4", "Chunk exceeds message size limit"),
    # RSET, NOOP, VRFY, ETRN, QUIT
    ("RSET", 250, "2.0.0", "250 2.0.0 Ok", "smtp.reply.RSET.250-2.0.0", ""),
    ("NOOP", 250, "2.0.0", "250 2.0.0 Ok", "smtp.reply.NOOP.250-2.0.0", ""),
    ("RSET", 501, "5.5.4", "501 5.5.4 Syntax: RSET", "smtp.reply.501-5.5.4", "Syntax: RSET"),
    ("VRFY", 252, "2.0.0", "252 2.0.0 user2", "smtp.reply.252-2.0.0", ""),
    ("VRFY", 502, "5.5.1", "502 5.5.1 VRFY command is disabled",
     "smtp.reply.502-5.5.1", "VRFY command is disabled"),
    ("VRFY", 501, "5.5.4", "501 5.5.4 Syntax: VRFY address", "smtp.reply.501-5.5.4", "Syntax: VRFY"),
    ("ETRN", 250, None, "250 Queuing started", "smtp.reply.250", "Queuing started"),
    ("ETRN", 458, None, "458 Unable to queue messages", "smtp.reply.458", ""),
    ("ETRN", 459, None, "459 <gponlab.local>: service unavailable", "smtp.reply.459", ""),
    ("ETRN", 500, None, "500 Syntax: ETRN domain", "smtp.reply.ETRN.500", ""),
    ("ETRN", 501, None, "501 Error: invalid parameter syntax", "smtp.reply.ETRN.501", ""),
    ("ETRN", 503, None, "503 Error: MAIL transaction in progress", "smtp.reply.ETRN.503", ""),
    ("QUIT", 221, "2.0.0", "221 2.0.0 Bye", "smtp.reply.221-2.0.0", ""),
    # Errors and session end
    ("FOO", 500, "5.5.2", "500 5.5.2 Error: command not recognized",
     "smtp.reply.500-5.5.2", "command not recognized"),
    ("EXPN", 500, "5.5.2", "500 5.5.2 Error: command not recognized",
     "smtp.reply.500-5.5.2", "command not recognized"),
    (None, 500, "5.5.2", "500 5.5.2 Error: bad UTF-8 syntax", "smtp.reply.500-5.5.2", "bad UTF-8 syntax"),
    (None, 500, "5.5.2", "500 5.5.2 Error: bad syntax", "smtp.reply.500-5.5.2", "bad syntax"),
    (None, 221, "2.7.0", "221 2.7.0 Error: I can break rules, too. Goodbye.", "smtp.reply.221-2.7.0", ""),
    ("SUBJECT:", 221, "2.7.0", "221 2.7.0 Error: I can break rules, too. Goodbye.",
     "smtp.reply.221-2.7.0", ""),
    ("TIMEOUT", 421, "4.4.2", f"421 4.4.2 {H} Error: timeout exceeded", "smtp.reply.421-4.4.2", ""),
    (None, 421, "4.7.0", f"421 4.7.0 {H} Error: too many errors", "smtp.reply.421-4.7.0", "too many errors"),
    ("CONNECT", 421, "4.7.0", f"421 4.7.0 {H} Error: too many connections from 192.168.1.50",
     "smtp.reply.421-4.7.0", "too many connections"),
    ("XCLIENT", 550, "5.7.0", "550 5.7.0 Error: insufficient authorization", "smtp.reply.550-5.7.0", ""),
    ("MAIL", 503, "5.5.1", "503 5.5.1 Error: send HELO/EHLO first",
     "smtp.reply.503-5.5.1", "send HELO/EHLO first"),
]


def _case_id(case) -> str:
    return f"{case[0]}-{case[3][:40]}"


@pytest.mark.parametrize("case", REPLIES, ids=[_case_id(c) for c in REPLIES])
def test_reply_resolves_to_its_own_entry(catalog, case):
    verb, code, enhanced, line, key, match = case
    # The table itself must agree with the reply text it quotes.
    assert line.startswith(f"{code} ")
    if enhanced:
        assert line.split()[1] == enhanced
    step = reply(verb, code, enhanced, line)
    entry = catalog.resolve(step)
    assert entry is not None, line
    assert not re.search(r"\.\dxx$", entry.key), f"{line!r} fell back to {entry.key}"
    assert (entry.key, entry.match) == (key, match), line
    assert entry.en and entry.es and entry.rfc and entry.actor


EHLO_25_PRE_TLS = [f"250-{H}", "250-PIPELINING", "250-SIZE 10240000", "250-VRFY", "250-ETRN",
                   "250-STARTTLS", "250-ENHANCEDSTATUSCODES", "250-8BITMIME", "250-DSN",
                   "250-SMTPUTF8", "250 CHUNKING"]
EHLO_587_TLS = [f"250-{H}", "250-PIPELINING", "250-SIZE 10240000", "250-VRFY", "250-ETRN",
                "250-AUTH PLAIN LOGIN", "250-ENHANCEDSTATUSCODES", "250-8BITMIME", "250-DSN",
                "250-SMTPUTF8", "250 CHUNKING"]
EHLO_25_TLS = [line for line in EHLO_25_PRE_TLS if "STARTTLS" not in line]


@pytest.mark.parametrize("lines, match", [
    (EHLO_25_PRE_TLS, "250-STARTTLS"),
    (EHLO_587_TLS, "250-AUTH"),
    (EHLO_25_TLS, ""),
])
def test_ehlo_reply_variant_follows_the_port_and_tls(catalog, lines, match):
    entry = catalog.resolve(reply("EHLO", 250, None, "\n".join(lines)))
    assert entry is not None
    assert (entry.key, entry.match) == ("smtp.reply.EHLO.250", match)


def test_class_fallbacks_still_catch_the_unexpected(catalog):
    for code, cls in ((299, "2xx"), (399, "3xx"), (499, "4xx"), (599, "5xx")):
        entry = catalog.resolve(reply("MAIL", code, None, f"{code} something new"))
        assert entry is not None and entry.key == f"smtp.reply.{cls}"


# --- commands, client data, events -----------------------------------------------

COMMANDS = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY",
            "EXPN", "ETRN", "HELP", "STARTTLS", "AUTH", "XCLIENT"]


@pytest.mark.parametrize("verb", COMMANDS)
def test_command_resolves_to_its_own_entry(catalog, verb):
    step = Step(t=0, session="s", proto="smtp", src="client", dst="smtpd", dir="c2s",
                kind="command", verb=verb, line=f"{verb} x")
    entry = catalog.resolve(step)
    assert entry is not None and entry.key == f"smtp.cmd.{verb}"


@pytest.mark.parametrize("verb, line", [("FOO", "FOO bar"), (None, "Subject: hello")])
def test_unknown_command(catalog, verb, line):
    step = Step(t=0, session="s", proto="smtp", src="client", dst="smtpd", dir="c2s",
                kind="command", verb=verb, line=line)
    assert catalog.key_for(step) == "smtp.cmd.unknown"


@pytest.mark.parametrize("verb, line, key, match", [
    ("AUTH", "AHVzZXIxAHBhc3M=", "smtp.data.AUTH", ""),
    ("AUTH", "dXNlcjE=", "smtp.data.AUTH", ""),
    ("AUTH", "*", "smtp.data.AUTH", "*"),
    ("DATA", "[message: 612 bytes, 14 lines, Subject: hola]", "smtp.data.DATA", ""),
    ("BDAT", "[message: 1234 bytes, 30 lines]", "smtp.data.BDAT", ""),
])
def test_client_data(catalog, verb, line, key, match):
    step = Step(t=0, session="s", proto="smtp", src="client", dst="smtpd", dir="c2s",
                kind="data", verb=verb, line=line)
    entry = catalog.resolve(step)
    assert entry is not None and (entry.key, entry.match) == (key, match)


@pytest.mark.parametrize("proto, kind, verb, line", [
    ("smtp", "event", "CONNECT", "connect from unknown[192.168.1.50]"),
    ("smtp", "event", "DISCONNECT", "disconnect from unknown[192.168.1.50] ehlo=2 starttls=1 auth=1 "
     "mail=1 rcpt=1 data=1 quit=1 commands=8"),
    ("smtp", "event", "LOST", "lost connection after DATA from unknown[192.168.1.50]"),
    ("tls", "handshake", "STARTTLS", "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"),
    ("tls", "handshake", "IMPLICIT", "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"),
])
def test_events(catalog, proto, kind, verb, line):
    step = Step(t=0, session="s", proto=proto, src="client", dst="smtpd", dir="internal",
                kind=kind, verb=verb, line=line)
    entry = catalog.resolve(step)
    assert entry is not None and entry.key == f"{proto}.{kind}.{verb}"
