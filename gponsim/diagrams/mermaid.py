"""Mermaid text, in the lab document's own style (``sequenceDiagram``, ``graph TB``)."""

from __future__ import annotations

from gponsim.diagrams.sequence import Page, participant_labels

#: Aliases as the lab document writes them (``participant SMTPD as Postfix SMTPD``).
ALIASES = {"client": "User", "internet": "Ext", "smtpd": "SMTPD", "auth": "SASL",
           "cleanup": "Cleanup", "qmgr": "Queue", "local": "Local", "lmtp": "LMTP",
           "dovecot-lmtp": "DovecotLMTP", "mailbox": "Mailbox",
           "smtp": "SMTP", "relay": "Gmail", "imap": "IMAP", "pop3": "POP3",
           "resolver": "Resolver", "dns": "DNS"}


def _text(label: str) -> str:
    # Mermaid message text ends at a newline; ';' and '#' have meanings there.
    return label.replace(";", ",").replace("#", "＃").replace("\n", " ")


def sequence_mermaid(page: Page, lang: str = "en") -> str:
    lines = ["sequenceDiagram"]
    names = participant_labels(page, lang)
    alias = {p: ALIASES.get(p) or p.replace("-", "_") for p in page.participants}   # peer-c001: a capture's
    for p in page.participants:
        lines.append(f"    participant {alias[p]} as {_text(names[p])}")
    lines.append("    ")
    in_tls = False
    for row in page.rows:
        if row.tls and not in_tls:
            lines.append("    rect rgb(225, 236, 252)")
            in_tls = True
        elif not row.tls and in_tls:
            lines.append("    end")
            in_tls = False
        label = row.label + (f" (×{row.repeat})" if row.repeat > 1 else "")
        indent = "        " if in_tls else "    "
        if row.is_note or row.src == row.dst:      # a log line, on the lifeline that wrote it
            lines.append(f"{indent}Note over {alias[row.src]}: {_text(label)}")
            continue
        arrow = "-x" if row.failed else ("-->>" if row.kind in ("reply", "ack") else "->>")
        lines.append(f"{indent}{alias[row.src]}{arrow}{alias[row.dst]}: {_text(label)}")
        if row.note:
            lines.append(f"{indent}Note over {alias[row.dst]}: {_text(row.note)[:200]}")
    if in_tls:
        lines.append("    end")
    return "\n".join(lines) + "\n"
