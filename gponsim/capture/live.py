"""Live capture on Linux, the way tcpdump does it: an AF_PACKET socket.

:class:`Sniffer` records the TCP frames of some ports on one interface
(default ``lo``) into a classic pcap file as they arrive, from a thread. It
needs root or CAP_NET_RAW; without it, :class:`CapturePermission` says what
to do. On loopback the kernel hands every frame twice (outgoing and
incoming); the outgoing copy is skipped.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

ETH_P_ALL = 0x0003


class CapturePermission(Exception):
    pass


class Sniffer:
    def __init__(self, path: str | Path, ports, iface: str = "lo", on_frame=None) -> None:
        """``on_frame(number, time, linktype, frame)`` is called (in the sniffer's
        thread) for every frame kept, e.g. a live :class:`~gponsim.capture.analyze.Analyzer`."""
        self.path = Path(path)
        self.on_frame = on_frame
        self.ports = set(ports)
        self.iface = iface
        self.count = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._markers: list[bytes] = []
        self._seen: set[bytes] = set()
        self._closed_ports: set[int] = set()
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except (PermissionError, AttributeError) as exc:
            raise CapturePermission(
                "capturing packets needs root or the CAP_NET_RAW capability: run as root, or "
                "`sudo setcap cap_net_raw+ep $(readlink -f $(which python3))`") from exc
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        try:
            self.sock.bind((iface, 0))
        except OSError as exc:
            self.sock.close()
            raise CapturePermission(f"cannot capture on interface {iface!r}: {exc.strerror or exc}") from exc
        self.sock.settimeout(0.2)
        self.fh = open(self.path, "wb")
        self.fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
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
        while not self.stopping.is_set():
            try:
                frame, addr = self.sock.recvfrom(262144)
            except (socket.timeout, OSError):
                continue
            if addr[2] == socket.PACKET_OUTGOING and self.iface == "lo":
                continue
            port, flags = _tcp_ports(frame, self.ports)
            if port is None:
                continue
            t = time.time()
            with self.lock:
                self.fh.write(struct.pack("<IIII", int(t), int(t % 1 * 1e6), len(frame), len(frame)))
                self.fh.write(frame)
                self.count += 1
                if flags & 0x05:
                    self._closed_ports.add(port)
                for m in self._markers:
                    if m in frame:
                        self._seen.add(m)
                number = self.count
            if self.on_frame is not None:
                self.on_frame(number, t, 1, frame)

    def stop(self) -> Path:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        with self.lock:
            self.fh.close()
        return self.path


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
