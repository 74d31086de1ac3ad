"""TLS record decryption from an NSS key log (SSLKEYLOGFILE format).

TLS 1.3 (AES-GCM, ChaCha20-Poly1305) from the traffic secrets, and TLS 1.2
AEAD suites (AES-GCM, ChaCha20-Poly1305) from CLIENT_RANDOM master secrets.
The `cryptography` package does the AEAD and HMAC; the key schedule
(RFC 8446 §7.1 HKDF-Expand-Label, RFC 5246 §5 PRF) is written out here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path


class KeyLog:
    """Secrets by (label, client random)."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, bytes], bytes] = {}
        self.path: Path | None = None
        self._size = -1

    def add_lines(self, lines) -> int:
        n = 0
        for line in lines:
            parts = line.strip().split()
            if len(parts) != 3 or parts[0].startswith("#"):
                continue
            try:
                self.secrets[(parts[0], bytes.fromhex(parts[1]))] = bytes.fromhex(parts[2])
                n += 1
            except ValueError:
                continue
        return n

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyLog":
        log = cls()
        log.path = Path(path)
        log.reload()
        return log

    def reload(self) -> None:
        """Read the file again if it grew (a live lab appends a session at a time)."""
        if self.path is None:
            return
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size != self._size:
            self._size = size
            with open(self.path, encoding="ascii", errors="replace") as fh:
                self.add_lines(fh)

    def get(self, label: str, client_random: bytes) -> bytes | None:
        value = self.secrets.get((label, client_random))
        if value is None and self.path is not None:
            self.reload()
            value = self.secrets.get((label, client_random))
        return value

    def __len__(self) -> int:
        return len(self.secrets)

    def __bool__(self) -> bool:
        return bool(self.secrets) or self.path is not None


# cipher suite → (algorithm, key length, hash) for AEAD suites
TLS13 = {0x1301: ("aesgcm", 16, "sha256"), 0x1302: ("aesgcm", 32, "sha384"),
         0x1303: ("chacha", 32, "sha256")}
TLS12 = {0xC02F: ("aesgcm", 16, "sha256"), 0xC02B: ("aesgcm", 16, "sha256"),
         0x009C: ("aesgcm", 16, "sha256"), 0x009E: ("aesgcm", 16, "sha256"),
         0xC030: ("aesgcm", 32, "sha384"), 0xC02C: ("aesgcm", 32, "sha384"),
         0x009D: ("aesgcm", 32, "sha384"), 0x009F: ("aesgcm", 32, "sha384"),
         0xCCA8: ("chacha", 32, "sha256"), 0xCCA9: ("chacha", 32, "sha256"),
         0xCCAA: ("chacha", 32, "sha256")}


def _aead(alg: str, key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    return AESGCM(key) if alg == "aesgcm" else ChaCha20Poly1305(key)


def hkdf_expand_label(secret: bytes, label: str, context: bytes, length: int, hash_name: str) -> bytes:
    full = b"tls13 " + label.encode()
    info = struct.pack("!H", length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hash_name).digest()
        out += block
        i += 1
    return out[:length]


def prf12(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return out[:length]


class _Direction:
    __slots__ = ("aead", "iv", "seq", "explicit")

    def __init__(self, aead, iv: bytes, explicit: bool) -> None:
        self.aead = aead
        self.iv = iv
        self.seq = 0
        self.explicit = explicit


class DecryptError(Exception):
    pass


class Tls13Keys:
    """Handshake then application keys for each direction of a TLS 1.3 session."""

    def __init__(self, keylog: KeyLog, client_random: bytes, suite: int) -> None:
        if suite not in TLS13:
            raise DecryptError(f"cipher suite 0x{suite:04X} is not supported for decryption")
        self.alg, self.keylen, self.hash = TLS13[suite]
        self.keylog = keylog
        self.cr = client_random
        self.dirs: dict[str, _Direction | None] = {}
        for d, label in (("c2s", "CLIENT_HANDSHAKE_TRAFFIC_SECRET"),
                         ("s2c", "SERVER_HANDSHAKE_TRAFFIC_SECRET")):
            self.dirs[d] = self._keys(label)
        if self.dirs["c2s"] is None and self.dirs["s2c"] is None:
            # Only application secrets? Start there.
            self.to_application("c2s")
            self.to_application("s2c")
        if self.dirs["c2s"] is None and self.dirs["s2c"] is None:
            raise DecryptError("the key log has no secrets for this session")

    def _keys(self, label: str) -> _Direction | None:
        secret = self.keylog.get(label, self.cr)
        if secret is None:
            return None
        key = hkdf_expand_label(secret, "key", b"", self.keylen, self.hash)
        iv = hkdf_expand_label(secret, "iv", b"", 12, self.hash)
        return _Direction(_aead(self.alg, key), iv, False)

    def to_application(self, d: str) -> None:
        self.dirs[d] = self._keys("CLIENT_TRAFFIC_SECRET_0" if d == "c2s" else "SERVER_TRAFFIC_SECRET_0")

    def decrypt(self, d: str, header: bytes, body: bytes) -> tuple[int, bytes]:
        st = self.dirs.get(d)
        if st is None:
            raise DecryptError("no key for this direction")
        nonce = bytes(a ^ b for a, b in zip(st.iv, st.seq.to_bytes(12, "big")))
        try:
            plain = st.aead.decrypt(nonce, body, header)
        except Exception as exc:  # noqa: BLE001 - InvalidTag and friends
            raise DecryptError("record does not decrypt with the logged secrets") from exc
        st.seq += 1
        end = len(plain)
        while end > 0 and plain[end - 1] == 0:
            end -= 1
        if end == 0:
            raise DecryptError("empty inner plaintext")
        return plain[end - 1], plain[:end - 1]


class Tls12Keys:
    def __init__(self, keylog: KeyLog, client_random: bytes, server_random: bytes, suite: int) -> None:
        if suite not in TLS12:
            raise DecryptError(f"cipher suite 0x{suite:04X} is not supported for decryption "
                               "(only AEAD suites: AES-GCM, ChaCha20-Poly1305)")
        ms = keylog.get("CLIENT_RANDOM", client_random)
        if ms is None:
            raise DecryptError("the key log has no master secret for this session")
        alg, keylen, hash_name = TLS12[suite]
        ivlen = 4 if alg == "aesgcm" else 12
        block = prf12(ms, b"key expansion", server_random + client_random, 2 * (keylen + ivlen),
                      hash_name)
        ck, sk = block[:keylen], block[keylen:2 * keylen]
        civ, siv = block[2 * keylen:2 * keylen + ivlen], block[2 * keylen + ivlen:]
        self.alg = alg
        self.dirs = {"c2s": _Direction(_aead(alg, ck), civ, alg == "aesgcm"),
                     "s2c": _Direction(_aead(alg, sk), siv, alg == "aesgcm")}

    def decrypt(self, d: str, header: bytes, body: bytes) -> tuple[int, bytes]:
        st = self.dirs[d]
        seq = st.seq.to_bytes(8, "big")
        if st.explicit:
            nonce, body = st.iv + body[:8], body[8:]
        else:
            nonce = bytes(a ^ b for a, b in zip(st.iv, b"\0\0\0\0" + seq))
        aad = seq + header[:3] + struct.pack("!H", len(body) - 16)
        try:
            plain = st.aead.decrypt(nonce, body, aad)
        except Exception as exc:  # noqa: BLE001
            raise DecryptError("record does not decrypt with the logged master secret") from exc
        st.seq += 1
        return header[0], plain


_ = hashlib  # hashlib names the hashes hmac uses ("sha256", "sha384")
