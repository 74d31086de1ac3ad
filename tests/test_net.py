"""The lab network end to end: `gponsim net up`, real clients in the hosts, `net down`.

Everything happens inside namespaces the tests make (the lab's addresses are the
lab document's, reachable only there); nothing touches this computer's own
interfaces, routes or resolv.conf.
"""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labproc import poll_until
from netlab import Network, needs_network, rootless_possible

pytestmark = [pytest.mark.slow, needs_network]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    net = Network(tmp_path_factory.mktemp("net"))
    net.up()
    yield net
    net.down()


def _wait_for(predicate, timeout=10.0):
    return bool(poll_until(predicate, timeout))


def _steps(net):
    path = net.state / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_swaks_from_pc1_delivers_by_name_through_the_lab_dns(network):
    out = network.exec("pc1", "swaks", "--server", "mail.gponlab.local", "--port", "587", "--tls",
                       "--auth-user", "user1", "--auth-password", "pass", "--to", "user2@gponlab.local",
                       "--header", "Subject: from pc1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "=== Trying mail.gponlab.local:587" in out.stdout
    assert "queued as" in out.stdout
    assert _wait_for(lambda: "to=<user2@gponlab.local>, relay=local" in network.mail_log)
    assert "connect from pc1.gponlab.local[192.168.40.101]" in network.mail_log
    assert "client=pc1.gponlab.local[192.168.40.101], sasl_method=LOGIN, sasl_username=user1" in network.mail_log
    box = mailbox.mbox(str(network.lab_root / "var" / "mail" / "user2"))
    assert any(m["Subject"] == "from pc1" for m in box)
    # pc1 asked the lab's DNS for the server's address first
    assert _wait_for(lambda: [s for s in _steps(network) if s["proto"] == "dns" and s["dir"] == "c2s"
                              and s["meta"]["host"] == "pc1" and s["args"] == "mail.gponlab.local."]), \
        "pc1's lookup of mail.gponlab.local is not among the DNS Steps"


def test_dig_from_pc1_gets_the_mx_of_gponlab_local(network):
    out = network.exec("pc1", "dig", "@192.168.20.20", "MX", "gponlab.local")
    assert out.returncode == 0, out.stderr
    assert "status: NOERROR" in out.stdout and "flags: qr aa" in out.stdout
    assert "gponlab.local.\t\t300\tIN\tMX\t10 mail.gponlab.local." in out.stdout
    short = network.exec("pc1", "dig", "+short", "+search", "AAAA", "mail")   # the search domain
    assert short.stdout.strip() == "2001:db8:40::50"
    over_ipv6 = network.exec("pc2", "dig", "+short", "@2001:db8:20::20", "autoconfig.gponlab.local")
    assert over_ipv6.stdout.split()[:2] == ["mail.gponlab.local.", "192.168.40.50"]


def test_outside_pc_is_refused_relay_with_postfix_text(network):
    out = network.exec("outside", "swaks", "--server", "mail.gponlab.local", "--port", "25",
                       "--from", "eve@example.net", "--to", "someone@example.org")
    assert out.returncode != 0
    assert "<** 454 4.7.1 <someone@example.org>: Relay access denied" in out.stdout
    assert ("NOQUEUE: reject: RCPT from outside.example.net[198.51.100.20]: 454 4.7.1 <someone@example.org>: "
            "Relay access denied; from=<eve@example.net> to=<someone@example.org> proto=ESMTP "
            "helo=<outside.example.net>") in network.mail_log


def test_a_lab_pc_may_relay_without_login_as_mynetworks_says(network):
    out = network.exec("pc3", "swaks", "--server", "mail.gponlab.local", "--port", "25",
                       "--from", "user1@gponlab.local", "--to", "friend@gmail.com")
    assert out.returncode == 0, out.stdout
    assert _wait_for(lambda: "to=<friend@gmail.com>, relay=smtp.gmail.com[203.0.113.10]:587" in network.mail_log)
    assert "status=sent (250 2.0.0 OK" in network.mail_log
    assert (network.lab_root / "internet" / "gmail.com" / "friend").exists()
    def relay_lookup():
        return [s for s in _steps(network) if s["proto"] == "dns" and s["meta"]["host"] == "mail"
                and s.get("args") == "smtp.gmail.com."]
    assert _wait_for(relay_lookup)
    assert relay_lookup()[0]["verb"] == "A"


def test_the_internet_finds_the_lab_by_its_mx(network):
    out = network.exec("internet", sys.executable, "-m", "gponsim", "gmail", "send-to-lab", "--mx", "--quiet",
                       "--from", "alice@example.org", "--to", "user2@gponlab.local",
                       "--subject", "from the internet")
    assert out.returncode == 0, out.stderr
    assert "MX gponlab.local: 10 mail.gponlab.local; mail.gponlab.local is 192.168.40.50" in out.stderr
    assert _wait_for(lambda: "connect from smtp.gmail.com[203.0.113.10]" in network.mail_log)
    assert _wait_for(lambda: any(s["proto"] == "smtp" and "203.0.113.10" in s.get("line", "")
                                 for s in _steps(network)))
    steps = _steps(network)
    mx = next(i for i, s in enumerate(steps) if s["proto"] == "dns" and s.get("verb") == "MX"
              and s["meta"]["host"] == "internet" and s["dir"] == "s2c")
    smtp = next(i for i, s in enumerate(steps) if s["proto"] == "smtp" and s.get("verb") == "CONNECT"
                and "203.0.113.10" in s["line"])
    assert mx < smtp
    assert _wait_for(lambda: any(m["Subject"] == "from the internet"
                                 for m in mailbox.mbox(str(network.lab_root / "var/mail/user2"))))


def test_exec_passes_exit_code_output_and_the_host_identity(network):
    out = network.exec("pc2", "sh", "-c", "hostname; cat /etc/resolv.conf; ip -br addr show eth0; exit 7")
    assert out.returncode == 7
    lines = out.stdout.splitlines()
    assert lines[0] == "pc2"
    assert "nameserver 192.168.20.20" in lines and "search gponlab.local" in lines
    assert "192.168.40.102/24" in out.stdout and "2001:db8:40::102/64" in out.stdout
    missing = network.exec("pc1", "no-such-program-here")
    assert missing.returncode != 0 and "no-such-program-here" in missing.stderr
    unknown = network.exec("pc9", "true")
    assert unknown.returncode == 1 and "no host 'pc9'" in unknown.stderr


def test_routes_are_the_netplan_file(network):
    out = network.exec("mail", "sh", "-c", "ip route; ip -6 route")
    assert "default via 192.168.40.1 dev enp0s3" in out.stdout
    assert "default via 2001:db8:40::1 dev enp0s3" in out.stdout


def test_status_lists_hosts_lab_root_and_mode(network):
    out = network.gponsim("net", "status")
    assert out.returncode == 0
    assert f"lab root:  {network.lab_root}" in out.stdout
    mode = "root" if os.geteuid() == 0 else "rootless"
    assert f"mode:      {mode}" in out.stdout
    for host in ("mail", "router", "dns", "internet", "outside", "pc1", "pc2", "pc3"):
        assert f"\n  {host} " in out.stdout
    assert "enp0s3 192.168.40.50/24 2001:db8:40::50/64" in out.stdout


def test_capture_on_the_server_interface_has_ethernet_frames(network, tmp_path):
    """What tshark sees on mail's enp0s3: ARP, Ethernet addresses of pc1 and the server."""
    pcap = tmp_path / "enp0s3.pcapng"
    os.chmod(tmp_path, 0o777)
    capture = subprocess.Popen([sys.executable, "-m", "gponsim", "net", "exec", "mail", "--",
                                "tshark", "-q", "-i", "enp0s3", "-w", str(pcap), "-a", "duration:8"],
                               env=network.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: pcap.exists() and pcap.stat().st_size > 0, timeout=15)
    network.exec("mail", "ip", "neigh", "flush", "dev", "enp0s3")
    network.exec("pc1", "ip", "neigh", "flush", "dev", "eth0")
    network.exec("pc1", "swaks", "--server", "192.168.40.50", "--port", "587", "--tls", "--quit-after", "EHLO")
    capture.communicate(timeout=30)
    fields = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "eth.src", "-e", "eth.dst",
                             "-e", "_ws.col.Protocol"], capture_output=True, text=True).stdout
    assert "02:00:c0:a8:28:65\t" in fields            # pc1 (192.168.40.101)
    assert "02:00:c0:a8:28:32\t" in fields            # the server (192.168.40.50)
    assert "\tARP" in fields
    assert "\tTCP" in fields or "\tSMTP" in fields


# ------------------------------------------------------------------ nothing left

def _host_snapshot() -> dict:
    def run(*argv):
        return subprocess.run(argv, capture_output=True, text=True).stdout
    links = sorted(line.split(":")[1].strip() for line in run("ip", "-o", "link").splitlines())
    return {"links": links, "routes": run("ip", "route") + run("ip", "-6", "route"),
            "addresses": run("ip", "-o", "addr"),
            "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else None,
            "etc_netns": sorted(os.listdir("/etc/netns")) if os.path.isdir("/etc/netns") else None,
            "mounts": sorted(line.split(" - ")[0].split(None, 4)[4] for line in open("/proc/self/mountinfo")),
            "resolv": Path("/etc/resolv.conf").read_bytes() if os.path.exists("/etc/resolv.conf") else b""}


def _modes():
    modes = []
    if os.geteuid() == 0:
        modes.append(pytest.param("root", id="root"))
    why = rootless_possible()
    modes.append(pytest.param("rootless", id="rootless",
                              marks=pytest.mark.skipif(bool(why), reason=f"no user namespaces: {why}")))
    return modes


@pytest.mark.parametrize("mode", _modes())
def test_down_leaves_nothing(tmp_path, mode):
    before = _host_snapshot()
    net = Network(tmp_path, mode=mode, pcs=1)
    started = time.monotonic()
    net.up()
    took = time.monotonic() - started
    state = net.state_json()
    assert state["mode"] == mode and state["ready"]
    during = _host_snapshot()
    assert during["links"] == before["links"] and during["routes"] == before["routes"]
    assert during["addresses"] == before["addresses"] and during["resolv"] == before["resolv"]
    if mode == "root":
        assert f"{net.prefix}pc1" in during["netns"] and f"{net.prefix}pc1" in during["etc_netns"]
    pids = [state["pid"]] + [h["pid"] for h in state["hosts"].values()]
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
    out = net.down()
    assert out.returncode == 0, out.stderr
    after = _host_snapshot()
    assert after == before
    assert not any(os.path.exists(f"/proc/{pid}") and
                   Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z" for pid in pids)
    assert not (net.state / "state.json").exists()
    assert net.gponsim("net", "status").returncode == 3
    print(f"net up ({mode}) took {took:.2f} s")


@pytest.mark.parametrize("mode", _modes())
def test_down_cleans_up_after_a_killed_network(tmp_path, mode):
    """The network's process killed (kill -9): its holders die with it, and `net down`
    removes what is left (names, /etc/netns entries, the state), as after a clean stop."""
    import signal

    before = _host_snapshot()
    net = Network(tmp_path, mode=mode, pcs=1)
    net.up()
    state = net.state_json()
    os.kill(state["pid"], signal.SIGKILL)
    assert _wait_for(lambda: not any(os.path.exists(f"/proc/{h['pid']}") for h in state["hosts"].values()))
    assert net.gponsim("net", "status").returncode == 3
    exec_after = net.exec("pc1", "true")
    assert exec_after.returncode == 1 and "not up" in exec_after.stderr
    out = net.down()
    assert out.returncode == 0, out.stderr
    assert _host_snapshot() == before
