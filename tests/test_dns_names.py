"""Client names on the lab network: etc/hosts first, then the lab's own DNS
(its twisted.names server, on a loopback port here), confirmed forward, as
Postfix's smtpd names a client through glibc's ``hosts: files dns``."""

from __future__ import annotations

import pytest
from twisted.names import client, dns

from gponsim.net import dns as lab_dns
from gponsim.net.topology import load
from gponsim.server.dns_names import LabDnsNames
from gponsim.server.resolver import HostsFile


@pytest.fixture
def names(tmp_path, reactor_thread):
    """LabDnsNames asking the lab network's DNS (every record of lab-network.toml,
    and two PTR records that do not resolve back)."""
    topology = load()
    topology.extra_records += ["77.40.168.192.in-addr.arpa. PTR pc1.gponlab.local.",
                               "78.40.168.192.in-addr.arpa. PTR ghost.gponlab.local."]
    factory = lab_dns.NarratedDNSServerFactory(topology)
    udp = reactor_thread.call(lambda: reactor_thread.reactor.listenUDP(
        0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1"))
    port = udp.getHost().port
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n192.168.40.50\tmail.gponlab.local mail\n")
    resolver = reactor_thread.call(lambda: client.Resolver(servers=[("127.0.0.1", port)],
                                                           reactor=reactor_thread.reactor))
    yield LabDnsNames(HostsFile(hosts), resolver)
    reactor_thread.call(udp.stopListening)


def ask(reactor_thread, names, ip):
    warnings: list[str] = []
    name = reactor_thread.wait(lambda: names.client_name(ip, warnings.append))
    return name, warnings


def test_a_lab_pc_is_named_by_its_ptr_record(reactor_thread, names):
    assert ask(reactor_thread, names, "192.168.40.101") == ("pc1.gponlab.local", [])
    assert ask(reactor_thread, names, "2001:db8:40::101") == ("pc1.gponlab.local", [])


def test_outside_hosts_have_the_names_the_lab_dns_gives_them(reactor_thread, names):
    assert ask(reactor_thread, names, "198.51.100.20") == ("outside.example.net", [])
    assert ask(reactor_thread, names, "203.0.113.10") == ("smtp.gmail.com", [])


def test_etc_hosts_comes_first(reactor_thread, names):
    assert ask(reactor_thread, names, "127.0.0.1") == ("localhost", [])
    assert ask(reactor_thread, names, "192.168.40.50") == ("mail.gponlab.local", [])


def test_no_ptr_record_is_unknown(reactor_thread, names):
    # 10.0.0.9 is in no zone of the lab's DNS: it answers REFUSED
    assert ask(reactor_thread, names, "10.0.0.9") == ("unknown", [])
    # in a zone of its own, but no such record: NXDOMAIN
    assert ask(reactor_thread, names, "192.168.40.200") == ("unknown", [])


def test_a_name_that_does_not_resolve_back_is_unknown_with_smtpd_s_warnings(reactor_thread, names):
    assert ask(reactor_thread, names, "192.168.40.77") == (
        "unknown", ["hostname pc1.gponlab.local does not resolve to address 192.168.40.77"])
    assert ask(reactor_thread, names, "192.168.40.78") == (
        "unknown", ["hostname ghost.gponlab.local does not resolve to address 192.168.40.78: "
                    "Name or service not known"])
