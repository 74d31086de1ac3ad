import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fastlayer  # noqa: E402
from labproc import LabProcess  # noqa: E402
from reactor_thread import reactor, reactor_thread  # noqa: E402,F401  (fixtures for every test)

SHARED = Path(__file__).resolve().parents[2] / "shared"
#: Real captures of mail traffic beside the project (../shared/pcaps); tests that read
#: them are skipped where that folder is not (it is not part of the repository).
PCAPS = SHARED / "pcaps"
needs_pcaps = pytest.mark.skipif(not PCAPS.is_dir(), reason=f"no shared captures at {PCAPS}")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="tshark is not installed (Debian package tshark)")


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.root("why")``: a test that only root can run is skipped for a
    normal user, with its reason (the README lists them)."""
    for item in items:
        mark = item.get_closest_marker("root")
        if mark is None:
            continue
        if not mark.args:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.root needs its reason")
        if os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=f"needs root: {mark.args[0]}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test outside the ``slow`` layer may not start gponsim or an outside program
    (tests/fastlayer.py), from its fixtures' setup to their teardown."""
    fastlayer.running(None if item.get_closest_marker("slow") else item.nodeid)
    try:
        yield
    finally:
        fastlayer.running(None)


@pytest.fixture
def lab(tmp_path):
    """A running `gponsim serve` on free loopback ports, in its own lab root."""
    proc = LabProcess(tmp_path / "gponlab").start()
    yield proc
    proc.stop()


@pytest.fixture
def lab_factory(tmp_path):
    """Start labs with options; every one started is stopped at the end."""
    started = []

    def make(name="gponlab", **kw):
        proc = LabProcess(tmp_path / name, **kw)
        started.append(proc)
        return proc
    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def reachable_dir():
    """A fresh folder under /tmp that other users can reach (pytest's tmp dirs are
    0700): for a real Postfix whose daemons run as the postfix user or deliver as one."""
    path = Path(tempfile.mkdtemp(prefix="gponsim-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def utc():
    """Run the test with TZ=UTC (mbox From_ lines and Received dates use local time)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture(scope="session")
def lesson_runs(tmp_path_factory):
    """Every lesson run once per language, with its quiz (``run(lesson, lang)`` gives
    the finished process and its run folder ``<base>/<lang>/<lesson>``): shared by
    the lesson tests and the slides, which build their decks from these runs."""
    import subprocess

    base = tmp_path_factory.mktemp("lesson-runs")
    done: dict = {}

    def run(lesson: str, lang: str):
        if (lesson, lang) not in done:
            out = base / lang / lesson
            out.parent.mkdir(parents=True, exist_ok=True)
            result = subprocess.run([sys.executable, "-m", "gponsim", "lesson", lesson, "--lang", lang,
                                     "--out", str(out), "--quiz"], capture_output=True, text=True,
                                    timeout=180, cwd=base, env={**os.environ, "COLUMNS": "120"})
            done[lesson, lang] = (result, out)
        return done[lesson, lang]
    run.base = base
    return run
