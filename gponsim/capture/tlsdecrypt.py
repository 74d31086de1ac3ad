"""TLS record decryption from an NSS key log (SSLKEYLOGFILE format).

TLS 1.3 (AES-GCM, ChaCha20-Poly1305) from the traffic secrets, and TLS 1.2
from CLIENT_RANDOM master secrets: AEAD suites (AES-GCM, ChaCha20-Poly1305)
and CBC suites (AES-CBC with HMAC-SHA1/SHA256/SHA384, the record's explicit
IV, MAC-then-encrypt, or encrypt-then-MAC when RFC 7366's extension was
negotiated). The `cryptography` package does the ciphers; the key schedule
(RFC 8446 §7.1 HKDF-Expand-Label, RFC 5246 §5 PRF and §6.3 key block) and
the record checks (RFC 5246 §6.2.3.2 padding and MAC) are written out here.
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


# TLS 1.2 CBC suites → (AES key length, MAC hash, PRF hash)
TLS12_CBC = {
    0x002F: (16, "sha1", "sha256"), 0x0035: (32, "sha1", "sha256"),      # RSA
    0x0033: (16, "sha1", "sha256"), 0x0039: (32, "sha1", "sha256"),      # DHE-RSA
    0xC009: (16, "sha1", "sha256"), 0xC00A: (32, "sha1", "sha256"),      # ECDHE-ECDSA
    0xC013: (16, "sha1", "sha256"), 0xC014: (32, "sha1", "sha256"),      # ECDHE-RSA
    0x003C: (16, "sha256", "sha256"), 0x003D: (32, "sha256", "sha256"),  # RSA SHA256
    0x0067: (16, "sha256", "sha256"), 0x006B: (32, "sha256", "sha256"),  # DHE-RSA SHA256
    0xC023: (16, "sha256", "sha256"), 0xC024: (32, "sha384", "sha384"),  # ECDHE-ECDSA
    0xC027: (16, "sha256", "sha256"), 0xC028: (32, "sha384", "sha384"),  # ECDHE-RSA
}


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
    """Both directions of a TLS 1.2 session, from its master secret."""

    def __init__(self, keylog: KeyLog, client_random: bytes, server_random: bytes, suite: int,
                 *, version: str = "TLSv1.2", encrypt_then_mac: bool = False) -> None:
        if suite not in TLS12 and suite not in TLS12_CBC:
            raise DecryptError(f"cipher suite 0x{suite:04X} is not supported for decryption "
                               "(AES-GCM, ChaCha20-Poly1305 and AES-CBC with HMAC-SHA1/SHA2)")
        if suite in TLS12_CBC and version != "TLSv1.2":
            raise DecryptError(f"{version} with a CBC suite is not supported for decryption "
                               "(TLS 1.2 only)")
        ms = keylog.get("CLIENT_RANDOM", client_random)
        if ms is None:
            raise DecryptError("the key log has no master secret for this session")
        seed = server_random + client_random
        if suite in TLS12_CBC:
            keylen, mac_hash, prf_hash = TLS12_CBC[suite]
            maclen = hashlib.new(mac_hash).digest_size
            block = prf12(ms, b"key expansion", seed, 2 * (maclen + keylen), prf_hash)
            cmac, smac = block[:maclen], block[maclen:2 * maclen]
            ck, sk = block[2 * maclen:2 * maclen + keylen], block[2 * maclen + keylen:]
            self.alg = "cbc"
            self.dirs = {"c2s": _CbcDirection(ck, cmac, mac_hash, encrypt_then_mac),
                         "s2c": _CbcDirection(sk, smac, mac_hash, encrypt_then_mac)}
            return
        alg, keylen, hash_name = TLS12[suite]
        ivlen = 4 if alg == "aesgcm" else 12
        block = prf12(ms, b"key expansion", seed, 2 * (keylen + ivlen), hash_name)
        ck, sk = block[:keylen], block[keylen:2 * keylen]
        civ, siv = block[2 * keylen:2 * keylen + ivlen], block[2 * keylen + ivlen:]
        self.alg = alg
        self.dirs = {"c2s": _Direction(_aead(alg, ck), civ, alg == "aesgcm"),
                     "s2c": _Direction(_aead(alg, sk), siv, alg == "aesgcm")}

    def decrypt(self, d: str, header: bytes, body: bytes) -> tuple[int, bytes]:
        st = self.dirs[d]
        if self.alg == "cbc":
            return header[0], st.decrypt(header, body)
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


class _CbcDirection:
    """One direction of an AES-CBC + HMAC TLS 1.2 session (RFC 5246 §6.2.3.2, RFC 7366)."""

    __slots__ = ("key", "mac_key", "mac_hash", "maclen", "etm", "seq")

    def __init__(self, key: bytes, mac_key: bytes, mac_hash: str, etm: bool) -> None:
        self.key = key
        self.mac_key = mac_key
        self.mac_hash = mac_hash
        self.maclen = hashlib.new(mac_hash).digest_size
        self.etm = etm
        self.seq = 0

    def _mac(self, header: bytes, content: bytes) -> bytes:
        data = self.seq.to_bytes(8, "big") + header[:3] + struct.pack("!H", len(content)) + content
        return hmac.new(self.mac_key, data, self.mac_hash).digest()

    def decrypt(self, header: bytes, body: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        maclen = self.maclen
        if self.etm:                                  # IV + ciphertext, then the MAC of both
            body, tag = body[:-maclen], body[-maclen:]
            if len(tag) != maclen or not hmac.compare_digest(tag, self._mac(header, body)):
                raise DecryptError("record MAC (encrypt-then-MAC) does not match the logged "
                                   "master secret")
        if len(body) < 32 or len(body) % 16:
            raise DecryptError(f"a CBC record of {len(body)} bytes is not whole blocks")
        iv, ct = body[:16], body[16:]
        dec = Cipher(algorithms.AES(self.key), modes.CBC(iv)).decryptor()
        plain = dec.update(ct) + dec.finalize()
        pad = plain[-1]
        end = len(plain) - pad - 1
        if end < (0 if self.etm else maclen) or plain[end:-1] != bytes([pad]) * pad:
            raise DecryptError("record padding is wrong: not the logged master secret")
        if self.etm:
            content = plain[:end]
        else:
            content, tag = plain[:end - maclen], plain[end - maclen:end]
            if not hmac.compare_digest(tag, self._mac(header, content)):
                raise DecryptError("record MAC does not match the logged master secret")
        self.seq += 1
        return content


_ = hashlib  # hashlib names the hashes hmac uses ("sha256", "sha384")
