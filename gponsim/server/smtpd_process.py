"""smtpd processes: the lab's smtpd and cleanup in several processes, as Postfix runs them.

Postfix's master(8) opens the listening sockets of master.cf's smtpd
services and lets several smtpd(8) processes accept on them (up to the
service's process limit); each smtpd hands its messages to cleanup(8),
which writes the queue file and tells qmgr(8) through ``public/qmgr``.
The lab does the same with ``LabOptions.smtpd_processes`` (``gponsim serve
--smtpd-processes N``):

- the master process (``gponsim serve``: master, qmgr, local, Dovecot, the
  Gmail simulator) opens the sockets and starts N child processes
  (``python -m gponsim.server.smtpd_process``), giving each the sockets as
  inherited file descriptors; while at least one child runs, the master
  itself accepts no SMTP connection;
- a child runs the lab's smtpd and cleanup (:class:`gponsim.server.postfix.smtpd.Smtpd`,
  :meth:`gponsim.server.postfix.queue.MailQueue.start_cleanup`): it authenticates
  through Dovecot's auth socket, writes, ``fsync``-s and commits queue files
  into ``active/``, answers ``250``, and tells the master the queue id;
- every Step of a child, and each queue id it commits, travels to the
  master in order over a pipe (pickled batches, at most 10 ms apart), so
  narration, ``--steps``, captures and lessons see one lab;
- the children write ``mail.log`` themselves, with their own pids in the
  ``postfix/smtpd[pid]`` lines, as distinct smtpd processes do.

A child ends when the master closes its stdin (``serve`` stopping, or the
master killed: the pipe closes with it). A child that ends on its own is
logged as master(8) logs it; if none is left, the master accepts again
itself and takes any committed file it was not told of.

Why: one Python process is bound to one core by its GIL (the thread that
answers sessions waits for the threads that write queue files and
mailboxes); Postfix's own answer to the same problem is processes.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, protocol
from twisted.python import log

from gponsim.server.maillog import pid_for
from gponsim.stepjson import EncodedStep, encoded, field_values, step_line
from gponsim.steps import Step, run_prefix

#: Frames on the pipe: a 4-byte big-endian length, then a pickled list of
#: items: a Step's JSON line (a str), or ("s", the Step's field values, its
#: JSON line) for a Step with a secret (masked in JSON), ("q", queue id),
#: ("r", pid) once the process accepts connections. (The JSON line is made
#: here, so the master's --steps recorder only writes it; strings pickle
#: and unpickle twenty times faster than field values, 0.2 µs a Step
#: against 5.8 on the benchmark machine.)
_HEADER = struct.Struct(">I")
#: The uplink's batches (see _Uplink): at most this many seconds or items.
FLUSH_DELAY = 0.01
FLUSH_MAX = 256
#: fd numbers in the child: the uplink pipe, then the listening sockets.
UPLINK_FD = 3
FIRST_SOCKET_FD = 4
#: How long the master waits for its children to accept before it keeps accepting itself.
READY_TIMEOUT = 30.0


# --------------------------------------------------------------------------
# Master side

def default_count() -> int:
    """``serve``'s default: one smtpd process per core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


#: Child n counts its mail.log pids from the master's pid + n * PID_STRIDE
#: (see :func:`gponsim.server.maillog.set_pid_base`).
PID_STRIDE = 100


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, owner: "SmtpdProcesses", index: int) -> None:
        self.owner = owner
        self.index = index
        self.pid_base = pid_for("master") + index * PID_STRIDE
        self.pid: int | None = None
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self._buf = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != UPLINK_FD:
            return
        buf = self._buf + data
        pos, size = 0, len(buf)
        while size - pos >= 4:
            (length,) = _HEADER.unpack_from(buf, pos)
            if size - pos - 4 < length:
                break
            items = pickle.loads(buf[pos + 4:pos + 4 + length])
            pos += 4 + length
            try:
                self.owner._received(self, items)
            except Exception:  # noqa: BLE001 - a bug here must not cut the pipe
                log.err(None, f"smtpd process {self.pid}: cannot take its Steps")
        self._buf = buf[pos:]

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        if not self.ready.called:
            self.ready.callback(False)
        self.owner._ended(self, code, sig)
        self.ended.callback(None)


class SmtpdProcesses:
    """The master's side: start, feed and stop ``count`` smtpd processes.

    ``ports``: the lab's smtpd listening ports (Twisted ``Port`` objects) by
    service name; ``emit``: where the children's Steps go; ``queue``: the
    master's :class:`~gponsim.server.postfix.queue.MailQueue` (its qmgr takes the
    committed queue ids); ``log``: the master's mail.log writer.
    """

    def __init__(self, *, reactor: Any, ports: dict[str, Any], emit: Callable[[Step], object],
                 queue: Any, log: Any, options: Any, lab_root: Path) -> None:
        self.reactor = reactor
        self.ports = ports
        self.emit = emit
        self.queue = queue
        self.log = log
        self.setup = _child_setup(options, lab_root)
        self.children: list[_ChildProtocol] = []
        self._stopping = False

    def start(self, count: int) -> defer.Deferred:
        """Start the children; fires with how many accept connections."""
        names = sorted(self.ports)
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2, UPLINK_FD: "r"}
        sockets = {}
        for n, name in enumerate(names):
            fd = FIRST_SOCKET_FD + n
            port = self.ports[name]
            child_fds[fd] = port.fileno()
            sockets[name] = {"fd": fd, "family": int(port.addressFamily)}
        env = dict(os.environ)
        for index in range(1, count + 1):
            child = _ChildProtocol(self, index)
            config = dict(self.setup, sockets=sockets, index=index, pid_base=child.pid_base)
            self.reactor.spawnProcess(
                child, sys.executable,
                [sys.executable, "-m", "gponsim.server.smtpd_process", json.dumps(config)],
                env=env, childFDs=child_fds)
            self.children.append(child)
        waits = [c.ready for c in self.children]
        d = defer.DeferredList(waits)
        timeout = self.reactor.callLater(READY_TIMEOUT, self._not_ready)

        def counted(results):
            if timeout.active():
                timeout.cancel()
            ready = sum(1 for ok, value in results if ok and value)
            if ready:
                for port in self.ports.values():
                    port.stopReading()       # the children accept from now on
            return ready
        return d.addCallback(counted)

    def _not_ready(self) -> None:
        for child in self.children:
            if not child.ready.called:
                self.log.postfix("master", f"warning: process smtpd pid {child.pid} did not "
                                 f"start within {READY_TIMEOUT:g}s; the master accepts instead")
                child.ready.callback(False)

    def _received(self, child: _ChildProtocol, items: list) -> None:
        emit, from_line = self.emit, EncodedStep.from_line
        for item in items:
            if type(item) is str:
                emit(from_line(item))
                continue
            kind = item[0]
            if kind == "s":
                emit(EncodedStep.packed(item[1], item[2]))
            elif kind == "q":
                self.queue.pickup(item[1])
            elif kind == "r" and not child.ready.called:
                child.ready.callback(True)

    def _ended(self, child: _ChildProtocol, code: int | None, sig: int | None) -> None:
        self.children.remove(child)
        if self._stopping:
            return
        status = f"killed by signal {sig}" if sig else f"exit status {code}"
        # the pid its postfix/smtpd[...] lines carry
        self.log.postfix("master", f"warning: process /usr/lib/postfix/sbin/smtpd pid "
                         f"{pid_for('smtpd', child.pid_base)} {status}")
        self.queue.rescan()          # what it committed without telling qmgr
        if not self.children:
            for port in self.ports.values():
                if port.connected:
                    port.startReading()

    def stop(self) -> defer.Deferred:
        """Close the children's stdin (they stop accepting, finish their
        commits and exit); fires when all have ended (SIGKILL after 10 s)."""
        self._stopping = True
        ends = []
        for child in list(self.children):
            ends.append(child.ended)
            try:
                child.transport.closeStdin()
            except Exception:  # noqa: BLE001 - already gone
                pass
        if not ends:
            return defer.succeed(None)

        def kill():
            for child in self.children:
                try:
                    child.transport.signalProcess("KILL")
                except Exception:  # noqa: BLE001
                    pass
        timer = self.reactor.callLater(10.0, kill)
        d = defer.DeferredList(ends)
        d.addCallback(lambda _: timer.cancel() if timer.active() else None)
        return d


# --------------------------------------------------------------------------
# Child side

def _child_setup(options: Any, lab_root: Path) -> dict:
    """What a child needs of the master's LabOptions (JSON, on its command
    line); :func:`child_main` reads it back."""
    def absolute(path):
        return str(Path(path).resolve()) if path else None
    return {"lab_root": str(lab_root), "listen": options.listen, "run_prefix": run_prefix(),
            "config_dir": absolute(options.config_dir), "keylog": absolute(options.keylog)}


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


class _Uplink:
    """Steps and queue ids to the master, in order, in batches.

    A batch goes FLUSH_DELAY seconds after its first item (or at once
    when it holds FLUSH_MAX items): a pipe write and a wake-up of the master
    per reply cost more than the Steps themselves (about 20 µs a Step
    against 7 µs in batches of 17, on the benchmark machine). Narration lags
    by at most FLUSH_DELAY, and so does qmgr's pickup of a queue file.
    """

    def __init__(self, reactor: Any, fd: int = UPLINK_FD) -> None:
        self.reactor = reactor
        self.fd = fd
        self._items: list = []          # touched in the reactor thread only
        self._reactor_thread = threading.get_ident()

    def emit(self, step: Step) -> Step:
        # The master reads the fields back from the JSON text, unless it masks
        # a secret (--reveal needs the values). A child's EncodedSteps come
        # from StepTemplates, which never hold a secret.
        if type(step) is EncodedStep or step.secret is None:
            self._add(encoded(step))
        else:
            self._add(("s", field_values(step), step_line(step)))
        return step

    def queued(self, qid: str) -> None:
        self._add(("q", qid))

    def _add(self, item: Any) -> None:
        if threading.get_ident() != self._reactor_thread:
            self.reactor.callFromThread(self._add, item)
            return
        items = self._items
        items.append(item)
        if len(items) == 1:
            self.reactor.callLater(FLUSH_DELAY, self.flush)
        elif len(items) >= FLUSH_MAX:
            self.flush()

    def flush(self) -> None:
        items, self._items = self._items, []
        if not items:
            return
        data = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_HEADER.pack(len(data)) + data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:       # the master is gone: stdin's end tells _watch_master too
            pass


def _watch_master(reactor: Any, stop: Callable[[], None]) -> None:
    """The master holds the other end of stdin: EOF means stop."""
    def wait():
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        reactor.callFromThread(stop)
    threading.Thread(target=wait, name="gponsim-master-watch", daemon=True).start()


def child_main(config: dict) -> int:
    from twisted.internet import reactor

    from gponsim.server.lab import Lab, LabOptions
    from gponsim.server.maillog import set_pid_base
    from gponsim.steps import set_run_prefix

    set_pid_base(config["pid_base"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the master's to handle
    set_run_prefix(f"{config['run_prefix']}.{config['index']}")
    uplink = _Uplink(reactor)
    options = LabOptions(lab_root=Path(config["lab_root"]), listen=config["listen"],
                         config_dir=_path(config["config_dir"]), keylog=_path(config["keylog"]))
    lab = Lab(options, emit=uplink.emit, reactor=reactor)
    failure: list[str] = []
    stopping: list[bool] = []

    def stop():
        if stopping:
            return
        stopping.append(True)
        d = lab.stop()
        d.addBoth(lambda _: (uplink.flush(), reactor.stop()))

    def started(_):
        uplink._add(("r", os.getpid()))

    def failed(f):
        failure.append(f.getErrorMessage())
        reactor.stop()

    sockets = {name: (info["fd"], info["family"]) for name, info in config["sockets"].items()}
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(stop))
    reactor.callWhenRunning(_watch_master, reactor, stop)
    reactor.callWhenRunning(lambda: lab.start_smtpd_process(sockets, uplink.queued)
                            .addCallbacks(started, failed))
    reactor.run(installSignalHandlers=False)
    if failure:
        print(f"gponsim: smtpd process {os.getpid()}: {failure[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main(json.loads(sys.argv[1])))
