"""Make the reference captures in this folder: real clients against `gponsim serve`.

Run as root (capturing needs it), from the project folder, with swaks, curl and
openssl installed:  sudo .venv/bin/python captures/make_captures.py [NAME...]
(only the captures named, when names are given).

Each capture NAME.pcap[ng] comes with NAME.keys, the NSS key log that decrypts it
(the server's, written by `gponsim serve --keylog`, or the client's, written
by curl through SSLKEYLOGFILE). See README.md here.
"""

from __future__ import annotations

import base64
import json
import os
import re
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


def openssl_smtp(port: int, cipher: str, *extra: str) -> None:
    """`openssl s_client -starttls smtp`, TLS 1.2 with one cipher suite, driven a reply at a time:
    EHLO, AUTH PLAIN user1/pass, MAIL, RCPT, DATA, QUIT."""
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls",
                             "smtp", "-tls1_2", "-cipher", cipher, "-quiet", "-crlf", *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    plain = base64.b64encode(b"\0user1\0pass").decode()
    message = ("From: user1@gponlab.local\nTo: user2@gponlab.local\n"
               f"Subject: TLS 1.2 {cipher}\n\nSent through {cipher}.\n.")
    try:
        for command in ("EHLO openssl.test", f"AUTH PLAIN {plain}", "MAIL FROM:<user1@gponlab.local>",
                        "RCPT TO:<user2@gponlab.local>", "DATA", message, "QUIT"):
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
            while True:                       # to the last line of the reply
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit(f"openssl s_client ended early ({cipher})")
                if re.match(rb"^\d{3} ", line):
                    break
        proc.stdin.close()
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()


def main() -> None:
    wanted = set(sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="gponsim-captures-"))
    server_keys = work / "server.keys"
    ready = work / "ready.json"
    cmd = [sys.executable, "-m", "gponsim", "serve", "--lab-root", str(work / "gponlab"), "--quiet",
           "--keylog", str(server_keys), "--ready-file", str(ready)]
    for svc in ("smtp", "submission", "imap", "imaps", "pop3", "pop3s", "autoconfig"):
        cmd += ["--port", f"{svc}=0"]
    lab = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        wait(ready.exists, "the lab")
        ports = json.loads(ready.read_text())["ports"]

        def capture(name, port, run, keys_from_server=True, suffix=".pcap"):
            if wanted and name not in wanted:
                return
            pcap = HERE / f"{name}{suffix}"
            # The keys go in NAME.keys, not in the file: without them it is an eavesdropper's.
            sniffer = Sniffer(pcap, {port}, fmt="pcap" if suffix == ".pcap" else "pcapng")
            client_keys = work / f"{name}.client.keys"
            env = dict(os.environ, SSLKEYLOGFILE=str(client_keys))
            if callable(run):
                run()
            else:
                subprocess.run(run, env=env, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60)
            wait(sniffer.closed, f"the end of {name}")
            sniffer.stop()
            keys = server_keys if keys_from_server else client_keys
            if keys.exists() and keys.stat().st_size:
                shutil.copy(keys, HERE / f"{name}.keys")
                if keys_from_server:
                    keys.write_bytes(b"")         # the next capture gets only its own keys
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
        # TLS 1.2 CBC suites: encrypt-then-MAC (OpenSSL offers it and the lab accepts), and
        # the classic MAC-then-encrypt (-no_etm) with SHA-384.
        capture("openssl-submission-tls12-aes128-sha-etm", ports["submission"],
                lambda: openssl_smtp(ports["submission"], "ECDHE-RSA-AES128-SHA"), suffix=".pcapng")
        capture("openssl-submission-tls12-aes256-sha384-mte", ports["submission"],
                lambda: openssl_smtp(ports["submission"], "ECDHE-RSA-AES256-SHA384", "-no_etm"),
                suffix=".pcapng")
        # POP3 (curl pop3:// --ssl-reqd, STLS) is left out until the lab's POP3 server is done.
    finally:
        lab.terminate()
        lab.wait(15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
