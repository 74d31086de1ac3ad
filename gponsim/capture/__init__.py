"""Capture analysis: pcap/pcapng files → the same Steps the live lab narrates.

- :mod:`gponsim.capture.pcap`: streaming pcap/pcapng reader, link/IP/TCP headers;
- :mod:`gponsim.capture.tcp`: TCP reassembly (retransmissions, reordering, gaps);
- :mod:`gponsim.capture.decoders`: SMTP, IMAP, POP3 streams → Steps (the line
  grammar is gponsim.wire's, shared with the lab);
- :mod:`gponsim.capture.tls`, :mod:`gponsim.capture.tlsdecrypt`: handshake
  summary, and decryption with an NSS key log (TLS 1.2 and 1.3);
- :mod:`gponsim.capture.analyze`: all of it, plus the summary (``gponsim analyze``);
- :mod:`gponsim.capture.live`: capturing on a Linux interface (AF_PACKET).
"""

from __future__ import annotations

from pathlib import Path


def steps_from_capture(path: str | Path, keylog: str | Path | None = None) -> list:
    """Every Step decoded from a capture file, in wire order (for diagrams, lessons)."""
    from gponsim.capture.analyze import analyze
    from gponsim.sinks.memory import ListSink

    sink = ListSink()
    analyze(path, sink.step, keylog=keylog)
    return sink.steps
