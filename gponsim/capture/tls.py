"""What a capture shows of a TLS handshake without the keys.

:class:`TlsObserver` takes each direction's bytes once TLS has started
(STARTTLS/STLS accepted, or an implicit-TLS port) and reads the records in
the clear: the ClientHello (offered versions, SNI, cipher suites), the
ServerHello (chosen version and cipher suite) and, up to TLS 1.2, the
server's certificate (subject). Everything after ChangeCipherSpec or the
first encrypted record is only counted: its records, and apart the
application data records (the mail conversation) with their packets.
"""

from __future__ import annotations

import struct

from gponsim.capture.carry import Carrier

VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2",
            0x0304: "TLSv1.3"}

#: IANA names of the cipher suites seen in mail traffic (RFC 5246, 8446, 5289, 7905, ...).
CIPHERS = {
    0x0004: "TLS_RSA_WITH_RC4_128_MD5", 0x0005: "TLS_RSA_WITH_RC4_128_SHA",
    0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA", 0x0016: "TLS_DHE_RSA_WITH_3DES_EDE_CBC_SHA",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA", 0x0033: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA", 0x0039: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA",
    0x003C: "TLS_RSA_WITH_AES_128_CBC_SHA256", 0x003D: "TLS_RSA_WITH_AES_256_CBC_SHA256",
    0x0067: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256", 0x006B: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256", 0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", 0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xC007: "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", 0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", 0xC011: "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    0xC012: "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", 0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", 0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    0xC024: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", 0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    0xC028: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", 0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", 0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0x00FF: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV", 0x5600: "TLS_FALLBACK_SCSV",
}


def cipher_name(code: int) -> str:
    return CIPHERS.get(code, f"0x{code:04X}")


def _grease(code: int) -> bool:
    return (code & 0x0F0F) == 0x0A0A and (code >> 8) == (code & 0xFF)


def looks_like_tls(data: bytes) -> bool:
    """A TLS record header: handshake/alert/CCS/appdata with version 3.x."""
    return len(data) >= 3 and data[0] in (20, 21, 22, 23) and data[1] == 3 and data[2] <= 4


class _Dir:
    __slots__ = ("buf", "hs", "hs_packets", "encrypted", "records", "bytes", "lost",
                 "app_records", "app_bytes", "app_packets")

    def __init__(self) -> None:
        self.lost = False                      # after a gap: wait for a record to start
        self.buf = b""
        self.hs = b""
        self.hs_packets: list[int] = []      # the packets of the records in ``hs``
        self.encrypted = False
        self.records = 0
        self.bytes = 0
        #: Application data records (content type 23): how many, their bytes on the
        #: wire (5-byte headers included) and the packets that carried them.
        self.app_records = 0
        self.app_bytes = 0
        self.app_packets: list[int] = []


class TlsObserver:
    """Both directions of one TLS session; ``events`` lists what was learned.

    With a :class:`~gponsim.capture.tlsdecrypt.KeyLog` holding this
    session's secrets, :meth:`feed` also returns the decrypted application
    data of that direction.

    Fed with the packets that carried the bytes, it knows each record's packets:
    an event's ``info["packets"]``, ``plain_packets`` for what :meth:`feed`
    returned, and ``on_record(direction, content_type, length, packets,
    handshake_type)`` for every record (the packets view; ``handshake_type`` is
    the first message's type of a handshake record still in clear, else None),
    which also keeps records read after the key change without keys.
    """

    def __init__(self, keylog=None, on_record=None) -> None:
        self.dirs = {"c2s": _Dir(), "s2c": _Dir()}
        self.client_hello: dict | None = None
        self.server_hello: dict | None = None
        self.subject: str | None = None
        self.alerts: list[str] = []
        self.events: list[tuple[str, dict]] = []      # ("ClientHello", info), ...
        self.not_tls = {"c2s": False, "s2c": False}
        self.keylog = keylog
        self.keys = None
        self.decrypted = False
        self.failed = {"c2s": False, "s2c": False}
        self.inner = {"c2s": b"", "s2c": b""}
        #: Bytes fed with their packets and not yet in a whole record.
        self.raw = {"c2s": Carrier(), "s2c": Carrier()}
        self.on_record = on_record
        #: The packets of each chunk the last :meth:`feed` returned.
        self.plain_packets: list[list[int]] = []
        self._record_packets: list[int] = []

    def feed(self, direction: str, data: bytes, packets: tuple | None = None) -> list[bytes]:
        """The bytes of one direction, in order; returns the decrypted application data.

        ``packets``: the packet(s) that carried ``data`` (None: not followed)."""
        d = self.dirs[direction]
        d.bytes += len(data)
        out: list[bytes] = []
        self.plain_packets = []
        if self.not_tls[direction]:
            return out
        raw = self.raw[direction]
        if d.lost:
            # After bytes missing from the capture, records resume with the first segment
            # that starts with a record header (what comes before it cannot be placed).
            if not looks_like_tls(data):
                return out
            d.lost = False
        if packets is not None:
            raw.add(len(data), packets)
        d.buf += data
        while len(d.buf) >= 5:
            ctype, _vmaj, _vmin, length = struct.unpack_from("!BBBH", d.buf)
            if ctype not in (20, 21, 22, 23, 24) or _vmaj != 3:
                self.not_tls[direction] = True
                d.buf = b""
                return out
            if len(d.buf) < 5 + length:
                return out
            header, body, d.buf = d.buf[:5], d.buf[5:5 + length], d.buf[5 + length:]
            d.records += 1
            self._record_packets = pk = raw.take(5 + length) if raw.size else []
            if self.on_record is not None:
                # A handshake record still in clear names its first message's type.
                hs = body[0] if ctype == 22 and not d.encrypted and body else None
                self.on_record(direction, ctype, length, pk, hs)
            if ctype == 20:
                d.encrypted = True
                continue
            if ctype == 23:
                d.app_records += 1
                d.app_bytes += 5 + length
                for p in pk:
                    if not d.app_packets or d.app_packets[-1] != p:
                        d.app_packets.append(p)
            if d.encrypted or ctype == 23:
                d.encrypted = True
                if self.keys is not None and not self.failed[direction]:
                    self._decrypt(direction, header, body, out)
                continue
            if ctype == 21 and len(body) >= 2:
                self._alert(direction, body)
            elif ctype == 22:
                d.hs += body
                for p in pk:
                    if not d.hs_packets or d.hs_packets[-1] != p:
                        d.hs_packets.append(p)
                self._handshake(direction, d)
        return out

    def resync(self, direction: str) -> None:
        """Bytes of ``direction`` are missing: drop the record in progress; reading
        resumes at the next segment that starts with a record."""
        d = self.dirs[direction]
        d.buf, d.hs, d.hs_packets = b"", b"", []
        d.lost = True
        self.raw[direction].clear()

    def _alert(self, direction: str, body: bytes) -> None:
        self.alerts.append(f"{'fatal' if body[0] == 2 else 'warning'} alert {body[1]}")
        self.events.append(("Alert", {"level": body[0], "description": body[1],
                                      "direction": direction, "packets": self._record_packets}))

    def _decrypt(self, direction: str, header: bytes, body: bytes, out: list) -> None:
        from gponsim.capture.tlsdecrypt import DecryptError

        try:
            ctype, plain = self.keys.decrypt(direction, header, body)
        except DecryptError as exc:
            self.failed[direction] = True
            self.events.append(("DecryptFailed", {"direction": direction, "reason": str(exc),
                                                  "packets": self._record_packets}))
            return
        if not self.decrypted:
            self.decrypted = True
            self.events.append(("Decrypted", {"direction": direction, "packets": self._record_packets}))
        if ctype == 23:
            out.append(plain)
            self.plain_packets.append(self._record_packets)
        elif ctype == 21 and len(plain) >= 2:
            if plain[1] != 0:                 # close_notify is not news
                self._alert(direction, plain)
        elif ctype == 22 and self.server_hello and self.server_hello.get("version") == "TLSv1.3":
            self.inner[direction] += plain
            buf = self.inner[direction]
            while len(buf) >= 4:
                mlen = int.from_bytes(buf[1:4], "big")
                if len(buf) < 4 + mlen:
                    break
                mtype, msg, buf = buf[0], buf[4:4 + mlen], buf[4 + mlen:]
                if mtype == 11 and direction == "s2c" and self.subject is None:
                    try:
                        self.subject = _subject13(msg)
                        self.events.append(("Certificate", {"subject": self.subject,
                                                            "packets": self._record_packets}))
                    except (ValueError, IndexError):
                        pass
                elif mtype == 20:
                    self.keys.to_application(direction)
            self.inner[direction] = buf

    def _start_keys(self) -> None:
        if not self.keylog or self.client_hello is None or self.server_hello is None:
            return
        from gponsim.capture.tlsdecrypt import DecryptError, Tls12Keys, Tls13Keys

        cr = self.client_hello.get("random")
        suite = self.server_hello.get("suite")
        try:
            if self.server_hello.get("version") == "TLSv1.3":
                self.keys = Tls13Keys(self.keylog, cr, suite)
            else:
                self.keys = Tls12Keys(self.keylog, cr, self.server_hello.get("random"), suite,
                                      version=self.server_hello.get("version", ""),
                                      encrypt_then_mac=self.server_hello.get("etm", False))
        except DecryptError as exc:
            self.events.append(("DecryptFailed", {"direction": "both", "reason": str(exc)}))

    def _handshake(self, direction: str, d: _Dir) -> None:
        while len(d.hs) >= 4:
            mtype = d.hs[0]
            mlen = int.from_bytes(d.hs[1:4], "big")
            if len(d.hs) < 4 + mlen:
                return
            msg, d.hs = d.hs[4:4 + mlen], d.hs[4 + mlen:]
            packets = d.hs_packets
            # What is left in hs came with the last record.
            d.hs_packets = self._record_packets[-1:] if d.hs else []
            try:
                if mtype == 1 and direction == "c2s":
                    self.client_hello = _client_hello(msg)
                    self.client_hello["packets"] = packets
                    self.events.append(("ClientHello", self.client_hello))
                elif mtype == 2 and direction == "s2c":
                    self.server_hello = _server_hello(msg)
                    self.server_hello["packets"] = packets
                    self.events.append(("ServerHello", self.server_hello))
                    self._start_keys()
                    if self.server_hello.get("version") == "TLSv1.3":
                        d.encrypted = True     # the rest of the server's flight is encrypted
                        d.hs = b""
                        return
                elif mtype == 11 and direction == "s2c":
                    self.subject = _subject(msg)
                    self.events.append(("Certificate", {"subject": self.subject, "packets": packets}))
                elif mtype == 14 and direction == "s2c":
                    self.events.append(("ServerHelloDone", {"packets": packets}))
            except (IndexError, struct.error, ValueError):
                self.events.append(("Malformed", {"message": mtype, "direction": direction,
                                                  "packets": packets}))


def _vec(data: bytes, at: int, size: int) -> tuple[bytes, int]:
    n = int.from_bytes(data[at:at + size], "big")
    end = at + size + n
    if end > len(data):
        raise ValueError("truncated vector")
    return data[at + size:end], end


def _extensions(data: bytes, at: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    if at + 2 > len(data):
        return out
    exts, _ = _vec(data, at, 2)
    i = 0
    while i + 4 <= len(exts):
        etype, elen = struct.unpack_from("!HH", exts, i)
        out[etype] = exts[i + 4:i + 4 + elen]
        i += 4 + elen
    return out


def _client_hello(msg: bytes) -> dict:
    legacy = struct.unpack_from("!H", msg)[0]
    at = 2 + 32
    _sid, at = _vec(msg, at, 1)
    suites_raw, at = _vec(msg, at, 2)
    _comp, at = _vec(msg, at, 1)
    ext = _extensions(msg, at)
    suites = [c for c in struct.unpack(f"!{len(suites_raw) // 2}H", suites_raw[:len(suites_raw) // 2 * 2])
              if not _grease(c)]
    info: dict = {"legacy_version": VERSIONS.get(legacy, f"0x{legacy:04X}"),
                  "ciphers": [cipher_name(c) for c in suites], "random": msg[2:34]}
    versions = [VERSIONS.get(legacy, f"0x{legacy:04X}")]
    if 43 in ext:
        raw, _ = _vec(ext[43], 0, 1)
        vs = [v for v in struct.unpack(f"!{len(raw) // 2}H", raw[:len(raw) // 2 * 2]) if not _grease(v)]
        versions = [VERSIONS.get(v, f"0x{v:04X}") for v in vs]
    info["versions"] = versions
    if 0 in ext:
        names, _ = _vec(ext[0], 0, 2)
        if names and names[0] == 0:
            host, _ = _vec(names, 1, 2)
            info["sni"] = host.decode("ascii", "replace")
    if 16 in ext:
        alpn, _ = _vec(ext[16], 0, 2)
        protos, i = [], 0
        while i < len(alpn):
            p, i = _vec(alpn, i, 1)
            protos.append(p.decode("ascii", "replace"))
        info["alpn"] = protos
    return info


def _server_hello(msg: bytes) -> dict:
    legacy = struct.unpack_from("!H", msg)[0]
    at = 2 + 32
    _sid, at = _vec(msg, at, 1)
    cipher = struct.unpack_from("!H", msg, at)[0]
    at += 3
    ext = _extensions(msg, at)
    version = legacy
    if 43 in ext and len(ext[43]) >= 2:
        version = struct.unpack_from("!H", ext[43])[0]
    info = {"version": VERSIONS.get(version, f"0x{version:04X}"), "cipher": cipher_name(cipher),
            "suite": cipher, "random": msg[2:34]}
    if 22 in ext:
        info["etm"] = True            # encrypt_then_mac (RFC 7366): CBC records MAC'd after
    return info


def _subject(msg: bytes) -> str | None:
    certs, _ = _vec(msg, 0, 3)
    if not certs:
        return None
    first, _ = _vec(certs, 0, 3)
    try:
        from cryptography import x509

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # odd serial numbers and the like: still read
            return x509.load_der_x509_certificate(first).subject.rfc4514_string()
    except Exception:  # noqa: BLE001 - an odd certificate is still a certificate
        return "(unreadable certificate)"


def _subject13(msg: bytes) -> str | None:
    """Subject of the first certificate of a TLS 1.3 Certificate message."""
    _ctx, at = _vec(msg, 0, 1)
    certs, _ = _vec(msg, at, 3)
    first, _ = _vec(certs, 0, 3)
    try:
        from cryptography import x509

        return x509.load_der_x509_certificate(first).subject.rfc4514_string()
    except Exception:  # noqa: BLE001
        return "(unreadable certificate)"
