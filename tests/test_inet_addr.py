"""The server's own addresses (gponsim.server.postfix.inet_addr): what makes
``user@[address]`` a local domain, without DNS."""

from __future__ import annotations

from gponsim.server.postfix.inet_addr import machine_addresses, own_addresses

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
Local:
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.2
              /32 host LOCAL
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 80     eth0
"""


def test_machine_addresses_from_proc(tmp_path):
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_text(IF_INET6)
    assert machine_addresses(tmp_path) == ("127.0.0.1", "192.0.2.2", "::1", "fd00::2")
    assert machine_addresses(tmp_path / "missing") == ()


def test_inet_interfaces_all_is_the_machine_and_what_gponsim_listens_on():
    got = own_addresses(["all"], [], "all", machine=("192.0.2.2", "fd00::2"),
                        listening=("0.0.0.0", "192.168.40.50"))
    assert got == ("192.0.2.2", "fd00::2", "192.168.40.50", "127.0.0.1", "::1")


def test_loopback_only_addresses_proxy_interfaces_and_protocols():
    assert own_addresses(["loopback-only"], [], "all", machine=("192.0.2.2",)) == \
        ("127.0.0.1", "::1")
    assert own_addresses(["192.0.2.9", "[::1]", "mail.gponlab.local"], ["203.0.113.7"],
                         "ipv4", machine=()) == ("192.0.2.9", "203.0.113.7")
    assert own_addresses(["all"], [], "ipv6", machine=("192.0.2.2",)) == ("::1",)
