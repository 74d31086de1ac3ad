"""The command line: helpful errors, exit codes, and the commands working for real."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gponsim.cli import main


def run(*args, cwd=None, timeout=60, input=None):
    return subprocess.run([sys.executable, "-m", "gponsim", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, input=input,
                          env={**os.environ, "LANG": "C.UTF-8"})


@pytest.mark.slow          # end to end: a `gponsim` process
def test_help_is_instant_and_does_not_import_heavy_modules():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "gponsim", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "serve" in out.stdout and "send" in out.stdout
    imported = out.stderr
    for heavy in ("scapy", "twisted.internet.reactor", "rich.console"):
        assert f" {heavy}\n" not in imported and f"| {heavy}\n" not in imported, heavy


def test_bad_port_argument_is_a_usage_error():
    result = CliRunner().invoke(main, ["serve", "--port", "submission=abc"])
    assert result.exit_code == 2
    assert "expected SERVICE=PORT" in result.output


@pytest.mark.slow          # end to end: a `gponsim` process
def test_broken_main_cf_names_file_and_line(tmp_path):
    from gponsim.config import init_config

    conf = tmp_path / "conf"
    init_config(conf)
    main_cf = conf / "postfix" / "main.cf"
    lines = main_cf.read_text().splitlines()
    lines.insert(5, "this line has no equals sign")
    main_cf.write_text("\n".join(lines) + "\n")
    out = run("serve", "--lab-root", str(tmp_path / "lab"), "--config", str(conf),
              "--port", "smtp=0", "--port", "submission=0")
    assert out.returncode == 2
    assert f"{main_cf}:6" in out.stderr
    assert not (tmp_path / "lab").exists()  # nothing started, nothing written


@pytest.mark.slow          # end to end: a `gponsim` process
def test_a_lab_root_that_cannot_hold_the_labs_folders_is_named(tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    root = tmp_path / "afile" / "lab"
    out = run("serve", "--lab-root", str(root), "--port", "smtp=0", "--port", "submission=0",
              "--quiet")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"cannot create the lab's folders in {root} ({root}: Not a directory)" in out.stderr
    assert "--lab-root" in out.stderr


@pytest.mark.slow          # end to end: a `gponsim` process
def test_port_in_use_is_named(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        out = run("serve", "--lab-root", str(tmp_path / "lab"), "--port", f"smtp={port}",
                  "--port", "submission=0", "--quiet")
    finally:
        busy.close()
    assert out.returncode == 1
    assert f"port {port} (smtp) on 127.0.0.1 is already in use" in out.stderr


@pytest.mark.slow          # end to end: a `gponsim` process
def test_low_port_without_root_suggests_offset():
    import shutil
    import tempfile

    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= 25:
        pytest.skip(f"this kernel lets every user bind port 25 (net.ipv4.ip_unprivileged_port_start = {start})")
    # A normal user runs it as it is; root runs it as 'nobody', in a folder it may write.
    # Either way binding port 25 is refused by the kernel.
    work = Path(tempfile.mkdtemp(prefix="gponsim-nobody-", dir="/tmp"))
    work.chmod(0o777)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    try:
        out = subprocess.run([*as_nobody, sys.executable, "-m", "gponsim", "serve", "--lab-root", str(work / "lab"),
                              "--quiet"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "HOME": str(work)}, cwd=str(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert out.returncode == 1, out.stderr
    assert "port 25 (smtp) needs root" in out.stderr and "--port-offset 10000" in out.stderr


@pytest.mark.slow          # end to end: a `gponsim` process
def test_send_without_a_server_says_what_to_do():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    out = run("send", "--as", "user1", "--to", "user2@gponlab.local", "--port", str(free), "--quiet")
    assert out.returncode == 1
    assert f"cannot connect to 127.0.0.1 port {free}" in out.stderr
    assert "gponsim serve" in out.stderr


@pytest.mark.slow          # end to end: a `gponsim` process
def test_queue_of_a_folder_that_is_no_lab_says_so_and_creates_nothing(tmp_path):
    for extra in ([], ["--delete", "ALL"], ["--flush"]):
        out = run("queue", "--lab-root", str(tmp_path / "nolab"), *extra)
        assert out.returncode == 2, (extra, out.stdout, out.stderr)
        assert "postqueue: fatal: chdir" in out.stderr and "no lab in" in out.stderr
    assert not (tmp_path / "nolab").exists()


@pytest.mark.slow          # end to end: `gponsim serve`
def test_send_command_end_to_end(lab, tmp_path):
    steps = tmp_path / "client.jsonl"
    out = run("send", "--as", "user1", "--to", "user2@gponlab.local", "--subject", "Hola",
              "--port", str(lab.ports["submission"]), "--lang", "es", "--steps", str(steps))
    assert out.returncode == 0, out.stderr
    assert "identificador de cola" in out.stderr      # --lang es: in Spanish
    assert "AUTH PLAIN ********" in out.stdout       # narrated, secret masked
    assert "STARTTLS" in out.stdout
    [m] = lab.wait_for_mail("user2")
    assert m["Subject"] == "Hola"
    assert m["User-Agent"] == "gponsim send"
    from gponsim.steps import read_jsonl

    client_steps = list(read_jsonl(steps))
    assert client_steps[0].line.startswith("220 mail.gponlab.local ESMTP Postfix")
    assert any(s.verb == "QUIT" for s in client_steps)


@pytest.mark.slow          # end to end: `gponsim serve`
def test_send_wrong_password_and_no_tls(lab):
    out = run("send", "--as", "user1", "--password", "wrong", "--to", "user2@gponlab.local",
              "--port", str(lab.ports["submission"]), "--quiet")
    assert out.returncode == 1
    assert "535 5.7.8 Error: authentication failed" in out.stderr
    out = run("send", "--as", "user1", "--no-tls", "--to", "user2@gponlab.local",
              "--port", str(lab.ports["submission"]), "--quiet")
    assert out.returncode == 1
    assert "530 5.7.0 Must issue a STARTTLS command first" in out.stderr


@pytest.mark.slow          # end to end: a `gponsim` process
def test_output_folders_that_cannot_be_made_are_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = run("lesson", "send-mail", "--pace", "none", "--quiet", "--out", str(blocker / "run"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"cannot write the lesson's results in {blocker / 'run'}: Not a directory" in out.stderr
    out = run("config", "init", str(blocker / "conf"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"cannot write the profile in {blocker / 'conf'}: Not a directory" in out.stderr


@pytest.mark.slow          # end to end: `gponsim lesson` processes
def test_a_lessons_errors_speak_its_language_and_fit_the_options_given(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = run("lesson", "mbox", "--lang", "es", "--quiet", "--out", str(blocker / "run"))
    assert out.returncode == 2, out.stderr
    assert f"no se pueden escribir los resultados de la lección en {blocker / 'run'}" in out.stderr
    assert "(elige otra carpeta con --out)" in out.stderr
    with socket.socket() as busy:                   # the lesson's submission port, taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        offset = busy.getsockname()[1] - 587
        if not 0 <= offset <= 64000:
            pytest.skip(f"the free port {busy.getsockname()[1]} is out of --port-offset's reach")
        for lang in ("es", "en"):
            out = run("lesson", "send-mail", "--lang", lang, "--quiet", "--port-offset", str(offset),
                      "--out", str(tmp_path / f"run-{lang}"))
            assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
            port = busy.getsockname()[1]
            said = " ".join(out.stderr.split())
            if lang == "es":
                assert f"el puerto {port} (submission) en 127.0.0.1 ya lo usa otro programa" in said, said
                assert "elige otro --port-offset, o quítalo" in said
            else:
                assert f"port {port} (submission) on 127.0.0.1 is already in use" in said, said
                assert "choose another --port-offset, or leave it out" in said


@pytest.mark.slow          # end to end: a `gponsim` process
def test_output_files_that_cannot_be_written_are_named_not_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    capture = Path(__file__).resolve().parents[1] / "captures" / "curl-imaps-fetch.pcap"
    for args in (["analyze", str(capture), "--quiet", "--steps", str(blocker / "s.jsonl")],
                 ["analyze", str(capture), "--quiet", "--extract", str(blocker / "mail")],
                 ["diagram", "sequence", "--from", str(capture), "-o", str(blocker / "d")],
                 ["serve", "--lab-root", str(tmp_path / "lab"), "--port-offset", "0",
                  "--keylog", str(blocker / "keys")]):
        out = run(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr)
        # the OS says what went wrong with the path (mkdir -p says "File exists"), or
        # gponsim says it in its words (diagram)
        said = out.stderr.strip()
        assert re.search(re.escape(f"Error: {blocker}") + r"\S*: (Not a directory|File exists)$", said) \
            or said.endswith(f"Error: cannot write {blocker}/d: {blocker} is a file, not a folder"), said


@pytest.mark.slow          # end to end: a `gponsim` process
def test_diagram_of_a_session_that_is_not_there(tmp_path):
    capture = Path(__file__).resolve().parents[1] / "captures" / "curl-imaps-fetch.pcap"
    out = run("diagram", "sequence", "--from", str(capture), "--session", "nosuch",
              "-o", str(tmp_path / "d.svg"))
    assert out.returncode == 2 and "no session 'nosuch'" in out.stderr, out.stderr
    assert "(sessions: " in out.stderr and not (tmp_path / "d.svg").exists()


@pytest.mark.slow          # end to end: a `gponsim` process
def test_slides_from_a_folder_that_is_no_lesson_run(tmp_path):
    out = run("slides", "send-mail", "--from", str(tmp_path), "-o", str(tmp_path / "deck"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "is not a lesson's run folder (it has no summary.json)" in out.stderr


@pytest.mark.slow          # end to end: a `gponsim` process
def test_users_commands(tmp_path):
    root = tmp_path / "lab"
    # A folder with no lab (a typo, say) is said so, as `gponsim queue` does, and nothing is made...
    for command in (["list"], ["del", "user1"], ["passwd", "user1", "--password", "x"]):
        out = run("users", *command, "--lab-root", str(root))
        assert out.returncode == 2 and f"gponsim: no lab in {root}" in out.stderr, (command, out.stderr)
    assert not root.exists()
    # ...but `users add` may prepare a lab's accounts before its first start, and says so.
    added = run("users", "add", "user3", "--password", "s3creto", "--lab-root", str(root))
    assert added.returncode == 0 and f"a new lab in {root}" in added.stderr
    out = run("users", "list", "--lab-root", str(root))
    assert out.stdout.split() == ["user1", "user2", "user3"]
    assert run("users", "del", "user3", "--lab-root", str(root)).returncode == 0
    assert run("users", "add", "user3", "--password", "s3creto", "--lab-root", str(root)).returncode == 0
    assert "user3" in run("users", "list", "--lab-root", str(root)).stdout.split()
    dup = run("users", "add", "user3", "--password", "x", "--lab-root", str(root))
    assert dup.returncode == 1 and "user3" in dup.stderr
    bad = run("users", "add", "../evil", "--password", "x", "--lab-root", str(root))
    assert bad.returncode == 1
    assert run("users", "del", "user3", "--lab-root", str(root)).returncode == 0
    assert run("users", "del", "user3", "--lab-root", str(root)).returncode == 1
    text = (root / "etc" / "dovecot" / "users").read_text()
    assert text.startswith("user1:{BLF-CRYPT}$2y$05$")


@pytest.mark.slow          # end to end: `gponsim serve`
def test_new_user_can_log_in_on_a_running_lab(lab):
    import smtplib
    import ssl

    assert run("users", "add", "user9", "--password", "nueve", "--lab-root", str(lab.root)).returncode == 0
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=15) as c:
        c.starttls(context=ssl._create_unverified_context())
        assert c.login("user9", "nueve")[0] == 235


@pytest.mark.slow          # end to end: a `gponsim` process
def test_config_init_and_explain(tmp_path):
    dest = tmp_path / "profile"
    out = run("config", "init", str(dest))
    assert out.returncode == 0
    assert (dest / "postfix" / "main.cf").exists()
    again = run("config", "init", str(dest))
    assert again.returncode == 2 and "main.cf" in again.stderr
    out = run("config", "explain", "--config", str(dest), "--lang", "es")
    assert out.returncode == 0
    assert "smtpd_relay_restrictions" in out.stdout
    # one parameter by name, written in the files or not
    out = run("config", "explain", "smtpd_client_connection_count_limit", "--lang", "en")
    assert out.returncode == 0
    assert "smtpd_client_connection_count_limit = 50" in out.stdout
    assert "Connection concurrency limit exceeded" in " ".join(out.stdout.split())
    out = run("config", "explain", "no_such_parameter")
    assert out.returncode == 2 and "neither a file nor a Postfix or Dovecot parameter" in out.stderr
