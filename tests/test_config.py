"""Tests for gponsim.config: the lab profile, its parsers and `config explain`."""

from __future__ import annotations

import ipaddress
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from gponsim.config import (
    ConfigError,
    LabProfile,
    explain_rows,
    init_config,
    load_profile,
    render_explain,
)
from gponsim.config.dovecot import parse_dovecot
from gponsim.config.params import catalog, parse_dovecot_time, parse_postfix_time
from gponsim.config.postfix import (
    MacroError,
    MacroExpander,
    parse_main_cf,
    parse_master_cf,
    parse_table,
    split_list,
)
from gponsim.config.profile import SHIPPED_PROFILE

LAB_MAIN_CF = {
    # lab-document.md, "Archivo main.cf", exactly as written there
    "myhostname": "mail.gponlab.local",
    "myorigin": "/etc/mailname",
    "mydestination": "$myhostname, gponlab.local, localhost.localdomain, localhost",
    "mynetworks": "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 192.168.0.0/16",
    "inet_interfaces": "all",
    "inet_protocols": "all",
    "smtpd_relay_restrictions": "permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
    "smtpd_tls_cert_file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
    "smtpd_tls_key_file": "/etc/ssl/private/ssl-cert-snakeoil.key",
    "smtpd_tls_security_level": "may",
    "smtp_tls_CApath": "/etc/ssl/certs",
    "smtp_tls_session_cache_database": "btree:${data_directory}/smtp_scache",
    "smtpd_sasl_type": "dovecot",
    "smtpd_sasl_path": "private/auth",
    "relayhost": "[smtp.gmail.com]:587",
    "smtp_sasl_auth_enable": "yes",
    "smtp_sasl_password_maps": "hash:/etc/postfix/sasl_passwd",
    "smtp_sasl_security_options": "noanonymous",
    "smtp_tls_security_level": "encrypt",
    "smtp_tls_CAfile": "/etc/ssl/certs/ca-certificates.crt",
}
DEBIAN_MAIN_CF = {
    # what Debian 12's postinst writes and the lab keeps
    "smtpd_banner": "$myhostname ESMTP $mail_name (Debian/GNU)",
    "biff": "no",
    "append_dot_mydomain": "no",
    "readme_directory": "no",
    "compatibility_level": "3.6",
    "alias_maps": "hash:/etc/aliases",
    "alias_database": "hash:/etc/aliases",
    "mailbox_size_limit": "0",
    "recipient_delimiter": "+",
}
LAB_SUBMISSION = [
    ("syslog_name", "postfix/submission"),
    ("smtpd_tls_security_level", "encrypt"),
    ("smtpd_sasl_auth_enable", "yes"),
    ("smtpd_reject_unlisted_recipient", "no"),
    ("smtpd_client_restrictions", "permit_sasl_authenticated,reject"),
    ("milter_macro_daemon_name", "ORIGINATING"),
]


@pytest.fixture(scope="module")
def shipped() -> LabProfile:
    return load_profile()


@pytest.fixture
def cfg(tmp_path) -> Path:
    """An editable copy of the shipped profile."""
    directory = tmp_path / "cfg"
    init_config(directory)
    return directory


def append(directory: Path, relative: str, text: str) -> tuple[Path, int]:
    """Append ``text`` to a profile file; return (path, first new line number)."""
    path = directory / relative
    content = path.read_text(encoding="utf-8")
    if not content.endswith("\n"):
        content += "\n"
    first = content.count("\n") + 1
    path.write_text(content + text, encoding="utf-8")
    return path, first


def replace(directory: Path, relative: str, old: str, new: str) -> Path:
    path = directory / relative
    content = path.read_text(encoding="utf-8")
    assert content.count(old) == 1, (relative, old)
    path.write_text(content.replace(old, new), encoding="utf-8")
    return path


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line == text:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def assert_located(error: ConfigError, path: Path, line: int | None) -> None:
    assert error.path == str(path)
    assert error.line == line
    prefix = f"{path}:{line}: " if line else f"{path}: "
    assert str(error).startswith(prefix), str(error)
    assert error.text("es").startswith(prefix)
    assert error.text("es") != str(error), "the Spanish message is missing"


# ---------------------------------------------------------------------------
# The shipped profile is the lab document's configuration
# ---------------------------------------------------------------------------

def test_shipped_main_cf_has_every_lab_setting_exactly(shipped):
    for name, value in {**LAB_MAIN_CF, **DEBIAN_MAIN_CF}.items():
        assert shipped.raw(name) == value, name
    # one entry per parameter: nothing overrides an earlier line
    names = [entry.name for entry in shipped.main_cf.all_entries]
    assert len(names) == len(set(names))
    assert shipped.main_cf.warnings == []
    # the lab does not enable AUTH globally: only port 587 does
    assert shipped.main_cf.get("smtpd_sasl_auth_enable") is None


def test_shipped_main_cf_line_numbers_point_at_the_text(shipped):
    path = SHIPPED_PROFILE / "postfix/main.cf"
    lines = path.read_text(encoding="utf-8").splitlines()
    for entry in shipped.main_cf.all_entries:
        assert re.match(rf"^{entry.name}\s*=", lines[entry.line - 1])


def test_shipped_master_cf_submission_entry_is_the_lab_one(shipped):
    submission = shipped.service("submission")
    assert submission.fields == ["submission", "inet", "n", "-", "y", "-", "-", "smtpd"]
    assert [(o.name, o.value) for o in submission.overrides.values()] == LAB_SUBMISSION
    path = SHIPPED_PROFILE / "postfix/master.cf"
    first = line_of(path, "submission inet n       -       y       -       -       smtpd")
    assert submission.line == first
    assert [o.line for o in submission.overrides.values()] == list(range(first + 1, first + 7))
    # port 25 stays as Debian ships it, without overrides
    smtp = shipped.service("smtp/inet")
    assert smtp.command == "smtpd" and smtp.overrides == {}
    # the submissions (465) entry stays commented out, as in the lab
    assert not shipped.master_cf.find("submissions")


def test_shipped_smtpd_services(shipped):
    services = [(s.name, s.host, s.port) for s in shipped.smtpd_services()]
    assert services == [("smtp", None, 25), ("submission", None, 587)]


def test_shipped_dovecot_settings(shipped):
    assert shipped.dovecot("auth_mechanisms") == "plain login"
    assert shipped.dovecot("mail_location") == "mbox:~/mail:INBOX=/var/mail/%u"
    assert shipped.dovecot("mail_privileged_group") == "mail"
    assert shipped.dovecot_section("namespace", "inbox").get("inbox") == "yes"
    assert shipped.dovecot("ssl") == "yes"
    assert shipped.dovecot("ssl_cert") == "</etc/dovecot/private/dovecot.pem"
    assert shipped.dovecot("ssl_key") == "</etc/dovecot/private/dovecot.key"
    assert shipped.dovecot_file("ssl_cert") == "/etc/dovecot/private/dovecot.pem"
    assert shipped.dovecot_setting("ssl_cert").file_ref is True
    assert shipped.dovecot("ssl_client_ca_dir") == "/etc/ssl/certs"
    listener = shipped.dovecot_section("service", "auth").section(
        "unix_listener", "/var/spool/postfix/private/auth")
    assert {k: listener.get(k) for k in ("mode", "user", "group")} == {
        "mode": "0666", "user": "postfix", "group": "postfix"}
    # defaults the lab keeps
    assert shipped.dovecot_bool("disable_plaintext_auth") is True
    assert shipped.dovecot_time("auth_failure_delay") == 2.0
    assert shipped.protocols() == ["imap", "pop3"]


def test_shipped_auth_uses_passwd_file_and_shows_the_lab_line(shipped):
    text = (SHIPPED_PROFILE / "dovecot/conf.d/10-auth.conf").read_text(encoding="utf-8")
    assert "\n#!include auth-system.conf.ext\n" in text
    assert "\n!include auth-passwdfile.conf.ext\n" in text
    assert shipped.passwd_file() == "/etc/dovecot/users"
    assert shipped.passdb_file().scheme == "BLF-CRYPT"
    assert shipped.passdb_file().username_format == "%u"
    assert shipped.auth_mechanisms() == ["PLAIN", "LOGIN"]
    assert shipped.auth_failure_delay() == 2.0
    assert [db.driver for db in shipped.passdbs()] == ["passwd-file"]
    assert [db.file for db in shipped.userdbs()] == ["/etc/dovecot/users"]


def test_shipped_sasl_passwd_and_mailname(shipped):
    table = shipped.sasl_passwd()
    assert list(table) == ["[smtp.gmail.com]:587"]
    user, password = table["[smtp.gmail.com]:587"]
    assert user == "gponlab.relay@gmail.com"
    assert re.fullmatch(r"[a-z]{16}", password), "looks like a Google app password"
    assert shipped.sasl_credentials("smtp.gmail.com", "[smtp.gmail.com]:587") == (user, password)
    assert shipped.sasl_credentials("smtp.example.org") is None
    assert shipped.main("myorigin") == "gponlab.local"
    assert (SHIPPED_PROFILE / "mailname").read_text() == "gponlab.local\n"


def test_shipped_expanded_values(shipped):
    assert shipped.main("smtpd_banner") == "mail.gponlab.local ESMTP Postfix (Debian/GNU)"
    assert shipped.list("mydestination") == [
        "mail.gponlab.local", "gponlab.local", "localhost.localdomain", "localhost"]
    assert shipped.main("mydomain") == "gponlab.local"
    assert shipped.main("smtp_tls_session_cache_database") == "btree:/var/lib/postfix/smtp_scache"
    assert shipped.mynetworks() == [
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::ffff:127.0.0.0/104"),
        ipaddress.ip_network("::1/128"), ipaddress.ip_network("192.168.0.0/16")]
    relay = shipped.relayhost()
    assert (relay.host, relay.port, relay.mx_lookup, relay.nexthop) == (
        "smtp.gmail.com", 587, False, "[smtp.gmail.com]:587")
    assert shipped.postfix_sasl_socket() == "/var/spool/postfix/private/auth"
    assert shipped.auth_socket_path("/lab") == Path("/lab/var/spool/postfix/private/auth")
    assert shipped.myorigin() == "gponlab.local"
    assert shipped.time_value("5", "d") == 432000 and shipped.split_list("a, {b c} d") == ["a", "{b c}", "d"]
    assert shipped.int("smtpd_hard_error_limit") == 20
    assert shipped.postfix_auth_listener().mode == 0o666
    assert shipped.warnings() == []


def test_shipped_dovecot_listeners_and_mailboxes(shipped):
    listeners = {(l.name, l.port, l.ssl) for l in shipped.inet_listeners()}
    assert listeners == {("imap", 143, False), ("imaps", 993, True),
                         ("pop3", 110, False), ("pop3s", 995, True)}
    assert [l.name for l in shipped.inet_listeners("pop3")] == ["pop3", "pop3s"]
    boxes = {(b.name, b.special_use) for b in shipped.mailboxes()}
    assert boxes == {("Drafts", "\\Drafts"), ("Junk", "\\Junk"), ("Trash", "\\Trash"),
                     ("Sent", "\\Sent"), ("Sent Messages", "\\Sent")}
    location = shipped.mail_location()
    assert (location.format, location.root, location.inbox) == ("mbox", "~/mail", "/var/mail/%u")


# ---------------------------------------------------------------------------
# main.cf syntax, expansion and defaults
# ---------------------------------------------------------------------------

def test_main_cf_continuation_lines_and_comments(tmp_path):
    text = ("# comment\n"
            "\n"
            "smtpd_helo_restrictions = permit_mynetworks,\n"
            "    reject_invalid_helo_hostname,\n"
            "# a comment inside a continued line is skipped\n"
            "\n"
            "\treject_unknown_helo_hostname\n"
            "myhostname=mail.example.org\n"
            "   # indented comment\n"
            "smtpd_banner = $myhostname # not a comment\n")
    main_cf = parse_main_cf(tmp_path / "main.cf", text)
    entry = main_cf.get("smtpd_helo_restrictions")
    assert entry.line == 3
    assert entry.value == ("permit_mynetworks,    reject_invalid_helo_hostname,"
                           "\treject_unknown_helo_hostname")
    assert split_list(entry.value) == ["permit_mynetworks", "reject_invalid_helo_hostname",
                                       "reject_unknown_helo_hostname"]
    assert main_cf.get("myhostname").value == "mail.example.org"
    assert main_cf.get("myhostname").line == 8
    assert main_cf.get("smtpd_banner").value == "$myhostname # not a comment"
    assert any('"#"' in w.message and w.line == 10 for w in main_cf.warnings)


def test_main_cf_later_entry_wins_with_a_warning(tmp_path):
    main_cf = parse_main_cf(tmp_path / "main.cf", "myhostname = a\nmyhostname = b\n")
    assert main_cf.get("myhostname").value == "b"
    assert main_cf.get("myhostname").line == 2
    assert len(main_cf.all_entries) == 2
    [warning] = main_cf.warnings
    assert (warning.line, "overriding earlier entry" in warning.message) == (2, True)


def _expander(values: dict[str, str]) -> tuple[MacroExpander, list[str]]:
    undefined: list[str] = []
    return MacroExpander(values.get, undefined.append), undefined


@pytest.mark.parametrize("text, expected", [
    ("$a", "A"), ("${a}", "A"), ("$(a)", "A"), ("x$a.y", "xA.y"), ("$$a", "$a"),
    ("$b", "A-A"), ("${a?yes}", "yes"), ("${empty?yes}", ""), ("${a:no}", ""),
    ("${empty:fallback}", "fallback"), ("${a?{one}:{two}}", "one"), ("${empty?{one}:{two}}", "two"),
    ("${a ? {one} : {two}}", "one"), ("$(a?{p}:{q})", "p"),
    ("${{$a} == {A} ? {eq} : {ne}}", "eq"), ("${{$a} != {A} ? {eq} : {ne}}", "ne"),
    ("${{10} < {9} ? {lt} : {ge}}", "ge"), ("${{a} < {b} ? {lt} : {ge}}", "lt"),
    ("${{3.6} <level {3.10} ? {old} : {new}}", "old"), ("${{2} >=level {3.6} ? {x} : {y}}", "y"),
    ("${{$level} <level {3.6} ? {no} : {yes}}", "yes"), ("${{a} == {a} : {n}}", ""),
])
def test_macro_expansion(text, expected):
    expander, undefined = _expander({"a": "A", "b": "$a-${a}", "empty": "", "level": "3.6"})
    assert expander.expand(text) == expected
    assert undefined == []


def test_macro_undefined_name_expands_to_nothing():
    expander, undefined = _expander({})
    assert expander.expand("[$nosuch]") == "[]"
    assert expander.expand("${nosuch?{x}:{y}}") == "y"
    assert undefined == ["nosuch", "nosuch"]


@pytest.mark.parametrize("text, fragment", [
    ("${a", "truncated macro reference"), ("$(a", "truncated macro reference"),
    ("a $ b", "empty macro name"), ("a$", "empty macro name"), ("${}", "empty macro name"),
    ("${a x}", "attribute name syntax error"), ("${a?{x}:{y}z}", "unexpected input"),
    ("${a:{x}:{y}}", "unexpected input"), ("${{a} ~ {b} ? {x}}", "expected"),
    ("${{x} <level {3} ? {y} : {n}}", "compatibility level"), ("$loop", "nesting"),
])
def test_macro_errors(text, fragment):
    expander, _ = _expander({"a": "A", "loop": "$loop"})
    with pytest.raises(MacroError) as info:
        expander.expand(text)
    assert fragment in info.value.message


def test_defaults_for_unset_parameters(shipped):
    assert shipped.main("mail_name") == "Postfix"
    assert shipped.main("data_directory") == "/var/lib/postfix"
    assert shipped.main("queue_directory") == "/var/spool/postfix"
    assert shipped.main("smtpd_timeout") == "300s"
    assert shipped.time("smtpd_timeout") == 300.0
    assert shipped.time("maximal_queue_lifetime") == 5 * 86400
    assert shipped.time("maximal_backoff_time") == 4000.0
    assert shipped.size("message_size_limit") == 10240000
    assert shipped.size("mailbox_size_limit") == 0
    assert shipped.int("smtpd_recipient_limit") == 1000
    assert shipped.bool("smtpd_delay_reject") is True
    assert shipped.bool("smtputf8_enable") is True          # compatibility_level 3.6
    assert shipped.bool("smtpd_relay_before_recipient_restrictions") is True
    assert shipped.main("relay_domains") == ""
    assert shipped.main("syslog_name") == "postfix"
    assert shipped.main("smtpd_sasl_security_options") == "noanonymous"
    with pytest.raises(KeyError):
        shipped.main("no_such_parameter_anywhere")


def test_compatibility_level_changes_defaults(cfg):
    replace(cfg, "postfix/main.cf", "compatibility_level = 3.6\n", "compatibility_level = 0\n")
    replace(cfg, "postfix/main.cf",
            "smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated"
            " defer_unauth_destination\n", "")
    profile = load_profile(cfg)
    assert profile.main("smtpd_relay_restrictions") == ""
    assert profile.bool("smtputf8_enable") is False
    assert profile.main("relay_domains") == profile.main("mydestination")


def test_time_units():
    assert parse_postfix_time("300s") == 300
    assert parse_postfix_time("5m") == 300
    assert parse_postfix_time("2h") == 7200
    assert parse_postfix_time("1w") == 604800
    assert parse_postfix_time("5", unit="d") == 432000
    assert parse_postfix_time("5") == 5
    assert parse_dovecot_time("2 secs") == 2
    assert parse_dovecot_time("5 mins") == 300
    assert parse_dovecot_time("1 hour") == 3600
    assert parse_dovecot_time("100ms") == pytest.approx(0.1)


def test_bare_time_uses_the_parameters_unit(cfg):
    append(cfg, "postfix/main.cf", "maximal_queue_lifetime = 2\nqueue_run_delay = 60\n")
    profile = load_profile(cfg)
    assert profile.time("maximal_queue_lifetime") == 2 * 86400
    assert profile.time("queue_run_delay") == 60


def test_myorigin_reads_the_mailname_file(cfg):
    (cfg / "mailname").write_text("example.edu\nignored\n")
    assert load_profile(cfg).main("myorigin") == "example.edu"
    (cfg / "mailname").write_text("\n")
    with pytest.raises(ConfigError) as info:
        load_profile(cfg)
    main_cf = cfg / "postfix/main.cf"
    assert_located(info.value, main_cf, line_of(main_cf, "myorigin = /etc/mailname"))


# ---------------------------------------------------------------------------
# master.cf
# ---------------------------------------------------------------------------

MASTER_SAMPLE = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
smtp      inet  n       -       y       -       -       smtpd
127.0.0.1:2525 inet n   -       y       -       -       smtpd
  -o { smtpd_banner = $myhostname says { hello } }
  -o syslog_name=postfix/$service_name
[::1]:submission inet n -       y       -       -       smtpd -v
  -o smtpd_client_restrictions=
smtps     inet  n       -       y       -       -       smtpd
  -o smtpd_tls_wrappermode=yes
628       inet  n       -       y       -       -       qmqpd
tlsmgr    unix  -       -       y       1000?   1       tlsmgr
maildrop  unix  -       n       n       -       -       pipe
  flags=DRXhu user=vmail argv=/usr/bin/maildrop -d ${recipient}
"""


def test_master_cf_parsing(tmp_path):
    master = parse_master_cf(tmp_path / "master.cf", MASTER_SAMPLE)
    keys = [(s.key, s.host, s.port) for s in master.services]
    assert keys == [("smtp/inet", None, 25), ("127.0.0.1:2525/inet", "127.0.0.1", 2525),
                    ("[::1]:submission/inet", "::1", 587), ("smtps/inet", None, 465),
                    ("628/inet", None, 628), ("tlsmgr/unix", None, None),
                    ("maildrop/unix", None, None)]
    alt = master.services[1]
    assert alt.override_values == {"smtpd_banner": "$myhostname says { hello }",
                                   "syslog_name": "postfix/$service_name"}
    assert [o.line for o in alt.overrides.values()] == [4, 5]
    assert master.services[2].args == ["-v"]
    assert master.services[2].override_values == {"smtpd_client_restrictions": ""}
    assert master.services[5].wakeup == "1000?"
    assert master.services[6].args == ["flags=DRXhu", "user=vmail", "argv=/usr/bin/maildrop",
                                       "-d", "${recipient}"]


def test_service_overrides_apply_per_service(cfg):
    master = cfg / "postfix/master.cf"
    content = master.read_text(encoding="utf-8")
    master.write_text(content + "2525 inet n - y - - smtpd\n"
                      "  -o myhostname=alt.gponlab.local\n"
                      "  -o syslog_name=postfix/$service_name\n", encoding="utf-8")
    profile = load_profile(cfg)
    assert profile.service_param("submission", "smtpd_tls_security_level") == "encrypt"
    assert profile.service_param("smtp/inet", "smtpd_tls_security_level") == "may"
    assert profile.main("smtpd_tls_security_level") == "may"
    assert profile.bool("smtpd_sasl_auth_enable", "submission") is True
    assert profile.bool("smtpd_sasl_auth_enable", "smtp/inet") is False
    assert profile.list("smtpd_client_restrictions", "submission") == [
        "permit_sasl_authenticated", "reject"]
    assert profile.service_param("submission", "syslog_name") == "postfix/submission"
    assert profile.service_param("smtp/inet", "syslog_name") == "postfix"
    assert profile.service_param("relay/unix", "syslog_name") == "postfix/relay"
    # an override also changes what other parameters expand to in that service
    assert profile.service_param("2525", "smtpd_banner") == "alt.gponlab.local ESMTP Postfix (Debian/GNU)"
    assert profile.service_param("2525", "syslog_name") == "postfix/2525"
    assert profile.main("smtpd_banner") == "mail.gponlab.local ESMTP Postfix (Debian/GNU)"
    assert [s.port for s in profile.smtpd_services()] == [25, 587, 2525]
    assert profile.service("smtp").key == "smtp/inet"
    assert profile.service("smtp/unix").command == "smtp"
    assert profile.service_param("smtp", "smtpd_tls_security_level") == "may"
    ambiguous = cfg / "postfix/master.cf"
    ambiguous.write_text(ambiguous.read_text() + "dup unix - - y - - smtp\ndup fifo - - y - - smtp\n")
    with pytest.raises(KeyError, match="ambiguous"):
        load_profile(cfg).service("dup")
    with pytest.raises(KeyError):
        profile.service("nosuch")


# ---------------------------------------------------------------------------
# Dovecot syntax
# ---------------------------------------------------------------------------

def test_dovecot_sections_includes_and_values(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "dovecot.conf").write_text(
        "protocols = imap\n"
        "protocols = $protocols pop3\n"
        "listen = *  # trailing comment\n"
        "login_greeting = \"Hola # no es comentario\"\n"
        "!include conf.d/*.conf\n"
        "!include_try missing.conf\n"
        "ssl_cert = </etc/ssl/cert.pem\n"
        "mail_plugins = a \\\n"
        "  b\n")
    (tmp_path / "conf.d/20-b.conf").write_text(
        "namespace inbox {\n  mailbox \"Sent Messages\" {\n    special_use = \\Sent\n  }\n}\n")
    (tmp_path / "conf.d/10-a.conf").write_text(
        "namespace inbox {\n  inbox = yes\n}\n"
        "service auth {\n  unix_listener /var/spool/postfix/private/auth {\n"
        "    mode = 0666\n  }\n}\n"
        "passdb {\n  driver = passwd-file\n}\npassdb {\n  driver = static\n}\n"
        "protocol !indexer-worker {\n}\n")
    config = parse_dovecot(tmp_path / "dovecot.conf")
    root = config.root
    assert root.get("protocols") == "imap pop3"
    assert root.get("listen") == "*"
    assert root.get("login_greeting") == "Hola # no es comentario"
    assert root.setting("ssl_cert").file_ref and root.get("ssl_cert") == "/etc/ssl/cert.pem"
    assert root.get("mail_plugins") == "a b"
    assert config.files == [str(tmp_path / "dovecot.conf"), str(tmp_path / "conf.d/10-a.conf"),
                            str(tmp_path / "conf.d/20-b.conf")]
    namespace = root.section("namespace", "inbox")
    assert len(root.find("namespace")) == 1          # opened twice, one section
    assert namespace.get("inbox") == "yes"
    assert namespace.section("mailbox", "Sent Messages").get("special_use") == "\\Sent"
    listener = root.section("service", "auth").section("unix_listener", "/var/spool/postfix/private/auth")
    assert listener.get("mode") == "0666"
    assert listener.setting("mode").line == 6
    assert listener.setting("mode").display_name == (
        "service auth / unix_listener /var/spool/postfix/private/auth / mode")
    assert listener.setting("mode").generic_key == "service/unix_listener/mode"
    assert [p.get("driver") for p in root.find("passdb")] == ["passwd-file", "static"]
    assert root.section("protocol", "!indexer-worker") is not None
    assert [(i.target, i.optional, len(i.files)) for i in config.includes] == [
        ("conf.d/*.conf", False, 2), ("missing.conf", True, 0)]


@pytest.mark.parametrize("text, line, fragment", [
    ("a = 1\n}\n", 2, "unexpected '}'"),
    ("service auth {\n  unix_listener x {\n    mode = 0666\n  }\n", 1, "never closed"),
    ("a = 1\nthis is wrong\n", 2, "expecting '=' or '{'"),
    ("a = 1\nservice auth { mode = 1\n", 2, "unexpected text after"),
    ("!include nothere.conf\n", 1, "include file not found"),
    ("!include conf.d/*.nomatch\n", 1, "include file not found"),
    ("= value\n", 1, "expecting a setting"),
])
def test_dovecot_syntax_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "dovecot.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        parse_dovecot(path)
    assert_located(info.value, path, line)
    assert fragment in info.value.message


def test_dovecot_error_inside_an_included_file(tmp_path):
    (tmp_path / "main.conf").write_text("a = 1\n!include inc.conf\n")
    (tmp_path / "inc.conf").write_text("b = 2\nnamespace x {\n")
    with pytest.raises(ConfigError) as info:
        parse_dovecot(tmp_path / "main.conf")
    assert_located(info.value, tmp_path / "inc.conf", 2)


def test_dovecot_recursive_include(tmp_path):
    (tmp_path / "a.conf").write_text("!include b.conf\n")
    (tmp_path / "b.conf").write_text("x = 1\n!include a.conf\n")
    with pytest.raises(ConfigError) as info:
        parse_dovecot(tmp_path / "a.conf")
    assert_located(info.value, tmp_path / "b.conf", 2)
    assert "recursive" in info.value.message


def test_dovecot_listener_changes(cfg):
    replace(cfg, "dovecot/conf.d/10-master.conf",
            "  inet_listener imap {\n    #port = 143\n  }\n",
            "  inet_listener imap {\n    port = 10143\n  }\n")
    replace(cfg, "dovecot/conf.d/10-master.conf",
            "  inet_listener pop3s {\n    #port = 995\n    #ssl = yes\n  }\n",
            "  inet_listener pop3s {\n    port = 0\n  }\n")
    profile = load_profile(cfg)
    assert {(l.name, l.port) for l in profile.inet_listeners()} == {
        ("imap", 10143), ("imaps", 993), ("pop3", 110)}
    replace(cfg, "dovecot/dovecot.conf", "protocols = imap pop3\n", "protocols = imap\n")
    assert {l.protocol for l in load_profile(cfg).inet_listeners()} == {"imap"}


def test_missing_postfix_auth_socket_is_warned(cfg):
    replace(cfg, "dovecot/conf.d/10-master.conf",
            "  unix_listener /var/spool/postfix/private/auth {\n"
            "    mode = 0666\n    user = postfix\n    group = postfix\n  }\n", "")
    profile = load_profile(cfg)
    assert profile.postfix_auth_listener() is None
    [warning] = profile.warnings()
    main_cf = cfg / "postfix/main.cf"
    assert warning.path == str(main_cf)
    assert warning.line == line_of(main_cf, "smtpd_sasl_path = private/auth")
    assert "454 4.7.0" in warning.message and "454 4.7.0" in warning.message_es


# ---------------------------------------------------------------------------
# Every malformed input names file:line
# ---------------------------------------------------------------------------

MAIN_ERRORS = [
    ("noequals\n", 0, "missing '='"),
    ("= value\n", 0, "missing attribute name"),
    ("bad name = 1\n", 0, "bad parameter name"),
    ("smtpd_banner = ${myhostname\n", 0, "truncated macro reference"),
    ("smtpd_banner = costs 5 $ each\n", 0, "empty macro name"),
    ("smtpd_banner = $loop_a\nloop_a = $loop_b\nloop_b = $loop_a\n", 1, "nesting"),
    ("smtpd_delay_reject = maybe\n", 0, "bad boolean value"),
    ("smtpd_timeout = 5x\n", 0, "bad time value"),
    ("smtpd_timeout = 5 m\n", 0, "bad time value"),
    ("message_size_limit = 10M\n", 0, "bad size value"),
    ("smtpd_recipient_limit = many\n", 0, "bad number"),
    ("compatibility_level = three\n", 0, "bad compatibility level"),
    ("smtpd_sasl_type = ldap\n", 0, "expected one of"),
    ("inet_protocols = ipv5\n", 0, "bad value"),
    ("mynetworks = 127.0.0.0/8 192.168.1.0/33\n", 0, "CIDR"),
    ("mynetworks = 192.168.1.1/16\n", 0, "host bits"),
    ("mynetworks = ::1/128\n", 0, "brackets"),
    ("mynetworks = hash:/etc/postfix/network_table\n", 0, "only networks in CIDR"),
    ("mynetworks = !192.168.1.0/24 192.168.0.0/16\n", 0, "only networks in CIDR"),
    ("relayhost = [smtp.gmail.com]:submision\n", 0, "is not a port"),
]


@pytest.mark.parametrize("text, offset, fragment", MAIN_ERRORS)
def test_main_cf_errors_name_file_and_line(cfg, text, offset, fragment):
    path, first = append(cfg, "postfix/main.cf", text)
    with pytest.raises(ConfigError) as info:
        load_profile(cfg)
    assert_located(info.value, path, first + offset)
    assert fragment in info.value.message


def test_main_cf_leading_whitespace_on_first_line(tmp_path):
    path = tmp_path / "main.cf"
    path.write_text("  myhostname = a\n")
    with pytest.raises(ConfigError) as info:
        parse_main_cf(path)
    assert_located(info.value, path, 1)


def test_missing_main_cf(cfg):
    (cfg / "postfix/main.cf").unlink()
    with pytest.raises(ConfigError) as info:
        load_profile(cfg)
    assert_located(info.value, cfg / "postfix/main.cf", None)
    assert "not found" in str(info.value)


MASTER_ERRORS = [
    ("broken inet n - y - -\n", 0, "bad field count"),
    ("x socket n - y - - smtpd\n", 0, "invalid type field"),
    ("x unix maybe - y - - smtpd\n", 0, "invalid private field"),
    ("x unix n - yes - - smtpd\n", 0, "invalid chroot field"),
    ("x unix n - y soon - smtpd\n", 0, "invalid wakeup field"),
    ("x unix n - y - lots smtpd\n", 0, "invalid maxproc field"),
    ("smtps inet n - y - - smtpd\n  -o syslog_name\n", 1, 'missing "="'),
    ("smtps inet n - y - - smtpd\n  -o\n", 1, '"-o" needs'),
    ("smtps inet n - y - - smtpd\n  -o { smtpd_banner = x\n", 1, 'missing "}"'),
    ("mail inet n - y - - smtpd\n", 0, "not a port number"),
    ("70000 inet n - y - - smtpd\n", 0, "out of range"),
    ("127.0.0.1:smtpx inet n - y - - smtpd\n", 0, "not a port number"),
    ("smtp inet n - y - - smtpd\n", 0, "duplicate service smtp/inet"),
    ("smtps inet n - y - - smtpd\n  -o smtpd_sasl_auth_enable=maybe\n", 1, "bad boolean value"),
    ("smtps inet n - y - - smtpd\n  -o smtpd_timeout=soon\n", 1, "bad time value"),
    ("smtps inet n - y - - smtpd\n  -o smtpd_banner=${oops\n", 1, "truncated macro reference"),
]


@pytest.mark.parametrize("text, offset, fragment", MASTER_ERRORS)
def test_master_cf_errors_name_file_and_line(cfg, text, offset, fragment):
    path, first = append(cfg, "postfix/master.cf", text)
    with pytest.raises(ConfigError) as info:
        load_profile(cfg)
    assert_located(info.value, path, first + offset)
    assert fragment in info.value.message


DOVECOT_ERRORS = [
    ("dovecot/conf.d/10-ssl.conf", "ssl = maybe\n", 0, "expected one of"),
    ("dovecot/conf.d/10-auth.conf", "disable_plaintext_auth = perhaps\n", 0, "bad boolean value"),
    ("dovecot/conf.d/10-auth.conf", "auth_failure_delay = soon\n", 0, "bad time value"),
    ("dovecot/conf.d/10-master.conf", "service auth {\n  unix_listener x {\n    mode = rw\n  }\n}\n",
     2, "octal mode"),
    ("dovecot/conf.d/10-master.conf", "service imap-login {\n  inet_listener imap {\n    port = imap\n"
     "  }\n}\n", 2, "bad number"),
    ("dovecot/conf.d/10-master.conf", "}\n", 0, "unexpected '}'"),
    ("dovecot/conf.d/10-mail.conf", "namespace other {\n  prefix = x/\n", 0, "never closed"),
    ("dovecot/conf.d/10-mail.conf", "mail_location = maildir:~/Maildir\n", 0,
     "mailbox format 'maildir' is not simulated (gponsim has: mbox)"),
    ("dovecot/conf.d/10-auth.conf", "!include auth-nothere.conf.ext\n", 0, "include file not found"),
    ("dovecot/dovecot.conf", "what is this\n", 0, "expecting '='"),
]


@pytest.mark.parametrize("relative, text, offset, fragment", DOVECOT_ERRORS)
def test_dovecot_profile_errors_name_file_and_line(cfg, relative, text, offset, fragment):
    path, first = append(cfg, relative, text)
    with pytest.raises(ConfigError) as info:
        load_profile(cfg)
    assert_located(info.value, path, first + offset)
    assert fragment in info.value.message


def test_sasl_passwd_errors_name_file_and_line(cfg):
    path, first = append(cfg, "postfix/sasl_passwd", "[smtp.example.org]:587\n")
    with pytest.raises(ConfigError) as info:
        load_profile(cfg)
    assert_located(info.value, path, first)
    (cfg / "postfix/sasl_passwd").unlink()
    with pytest.raises(ConfigError) as info:
        load_profile(cfg)
    main_cf = cfg / "postfix/main.cf"
    assert_located(info.value, main_cf,
                   line_of(main_cf, "smtp_sasl_password_maps = hash:/etc/postfix/sasl_passwd"))
    # without relay authentication the file is not needed
    replace(cfg, "postfix/main.cf", "smtp_sasl_auth_enable = yes\n", "smtp_sasl_auth_enable = no\n")
    assert load_profile(cfg).bool("smtp_sasl_auth_enable") is False


def test_sasl_passwd_lookup_order_and_case(cfg):
    (cfg / "postfix/sasl_passwd").write_text(
        "# credentials\n[SMTP.Gmail.com]:587 next@gmail.com:pw:with:colons\n"
        "smtp.gmail.com host@gmail.com:hostpw\n"
        "relay.example.org\n  user-only\n")
    profile = load_profile(cfg)
    assert profile.sasl_credentials("smtp.gmail.com", "[smtp.gmail.com]:587") == (
        "host@gmail.com", "hostpw")
    assert profile.sasl_credentials("other", "[smtp.gmail.com]:587") == (
        "next@gmail.com", "pw:with:colons")
    assert profile.sasl_passwd()["relay.example.org"] == ("user-only", "")
    table = parse_table(cfg / "postfix/sasl_passwd")
    assert table["relay.example.org"].line == 4


# ---------------------------------------------------------------------------
# config init
# ---------------------------------------------------------------------------

def test_init_config_round_trip(tmp_path, shipped):
    destination = tmp_path / "lab-config"
    written = init_config(destination)
    relative = [p.relative_to(destination).as_posix() for p in written]
    assert relative == [
        "postfix/main.cf", "postfix/master.cf", "postfix/sasl_passwd", "mailname",
        "dovecot/conf.d/10-auth.conf", "dovecot/conf.d/10-mail.conf", "dovecot/conf.d/10-master.conf",
        "dovecot/conf.d/10-ssl.conf", "dovecot/conf.d/15-mailboxes.conf",
        "dovecot/conf.d/20-lmtp.conf", "dovecot/conf.d/auth-passwdfile.conf.ext",
        "dovecot/dovecot.conf"]
    for path in written:
        assert path.read_bytes() == (SHIPPED_PROFILE / path.relative_to(destination)).read_bytes()
    assert stat.S_IMODE((destination / "postfix/sasl_passwd").stat().st_mode) == 0o600
    copy = load_profile(destination)
    assert not copy.shipped and shipped.shipped
    assert {n: e.value for n, e in copy.main_cf.entries.items()} == {
        n: e.value for n, e in shipped.main_cf.entries.items()}
    assert [(s.key, s.override_values) for s in copy.services()] == [
        (s.key, s.override_values) for s in shipped.services()]
    assert [(s.display_name, s.written) for s in copy.dovecot_config.settings] == [
        (s.display_name, s.written) for s in shipped.dovecot_config.settings]
    assert copy.sasl_passwd() == shipped.sasl_passwd()


def test_init_config_lmtp_switch(tmp_path, shipped):
    """--lmtp makes the edits of the real server (the lines ship commented out)."""
    assert not shipped.lmtp_enabled() and shipped.mailbox_transport_socket() is None
    assert shipped.protocol_setting("lmtp", "auth_username_format") == "%Lu"
    destination = tmp_path / "lmtp"
    init_config(destination, lmtp=True)
    profile = load_profile(destination)
    assert profile.main("mailbox_transport") == "lmtp:unix:private/dovecot-lmtp"
    assert profile.protocols() == ["imap", "pop3", "lmtp"]
    assert profile.mailbox_transport_socket() == "/var/spool/postfix/private/dovecot-lmtp"
    paths = {path: listener for path, listener in profile.lmtp_socket_paths()}
    listener = paths["/var/spool/postfix/private/dovecot-lmtp"]
    assert (listener.mode, listener.user, listener.group) == (0o600, "postfix", "postfix")
    assert "/run/dovecot/lmtp" in paths                  # Debian's default listener, too
    assert profile.protocol_setting("lmtp", "auth_username_format") == "%Ln"
    assert profile.protocol_setting("imap", "auth_username_format") == "%Lu"
    assert profile.warnings() == []
    names = {u.name for u in profile.unsimulated()}
    assert not names & {"mailbox_transport", "protocols",
                        "protocol lmtp / auth_username_format"}, names
    # half a switch: Postfix delivers over LMTP, Dovecot has no such socket
    (destination / "dovecot/dovecot.conf").write_text(
        (destination / "dovecot/dovecot.conf").read_text().replace(
            "\nprotocols = imap pop3 lmtp\n", "\nprotocols = imap pop3\n"))
    [warning] = load_profile(destination).warnings()
    assert "mailbox_transport delivers over LMTP to /var/spool/postfix/private/dovecot-lmtp" \
        in str(warning.message) and "protocols has no lmtp" in str(warning.message)


def test_init_config_refuses_to_overwrite(tmp_path):
    destination = tmp_path / "lab-config"
    init_config(destination)
    main_cf = destination / "postfix/main.cf"
    main_cf.write_text("myhostname = edited.example\n")
    (destination / "mailname").unlink()
    with pytest.raises(ConfigError) as info:
        init_config(destination)
    assert_located(info.value, main_cf, None)
    assert "and 10 more profile files" in str(info.value) and "--force" in info.value.text("es")
    assert main_cf.read_text() == "myhostname = edited.example\n"
    assert not (destination / "mailname").exists(), "nothing is written when refusing"
    written = init_config(destination, force=True)
    assert main_cf in written
    assert main_cf.read_bytes() == (SHIPPED_PROFILE / "postfix/main.cf").read_bytes()


def test_init_config_into_a_file_fails(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(ConfigError):
        init_config(target)


def test_load_profile_of_a_missing_folder(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_profile(tmp_path / "nothere")
    assert_located(info.value, tmp_path / "nothere", None)


# ---------------------------------------------------------------------------
# What is not simulated
# ---------------------------------------------------------------------------

def test_unsimulated_in_the_shipped_profile(shipped):
    found = {(Path(f).relative_to(SHIPPED_PROFILE).as_posix(), name) for f, _, name in shipped.unsimulated()}
    assert found == {
        ("postfix/main.cf", "smtp_tls_session_cache_database"),
        ("postfix/main.cf", "alias_database"),
        ("postfix/master.cf", "milter_macro_daemon_name"),
        ("dovecot/conf.d/10-mail.conf", "mail_privileged_group"),
        ("dovecot/conf.d/10-master.conf", "service auth / unix_listener /var/spool/postfix/private/auth / user"),
        ("dovecot/conf.d/10-master.conf", "service auth / unix_listener /var/spool/postfix/private/auth / group"),
        ("dovecot/conf.d/10-ssl.conf", "ssl_client_ca_dir"),
        ("dovecot/conf.d/10-ssl.conf", "ssl_dh"),
    }
    for entry in shipped.unsimulated():
        file, line, name = entry
        text = Path(file).read_text(encoding="utf-8").splitlines()[line - 1]
        assert name.rsplit(" / ", 1)[-1] in text
        assert str(entry) == f"{file}:{line}: {name}"


def test_unsimulated_reports_unknown_ones_once(cfg):
    main_cf, first = append(cfg, "postfix/main.cf",
                            "my_typo_parameter = 1\nmilter_macro_daemon_name = X\n")
    master_cf, master_line = append(cfg, "postfix/master.cf", "628 inet n - y - - qmqpd\n")
    dovecot, dovecot_line = append(cfg, "dovecot/conf.d/10-auth.conf", "auth_made_up = 1\n")
    profile = load_profile(cfg)
    entries = profile.unsimulated()
    names = [name for _, _, name in entries]
    assert len(names) == len(set(names))
    assert (str(main_cf), first, "my_typo_parameter") in entries
    assert (str(main_cf), first + 1, "milter_macro_daemon_name") in entries   # first occurrence
    assert (str(master_cf), master_line, "628/inet (qmqpd)") in entries
    assert (str(dovecot), dovecot_line, "auth_made_up") in entries
    assert profile.main("my_typo_parameter") == "1"


# ---------------------------------------------------------------------------
# config explain
# ---------------------------------------------------------------------------

def test_explain_rows_cover_every_setting_in_both_languages(shipped):
    rows = {lang: explain_rows(shipped, lang=lang) for lang in ("es", "en")}
    assert len(rows["es"]) == len(rows["en"])
    for es, en in zip(rows["es"], rows["en"]):
        assert (es.file, es.line, es.name, es.value) == (en.file, en.line, en.name, en.value)
        assert es.known, es
        assert es.explanation and en.explanation and es.explanation != en.explanation, es.name
        assert bool(es.note) == bool(en.note)
        assert es.simulated == en.simulated
    by_kind: dict[str, set] = {}
    for row in rows["en"]:
        by_kind.setdefault(row.kind, set()).add((row.file, row.line))
    main_lines = {("postfix/main.cf", e.line) for e in shipped.main_cf.all_entries}
    assert by_kind["parameter"] == main_lines
    assert {("postfix/master.cf", s.line) for s in shipped.services()} == by_kind["service"]
    assert len(by_kind["override"]) == sum(len(s.overrides) for s in shipped.services())
    assert len(by_kind["setting"]) == len(shipped.dovecot_config.settings)
    assert ("postfix/sasl_passwd", 1) in by_kind["entry"] and ("mailname", 1) in by_kind["entry"]
    files = [row.file for row in rows["en"]]
    assert files.index("postfix/main.cf") < files.index("postfix/master.cf") < files.index(
        "dovecot/dovecot.conf") < files.index("dovecot/conf.d/10-auth.conf")
    banner = next(r for r in rows["en"] if r.name == "smtpd_banner")
    assert banner.expanded == "mail.gponlab.local ESMTP Postfix (Debian/GNU)"
    sasl = next(r for r in rows["en"] if r.file == "postfix/sasl_passwd")
    assert "abcdefghijklmnop" not in sasl.value and sasl.value.endswith(":********")


def test_explain_simulated_flags_match_unsimulated(shipped):
    rows = explain_rows(shipped, lang="en")
    not_simulated = {(r.file, r.line) for r in rows
                     if not r.simulated and r.kind in ("parameter", "override", "setting")}
    reported = {(Path(f).relative_to(SHIPPED_PROFILE).as_posix(), line)
                for f, line, _ in shipped.unsimulated()}
    assert not_simulated == reported


def test_explain_one_file(shipped):
    rows = explain_rows(shipped, "10-auth.conf", lang="es")
    assert {r.file for r in rows} == {"dovecot/conf.d/10-auth.conf"}
    assert [(r.name, r.value) for r in rows] == [
        ("auth_mechanisms", "plain login"), ("!include", "auth-passwdfile.conf.ext")]
    assert explain_rows(shipped, "postfix/master.cf") == explain_rows(
        shipped, SHIPPED_PROFILE / "postfix/master.cf")
    with pytest.raises(ConfigError):
        explain_rows(shipped, "nonexistent.cf")


def test_explain_a_foreign_file_and_unknown_parameters(tmp_path, shipped):
    path = tmp_path / "main.cf"
    path.write_text("myhostname = mx.example.org\nsmtpd_banner = $myhostname hi\n"
                    "virtual_alias_maps = hash:/etc/postfix/virtual\n")
    rows = explain_rows(shipped, path, lang="es")
    assert [(r.line, r.name, r.known) for r in rows] == [
        (1, "myhostname", True), (2, "smtpd_banner", True), (3, "virtual_alias_maps", False)]
    assert rows[1].expanded == "mx.example.org hi"
    assert rows[2].explanation == "Desconocido para gponsim: no se simula."
    assert rows[2].simulated is False
    rows_en = explain_rows(shipped, path, lang="en")
    assert rows_en[2].explanation == "Unknown to gponsim: not simulated."
    conf = tmp_path / "extra.conf"
    conf.write_text("auth_mechanisms = plain\nnot_a_dovecot_setting = 1\n")
    rows = explain_rows(shipped, conf, lang="en")
    assert [(r.name, r.known) for r in rows] == [("auth_mechanisms", True), ("not_a_dovecot_setting", False)]


@pytest.mark.parametrize("lang, words", [
    ("es", ["Archivo: postfix/main.cf", "Explicación", "¿Simulado?", "sí", "Parámetro"]),
    ("en", ["File: postfix/main.cf", "Explanation", "Simulated?", "yes", "Parameter"]),
])
def test_render_explain_table_and_list(shipped, lang, words):
    rows = explain_rows(shipped, lang=lang)
    wide = Console(width=200, record=True, color_system=None)
    render_explain(rows, wide, lang)
    table = wide.export_text()
    for word in words:
        assert word in table
    assert "smtpd_relay_restrictions" in table and "milter_macro_daemon_name" in table
    narrow = Console(width=80, record=True, color_system=None)
    render_explain(rows, narrow, lang)
    listing = narrow.export_text()
    assert words[0] in listing
    assert "relayhost = [smtp.gmail.com]:587" in listing
    assert "┃" not in listing and "┃" in table


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------

def test_lab_paths(tmp_path, shipped):
    root = tmp_path / "lab"
    assert LabProfile.path("/var/mail", root) == root / "var/mail"
    assert shipped.path("/etc/ssl/certs/ssl-cert-snakeoil.pem", root) == (
        root / "etc/ssl/certs/ssl-cert-snakeoil.pem")
    assert shipped.path(shipped.main("smtpd_sasl_path"), root,
                        relative_to=shipped.main("queue_directory")) == root / "var/spool/postfix/private/auth"
    assert shipped.path("/", root) == root
    with pytest.raises(ValueError):
        shipped.path("private/auth", root)
    with pytest.raises(ValueError):
        shipped.path("x", root, relative_to="var/spool")
    # ".." never climbs above the lab root, as "/.." is "/" on the server
    assert shipped.path("/../etc/passwd", root) == root / "etc/passwd"
    assert shipped.path("../../../../x", root, relative_to="/var/spool/postfix") == root / "x"


def test_config_files_map_into_the_profile(shipped):
    assert shipped.config_file("/etc/postfix/sasl_passwd") == SHIPPED_PROFILE / "postfix/sasl_passwd"
    assert shipped.config_file("/etc/mailname") == SHIPPED_PROFILE / "mailname"
    assert shipped.config_file("/etc/dovecot/conf.d/10-ssl.conf") == SHIPPED_PROFILE / "dovecot/conf.d/10-ssl.conf"
    assert shipped.config_file("/etc/dovecot/users") is None        # state, under the lab root
    assert shipped.config_file("/etc/ssl/certs/ca-certificates.crt") is None


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def test_catalog_has_text_for_every_entry():
    data = catalog()
    for group in (data.postfix_params, data.postfix_services, data.dovecot_settings, data.dovecot_sections):
        for name, info in group.items():
            assert info.explanation.get("es") and info.explanation.get("en"), name
            assert bool(info.note.get("es")) == bool(info.note.get("en")), name
    brief = ["myhostname", "mydomain", "myorigin", "mydestination", "mynetworks", "inet_interfaces",
             "inet_protocols", "smtpd_banner", "mail_name", "smtpd_relay_restrictions",
             "smtpd_recipient_restrictions", "smtpd_client_restrictions", "smtpd_helo_restrictions",
             "smtpd_sender_restrictions", "smtpd_delay_reject", "smtpd_tls_cert_file",
             "smtpd_tls_key_file", "smtpd_tls_security_level", "smtpd_tls_auth_only",
             "smtpd_sasl_type", "smtpd_sasl_path", "smtpd_sasl_auth_enable",
             "smtpd_sasl_security_options", "smtpd_sasl_service", "smtpd_reject_unlisted_recipient",
             "message_size_limit", "mailbox_size_limit", "smtpd_timeout", "smtpd_recipient_limit",
             "line_length_limit", "syslog_name", "queue_directory", "mail_spool_directory",
             "relayhost", "smtp_sasl_auth_enable", "smtp_sasl_password_maps",
             "smtp_sasl_security_options", "smtp_tls_security_level", "smtp_tls_CAfile",
             "smtp_tls_CApath", "queue_run_delay", "minimal_backoff_time", "maximal_backoff_time",
             "maximal_queue_lifetime", "bounce_queue_lifetime", "compatibility_level",
             "recipient_delimiter", "append_dot_mydomain", "biff", "readme_directory"]
    for name in brief:
        assert data.postfix(name).simulated, name
    for name in ("alias_database", "smtp_tls_session_cache_database",
                 "milter_macro_daemon_name"):
        assert not data.postfix(name).simulated, name
    # read as Postfix reads them: etc/aliases, etc/passwd, the TLS log levels
    for name in ("alias_maps", "local_recipient_maps", "smtpd_tls_loglevel",
                 "smtp_tls_loglevel", "smtpd_peername_lookup"):
        assert data.postfix(name).simulated, name


def test_every_default_expands_without_undefined_names(shipped):
    for name in catalog().postfix_params:
        shipped.main(name)
    assert shipped.warnings() == []


# ---------------------------------------------------------------------------
# Real Postfix and Dovecot agree with our parsers
# ---------------------------------------------------------------------------

def _normalize(value: str) -> str:
    return " ".join(value.split())


# Debian installs postconf in /usr/sbin, which is not on a normal user's PATH.
POSTCONF = shutil.which("postconf") or shutil.which("postconf", path="/usr/sbin:/sbin")


def _postconf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([POSTCONF, *args], capture_output=True, text=True, check=False)


def _pairs(output: str) -> dict[str, str]:
    result = {}
    for line in output.splitlines():
        name, _, value = line.partition(" = ")
        result[name.strip().rstrip(" =")] = value
    return result


@pytest.mark.slow          # real Postfix's postconf
@pytest.mark.postfix
@pytest.mark.skipif(POSTCONF is None, reason="needs Debian's postfix (postconf)")
def test_real_postconf_reads_our_files_like_we_do(shipped):
    version = _postconf("-d", "-h", "mail_version").stdout.strip()
    if not version.startswith("3.7"):
        pytest.skip(f"the data describes Postfix 3.7, this is {version}")
    directory = str(SHIPPED_PROFILE / "postfix")

    raw = _postconf("-c", directory, "-n")
    assert raw.returncode == 0 and raw.stderr == "", raw.stderr
    written = _pairs(raw.stdout)
    written.pop("config_directory")
    assert set(written) == set(shipped.main_cf.entries)
    for name, value in written.items():
        assert _normalize(shipped.raw(name)) == _normalize(value), name

    expanded = _postconf("-c", directory, "-n", "-x")
    assert expanded.returncode == 0 and expanded.stderr == "", expanded.stderr
    for name, value in _pairs(expanded.stdout).items():
        if name == "config_directory":
            continue
        ours = shipped.raw(name) if name == "myorigin" else shipped.main(name)   # postconf does not read /etc/mailname
        assert _normalize(ours) == _normalize(value), name

    # every parameter gponsim knows: same effective value as real Postfix
    data = catalog()
    names = [n for n, info in data.postfix_params.items() if not info.dynamic]
    effective = _postconf("-c", directory, "-x", *names)
    assert effective.returncode == 0, effective.stderr
    for name, value in _pairs(effective.stdout).items():
        if name in ("myorigin", "config_directory"):
            continue
        assert _normalize(shipped.main(name)) == _normalize(value), name
    # and the defaults in our data are Postfix's own
    defaults = _pairs(_postconf("-d", *names).stdout)
    for name in names:
        assert data.postfix(name).default == defaults[name], name

    # master.cf: services and -o overrides
    overrides = _postconf("-c", directory, "-P")
    assert overrides.returncode == 0 and overrides.stderr == "", overrides.stderr
    ours = {f"{s.key}/{o.name}": o.value for s in shipped.services() for o in s.overrides.values()}
    assert _pairs(overrides.stdout) == ours
    services = _postconf("-c", directory, "-M")
    assert services.returncode == 0 and services.stderr == "", services.stderr
    real = [line.split()[:8] for line in services.stdout.splitlines()]
    assert real == [s.fields for s in shipped.services()]


@pytest.mark.slow          # real Postfix's postconf
@pytest.mark.postfix
@pytest.mark.skipif(POSTCONF is None, reason="needs Debian's postfix (postconf)")
def test_real_postconf_agrees_on_continuations_and_expressions(tmp_path, cfg):
    append(cfg, "postfix/main.cf",
           "smtpd_helo_restrictions = permit_mynetworks,\n"
           "  # comment between continuation lines\n"
           "  reject_invalid_helo_hostname\n"
           "smtpd_sender_restrictions = ${{$compatibility_level} <level {3.6} ? {old} : {new}}"
           " ${myhostname?{set}:{unset}} ${multi_instance_name:{single}} $$literal\n")
    profile = load_profile(cfg)
    result = _postconf("-c", str(cfg / "postfix"), "-x", "-h",
                       "smtpd_helo_restrictions", "smtpd_sender_restrictions")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    helo, sender = result.stdout.splitlines()
    assert _normalize(profile.main("smtpd_helo_restrictions")) == helo
    assert profile.main("smtpd_sender_restrictions") == sender == "new set single $literal"


@pytest.mark.slow          # real Dovecot's doveconf
@pytest.mark.skipif(shutil.which("doveconf") is None, reason="needs dovecot-core (doveconf)")
def test_real_doveconf_reads_our_files_like_we_do(tmp_path, shipped):
    result = subprocess.run(
        ["doveconf", "-c", str(SHIPPED_PROFILE / "dovecot/dovecot.conf"), "-n", "-P"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    dump = tmp_path / "doveconf.conf"
    dump.write_text(result.stdout)
    real = parse_dovecot(dump).root

    def find(root, section):
        chain = []
        node = section
        while node.parent is not None:
            chain.append(node)
            node = node.parent
        current = root
        for part in reversed(chain):
            current = current.section(part.name, part.label) if part.label is not None else (
                current.find(part.name)[part.parent.find(part.name).index(part)])
            if current is None:
                return None
        return current

    data = catalog()
    for setting in shipped.dovecot_config.settings:
        where = find(real, setting.section)
        theirs = where.setting(setting.key) if where is not None else None
        if theirs is not None:
            assert (theirs.value, theirs.file_ref) == (setting.value, setting.file_ref), setting.display_name
        else:   # doveconf -n omits values equal to the default
            assert data.dovecot(setting.generic_key).default == setting.value, setting.display_name


# config explain NAME: the limits the lab's files do not write (issue #18)

@pytest.mark.parametrize("name,value,simulated", [
    ("smtpd_client_connection_count_limit", "50", True),
    ("smtpd_client_connection_rate_limit", "0", True),
    ("anvil_rate_time_unit", "60s", True),
    ("smtpd_client_event_limit_exceptions",
     "${smtpd_client_connection_limit_exceptions:$mynetworks}", True),
    ("auth_failure_delay", "2 secs", True),
    ("mail_max_userip_connections", "10", True),
])
def test_explain_one_parameter_by_name(shipped, name, value, simulated):
    from gponsim.config import parameter_rows

    for lang in ("es", "en"):
        (row,) = parameter_rows(shipped, name, lang=lang)
        assert (row.name, row.value, row.simulated, row.known) == (name, value, simulated, True)
        assert row.explanation
    assert parameter_rows(shipped, "no_such_parameter") == []


def test_explain_shows_what_the_exceptions_expand_to(shipped):
    from gponsim.config import parameter_rows

    (row,) = parameter_rows(shipped, "smtpd_client_event_limit_exceptions", lang="en")
    assert row.expanded == "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 192.168.0.0/16"
    assert "192.168.0.0/16" in row.explanation
