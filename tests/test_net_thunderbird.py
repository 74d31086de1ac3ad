"""The lab practice end to end on the lab network: real Thunderbird on pc1.

As the lab document describes it: on a lab PC (pc1, 192.168.40.101), Thunderbird
creates user1@gponlab.local and user2@gponlab.local with its own account wizard
lookup: it asks http://autoconfig.gponlab.local/mail/config-v1.1.xml, the name
resolved through the lab's DNS (pc1's resolv.conf), and gets the server's
settings (mail.gponlab.local, 993 SSL/TLS, 587 STARTTLS). Nothing about the
server is typed, and no proxy is used. The self-signed certificate's exception is
confirmed (the lab document's note), user1 sends to user2 and user2 reads it.

Thunderbird runs inside pc1 (`gponsim net exec pc1 -- thunderbird ...`); the test
drives it through Marionette over a Unix socket forwarded to pc1's loopback.
Needs thunderbird, xvfb, and root or user namespaces.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


from labproc import wait_until
from netlab import Network, needs_network
from thunderbird_driver import Profile, Thunderbird, thunderbird_marks

pytestmark = [*thunderbird_marks(), needs_network]

#: pc1, over IPv4 or IPv6 (mail.gponlab.local has both; Thunderbird may use either)
PC1 = r"(192\.168\.40\.101|2001:db8:40::101)"


def test_thunderbird_on_pc1_finds_the_server_through_the_lab_dns(tmp_path):
    net = Network(tmp_path / "net", pcs=1)
    net.up()
    forward = None
    tb = None
    try:
        sock = tmp_path / "marionette.sock"
        profile = Profile(tmp_path / "tb-profile", marionette_port=2828,
                          prefs={"mailnews.auto_config.fetchFromISP.enabled": True,
                                 "mailnews.auto_config.fetchFromISP.sendEmailAddress": True})
        forward = subprocess.Popen([sys.executable, "-m", "gponsim", "net", "exec", "pc1", "--", sys.executable,
                                    str(Path(__file__).parent / "unix_forward.py"), str(sock), "2828"],
                                   env=net.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wrap = [sys.executable, "-m", "gponsim", "net", "exec", "pc1", "--"]
        tb = Thunderbird(profile, tmp_path / "tb", prompts="ignore", wrap=wrap, marionette_unix=str(sock))
        # `net exec` keeps the environment: GPONSIM_NET_STATE tells it which network
        os.environ["GPONSIM_NET_STATE"] = str(net.state)
        tb.start(timeout=90)

        # The lab document's note: the server's certificate is self-signed; the student
        # confirms the exception for the server Thunderbird found (mail.gponlab.local).
        pem = (net.lab_root / "etc/ssl/certs/ssl-cert-snakeoil.pem").read_text()
        tb.trust("mail.gponlab.local", [993, 143, 587], pem, [])

        user1 = tb.create_account_by_domain("user1@gponlab.local", "Usuario Uno", "pass")
        assert (user1["source"], user1["subSource"]) == ("xml", "xml-from-isp-http"), user1   # from the ISP, over http
        assert user1["incoming"] == {"type": "imap", "hostname": "mail.gponlab.local", "port": 993,
                                     "socketType": 3, "username": "user1", "authMethod": 3}, user1
        assert user1["outgoing"] == {"hostname": "mail.gponlab.local", "port": 587, "socketType": 2,
                                     "username": "user1", "authMethod": 3}, user1
        user2 = tb.create_account_by_domain("user2@gponlab.local", "Usuario Dos", "pass")
        assert user2["incoming"]["username"] == "user2"

        # The wizard's request reached the lab's autoconfig from pc1, by name.
        log = net.mail_log
        assert re.search(rf"autoconfig: \S*config-v1\.1\.xml for user1@gponlab\.local from {PC1}", log), log[-2000:]

        subject = f"Hola user2 desde pc1 {int(time.time())}"
        tb.send("user1@gponlab.local", "user2@gponlab.local", subject, "Prueba del laboratorio GPON.\n")
        wait_until(lambda: "to=<user2@gponlab.local>, relay=local" in net.mail_log, 30,
                   "local delivery to user2")
        assert re.search(rf"submission/smtpd\[\d+\]: \w+: client=\S+\[{PC1}\], "
                         r"sasl_method=PLAIN, sasl_username=user1", net.mail_log)

        def arrived():
            tb.check_inbox("user2@gponlab.local")
            return subject in (tb.inbox_subjects("user2@gponlab.local") or [])
        wait_until(arrived, 60, "Thunderbird (user2) to show the message in its Inbox")
        assert re.search(rf"imap-login: Login: user=<user2>, method=PLAIN, rip={PC1}, "
                         rf"lip=(192\.168\.40\.50|2001:db8:40::50)", net.mail_log)

        # every name Thunderbird needed came from the lab's DNS, asked by pc1
        steps = [json.loads(line) for line in (net.state / "steps.jsonl").read_text().splitlines()]
        asked = {s["args"] for s in steps if s["proto"] == "dns" and s["dir"] == "c2s"
                 and s["meta"]["host"] == "pc1"}
        assert {"autoconfig.gponlab.local.", "mail.gponlab.local."} <= asked, asked
    finally:
        os.environ.pop("GPONSIM_NET_STATE", None)
        if tb is not None:
            tb.stop()
        if forward is not None:
            forward.kill()
            forward.wait(10)
        net.down()
