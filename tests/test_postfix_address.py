"""How smtpd reads the words and the address of MAIL FROM / RCPT TO / VRFY
(gponsim.server.postfix.address), checked against Postfix 3.7's answers
(tests/test_differential_smtp_edges.py compares them with the real one)."""

from __future__ import annotations

import pytest

from gponsim.server.postfix.address import (command_words, extract_address, literal_warning,
                                            own_address_set, resolve_local, valid_hostname)


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


# -- address literals (checked against Postfix 3.7's mail.log by
#    tests/test_differential_smtp_edges.py)

@pytest.mark.parametrize("domain, warning", [
    ("[foo]", "valid_ipv4_hostaddr: invalid character 102(decimal): foo"),
    ("[1.2.3]", "valid_ipv4_hostaddr: invalid octet count: 1.2.3"),
    ("[999.1.1.1]", "valid_ipv4_hostaddr: invalid octet value: 999.1.1.1"),
    ("[0.1.2.3]", "valid_ipv4_hostaddr: bad initial octet value: 0.1.2.3"),
    ("[1.2.3.]", "valid_ipv4_hostaddr: misplaced dot: 1.2.3."),
    ("[]", "valid_ipv4_hostaddr: invalid octet count: "),
    ("[::1]", "valid_ipv4_hostaddr: invalid character 58(decimal): ::1"),
    ("[IPv6:zz]", "valid_ipv6_hostaddr: invalid character 122(decimal) in IPv6 address: zz"),
    ("[IPv6:]", "valid_ipv6_hostaddr: too few `:' in IPv6 address: "),
    ("[IPv6:1:2:3:4:5:6:7:8:9]", "valid_ipv6_hostaddr: too many `:' in IPv6 address: "
                                 "1:2:3:4:5:6:7:8:9"),
    ("[IPv6:1::2::3]", "valid_ipv6_hostaddr: too many `::' in IPv6 address: 1::2::3"),
    ("[IPv6:12345::1]", "valid_ipv6_hostaddr: malformed IPv6 address: 12345::1"),
    ("[IPv6::1]", "valid_ipv6_hostaddr: bad null first field in IPv6 address: :1"),
    ("[IPv6:1:2:]", "valid_ipv6_hostaddr: bad null last field in IPv6 address: 1:2:"),
    ("[IPv6:1.2.3.4]", "valid_ipv6_hostaddr: malformed IPv4-in-IPv6 address: 1.2.3.4"),
    ("[01.2.3.4]", None), ("[ipv6:::1]", None), ("[IPv6:1::1.2.3.4]", None),
    ("[127.0.0.1].", None), ("[1.2.3.4]x", None), ("[foo].org", None), ("gponlab.local", None),
])
def test_trivial_rewrite_warns_about_a_literal_that_is_no_address(domain, warning):
    assert literal_warning(domain) == (f"warning: {warning}" if warning else None)


def test_the_warning_comes_before_the_refusal():
    said = []
    assert extract_address("<a@[foo]>", allow_empty=True,
                           resolved=lambda *a: said.append(a)) is None
    assert said == [("a@[foo]", "warning: valid_ipv4_hostaddr: invalid character 102(decimal): "
                                "foo")]
    assert extract_address("<a@[foo].org>", allow_empty=True,
                           resolved=lambda *a: said.append(a)) is None
    assert extract_address("<a@x.org>", allow_empty=True,
                           resolved=lambda *a: said.append(a)) == "a@x.org"
    assert said[1:] == [("a@[foo].org", None), ("a@x.org", None)]


@pytest.mark.parametrize("word, address", [
    ("<a@[01.2.3.4]>", "a@[01.2.3.4]"), ("<a@[1.2.3.4>", "a@[1.2.3.4]"),
    ("<a@[IPv6:1::1.2.3.4]>", "a@[IPv6:1::1.2.3.4]"), ("<a@[::1]>", None),
    ("<a@[1.2.3.4]x>", None), ("<@gponlab.local>", "@gponlab.local"),
])
def test_literals_as_valid_hostname_c_reads_them(word, address):
    assert extract_address(word, allow_empty=True) == address


OWN = own_address_set(["127.0.0.1", "::1", "192.168.40.50"])
MYDESTINATION = frozenset({"gponlab.local", "localhost"})


@pytest.mark.parametrize("domain, local", [
    ("gponlab.local", True), ("GPONLAB.local.", True), ("gponlab.local..", False),
    ("[127.0.0.1]", True), ("[127.0.0.1].", True), ("[0177.0.0.1]", True),
    ("[127.000.000.001]", True), ("[IPv6:::1]", True), ("[ipv6:0:0:0:0:0:0:0:1]", True),
    ("[192.168.40.50]", True), ("[127.0.0.2]", False), ("[IPv6:::ffff:127.0.0.1]", False),
    ("[0.0.0.0]", False), ("[09.1.1.1]", False), ("[foo]", False), ("example.org", False),
])
def test_resolve_local(domain, local):
    assert resolve_local(domain, MYDESTINATION, OWN) is local
