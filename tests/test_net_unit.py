"""The lab network's data and its DNS server, without namespaces (fast layer)."""

from __future__ import annotations

import pytest

from gponsim.net import lookup, topology
from gponsim.net.dns import NarratedDNSServerFactory, listen
from gponsim.sinks.memory import ListSink
from gponsim.steps import StepBus


def test_the_server_is_configured_as_its_netplan_file():
    t = topology.load()
    mail = t.host("mail")
    (iface,) = mail.interfaces
    assert iface.name == "enp0s3"
    assert iface.addresses == ("192.168.40.50/24", "2001:db8:40::50/64")
    assert (mail.gateway4, mail.gateway6) == ("192.168.40.1", "2001:db8:40::1")
    assert t.nameservers == ["192.168.20.20", "2001:db8:20::20"]
    assert t.search == ["gponlab.local"]
    assert t.resolv_conf("pc1").splitlines()[1:] == [
        "nameserver 192.168.20.20", "nameserver 2001:db8:20::20", "search gponlab.local"]
    assert t.host("dns").addresses == ["192.168.20.20", "2001:db8:20::20"]
    assert set(t.host("router").addresses) >= {"192.168.40.1", "2001:db8:40::1", "192.168.20.1", "2001:db8:20::1"}


def test_student_pcs_count_up_from_192_168_40_101():
    assert topology.load().pcs == ["pc1", "pc2", "pc3"]
    t = topology.load(pcs=12)
    assert len(t.pcs) == 12
    assert t.host("pc1").addresses == ["192.168.40.101", "2001:db8:40::101"]
    assert t.host("pc12").addresses == ["192.168.40.112", "2001:db8:40::10c"]
    assert "192.168.40.112\tpc12.gponlab.local pc12" in t.hosts_file("pc12")
    with pytest.raises(topology.TopologyError):
        topology.load(pcs=100)


def test_outside_and_internet_are_documentation_ranges_outside_mynetworks():
    import ipaddress

    t = topology.load()
    mynetworks = ipaddress.ip_network("192.168.0.0/16")
    for name, doc in (("outside", "198.51.100.0/24"), ("internet", "203.0.113.0/24")):
        address = ipaddress.ip_address(t.host(name).ipv4)
        assert address in ipaddress.ip_network(doc)
        assert address not in mynetworks
    assert ipaddress.ip_address(t.host("pc1").ipv4) in mynetworks


def test_zone_has_mx_autoconfig_and_the_relay():
    records = topology.load().records()
    assert ("gponlab.local.", "MX", "10 mail.gponlab.local.") in records
    assert ("autoconfig.gponlab.local.", "CNAME", "mail.gponlab.local.") in records
    assert ("smtp.gmail.com.", "A", "203.0.113.10") in records
    assert ("101.40.168.192.in-addr.arpa.", "PTR", "pc1.gponlab.local.") in records


def test_bad_topology_names_the_problem():
    data = {"domain": "x.local", "segments": {"lan": {"ipv4": "10.0.0.0/24"}},
            "hosts": {"a": {"interfaces": [{"name": "eth0", "segment": "wan", "addresses": ["10.0.0.1/24"]}]}}}
    with pytest.raises(topology.TopologyError, match="unknown segment 'wan'"):
        topology.parse(data)
    data["hosts"]["a"]["interfaces"][0].update(segment="lan", addresses=["10.0.0.300/24"])
    with pytest.raises(topology.TopologyError, match="host a"):
        topology.parse(data)


@pytest.fixture
def dns_server(reactor_thread):
    """The lab's DNS on a free loopback port (UDP), its Steps recorded."""
    bus = StepBus()
    record = bus.add(ListSink())
    factory = NarratedDNSServerFactory(topology.load(), emit=bus.emit)

    def start():
        return listen(reactor_thread.reactor, factory, ["127.0.0.1"], port=0)
    listeners = reactor_thread.call(start)
    port = listeners[0].getHost().port
    yield port, record
    for listener in listeners:
        reactor_thread.call(listener.stopListening)


def _ask(port, name, rtype):
    return lookup.query(name, rtype, ["127.0.0.1"], port=port)


def test_dns_answers_the_mx_and_narrates_question_and_answer(dns_server):
    port, record = dns_server
    answers = _ask(port, "gponlab.local", "MX")
    assert [(a.type, a.data) for a in answers] == [("MX", "10 mail.gponlab.local")]
    question, answer = record.steps[-2:]
    assert (question.proto, question.src, question.dst, question.verb) == ("dns", "resolver", "dns", "MX")
    assert question.args == "gponlab.local."
    assert question.key == "dns.cmd.MX"
    assert (answer.src, answer.dst, answer.status) == ("dns", "resolver", "NOERROR")
    assert "gponlab.local. 300 IN MX 10 mail.gponlab.local." in answer.line
    assert "additional: mail.gponlab.local. 300 IN A 192.168.40.50" in answer.line
    assert answer.meta["aa"] is True and answer.session == question.session


def test_dns_follows_autoconfig_alias_to_the_server(dns_server):
    port, _ = dns_server
    answers = _ask(port, "autoconfig.gponlab.local", "A")
    assert ("CNAME", "mail.gponlab.local") in [(a.type, a.data) for a in answers]
    assert ("A", "192.168.40.50") in [(a.type, a.data) for a in answers]


def test_dns_refuses_names_outside_its_zones_and_asks_nobody(dns_server):
    port, record = dns_server
    with pytest.raises(lookup.LookupError_, match="REFUSED"):
        _ask(port, "www.example.com", "A")
    assert record.steps[-1].status == "REFUSED"
    assert record.steps[-1].key == "dns.reply.REFUSED"
    with pytest.raises(lookup.LookupError_, match="NXDOMAIN"):
        _ask(port, "nobody.gponlab.local", "A")
