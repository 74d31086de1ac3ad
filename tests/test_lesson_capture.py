"""The lessons that capture work for a student without root (gponsim.lessons.capturing).

Three ways to get the lab's packets: capture here (root or CAP_NET_RAW), the
whole lesson in a user + network namespace of its own (no root needed, where
the kernel allows it), or the capture that the same lesson recorded, shipped in
captures/ with its keys. `--capture auto` tries them in that order and the
lesson says which it used.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gponsim.capture import userns
from gponsim.capture.analyze import analyze
from gponsim.lessons.capturing import RECORDINGS, captures
from gponsim.lessons.model import lesson_files, load_lesson

NAMESPACE_NOTE = "Capturing without root: the whole lesson (its lab, its clients and the capture) runs in"
# Asked in a fresh process: this one may already run threads (the tests' reactor).
NO_NAMESPACE = subprocess.run([sys.executable, "-c", "from gponsim.capture import userns; "
                               "print(userns.unavailable() or '', end='')"],
                              capture_output=True, text=True, check=True, timeout=60).stdout or None


def lesson(*args, cwd, prefix=(), timeout=180):
    return subprocess.run([*prefix, sys.executable, "-m", "gponsim", "lesson", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, "COLUMNS": "250"})


def checkpoints(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["checkpoints"]


def test_every_lesson_that_captures_ships_its_recording():
    # (a lesson on the lab network captures the server's enp0s3 there; it has no recording)
    capturing = [load_lesson(p) for p in lesson_files()
                 if captures(load_lesson(p)) and not load_lesson(p).lab.get("network")]
    assert {x.id for x in capturing} >= {"tls", "capture"}
    for x in capturing:
        pcap, keys = RECORDINGS / f"lesson-{x.id}.pcapng", RECORDINGS / f"lesson-{x.id}.keys"
        plain, decrypted = analyze(pcap), analyze(pcap, keylog=keys)
        assert plain.tcp_packets > 0 and "CLIENT_" in keys.read_text()
        # The keys open sessions that are closed without them.
        assert len(decrypted.messages) > len(plain.messages) or \
            sum(c.inside_tls for c in decrypted.credentials) > sum(c.inside_tls for c in plain.credentials)


@pytest.mark.slow
@pytest.mark.skipif(NO_NAMESPACE is not None, reason=f"no user + network namespace here: {NO_NAMESPACE}")
def test_capture_lesson_in_a_namespace_of_its_own(tmp_path):
    """What a student without root gets (as root too, when asked for)."""
    out = tmp_path / "run"
    result = lesson("capture", "--capture", "namespace", "--lang", "en", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert NAMESPACE_NOTE in result.stdout
    # Said once, and first: the lab itself runs in the namespace.
    assert result.stdout.count(NAMESPACE_NOTE) == 1
    assert result.stdout.index(NAMESPACE_NOTE) < result.stdout.index("The lab is ready")
    assert all(c["passed"] for c in checkpoints(out))
    # The capture is this run's own, not the recording; its files belong to the student.
    capture = out / "capture.pcapng"
    assert capture.read_bytes() != (RECORDINGS / "lesson-capture.pcapng").read_bytes()
    assert capture.stat().st_uid == os.geteuid() and (out / "gponlab" / "keys.log").stat().st_uid == os.geteuid()
    assert [c.user for c in analyze(capture).credentials] == ["user2"]


@pytest.mark.slow
def test_tls_lesson_with_the_recorded_capture(tmp_path):
    out = tmp_path / "run"
    result = lesson("tls", "--capture", "recorded", "--lang", "es", "--quiet", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = " ".join(result.stdout.split())
    assert "Como se pidió (--capture recorded), se analiza en su lugar la captura que grabó esta misma lección" in text
    # (a long path may be wrapped onto the next line: compared without spaces)
    named = f"{RECORDINGS / 'lesson-tls.pcapng'} (sus claves TLS: {RECORDINGS / 'lesson-tls.keys'})"
    assert "".join(named.split()) in "".join(text.split())
    assert all(c["passed"] for c in checkpoints(out))
    assert (out / "capture.pcapng").read_bytes() == (RECORDINGS / "lesson-tls.pcapng").read_bytes()


@pytest.mark.slow
def test_capture_lesson_recorded_keeps_the_recordings_keys_in_its_folder(tmp_path):
    """The lesson's own suggestion, `gponsim analyze capture.pcapng --keylog gponlab/keys.log
    --credentials` in its folder, must open the recording it analyzed (not only POP3)."""
    out = tmp_path / "run"
    result = lesson("capture", "--capture", "recorded", "--lang", "en", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert all(c["passed"] for c in checkpoints(out))
    keys = (out / "gponlab" / "keys.log").read_text()
    recorded = (RECORDINGS / "lesson-capture.keys").read_text()
    assert keys.endswith(recorded)
    # The keys.log panel shows the recording's lines (its last two).
    assert recorded.splitlines()[-1].split()[1] in "".join(result.stdout.split())
    suggested = subprocess.run([sys.executable, "-m", "gponsim", "analyze", "capture.pcapng", "--keylog",
                                "gponlab/keys.log", "--credentials"], capture_output=True,
                               text=True, timeout=120, cwd=out, env={**os.environ, "COLUMNS": "200"})
    assert suggested.returncode == 0, suggested.stderr[-3000:]
    assert "IMAP  PLAIN      user2  pass  inside TLS" in suggested.stdout, suggested.stdout
    found = analyze(out / "capture.pcapng", keylog=out / "gponlab" / "keys.log").credentials
    assert sorted((c.proto, c.inside_tls) for c in found) == [("imap", True), ("pop3", False)], found


@pytest.mark.slow
@pytest.mark.root("only root can take CAP_NET_RAW away (setpriv) to play a student without it")
@pytest.mark.skipif(NO_NAMESPACE is not None, reason=f"no user + network namespace here: {NO_NAMESPACE}")
def test_without_cap_net_raw_auto_moves_the_lesson_into_a_namespace(tmp_path):
    out = tmp_path / "run"
    result = lesson("capture", "--lang", "en", "--quiet", "--out", str(out), cwd=tmp_path,
                    prefix=["setpriv", "--bounding-set", "-net_raw", "--inh-caps=-net_raw", "--"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert NAMESPACE_NOTE in result.stdout
    assert all(c["passed"] for c in checkpoints(out))


@pytest.mark.slow
@pytest.mark.root("a chroot (where the kernel refuses user namespaces) and setpriv need root")
def test_where_nothing_may_capture_auto_uses_the_recording_and_says_why(tmp_path):
    """No CAP_NET_RAW, and inside a chroot, where the kernel refuses to create a user namespace
    (EPERM): the lesson says both reasons and analyzes the shipped recording."""
    top = tmp_path / "top"
    top.mkdir()
    out = tmp_path / "run"
    script = (f'mount --rbind / "{top}" && exec chroot "{top}" setpriv --bounding-set -net_raw '
              f'--inh-caps=-net_raw -- "{sys.executable}" -m gponsim lesson capture --lang en --quiet '
              f'--out "{out}"')
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = " ".join(result.stdout.split())
    assert "Capturing is not possible here (Operation not permitted: not root, no CAP_NET_RAW), nor in a " \
           "network namespace of the lesson's own (the kernel refused a user namespace (EPERM: " in text, text[-3000:]
    assert "the capture that this same lesson recorded, shipped with gponsim, is analyzed instead" in text
    assert all(c["passed"] for c in checkpoints(out))
    assert (out / "capture.pcapng").read_bytes() == (RECORDINGS / "lesson-capture.pcapng").read_bytes()


@pytest.mark.slow          # runs a lesson as a process
def test_capture_here_without_permission_says_why_and_goes_on(tmp_path):
    """`--capture here` where capturing is not allowed: the old way, the checks not checkable."""
    if os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set", "-net_raw", "--inh-caps=-net_raw", "--"]
    else:
        prefix = []
    out = tmp_path / "run"
    result = lesson("capture", "--capture", "here", "--lang", "es", "--quiet", "--out", str(out),
                    cwd=tmp_path, prefix=prefix)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "No se puede capturar aquí" in result.stdout and "CAP_NET_RAW" in result.stdout
    assert "3 de 5 comprobaciones superadas; 2 no se pudieron comprobar aquí" in " ".join(result.stdout.split())
    captured = [c for c in checkpoints(out) if c["what"] == "capture"]
    assert captured and all(c["passed"] is None for c in captured), captured
    assert all(c["passed"] for c in checkpoints(out) if c["what"] != "capture")
    assert not (out / "capture.pcapng").exists()


@pytest.mark.slow          # runs `gponsim` as a process
@pytest.mark.parametrize("args, message", [
    (["send-mail", "--capture", "recorded"], "--capture recorded: the lesson send-mail captures nothing"),
    (["tls", "--capture", "namespace", "--interactive"],
     "--capture namespace: not possible here: the student's own mail client could not reach a lab inside it"),
    (["tls", "--capture", "namespace", "--listen", "0.0.0.0"],
     "--capture namespace: not possible here: the student's own mail client could not reach a lab inside it"),
    (["tls", "--capture", "somewhere"], "Invalid value for '--capture': 'somewhere' is not one of"),
])
def test_a_capture_mode_that_cannot_be_used_is_refused_before_the_lab_starts(tmp_path, args, message):
    result = lesson(*args, "--lang", "en", "--out", str(tmp_path / "run"), cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_the_namespace_is_the_lessons_own(tmp_path):
    """Inside, loopback is up and capturing is allowed, and this computer's listeners are out of reach."""
    if NO_NAMESPACE is not None:
        pytest.skip(f"no user + network namespace here: {NO_NAMESPACE}")
    with socket.socket() as outside:
        outside.bind(("127.0.0.1", 0))
        outside.listen()
        port = outside.getsockname()[1]
        code = f"""
import os, socket
from gponsim.capture import userns
userns.enter()
print(os.getuid())
socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
with socket.socket() as inside:
    inside.bind(("127.0.0.1", 0)); inside.listen()
    socket.create_connection(inside.getsockname(), timeout=5).close()
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5)
except ConnectionRefusedError:
    print("refused")
"""
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "refused"]


def test_a_process_with_threads_is_not_moved():
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert userns.unavailable() == "this process already runs threads"
        with pytest.raises(userns.NamespaceUnavailable, match="this process already runs threads"):
            userns.enter()
    finally:
        stop.set()
        thread.join()



@pytest.mark.slow
@pytest.mark.parametrize("lang", ["es", "en"])
def test_packets_lesson_as_a_student_without_root(tmp_path, lang):
    """The packets lesson as a non-root student: run as nobody's uid (setpriv) when this is
    root, so it cannot capture here; the lesson moves into a namespace of its own, or else
    analyzes its recording, and every checkpoint, computed from that capture, passes."""
    import shutil
    import tempfile

    prefix = []
    if os.geteuid() == 0:
        # pytest's own folder is root's (0700): the student gets a folder of their own.
        tmp_path = Path(tempfile.mkdtemp(prefix="gponsim-student-"))
        os.chmod(tmp_path, 0o777)
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                  "--bounding-set=-all", "--"]
    out = tmp_path / "run"
    try:
        result = lesson("packets", "--lang", lang, "--quiet", "--out", str(out), cwd=tmp_path,
                        prefix=prefix, timeout=240)
        _check_packets_lesson(result, out, lang)
    finally:
        if prefix:
            shutil.rmtree(tmp_path, ignore_errors=True)


def _check_packets_lesson(result, out, lang):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = " ".join(result.stdout.split())
    if NO_NAMESPACE is None:
        assert (NAMESPACE_NOTE if lang == "en" else "Capturas sin ser root") in text
        assert (out / "capture.pcapng").read_bytes() != (RECORDINGS / "lesson-packets.pcapng").read_bytes()
    else:
        assert "lesson-packets.pcapng" in text
    points = checkpoints(out)
    assert len(points) == 7 and all(c["passed"] for c in points), points
    details = {c["says"]: c["detail"] for c in points}
    assert any(d.startswith("SYN #") for d in details.values())
    assert any("AUTH in packet #" in d and "ApplicationData" in d for d in details.values())
    # The "Packet by packet" panels speak the lesson's language, and count bytes right.
    if lang == "es":
        for english in ("ClientHello: offers", "with TLS_", "TLS decrypted with the key log", "[message:",
                        "· connection ", "Subject:"):
            assert english not in text, english
        assert "ClientHello: ofrece" in text and "[mensaje: " in text and "asunto: " in text
    assert " 1 bytes" not in text and "→ 🔒 [TLS" not in text


def test_packets_lesson_recording_shows_every_fact():
    """The shipped recording holds what each of the lesson's packet checks looks for."""
    from gponsim.packets.lesson import FACTS, PacketRows, check

    data = PacketRows(RECORDINGS / "lesson-packets.pcapng", RECORDINGS / "lesson-packets.keys")
    for fact in FACTS:
        ok, detail = check(fact, data, 1)
        assert ok, (fact, detail)


def test_a_lessons_packet_panel_gives_the_analyzers_own_lines_in_spanish():
    from gponsim.capture import steps_from_capture
    from gponsim.sinks.phrases import localize

    steps = steps_from_capture(RECORDINGS / "lesson-packets.pcapng", RECORDINGS / "lesson-packets.keys")
    ours = [s for s in steps if s.verb in ("ClientHello", "ServerHello", "DECRYPTED")
            or (s.verb == "CONNECT" and s.kind == "event") or s.shown_line().startswith("[message:")]
    assert {s.verb for s in ours} >= {"ClientHello", "ServerHello", "DECRYPTED", "CONNECT"}
    for step in ours:
        es, en = localize(step.shown_line(), "es"), localize(step.shown_line(), "en")
        assert en == step.shown_line()
        assert es != en, es
        for english in ("offers", " with ", "decrypted", "message:", "connection", "packet", "Subject"):
            assert english not in es, (english, es)


@pytest.mark.slow          # runs a lesson as a process
@pytest.mark.parametrize("columns", [60, 80])
def test_packet_panels_are_wrapped_once_to_the_terminals_width(tmp_path, columns):
    from rich.cells import cell_len

    result = subprocess.run([sys.executable, "-m", "gponsim", "lesson", "packets", "--lang", "en", "--quiet",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=240,
                            cwd=tmp_path, env={**os.environ, "COLUMNS": str(columns)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert max(cell_len(x) for x in lines) <= columns
    inside, panels = False, 0
    for line in lines:
        if line.startswith("╭─ Packet by packet"):
            inside, panels = True, panels + 1
        elif line.startswith("╰"):
            inside = False
        elif inside:
            content = line[2:-1].rstrip()
            # Every line of a packet panel is a packet's row (#N) or indented under one: a line
            # the panel had to wrap again would start at its left edge.
            assert content.startswith(("#", " ")), line
    assert panels >= 2
