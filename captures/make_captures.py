"""Make the reference captures in this folder: real clients against `gponsim serve`.

Run as root (capturing needs it), from the project folder, with swaks and curl
installed:  sudo .venv/bin/python captures/make_captures.py

Each capture NAME.pcap comes with NAME.keys, the NSS key log that decrypts it
(the server's, written by `gponsim serve --keylog`, or the client's, written
by curl through SSLKEYLOGFILE). See README.md here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gponsim.capture.live import Sniffer

HERE = Path(__file__).resolve().parent


def wait(predicate, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="gponsim-captures-"))
    server_keys = work / "server.keys"
    ready = work / "ready.json"
    cmd = [sys.executable, "-m", "gponsim", "serve", "--lab-root", str(work / "gponlab"), "--quiet",
           "--keylog", str(server_keys), "--ready-file", str(ready)]
    for svc in ("smtp", "submission", "imap", "imaps", "pop3", "pop3s"):
        cmd += ["--port", f"{svc}=0"]
    lab = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        wait(ready.exists, "the lab")
        ports = json.loads(ready.read_text())["ports"]

        def capture(name, port, run, keys_from_server=True):
            pcap = HERE / f"{name}.pcap"
            sniffer = Sniffer(pcap, {port})
            client_keys = work / f"{name}.client.keys"
            env = dict(os.environ, SSLKEYLOGFILE=str(client_keys))
            subprocess.run(run, env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
            wait(sniffer.closed, f"the end of {name}")
            sniffer.stop()
            keys = server_keys if keys_from_server else client_keys
            if keys.exists() and keys.stat().st_size:
                shutil.copy(keys, HERE / f"{name}.keys")
            print(f"{pcap.name}: {sniffer.count} packets")

        swaks = ["swaks", "--server", "127.0.0.1", "--from", "user1@gponlab.local",
                 "--to", "user2@gponlab.local", "--header", "Subject: captured by gponsim"]
        capture("swaks-smtp25-plain", ports["smtp"], swaks + ["--port", str(ports["smtp"])])
        capture("swaks-submission-starttls-plain-auth", ports["submission"],
                swaks + ["--port", str(ports["submission"]), "--tls", "--auth", "PLAIN",
                         "--auth-user", "user1", "--auth-password", "pass"])
        capture("curl-imaps-fetch", ports["imaps"],
                ["curl", "-sk", f"imaps://127.0.0.1:{ports['imaps']}/INBOX;UID=1",
                 "-u", "user2:pass"], keys_from_server=False)
        # POP3 (curl pop3:// --ssl-reqd, STLS) is left out until the lab's POP3 server is done.
    finally:
        lab.terminate()
        lab.wait(15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
