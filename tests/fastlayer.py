"""The fast layer stays fast: a test not marked ``slow`` may not start gponsim
as a process nor a real outside program (setup.cfg says what ``slow`` means).

conftest.py wraps each test; a fast-layer test that starts one through
:mod:`subprocess` fails with a message that says which and what to do.
"""

from __future__ import annotations

import os
import shlex
import subprocess

#: Programs whose start makes a test end to end: the interoperation peers and
#: the tools the slow layer compares with.
OUTSIDE = frozenset({
    "tshark", "dumpcap", "tcpdump", "dovecot", "doveconf", "doveadm", "postfix", "postconf",
    "postmap", "postqueue", "postsuper", "sendmail", "smtp-source", "swaks", "curl", "mbsync",
    "thunderbird", "soffice", "libreoffice", "chromium", "chromium-browser",
})

_current: list[str | None] = [None]
_popen_init = subprocess.Popen.__init__


def started(args) -> str | None:
    """What ``args`` (as given to Popen) starts, when it makes a test end to end."""
    if isinstance(args, (str, bytes)):
        argv = shlex.split(os.fsdecode(args))
    elif isinstance(args, os.PathLike):
        argv = [os.fspath(args)]
    else:
        argv = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]
    if not argv:
        return None
    if len(argv) > 2 and argv[1] == "-m" and argv[2] == "gponsim":
        return "`gponsim` as a process"
    name = os.path.basename(argv[0])
    return name if name in OUTSIDE else None


def _guarded_init(self, args, *rest, **kw):
    test = _current[0]
    if test is not None:
        what = started(args)
        if what is not None:
            raise RuntimeError(f"{test} is in the fast layer but starts {what}: mark it "
                               f"@pytest.mark.slow (setup.cfg says what slow means)")
    _popen_init(self, args, *rest, **kw)


subprocess.Popen.__init__ = _guarded_init


def running(nodeid: str | None) -> None:
    """The fast-layer test now running (None: a slow one, or none)."""
    _current[0] = nodeid
