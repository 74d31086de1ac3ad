"""How smtpd reads the words and the address of MAIL FROM / RCPT TO / VRFY
(gponsim.server.postfix.address), checked against Postfix 3.7's answers
(tests/test_differential_smtp_edges.py compares them with the real one)."""

from __future__ import annotations

import pytest

from gponsim.server.postfix.address import command_words, extract_address, valid_hostname


@pytest.mark.parametrize("text, words, unterminated", [
    ("FROM:<a@x.org> SIZE=1", ["FROM:", "<a@x.org>", "SIZE=1"], None),
    ("from: <a b@x.org>", ["from:", "<a b@x.org>"], None),
    ("FROM:<a@x.org", ["FROM:", "<a@x.org"], 1),
    ("TO:<a@x.org> <b@x.org>", ["TO:", "<a@x.org>", "<b@x.org>"], None),
    ('FROM:"a b"@x.org x', ["FROM:", '"a b"@x.org', "x"], None),
    ("FROM:<<a@x.org>>", ["FROM:", "<<a@x.org>>"], None),
    ("FROM:<a@x.org>x", ["FROM:", "<a@x.org>x"], None),
])
def test_command_words(text, words, unterminated):
    assert command_words(text) == (words, unterminated)


@pytest.mark.parametrize("word, address", [
    ("<a@x.org>", "a@x.org"), ("a@x.org>", "a@x.org"), ("<<a@x.org>>", "a@x.org"),
    ("<a@b@x.org>", "a@b@x.org"), ("<@x.org:a@y.org>", "a@y.org"), ("<a(c)@x.org>", "a@x.org"),
    ('<"a b"@x.org>', "a b@x.org"), ("<a@x.org.>", "a@x.org."), ("<a@x_y.org>", "a@x_y.org"),
    ("<a@[127.0.0.1]>", "a@[127.0.0.1]"), ("<a@[IPv6:::1]>", "a@[IPv6:::1]"), ("<a>", "a"),
    ("<>", ""),
    ("<a b@x.org>", None), ("<a,b@x.org>", None), ("<a;b@x.org>", None), ("<a@>", None),
    ("<@>", None), ("<a@x..org>", None), ("<a@-x.org>", None), ("<a@123>", None),
    ("<a@1.2.3.4>", None), ("<a@[foo]>", None), ("<a@x.org..>", None), ("<a@ñ.org>", None),
    ("<a@x.org>x", None), ("a b", None),
])
def test_extract_address(word, address):
    assert extract_address(word, allow_empty=True) == address


def test_the_null_address_only_where_allowed():
    assert extract_address("<>", allow_empty=False) is None


@pytest.mark.parametrize("name, valid", [
    ("gponlab.local", True), ("x_y.org", True), ("a-b.org", True), ("-a.org", False),
    ("a-.org", False), ("a..org", False), ("", False), ("123", False), ("1.2.3.4", False),
    ("a" * 64 + ".org", False), ("ñ.org", False),
])
def test_valid_hostname(name, valid):
    assert valid_hostname(name) is valid


def test_a_non_ascii_domain_needs_smtputf8():
    assert extract_address("<a@ñ.org>", allow_empty=True) is None
    assert extract_address("<a@ñ.org>", allow_empty=True, smtputf8=True) == "a@ñ.org"
    assert extract_address("<josé@x.org>", allow_empty=True) == "josé@x.org"
