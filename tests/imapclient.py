"""A tiny raw IMAP/POP3 line client for tests that need exact bytes (IDLE, bad input)."""

from __future__ import annotations

import socket
import ssl
import time


class Raw:
    def __init__(self, port: int, *, host: str = "127.0.0.1", source: str | None = None,
                 tls: bool = False, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        if tls:
            self.starttls()
        self.buf = b""
        self.timeout = timeout

    def starttls(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self, timeout: float | None = None) -> str:
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line; got {self.buf!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; got {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def until(self, prefix: str, timeout: float | None = None) -> list[str]:
        """Lines up to and including the first that starts with ``prefix``."""
        out = []
        while True:
            out.append(self.line(timeout))
            if out[-1].startswith(prefix):
                return out

    def cmd(self, tag: str, text: str) -> list[str]:
        self.send(f"{tag} {text}\r\n")
        return self.until(f"{tag} ")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
