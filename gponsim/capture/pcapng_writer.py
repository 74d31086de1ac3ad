"""Writing pcapng: the blocks a live capture needs, TLS secrets included.

Scapy's ``RawPcapNgWriter`` (2.8.0, installed here) writes packets but no Decryption Secrets
Block, and its header blocks are private methods; the format is simple enough
to write here with :mod:`struct` (pcapng, draft-ietf-opsawg-pcapng):

- Section Header Block (0x0A0D0D0A) with ``shb_userappl``;
- Interface Description Block (1): link type, snap length, ``if_name`` and
  ``if_tsresol`` = 9 (timestamps in nanoseconds);
- Enhanced Packet Block (6): one per frame;
- Decryption Secrets Block (0x0000000A), secrets type TLS key log
  (0x544C534B): NSS key-log lines, so Wireshark, tshark and
  ``gponsim analyze`` decrypt the TLS in the file without a separate key
  file. A DSB must come before the packets it decrypts.

Every block is written whole with one ``write``; :meth:`PcapNgWriter.flush`
makes what was written so far a complete, readable file.
"""

from __future__ import annotations

import struct
from pathlib import Path

SHB = 0x0A0D0D0A
IDB = 0x00000001
EPB = 0x00000006
DSB = 0x0000000A
SECRETS_TLS_KEYLOG = 0x544C534B

_OPT_END = b"\0\0\0\0"


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(btype: int, body: bytes) -> bytes:
    body = _pad(body)
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


class PcapNgWriter:
    """A pcapng file with one interface; little-endian, nanosecond timestamps."""

    def __init__(self, path: str | Path, linktype: int = 1, snaplen: int = 262144,
                 ifname: str | None = None, application: str = "gponsim") -> None:
        self.path = Path(path)
        self.snaplen = snaplen
        self.fh = open(self.path, "wb")
        self.packets = 0
        self.secrets = 0
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)        # byte order, v1.0, length unknown
        shb += _option(4, application.encode()) + _OPT_END     # shb_userappl
        idb = struct.pack("<HHI", linktype, 0, snaplen)
        if ifname:
            idb += _option(2, ifname.encode())                  # if_name
        idb += _option(9, b"\x09") + _OPT_END                   # if_tsresol: 10^-9 s
        self.fh.write(_block(SHB, shb) + _block(IDB, idb))
        self._epb = struct.Struct("<IIIIIII")

    def packet(self, t_ns: int, frame: bytes, orig_len: int | None = None) -> None:
        """An Enhanced Packet Block: ``t_ns`` nanoseconds since the epoch."""
        cap = frame[:self.snaplen]
        caplen = len(cap)
        pad = -caplen % 4
        length = 32 + caplen + pad
        self.fh.write(self._epb.pack(EPB, length, 0, t_ns >> 32, t_ns & 0xFFFFFFFF, caplen,
                                     len(frame) if orig_len is None else orig_len)
                      + cap + b"\0" * pad + struct.pack("<I", length))
        self.packets += 1

    def tls_secrets(self, keylog: bytes) -> None:
        """A Decryption Secrets Block with NSS key-log lines (``CLIENT_RANDOM ...``)."""
        if not keylog:
            return
        if not keylog.endswith(b"\n"):
            keylog += b"\n"
        self.fh.write(_block(DSB, struct.pack("<II", SECRETS_TLS_KEYLOG, len(keylog)) + keylog))
        self.secrets += 1

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "PcapNgWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PcapWriter:
    """Classic pcap (microseconds), for callers that ask for it; no secrets."""

    def __init__(self, path: str | Path, linktype: int = 1, snaplen: int = 262144, **_ignored) -> None:
        self.path = Path(path)
        self.snaplen = snaplen
        self.fh = open(self.path, "wb")
        self.packets = 0
        self.secrets = 0
        self.fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))

    def packet(self, t_ns: int, frame: bytes, orig_len: int | None = None) -> None:
        cap = frame[:self.snaplen]
        sec, ns = divmod(t_ns, 1_000_000_000)
        self.fh.write(struct.pack("<IIII", sec, ns // 1000, len(cap),
                                  len(frame) if orig_len is None else orig_len) + cap)
        self.packets += 1

    def tls_secrets(self, keylog: bytes) -> None:
        """Classic pcap has no place for secrets: they are not written."""

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()
