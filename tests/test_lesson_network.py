"""The `network` lesson and `--network` runs of other lessons, end to end (namespaces)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from netlab import needs_network, rootless_possible

pytestmark = [pytest.mark.slow, needs_network]


def lesson(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "gponsim", "lesson", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=240, env={**os.environ, "COLUMNS": "120", **(env or {})})


def _summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("lang", ["es", "en"])
def test_network_lesson_passes(tmp_path, lang):
    out = tmp_path / "run"
    result = lesson("network", "--lang", lang, "--quiet", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = _summary(out)
    assert summary["passed"] and len(summary["checkpoints"]) == 15
    assert all(c["passed"] for c in summary["checkpoints"]), summary["checkpoints"]
    said = {"es": "15 de 15", "en": "15 of 15"}[lang]
    assert said in result.stdout
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    hosts = {s["meta"]["host"] for s in steps if s["proto"] == "dns"}
    assert {"pc1", "mail", "internet"} <= hosts
    # the capture is of real Ethernet: tshark reads pc1's and the server's MAC addresses
    fields = subprocess.run(["tshark", "-r", str(out / "capture.pcapng"), "-T", "fields", "-e", "eth.src"],
                            capture_output=True, text=True).stdout.split()
    assert {"02:00:c0:a8:28:65", "02:00:c0:a8:28:32"} <= set(fields)
    log = (out / "mail.log").read_text()
    assert re.search(r"submission/smtpd\[\d+\]: \w+: client=\S+\[192\.168\.40\.101\]", log)
    netplan = (out / "gponlab" / "etc" / "netplan" / "netconf.yaml").read_text()
    assert "    enp0s3:\n      addresses:\n        - 192.168.40.50/24\n        - 2001:db8:40::50/64\n" in netplan


def test_send_mail_on_the_network_comes_from_pc1(tmp_path):
    out = tmp_path / "run"
    result = lesson("send-mail", "--network", "--quiet", "--lang", "en", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    log = (out / "mail.log").read_text()
    # named as Postfix names it on that network: the lab's DNS has pc1's PTR record
    assert "client=pc1.gponlab.local[192.168.40.101], sasl_method=PLAIN, sasl_username=user1" in log
    assert "127.0.0.1" not in log


def test_relay_denied_on_the_network_the_stranger_is_outside(tmp_path):
    out = tmp_path / "run"
    result = lesson("relay-denied", "--network", "--quiet", "--lang", "en", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    log = (out / "mail.log").read_text()
    # names from the lab's DNS (PTR, confirmed by A), as the real smtpd resolves them
    assert ("RCPT from outside.example.net[198.51.100.20]: 454 4.7.1 <bob@gmail.com>: "
            "Relay access denied") in log
    assert "connect from smtp.gmail.com[203.0.113.10]" in log     # the internet's MTA, by MX


@pytest.mark.skipif(bool(rootless_possible()), reason=f"no user namespaces: {rootless_possible()}")
def test_network_lesson_rootless(tmp_path):
    """The same lesson in a user namespace of its own (what a normal user gets; here forced)."""
    out = tmp_path / "run"
    result = lesson("network", "--lang", "en", "--quiet", "--out", str(out), cwd=tmp_path,
                    env={"GPONSIM_NET_MODE": "rootless"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "without root, inside a user namespace" in result.stdout
    assert _summary(out)["passed"]


def test_interactive_on_the_network_is_refused_clearly(tmp_path):
    result = lesson("send-mail", "--network", "--interactive", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert result.returncode == 1
    assert "with --interactive use `gponsim net up` instead" in result.stderr
