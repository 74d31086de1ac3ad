"""Text for `gponsim analyze`: the summary, the credentials table, the messages (es + en)."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

from gponsim.capture.analyze import Analysis
from gponsim.capture.decoders import Message
from gponsim.commentary import catalog
from gponsim.sinks.escape import visible, visible_all
from gponsim.steps import MASK

_T = {
    "en": {
        "file": "Capture {path}: {format}, {packets} packets ({tcp} TCP), link type {links}",
        "conns": "{n} mail connection(s):",
        "none": "No mail traffic (SMTP, IMAP, POP3) found in this capture.",
        "mid": "starts mid-connection",
        "onedir": "one direction only",
        "client": "client",
        "software": "software",
        "server": "server",
        "lab_server": "{name}, the lab's software: explained with the lab's configuration",
        "other_server": "{name}, not the lab's software: explained by the RFCs",
        "anonymous_server": "it does not say which software it is: explained by the RFCs",
        "tls": "TLS",
        "notls": "no TLS: everything in clear",
        "tls_clear": "no TLS: the client started TLS ({how}, ClientHello) but the server answered "
                     "in clear; everything is in clear",
        "tls_client_only": "only the client's side of TLS is in the capture (no TLS record from "
                           "the server)",
        "gaps": "{n} gap(s)",
        "failures": "Failures:",
        "nofail": "No failures.",
        "problems": "Problems reading the file:",
        "creds": "Credentials seen ({n}):",
        "nocreds": "No credentials seen.",
        "clear": "in clear",
        "inside": "inside TLS",
        "ok": "ok",
        "failed": "failed",
        "creds_note": "Anyone who can capture this traffic reads these passwords: that is why "
                      "the lab's port 587 refuses AUTH before STARTTLS.",
        "msgs": "Messages ({n}):",
        "saved": "saved in {path}",
        "same": "the same message as {n} ({path}): not saved again",
        "steps": "{n} Steps decoded in {s:.2f} s.",
        "more": "  ... and {n} more connection(s) ({protos}); --json lists them all",
        "unread_tls": "{n} TLS connection(s) on ports that are not mail ports could not be read "
                      "(no keys for them): {where}. If they are mail (IMAPS, SMTPS, a lab on other "
                      "ports), give their keys with --keylog FILE, or capture to pcapng with the "
                      "keys inside (gponsim capture).",
    },
    "es": {
        "file": "Captura {path}: {format}, {packets} paquetes ({tcp} TCP), tipo de enlace {links}",
        "conns": "{n} conexión(es) de correo:",
        "none": "No hay tráfico de correo (SMTP, IMAP, POP3) en esta captura.",
        "mid": "empieza a mitad de conexión",
        "onedir": "solo un sentido",
        "client": "cliente",
        "software": "programa",
        "server": "servidor",
        "lab_server": "{name}, el programa del laboratorio: se explica con su configuración",
        "other_server": "{name}, no es el programa del laboratorio: se explica por los RFC",
        "anonymous_server": "no dice qué programa es: se explica por los RFC",
        "tls": "TLS",
        "notls": "sin TLS: todo en claro",
        "tls_clear": "sin TLS: el cliente empezó TLS ({how}, ClientHello) pero el servidor "
                     "respondió en claro; todo va en claro",
        "tls_client_only": "en la captura solo está la parte de TLS del cliente (ningún registro "
                           "TLS del servidor)",
        "gaps": "{n} hueco(s)",
        "failures": "Fallos:",
        "nofail": "Sin fallos.",
        "problems": "Problemas al leer el fichero:",
        "creds": "Credenciales vistas ({n}):",
        "nocreds": "No se ven credenciales.",
        "clear": "en claro",
        "inside": "dentro de TLS",
        "ok": "aceptada",
        "failed": "rechazada",
        "creds_note": "Cualquiera que pueda capturar este tráfico lee estas contraseñas: por eso "
                      "el puerto 587 del laboratorio rechaza AUTH antes de STARTTLS.",
        "msgs": "Mensajes ({n}):",
        "saved": "guardado en {path}",
        "same": "el mismo mensaje que el {n} ({path}): no se guarda otra vez",
        "steps": "{n} Steps decodificados en {s:.2f} s.",
        "more": "  ... y {n} conexión(es) más ({protos}); --json las lista todas",
        "unread_tls": "{n} conexión(es) TLS en puertos que no son de correo no se pudieron leer "
                      "(no hay claves para ellas): {where}. Si son correo (IMAPS, SMTPS, un "
                      "laboratorio en otros puertos), da sus claves con --keylog FICHERO, o captura "
                      "en pcapng con las claves dentro (gponsim capture).",
    },
}


def _printable(text: str, limit: int = 110) -> str:
    """A line fit for a summary: control and undecodable characters escaped (``\\x1b``), cut."""
    clean = visible_all(text)
    return clean if len(clean) <= limit else clean[:limit - 1] + "…"


def _tr(lang: str) -> dict:
    return _T.get(lang, _T["en"])


def summary_text(a: Analysis, lang: str = "en", explain: str = "first") -> str:
    """The summary; ``explain="none"`` leaves out the explanations of the failures."""
    t = _tr(lang)
    rep = a.report
    out = [t["file"].format(path=a.path, format=rep.format or "?", packets=rep.packets,
                            tcp=a.tcp_packets, links=", ".join(str(x) for x in sorted(rep.linktypes)) or "?")]
    if not a.connections:
        out.append(t["none"])
    else:
        out.append(t["conns"].format(n=a.connection_count))
    if a.unread_tls_count:
        where = ", ".join(a.unread_tls) + (" …" if a.unread_tls_count > len(a.unread_tls) else "")
        out.append(t["unread_tls"].format(n=a.unread_tls_count, where=where))
    shown = a.connections if len(a.connections) <= 30 else a.connections[:25]
    for c in shown:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.start)) if c.start else "?"
        flags = []
        if c.midstream:
            flags.append(t["mid"])
        if len(c.directions) == 1:
            flags.append(t["onedir"])
        if c.gaps:
            flags.append(t["gaps"].format(n=c.gaps))
        head = f"  {c.session}  {c.proto.upper():4} {c.endpoints}  {when} UTC"
        if flags:
            head += f"  ({', '.join(flags)})"
        out.append(head)
        who = []
        if c.client_name:
            who.append(f"{t['client']}: {visible_all(c.client_name)}")
        if c.software:
            who.append(f"{t['software']}: {visible_all('; '.join(c.software))}")
        server = c.server
        if server is not None:
            key = ("lab_server" if server.lab else "other_server" if server.name
                   else "anonymous_server")
            who.append(f"{t['server']}: {t[key].format(name=server.name)}")
        if who:
            out.append("      " + "  ".join(who))
        if c.tls.get("answered_in_clear"):
            out.append(f"      {t['tls_clear'].format(how=c.tls.get('how', 'TLS'))}")
        elif c.tls:
            parts = [c.tls.get("how", "TLS")]
            for name in ("version", "cipher"):
                if c.tls.get(name):
                    parts.append(str(c.tls[name]))
            if c.tls.get("sni"):
                parts.append(f"SNI {c.tls['sni']}")
            if c.tls.get("subject"):
                parts.append(f"cert {c.tls['subject']}")
            if c.tls.get("server_tls") is False:
                parts.append(t["tls_client_only"])
            out.append(f"      {t['tls']}: " + visible_all(", ".join(parts)))
        else:
            out.append(f"      {t['notls']}")
    if len(shown) < a.connection_count:
        protos = {c.proto.upper() for c in a.connections} | {p.upper() for p in a.more_connections}
        out.append(t["more"].format(n=a.connection_count - len(shown), protos=", ".join(sorted(protos))))
    if a.failures:
        out.append(t["failures"])
        cat = catalog()
        shown = set()
        for step in a.failures[:20]:
            first = _printable(step.shown_line().split("\n")[-1])
            out.append(f"  {step.session}  {_printable(step.verb or '?', 20)} → {first}")
            entry = cat.resolve(step)
            if entry is not None and entry.key not in shown and explain != "none":
                shown.add(entry.key)
                out.append("      ↳ " + visible(entry.render(lang, step)))
        if len(a.failures) > 20:
            out.append(f"  ... (+{len(a.failures) - 20})")
    elif a.connections:
        out.append(t["nofail"])
    if rep.problems:
        out.append(t["problems"])
        out.extend(f"  {p}" for p in rep.problems_in(lang))
    return "\n".join(out)


def credentials_text(a: Analysis, lang: str = "en", reveal: bool = True) -> str:
    t = _tr(lang)
    if not a.credentials:
        return t["nocreds"]
    rows = [(c.session, c.proto.upper(), c.mechanism, c.user, c.password if reveal else MASK,
             t["inside"] if c.inside_tls else t["clear"], t.get(c.result, c.result))
            for c in a.credentials]
    rows = [tuple(visible_all(str(v)) for v in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    out = [t["creds"].format(n=len(rows))]
    for r in rows:
        out.append("  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    if any(not c.inside_tls for c in a.credentials):
        out.append("  " + t["creds_note"])
    return "\n".join(out)


def messages_text(a: Analysis, lang: str = "en", saved: list[Path] | None = None) -> str:
    t = _tr(lang)
    out = [t["msgs"].format(n=len(a.messages) + a.more_messages)]
    for i, m in enumerate(a.messages):
        line = (f"  {i + 1}. [{m['proto']} {m['verb']}] {m.get('size', 0)} bytes  "
                f"From: {m.get('from', '-')}  To: {m.get('to', '-')}  Subject: {m.get('subject', '-')}")
        if m.get("attachments"):
            line += "  [" + ", ".join(m["attachments"]) + "]"
        if m.get("incomplete"):
            line += "  (incomplete)"
        out.append(visible_all(line))
        if saved and i < len(saved):
            path, first = saved[i]
            if first == i:
                out.append("     " + t["saved"].format(path=path))
            else:
                out.append("     " + t["same"].format(n=first + 1, path=path))
    return "\n".join(out)


class Extractor:
    """Saves each message as DIR/NNN-session-subject.eml, each distinct message once.

    The same bytes seen again (a message fetched twice over IMAP, or read by
    POP3 and IMAP) are not written again: ``saved[i]`` is ``(path, first)``,
    the file and the index of the transfer that first carried the message.
    A message as sent (SMTP DATA) and as delivered (with the server's
    Received: line) are different bytes, and both are kept.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.saved: list[tuple[Path, int]] = []
        self.files: list[Path] = []
        self._seen: dict[bytes, tuple[Path, int]] = {}

    def __call__(self, message: Message) -> None:
        digest = hashlib.sha256(message.data).digest()
        known = self._seen.get(digest)
        if known is not None:
            self.saved.append(known)
            return
        subject = message.meta.get("subject") or "message"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", subject)[:40].strip("_") or "message"
        path = self.folder / f"{len(self.files) + 1:03d}-{message.session}-{message.verb.lower()}-{slug}.eml"
        path.write_bytes(message.data)
        self.files.append(path)
        self._seen[digest] = (path, len(self.saved))
        self.saved.append((path, len(self.saved)))
