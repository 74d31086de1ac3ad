"""The package as users install it: a wheel (``python -m build``) and ``pip install .``
into fresh virtual environments carry the course's lessons."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from gponsim.lessons.model import lesson_files

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ("gponsim", "lessons", "setup.py", "setup.cfg", "pyproject.toml", "README.md")


def _source_copy(dest: Path) -> Path:
    """The files a release is built from (no caches, no build litter in the work tree)."""
    dest.mkdir()
    for name in SOURCE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _fresh_venv(where: Path) -> Path:
    """A new virtual environment; gponsim's dependencies come from the test's own
    environment through a .pth file placed after the venv's site-packages, so what is
    tested is the installed gponsim itself (the dev environment's editable hook is not
    loaded: a .pth line only adds a folder to sys.path)."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "zz-gponsim-test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def _lessons_listed(python: Path, cwd: Path) -> list[str]:
    where = subprocess.run([str(python), "-c", "import gponsim, sys; print(gponsim.__file__)"],
                           capture_output=True, text=True, cwd=cwd, check=True).stdout
    assert str(python.parents[1]) in where, f"gponsim imported from {where}, not from the fresh venv"
    listed = subprocess.run([str(python.parent / "gponsim"), "lesson", "list", "--lang", "en"],
                            capture_output=True, text=True, cwd=cwd, timeout=60)
    assert listed.returncode == 0, listed.stderr
    return [line.split()[1] for line in listed.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_a_wheel_built_with_build_carries_the_lessons(tmp_path):
    src = _source_copy(tmp_path / "src")
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                            str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("gponsim-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("gponsim/lessons/course/") and n.endswith(".toml"))
    assert len(shipped) == len(lesson_files()) >= 12, shipped
    python = _fresh_venv(tmp_path / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"            # not the source folder: the installed package only
    elsewhere.mkdir()
    listed = _lessons_listed(python, elsewhere)
    assert listed == [p.stem for p in lesson_files()]
    assert listed[0] == "send-mail" and len(listed) >= 12


@pytest.mark.slow
def test_pip_install_dot_in_a_fresh_venv_lists_every_lesson(tmp_path):
    src = _source_copy(tmp_path / "src")
    python = _fresh_venv(tmp_path / "venv")
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                           "--no-build-isolation", "-q", str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shutil.rmtree(src)                            # nothing may still point at the source
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert len(_lessons_listed(python, elsewhere)) >= 12
