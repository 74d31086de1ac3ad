"""The capture analyzer's own event lines, as a lesson's packet panel shows them (es/en).

A capture's Steps carry some lines written by gponsim, not by a client or a
server (``ClientHello: offers …``, ``[TLS decrypted with the key log: …]``,
``connection …``, ``[gap: …]``): they are in English. :func:`capture_line`
gives them in the lesson's language; the message summary reuses the live
narration's wording (:func:`gponsim.sinks.phrases.localize`).

(The capture narrator may grow the same rendering: then this module can go.)
"""

from __future__ import annotations

import re

from gponsim.sinks.phrases import localize

#: (pattern, Spanish) for the analyzer's English lines.
SPANISH = [
    (re.compile(r"^ClientHello: offers (.*), (\d+) cipher suites?(.*)$"),
     lambda m: f"ClientHello: ofrece {m[1]}, {m[2]} conjuntos de cifrado{m[3]}"),
    (re.compile(r"^ServerHello: (\S+) with (\S+)(, encrypt-then-MAC)?$"),
     lambda m: f"ServerHello: {m[1]} con {m[2]}{m[3] or ''}"),
    (re.compile(r"^\[TLS decrypted with the key log: what follows was encrypted on the wire\]$"),
     lambda m: "[TLS descifrado con el registro de claves: lo que sigue iba cifrado en la red]"),
    (re.compile(r"^\[TLS not decrypted: (.*)\]$"),
     lambda m: f"[TLS sin descifrar: {m[1]}]"),
    (re.compile(r"^\[gap: (\d+) bytes of this direction are missing from the capture; "
                r"decoding resumes after them\]$"),
     lambda m: f"[hueco: faltan en la captura {m[1]} bytes en este sentido; se sigue descodificando tras ellos]"),
    (re.compile(r"^connection (.*) \(packet (\d+); SYN seen\)$"),
     lambda m: f"conexión {m[1]} (paquete {m[2]}; con su SYN)"),
    (re.compile(r"^connection (.*) \(packet (\d+); the capture starts in the middle of this connection\)$"),
     lambda m: f"conexión {m[1]} (paquete {m[2]}; la captura empieza a mitad de la conexión)"),
]


def capture_line(step, lang: str, reveal: bool = False) -> str:
    """``step``'s line (``shown_line``) with gponsim's own words in ``lang``."""
    line = localize(step.shown_line(reveal), lang)
    if lang != "es":
        return line
    first, _, rest = line.partition("\n")
    for pattern, spanish in SPANISH:
        found = pattern.match(first)
        if found:
            first = spanish(found)
            break
    return first + ("\n" + rest if rest else "")
