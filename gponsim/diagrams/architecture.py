"""The lab document's architecture graph, labelled with what was observed.

Without Steps it is the documented architecture. With Steps, each edge also
says what crossed it (sessions or messages, ports, TLS or in clear), and the
components and edges nobody used are drawn faded.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from gponsim.diagrams.dot import FONT, q
from gponsim.diagrams.labels import caption, component_name, edge_name
from gponsim.diagrams.parties import parties
from gponsim.diagrams.sequence import CLIENT_SERVICES, services
from gponsim.steps import Step

INSIDE = ("Client", "Postfix", "Dovecot", "Queue", "Mailbox", "SASL")
OUTSIDE = ("Gmail", "Internet")
SHAPES = {"Queue": "cylinder", "Mailbox": "cylinder"}
STANDARD_PORTS = {"smtp": 25, "client-smtp": 25, "submission": 587, "smtps": 465, "submissions": 465}

#: The lab document's edges, in its order: (name, from, to).
EDGES = (
    ("submit", "Client", "Postfix"), ("read", "Client", "Dovecot"),
    ("authenticate", "Postfix", "SASL"), ("verify", "SASL", "Dovecot"),
    ("enqueue", "Postfix", "Queue"), ("relay", "Queue", "Gmail"),
    ("forward", "Gmail", "Internet"), ("receive", "Internet", "Postfix"),
    ("store", "Postfix", "Mailbox"), ("access", "Dovecot", "Mailbox"),
)


@dataclass
class Observed:
    count: int = 0
    unit: str = "sessions"
    ports: set = field(default_factory=set)
    tls: set = field(default_factory=set)     # True / False seen
    auth: bool = False                        # a client authenticated (captured conversations)


def observe(steps: Iterable[Step]) -> dict[str, Observed]:
    """What the Steps show on each edge of the architecture (a capture's conversations
    with servers that are not the lab's software: see :func:`observe_captured`)."""
    steps = list(steps)
    obs: dict[str, Observed] = defaultdict(Observed)
    service = services(steps)
    foreign = {session for session, party in parties(steps).items() if party.foreign}
    port: dict[str, str] = {}
    tls_sessions: set[str] = set()
    session_edge: dict[str, str] = {}
    for s in steps:
        if s.session in foreign:
            continue
        if s.tls or s.proto == "tls":      # a capture without keys still shows the handshake
            tls_sessions.add(s.session)
        if s.kind == "event" and s.verb == "CONNECT" and s.proto == "smtp" and s.session in service:
            nominal = STANDARD_PORTS.get(service[s.session])
            actual = s.meta.get("port") or (s.meta.get("server") or [None, None])[1]
            if nominal or actual:
                # The standard port students know; the real one too when it differs
                # (--port-offset, tests on free ports).
                port[s.session] = f"{nominal} (:{actual})" if nominal and actual and actual != nominal \
                    else str(nominal or actual)
            edge = "submit" if service[s.session] in CLIENT_SERVICES else "receive"
            session_edge[s.session] = edge
        elif s.proto in ("imap", "pop3") and s.src == "client" and s.session not in session_edge:
            session_edge[s.session] = "read"
        elif s.proto == "sasl" and s.src == "smtpd" and s.verb == "AUTH":
            obs["authenticate"].count += 1
            obs["authenticate"].unit = "requests"
        elif s.proto == "sasl" and s.src == "auth" and s.status in ("OK", "FAIL"):
            obs["verify"].count += 1
            obs["verify"].unit = "requests"
        elif s.verb == "QUEUED":
            obs["enqueue"].count += 1
            obs["enqueue"].unit = "messages"
        elif s.verb == "DELIVERED" and s.dst == "mailbox":
            obs["store"].count += 1
            obs["store"].unit = "messages"
        elif s.src == "smtp" and s.dst == "relay" and s.kind == "command" and s.verb == "EHLO":
            obs["relay"].count += 1
        elif s.src == "relay" and s.dst == "internet":
            obs["forward"].count += 1
            obs["forward"].unit = "messages"
        elif s.proto in ("imap", "pop3") and s.src in ("imap", "pop3") and s.dst == "mailbox":
            obs["access"].count += 1
    for sess, edge in session_edge.items():
        o = obs[edge]
        o.count += 1
        o.tls.add(sess in tls_sessions)
        if sess in port:
            o.ports.add(port[sess])
    if obs["read"].count and not obs["access"].count:
        obs["access"].count = obs["read"].count
    return dict(obs)


def observe_captured(steps: Iterable[Step], lang: str = "en") -> dict[tuple[str, str], Observed]:
    """A capture's conversations with servers that are not the lab's software, by
    (client, server) as :mod:`.parties` names them: they are not drawn on the lab."""
    steps = list(steps)
    found = {session: party for session, party in parties(steps).items() if party.foreign}
    tls = {s.session for s in steps if s.session in found and (s.tls or s.proto == "tls")}
    obs: dict[tuple[str, str], Observed] = {}
    for session, party in found.items():
        o = obs.setdefault((party.client_label(lang), party.server_label(lang)), Observed())
        o.count += 1
        o.tls.add(session in tls)
        o.auth = o.auth or party.auth
        o.ports.add(f"{party.proto.upper()} {party.port}" if party.port else party.proto.upper())
    return obs


def _observed_label(o: Observed, lang: str) -> str:
    unit = {"sessions": "sessions", "messages": "messages"}.get(o.unit)
    text = caption(unit, lang, n=o.count) if unit else f"{o.count}×"
    if o.ports:
        text += " · " + ", ".join(sorted(o.ports))
    if o.auth:
        text += " · " + caption("auth", lang)
    if o.tls:
        words = []
        if True in o.tls:
            words.append(caption("tls", lang))
        if False in o.tls:
            words.append(caption("cleartext", lang))
        text += " · " + "+".join(words)
    return text


def architecture_dot(steps: Iterable[Step] | None = None, lang: str = "en",
                     highlight: set[str] | None = None) -> str:
    """DOT for the architecture; ``highlight`` names edges to draw bold (a lesson's path)."""
    obs = observe(steps) if steps is not None else None
    used_nodes = set()
    if obs is not None:
        for name, a, b in EDGES:
            if obs.get(name, Observed()).count:
                used_nodes |= {a, b}
    out = ["digraph architecture {",
           f'  graph [rankdir=TB, fontname="{FONT}", fontsize=14, compound=true, nodesep=0.7, ranksep=0.8];',
           f'  node [fontname="{FONT}", fontsize=12, shape=box, style="rounded,filled", fillcolor="#eef3fb"];',
           f'  edge [fontname="{FONT}", fontsize=10];']

    def node(name: str) -> str:
        faded = obs is not None and name not in used_nodes
        shape = SHAPES.get(name, "box")
        style = "filled" if shape == "cylinder" else "rounded,filled"
        color = ', color="#bdbdbd", fontcolor="#9e9e9e", fillcolor="#f5f5f5"' if faded else ""
        return f'    "{name}" [label={q(component_name(name, lang))}, shape={shape}, style="{style}"{color}];'

    out.append('  subgraph cluster_server {')
    out.append(f'    label={q(caption("server", lang))}; style="rounded"; color="#5c6bc0";')
    out += [node(n) for n in INSIDE]
    out.append("  }")
    out.append('  subgraph cluster_external {')
    out.append(f'    label={q(caption("external", lang))}; style="rounded,dashed"; color="#8d6e63";')
    out += [node(n) for n in OUTSIDE]
    out.append("  }")
    captured = observe_captured(steps, lang) if steps is not None else {}
    if captured:
        # Servers of the capture that are not the lab: beside it, named as the capture shows.
        out.append('  subgraph cluster_captured {')
        out.append(f'    label={q(caption("captured", lang))}; style="rounded,dashed"; color="#2e7d32";')
        ids: dict[str, str] = {}
        for pair in captured:
            for label in pair:
                if label not in ids:
                    ids[label] = f"captured{len(ids) + 1}"
                    out.append(f'    "{ids[label]}" [label={q(label)}, fillcolor="#edf7ed"];')
        out.append("  }")
    for name, a, b in EDGES:
        label = edge_name(name, lang)
        attrs = []
        if obs is not None:
            o = obs.get(name)
            if o and o.count:
                label += "\n" + _observed_label(o, lang)
                attrs.append('color="#1f5fbf", fontcolor="#1f5fbf", penwidth=2')
            else:
                attrs.append('color="#bdbdbd", fontcolor="#9e9e9e", style=dashed')
        if highlight and name in highlight:
            attrs.append("penwidth=3")
        attrs.insert(0, f"label={q(label)}")
        out.append(f'  "{a}" -> "{b}" [{", ".join(attrs)}];')
    for (client, server), o in captured.items():
        out.append(f'  "{ids[client]}" -> "{ids[server]}" [label={q(_observed_label(o, lang))}, '
                   f'color="#2e7d32", fontcolor="#2e7d32", penwidth=2];')
    out.append("}")
    return "\n".join(out) + "\n"


def architecture_mermaid(lang: str = "en") -> str:
    """The documented architecture in the lab document's Mermaid form."""
    lines = ["graph TB", f'    subgraph "{caption("server", lang)}"']
    for n in INSIDE:
        label = component_name(n, lang).replace("\n", "<br>")
        lines.append(f"        {n}[({label})]" if n in SHAPES else f"        {n}[{label}]")
    lines.append("    end")
    lines.append("    ")
    lines.append(f'    subgraph "{caption("external", lang)}"')
    for n in OUTSIDE:
        lines.append(f"        {n}[{component_name(n, lang).replace(chr(10), '<br>')}]")
    lines.append("    end")
    lines.append("    ")
    for name, a, b in EDGES:
        lines.append(f"    {a} -->|{edge_name(name, lang).replace(chr(10), '<br>')}| {b}")
    return "\n".join(lines) + "\n"
