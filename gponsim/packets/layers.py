"""One packet, layer by layer (``gponsim analyze FILE --packet N --layers``).

Like Packet Tracer's PDU view: every layer Scapy dissects (Ethernet, VLAN,
IPv4/IPv6, TCP; TLS records with ``scapy.layers.tls``), each field with its
value as Scapy's ``show()`` prints it and what it means (``fields.toml``),
then what the mail protocol says in it (the Steps it carries, decrypted when
the keys are known) and the frame in hex with every byte marked by its layer.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources

from gponsim.capture.tls import looks_like_tls
from gponsim.packets import dissect
from gponsim.sinks.escape import visible

LETTERS = {"Ether": "E", "CookedLinux": "E", "CookedLinuxV2": "E", "Loopback": "E", "Dot1Q": "V",
           "IP": "I", "IPv6": "I", "TCP": "T", "TLS": "S", "Application": "A", "Padding": "p"}


@lru_cache(maxsize=1)
def _fields() -> dict:
    return tomllib.loads(resources.files("gponsim.packets").joinpath("fields.toml").read_text("utf-8"))


def _explain(layer: str, field: str | None, lang: str, values: dict) -> str:
    entry = _fields().get(layer, {})
    text = entry.get(lang, "") if field is None else entry.get("fields", {}).get(field, {}).get(lang, "")
    try:
        return text.format(**values)
    except (KeyError, ValueError, IndexError):
        return text


def scapy_fields(layer, packets: bool = True) -> list[tuple[str, str]]:
    """The fields of one Scapy layer as its ``show()`` prints them: (name, value). A field
    that holds packets (IP options, a TLS record's messages), which show() opens as
    layers of their own, is named with the packets it holds (left out with ``packets=False``)."""
    from scapy.fields import ConditionalField

    out = []
    for f in layer.fields_desc:
        if isinstance(f, ConditionalField) and not f._evalcond(layer):
            continue
        value = layer.getfieldval(f.name)
        if getattr(f, "islist", False) and getattr(f, "holds_packets", False) or \
                isinstance(value, list) and value and hasattr(value[0], "fields_desc"):
            if not packets:
                continue
            text = ", ".join(v.name for v in value) if isinstance(value, list) else str(value)
        else:
            text = f.i2repr(layer, value)
        out.append((f.name, str(text)))
    return out


def layer_view(row, facts, *, lang: str = "en", reveal: bool = False) -> dict:
    """A dict: the packet's layers (name, OSI layer, byte range, explanation, fields) and
    its bytes in hex with each byte's layer."""
    s = dissect.scapy()
    pkt = row.pkt
    frame = bytes(pkt.original) if getattr(pkt, "original", None) else bytes(pkt)
    values = {"seq_rel": row.seq, "ack_rel": row.ack, "window_scaled": row.scaled}
    layers: list[dict] = []
    marks = [""] * len(frame)
    layer = pkt
    while layer is not None and layer.__class__.__name__ != "NoPayload":
        cls = layer.__class__.__name__
        whole = len(bytes(layer))
        start = len(frame) - whole
        if row.tcp and isinstance(layer, (s.Raw,)) and isinstance(layer.underlayer, s.TCP):
            length = row.length
            before = len(layers)
            _payload(row, facts, frame[start:start + length], start, layers, lang, reveal)
            for added in layers[before:]:
                for i in range(added["start"], min(added["end"], len(frame))):
                    marks[i] = added["letter"]
            layer = layer.payload
            if isinstance(layer, s.Padding):
                continue
            break
        end = start + whole - len(bytes(layer.payload))
        name = layer.name
        layers.append({"layer": cls, "name": name, "osi": _fields().get(cls, {}).get("osi"),
                       "start": start, "end": end, "letter": LETTERS.get(cls, "?"),
                       "explain": _explain(cls, None, lang, values),
                       "fields": [{"name": n, "value": v, "explain": _explain(cls, n, lang, values)}
                                  for n, v in scapy_fields(layer)]})
        for i in range(start, end):
            marks[i] = LETTERS.get(cls, "?")
        layer = layer.payload
    return {"number": row.number, "summary": pkt.summary(), "length": len(frame),
            "endpoints": row.endpoints if row.tcp else "", "layers": layers,
            "hex": frame.hex(), "marks": "".join(m or "?" for m in marks)}


def _payload(row, facts, data: bytes, start: int, layers: list, lang: str, reveal: bool) -> None:
    """The TCP payload: TLS records (Scapy's TLS layer), or the mail protocol's lines."""
    if data and (row.records or (row.conn is not None and row.conn.tls)) and looks_like_tls(data):
        record = dissect.tls()
        at = 0
        while at + 5 <= len(data) and looks_like_tls(data[at:]):
            size = 5 + int.from_bytes(data[at + 3:at + 5], "big")
            try:
                tls = record.TLS(data[at:at + size])
            except Exception:  # noqa: BLE001 - a record Scapy cannot read is shown raw
                break
            complete = at + size <= len(data)
            layers.append({"layer": "TLS", "name": tls.name, "osi": _fields()["TLS"]["osi"],
                           "start": start + at, "end": start + min(at + size, len(data)), "letter": "S",
                           "explain": _explain("TLS", None, lang, {}),
                           "complete": complete,
                           "show": tls.show(dump=True).rstrip("\n").split("\n"),
                           "fields": [{"name": n, "value": v, "explain": _explain("TLS", n, lang, {})}
                                      for n, v in scapy_fields(tls)]})
            at += size
        if at >= len(data) or not row.steps:
            _steps(row, layers, lang, reveal, start + at, start + len(data))
            return
    _steps(row, layers, lang, reveal, start, start + len(data))


def _steps(row, layers: list, lang: str, reveal: bool, start: int, end: int) -> None:
    lines = []
    for step, part, total in row.steps:
        if step.kind == "event":
            continue
        lines.append({"dir": step.dir, "proto": step.proto, "tls": step.tls, "part": part, "parts": total,
                      "line": step.shown_line(reveal)})
    if not lines and start >= end:
        return
    proto = (row.conn.proto.upper() if row.conn is not None else "")
    layers.append({"layer": "Application", "name": proto or "data", "osi": 7,
                   "start": start, "end": end, "letter": "A",
                   "explain": _explain("Application", None, lang, {}), "fields": [], "steps": lines})


def render_layers(view: dict, write, *, lang: str = "en", color: bool = False) -> None:
    import textwrap

    def out(text=""):
        write(text + "\n")

    out(f"{'Paquete' if lang == 'es' else 'Packet'} {view['number']}: {view['summary']} "
        f"({view['length']} bytes)")
    for layer in view["layers"]:
        osi = f" · OSI {layer['osi']}" if layer.get("osi") else ""
        rng = f"{layer['start']}–{layer['end'] - 1}" if layer["end"] > layer["start"] else "—"
        out("")
        out(f"━━ [{layer['letter']}] {layer['name']}{osi} · bytes {rng} " + "━" * 20)
        for line in textwrap.wrap(layer["explain"], 96):
            out(f"   {line}")
        for f in ([] if layer.get("show") else layer["fields"]):
            note = f"  — {f['explain']}" if f["explain"] else ""
            out(f"   {f['name']:<12}= {f['value']}{note}")
        if layer.get("show"):
            for line in layer["show"]:
                out(f"   │ {line}")
            if not layer.get("complete", True):
                out("   │ " + ("(el registro sigue en el paquete siguiente)" if lang == "es" else
                              "(the record goes on in the next packet)"))
        for s in layer.get("steps", []):
            arrow = "→" if s["dir"] == "c2s" else "←"
            lock = ("🔒 " + ("descifrado: " if lang == "es" else "decrypted: ")) if s["tls"] else ""
            part = f"  [{s['part']}/{s['parts']}]" if s["parts"] > 1 else ""
            for i, line in enumerate(visible(s["line"]).split("\n")):
                out(f"   {arrow if i == 0 else ' '} {lock if i == 0 else ''}{line}{part if i == 0 else ''}")
    out("")
    out("━━ hex " + "━" * 40)
    data = bytes.fromhex(view["hex"])
    marks = view["marks"]
    for at in range(0, len(data), 16):
        chunk = data[at:at + 16]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out(f"{at:04x}  {hexpart:<47}  {text}")
        out(f"      {'  '.join(marks[at:at + 16])}")
    legend = sorted({(layer["letter"], layer["name"]) for layer in view["layers"]}, key=lambda x: "EVITSAp?".find(x[0]))
    out("      " + " · ".join(f"{letter} {name}" for letter, name in legend))
