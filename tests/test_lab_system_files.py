"""The lab server's own system files, read as Postfix reads them: etc/passwd
(local recipients, local(8)'s mailboxes), etc/aliases (alias_maps) and
etc/hosts (smtpd's client names). End to end, against real Postfix, in
test_differential.py; here, each rule on its own."""

from __future__ import annotations

from gponsim.server import accounts
from gponsim.server.postfix import aliases
from gponsim.server.postfix.local import LocalAgent
from gponsim.server.postfix.local_recipients import LocalRecipients
from gponsim.server.resolver import HostsFile, client_name, valid_hostname


def test_aliases_file_as_postalias_reads_it(tmp_path):
    table = aliases.parse(
        "# comment\n"
        "postmaster:    root\n"
        "Abuse: root, user1\n"
        "team: user1,\n"
        "   user2\n"
        '"with space": user2\n'
        "postmaster: user2\n"            # a duplicate: the first one stays
        "broken line without colon\n")
    assert table == {"postmaster": ["root"], "abuse": ["root", "user1"],
                     "team": ["user1", "user2"], "with space": ["user2"]}
    made = aliases.ensure(tmp_path)
    assert (tmp_path / "etc/aliases").read_text() == aliases.DEBIAN_ALIASES
    assert made.lookup("POSTMASTER") == ["root"] and made.lookup("nobody") is None


def test_accounts_like_debian_and_adduser(tmp_path):
    acc = accounts.ensure(tmp_path, ["user1", "user2"])
    assert acc.get("root").uid == 0 and acc.exists("postfix") and acc.exists("nobody")
    assert (acc.get("user1").uid, acc.get("user2").uid) == (1000, 1001)
    assert acc.get("user1").home == "/home/user1"
    accounts.ensure(tmp_path, ["user1", "user3"])          # only the missing one is added
    again = accounts.Accounts(accounts.path_for(tmp_path))
    assert again.get("user3").uid == 1002 and again.get("user1").uid == 1000
    again.remove_user("user3")
    again.remove_user("root")                              # system accounts stay
    assert not again.exists("user3") and again.exists("root")


def test_local_recipient_maps(tmp_path):
    acc = accounts.ensure(tmp_path, ["user1"])
    ali = aliases.ensure(tmp_path)
    known = LocalRecipients(["proxy:unix:passwd.byname", "hash:/etc/aliases"],
                            ["hash:/etc/aliases"], account_exists=acc.exists,
                            alias_exists=ali.__contains__)
    for local in ("user1", "USER1", "user1+lab", "root", "postmaster", "Postmaster+x", "daemon"):
        assert known.exists(local), local
    for local in ("nadie", "user2", "+user1", "user1-lab"):
        assert not known.exists(local), local
    # only the accounts, without $alias_maps: postmaster is unknown
    assert not LocalRecipients(["proxy:unix:passwd.byname"], ["hash:/etc/aliases"],
                               account_exists=acc.exists,
                               alias_exists=ali.__contains__).exists("postmaster")
    # empty: no check at all
    assert LocalRecipients([], [], account_exists=acc.exists,
                           alias_exists=ali.__contains__).exists("nadie")


def test_local_expands_aliases_before_the_mailbox(tmp_path):
    ali = aliases.Aliases(tmp_path / "aliases")
    (tmp_path / "aliases").write_text(
        "postmaster: root\nteam: user1, user2@gponlab.local\nloop: loop\n"
        "chain: team\nfile: /tmp/x, |cmd, outside@example.org\n")
    agent = LocalAgent(tmp_path, user_exists=lambda u: True, log=None, aliases=ali.lookup,
                       myorigin="gponlab.local",
                       is_local_domain=lambda d: d in ("gponlab.local", "mail.gponlab.local"))
    assert agent.expand("postmaster@gponlab.local") == [
        ("root@gponlab.local", "postmaster@gponlab.local", "")]
    assert agent.expand("user1@gponlab.local") == [
        ("user1@gponlab.local", "user1@gponlab.local", "")]
    assert agent.expand("chain@gponlab.local") == [
        ("user1@gponlab.local", "chain@gponlab.local", ""),
        ("user2@gponlab.local", "chain@gponlab.local", "")]
    assert agent.expand("loop@gponlab.local") == [
        ("loop@gponlab.local", "loop@gponlab.local", "")]
    assert [u for _, _, u in agent.expand("file@gponlab.local")] == [
        "/tmp/x", "|cmd", "outside@example.org"]


def test_client_names_from_the_lab_hosts_file(tmp_path):
    hosts = HostsFile(tmp_path / "hosts")
    (tmp_path / "hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
        "127.0.0.1\tsmtp.gmail.com\n192.168.1.50 pc50.gponlab.local pc50\n"
        "192.168.1.60 pc60.gponlab.local\n192.168.1.61 pc60.gponlab.local\n"
        "192.168.1.70 bad_name!\n")
    warnings: list[str] = []
    name = lambda ip: client_name(hosts, ip, warnings.append)  # noqa: E731
    assert name("127.0.0.1") == "localhost"
    assert name("::1") == "localhost"
    assert name("192.168.1.50") == "pc50.gponlab.local"
    assert name("192.168.1.99") == "unknown" and warnings == []
    assert name("192.168.1.70") == "unknown"           # not a valid host name
    # the name of .61 (first line with that name first) resolves to .60 and .61: confirmed
    assert name("192.168.1.61") == "pc60.gponlab.local"
    (tmp_path / "hosts").write_text("10.0.0.5 ghost.example\n10.0.0.6 ghost.example\n"
                                    "10.0.0.7 other\n")
    hosts2 = HostsFile(tmp_path / "hosts")
    assert client_name(hosts2, "10.0.0.6", warnings.append) == "ghost.example"
    assert valid_hostname("mail.gponlab.local") and not valid_hostname("127.0.0.1")
    assert not valid_hostname("1.2.3") and not valid_hostname("a..b")
