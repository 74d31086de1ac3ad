"""Thunderbird's automatic account setup: the lab answers config-v1.1.xml (curl is the client)."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


def fetch(lab, path):
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", f"http://127.0.0.1:{lab.ports['autoconfig']}{path}"],
                         capture_output=True, text=True, timeout=30)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


@pytest.mark.parametrize("path", ["/mail/config-v1.1.xml?emailaddress=user1%40gponlab.local",
                                  "/.well-known/autoconfig/mail/config-v1.1.xml"])
def test_config_names_the_lab_servers_and_their_real_ports(lab, path):
    code, body = fetch(lab, path)
    assert code == 200
    root = ET.fromstring(body)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider.find("domain").text == "gponlab.local"
    servers = {(s.get("type"), s.find("socketType").text): s
               for s in provider if s.tag in ("incomingServer", "outgoingServer")}
    expected = {("imap", "SSL"): "imaps", ("imap", "STARTTLS"): "imap", ("pop3", "SSL"): "pop3s",
                ("pop3", "STARTTLS"): "pop3", ("smtp", "STARTTLS"): "submission"}
    for (kind, socket_type), service in expected.items():
        s = servers[(kind, socket_type)]
        assert int(s.find("port").text) == lab.ports[service]
        assert s.find("hostname").text == "127.0.0.1"
        assert s.find("username").text == "%EMAILLOCALPART%"
        assert s.find("authentication").text == "password-cleartext"
    # Thunderbird prefers the first incoming server: IMAP over SSL/TLS (993).
    first = provider.find("incomingServer")
    assert (first.get("type"), first.find("socketType").text) == ("imap", "SSL")
    assert "autoconfig: /" in lab.log_text()


def test_other_paths_are_404(lab):
    code, body = fetch(lab, "/index.html")
    assert code == 404 and "autoconfig" in body


@pytest.mark.parametrize("url", ["http://autoconfig.gponlab.local/mail/config-v1.1.xml",
                                 "http://gponlab.local/.well-known/autoconfig/mail/config-v1.1.xml"])
def test_the_lab_as_http_proxy_answers_thunderbirds_real_lookup(lab, url):
    """curl -x sends the absolute form (RFC 9112 §3.2.2) to the proxy and resolves nothing."""
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-x",
                          f"http://127.0.0.1:{lab.ports['autoconfig']}", url],
                         capture_output=True, text=True, timeout=30)
    body, _, code = out.stdout.rpartition("\n")
    assert int(code) == 200, out.stderr
    assert ET.fromstring(body).find("emailProvider/domain").text == "gponlab.local"
    assert "autoconfig: /" + url.split("/", 3)[3] in lab.log_text()
