"""Live capture on Linux, the way tcpdump does it: Scapy's AF_PACKET socket, filtered
in the kernel.

:class:`Sniffer` records the TCP frames of some ports on one interface
(default ``lo``) into a pcapng file (or classic pcap with ``fmt="pcap"``), from
a thread. The socket is Scapy's (``scapy.arch.linux``), with a BPF program for
the lab's ports (``tcp port 25 or tcp port 587 ...``, compiled by libpcap
through Scapy) attached before it is bound: the kernel hands over only those
packets, each with the kernel's time stamp. It needs root or CAP_NET_RAW;
without it, :class:`CapturePermission` says what to do. On loopback the kernel
hands every frame twice (outgoing and incoming); Scapy's L2 socket skips the
outgoing copy. Frames the kernel had to drop (the capture thread fell behind
and the socket's buffer filled) are counted from the socket's statistics
(:attr:`Sniffer.drops`), as tcpdump reports them.

With ``keylog`` (the lab's ``serve --keylog`` file), the key-log lines are
embedded in the pcapng file as Decryption Secrets Blocks as they appear, so
Wireshark and ``gponsim analyze`` decrypt the file on their own. A DSB must
come before the packets it decrypts, yet a client's first encrypted record
(TLS 1.2 Finished) is on the wire before the server has logged its secret: so
frames are held back :data:`HOLD` seconds and the key log is read again before
they are written. :meth:`Sniffer.stop` writes everything left: the file is
complete.
"""

from __future__ import annotations

import collections
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from gponsim.capture.pcapng_writer import PcapNgWriter, PcapWriter

#: Seconds a frame waits before it is written (for the secrets to be logged first).
HOLD = 0.3
#: The largest frame kept (loopback's MTU is 65536).
SNAPLEN = 262144
#: The socket's receive buffer, in bytes.
RCVBUF = 8 << 20
SOL_PACKET, PACKET_STATISTICS, SO_RCVBUFFORCE = 263, 6, 33


class CapturePermission(Exception):
    pass


class Sniffer:
    def __init__(self, path: str | Path, ports, iface: str = "lo", on_frame=None, *,
                 keylog: str | Path | None = None, fmt: str = "pcapng",
                 limit: int | None = None) -> None:
        """``on_frame(number, time, linktype, frame)`` is called (in the sniffer's
        thread) for every frame kept, e.g. a live :class:`~gponsim.capture.analyze.Analyzer`.
        ``keylog``: an NSS key-log file to follow and embed (pcapng only);
        ``limit``: keep at most this many frames."""
        if fmt not in ("pcapng", "pcap"):
            raise ValueError(f"capture format {fmt!r}: pcapng or pcap")
        self.path = Path(path)
        self.fmt = fmt
        self.keylog = Path(keylog) if keylog else None
        self.limit = limit
        self._keylog_at = 0
        self._pending: collections.deque = collections.deque()
        self.on_frame = on_frame
        self.ports = set(ports)
        self.iface = iface
        self.count = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._markers: list[bytes] = []
        self._seen: set[bytes] = set()
        self._closed_ports: set[int] = set()
        #: Frames the kernel dropped because the socket's buffer was full.
        self.drops = 0
        #: Frames the kernel handed over that are not of the ports (its filter lets none by).
        self.strays = 0
        self.filter = bpf_filter(self.ports)
        self.sock = _open(iface, self.filter)
        self.raw = self.sock.ins                  # the AF_PACKET socket under Scapy's
        self.raw.settimeout(0.1)
        try:
            writer = PcapNgWriter if fmt == "pcapng" else PcapWriter
            self.writer = writer(self.path, linktype=1, snaplen=SNAPLEN, ifname=iface)
        except OSError as exc:
            self.sock.close()
            raise CapturePermission(f"cannot write the capture file {self.path}: "
                                    f"{exc.strerror or exc}") from exc
        self.thread = threading.Thread(target=self._run, name="gponsim-sniffer", daemon=True)
        self.thread.start()

    def watch(self, *markers: bytes) -> None:
        """Remember whether these byte strings appear in a captured frame."""
        with self.lock:
            self._markers.extend(markers)

    def seen(self, marker: bytes) -> bool:
        with self.lock:
            return marker in self._seen

    def closed(self) -> bool:
        """True once a FIN or RST was captured for every port."""
        with self.lock:
            return self._closed_ports >= self.ports

    def _run(self) -> None:
        last = time.monotonic()
        recv = self.sock.recv_raw
        while not self.stopping.is_set():
            try:
                _cls, frame, ts = recv(SNAPLEN)
            except (socket.timeout, OSError):
                frame = None
            if frame is not None:                # None: the outgoing copy of a loopback frame
                self._keep(frame, ts)
            now = time.monotonic()
            if now - last >= 0.05 and self._pending:
                last = now
                self._write(time.time_ns() - int(HOLD * 1e9))

    def _keep(self, frame: bytes, ts: float | None = None) -> None:
        port, flags = _tcp_ports(frame, self.ports)
        if port is None:
            self.strays += 1                      # let through by the kernel: none expected
            return
        # The kernel's time stamp (to the microsecond: a float of epoch seconds holds no more).
        t_ns = round(ts * 1e6) * 1000 if ts else time.time_ns()
        with self.lock:
            if self.limit is not None and self.count >= self.limit:
                return
            self._pending.append((t_ns, frame))
            self.count += 1
            if flags & 0x05:
                self._closed_ports.add(port)
            for m in self._markers:
                if m in frame:
                    self._seen.add(m)
            number = self.count
        if self.on_frame is not None:
            self.on_frame(number, t_ns / 1e9, 1, frame)

    def _new_secrets(self) -> bytes:
        """Whole key-log lines added since the last look (the file may not exist yet)."""
        if self.keylog is None:
            return b""
        try:
            with open(self.keylog, "rb") as fh:
                size = fh.seek(0, 2)
                if size < self._keylog_at:          # truncated: a new key log
                    self._keylog_at = 0
                if size == self._keylog_at:
                    return b""
                fh.seek(self._keylog_at)
                data = fh.read(size - self._keylog_at)
        except OSError:
            return b""
        end = data.rfind(b"\n") + 1
        self._keylog_at += end
        return data[:end]

    def _count_drops(self) -> None:
        """Add what the kernel dropped since the last look (reading the counters resets them)."""
        try:
            _received, dropped = struct.unpack("II", self.raw.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return
        self.drops += dropped

    def _write(self, up_to_ns: int | None) -> None:
        """Write the secrets logged so far, then the frames captured before ``up_to_ns``."""
        with self.lock:
            if self.writer.fh.closed:
                return
            self._count_drops()
            secrets = self._new_secrets()
            if secrets:
                self.writer.tls_secrets(secrets)
            pending = self._pending
            while pending and (up_to_ns is None or pending[0][0] <= up_to_ns):
                t_ns, frame = pending.popleft()
                self.writer.packet(t_ns, frame)
            self.writer.flush()

    def _drain(self) -> None:
        """Keep the frames the kernel has queued already (captured before the stop)."""
        if self.thread.is_alive() or self.raw.fileno() < 0:
            return
        self.raw.setblocking(False)
        recv = self.sock.recv_raw
        for _ in range(100000):
            try:
                _cls, frame, ts = recv(SNAPLEN)
            except OSError:
                break
            if frame is not None:
                self._keep(frame, ts)

    @property
    def fh(self):
        """The open capture file (kept for callers of the classic-pcap Sniffer)."""
        return self.writer.fh

    def stop(self) -> Path:
        self.stopping.set()
        self.thread.join(5)
        self._drain()
        self.sock.close()
        self._write(None)
        with self.lock:
            self.writer.close()
        return self.path


def bpf_filter(ports) -> str:
    """The kernel filter for the lab's ports, in tcpdump's language."""
    return " or ".join(f"tcp port {p}" for p in sorted(ports))


def _open(iface: str, bpf: str):
    """Scapy's capture socket on ``iface`` with the BPF filter ``bpf`` attached.

    On loopback, Scapy's ``L2Socket`` (it skips the outgoing copy of each frame);
    elsewhere its ``L2ListenSocket`` (both directions of this host's traffic). Never
    promiscuous: the lab's own traffic is what is wanted."""
    from gponsim.packets import dissect

    dissect.quiet()
    try:
        from scapy.arch.linux import L2ListenSocket, L2Socket
        from scapy.error import Scapy_Exception

        cls = L2Socket if iface == "lo" else L2ListenSocket
        sock = cls(iface=iface, filter=bpf, promisc=False)
    except PermissionError as exc:
        raise CapturePermission(
            "capturing packets needs root or the CAP_NET_RAW capability: run as root, or "
            f"`sudo setcap cap_net_raw+ep {os.path.realpath(sys.executable)}` (the interpreter "
            "that runs gponsim)") from exc
    except ImportError as exc:
        raise CapturePermission(f"capturing needs Linux and Scapy's AF_PACKET sockets ({exc})") from exc
    except Scapy_Exception as exc:
        raise CapturePermission(f"cannot filter the lab's ports in the kernel ({exc}): Scapy compiles "
                                "the filter with libpcap (Debian package libpcap0.8)") from exc
    except OSError as exc:
        raise CapturePermission(f"cannot capture on interface {iface!r}: {exc.strerror or exc}") from exc
    # Scapy leaves 64 KiB for frames waiting to be read; a burst of a class of clients needs
    # more (the kernel caps it at net.core.rmem_max unless forced, which root may).
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.ins.setsockopt(socket.SOL_SOCKET, option, RCVBUF)
            break
        except OSError:
            continue
    return sock


def _tcp_ports(frame: bytes, ports: set) -> tuple[int | None, int]:
    """(the watched port, TCP flags) of an Ethernet frame, or (None, 0)."""
    if len(frame) < 54:
        return None, 0
    etype = frame[12:14]
    if etype == b"\x08\x00":
        ihl = (frame[14] & 15) * 4
        if frame[23] != 6:
            return None, 0
        at = 14 + ihl
    elif etype == b"\x86\xdd":
        if frame[20] != 6:
            return None, 0
        at = 54
    else:
        return None, 0
    if len(frame) < at + 14:
        return None, 0
    sport, dport = struct.unpack_from("!HH", frame, at)
    flags = frame[at + 13]
    if sport in ports:
        return sport, flags
    if dport in ports:
        return dport, flags
    return None, 0
