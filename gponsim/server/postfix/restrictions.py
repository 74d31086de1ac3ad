"""Postfix's access restrictions as evaluated at RCPT TO (smtpd_check.c).

With ``smtpd_delay_reject = yes`` (the default) client, HELO and sender
restrictions are evaluated when the client sends RCPT TO, then
``smtpd_relay_restrictions``, then ``smtpd_recipient_restrictions``, and
last the implicit ``reject_unlisted_recipient``. Each list is read left to
right; the first ``permit*`` ends that list successfully, the first
``reject*``/``defer*`` that matches ends the whole evaluation with a reply.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from gponsim.server.postfix.address import resolve_local


@dataclass(slots=True)
class RcptContext:
    client_ip: str
    client_name: str
    sasl_username: str | None
    recipient: str                     # as given, without <>
    recipient_domain: str              # lower-case, '' for a bare local part
    mynetworks: list = field(default_factory=list)
    local_domains: frozenset = frozenset()
    local_user_exists: object = None   # Callable[[str], bool]
    reject_unlisted: bool = True
    relay_domains: frozenset = frozenset()
    #: the server's own addresses (address.own_address_set): ``[address]`` is local
    own_addresses: frozenset = frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    code: int
    enhanced: str
    text: str                          # reply text after the enhanced code
    restriction: str                   # which rule decided (for the narration)

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


class UnsupportedRestriction(ValueError):
    """A restriction name gponsim does not evaluate."""


@lru_cache(maxsize=1024)
def _addresses(ip: str) -> tuple:
    """``ip`` parsed, plus its IPv4 form when it is IPv4-mapped (one parse per client)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ()
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return (addr, addr.ipv4_mapped)
    return (addr,)


def in_networks(ip: str, networks) -> bool:
    return any(a in net for a in _addresses(ip) for net in networks if a.version == net.version)


def parse_networks(items) -> list:
    """mynetworks entries: ``127.0.0.0/8``, ``[::1]/128``, ``[::ffff:127.0.0.0]/104``."""
    nets = []
    for item in items:
        text = item.replace("[", "").replace("]", "")
        nets.append(ipaddress.ip_network(text, strict=False))
    return nets


def is_local_destination(ctx: RcptContext) -> bool:
    """trivial-rewrite's resolve_local(): ``mydestination``, or an address
    literal naming one of the server's own addresses."""
    return ctx.recipient_domain == "" or resolve_local(ctx.recipient_domain, ctx.local_domains,
                                                       ctx.own_addresses)


def _auth_destination(ctx: RcptContext) -> bool:
    return is_local_destination(ctx) or ctx.recipient_domain in ctx.relay_domains


KNOWN = {
    "permit", "reject", "defer", "permit_mynetworks", "permit_sasl_authenticated",
    "reject_unauth_destination", "defer_unauth_destination", "permit_auth_destination",
    "reject_unlisted_recipient", "reject_unknown_recipient_domain",
}


def evaluate_list(name: str, rules: list[str], ctx: RcptContext) -> Verdict | None | bool:
    """Evaluate one restriction list: a Verdict (reject/defer), True (permit) or None."""
    for rule in rules:
        rule = rule.strip().lower()
        if not rule:
            continue
        if rule == "permit":
            return True
        if rule == "permit_mynetworks":
            if in_networks(ctx.client_ip, ctx.mynetworks):
                return True
        elif rule == "permit_sasl_authenticated":
            if ctx.sasl_username:
                return True
        elif rule == "permit_auth_destination":
            if _auth_destination(ctx):
                return True
        elif rule in ("reject_unauth_destination", "defer_unauth_destination"):
            if not _auth_destination(ctx):
                code, enh = (554, "5.7.1") if rule.startswith("reject") else (454, "4.7.1")
                return Verdict(code, enh, f"<{ctx.recipient}>: Relay access denied", rule)
        elif rule == "reject_unlisted_recipient":
            verdict = unlisted_recipient(ctx)
            if verdict:
                return verdict
        elif rule == "reject_unknown_recipient_domain":
            continue  # needs DNS; the lab is offline (reported by config explain)
        elif rule == "reject":
            where = _where(name)
            if where == "Client host":
                target = f"<{ctx.client_name}[{ctx.client_ip}]>"
            else:
                target = f"<{ctx.recipient}>"
            return Verdict(554, "5.7.1", f"{target}: {where} rejected: Access denied", f"{name}: reject")
        elif rule == "defer":
            return Verdict(450, "4.7.1", f"<{ctx.client_name}[{ctx.client_ip}]>: {_where(name)} rejected: Access denied", f"{name}: defer")
        else:
            raise UnsupportedRestriction(rule)
    return None


def _where(list_name: str) -> str:
    return {
        "smtpd_client_restrictions": "Client host",
        "smtpd_helo_restrictions": "Helo command",
        "smtpd_sender_restrictions": "Sender address",
    }.get(list_name, "Recipient address")


#: Local parts smtpd never looks up (smtpd_check.c check_rcpt_maps): the
#: null local part resolves to MAILER-DAEMON (local(8) discards it when no
#: alias names it), double-bounce is discarded by qmgr.
UNLISTED_EXEMPT = ("mailer-daemon", "double-bounce")


def unlisted_recipient(ctx: RcptContext) -> Verdict | None:
    if not is_local_destination(ctx) or ctx.local_user_exists is None:
        return None
    local = ctx.recipient.rsplit("@", 1)[0] if "@" in ctx.recipient else ctx.recipient
    if (local or "MAILER-DAEMON").lower() in UNLISTED_EXEMPT:
        return None
    local = local.split("+", 1)[0].lower()
    if ctx.local_user_exists(local):
        return None
    return Verdict(550, "5.1.1",
                   f"<{ctx.recipient}>: Recipient address rejected: User unknown in local recipient table",
                   "reject_unlisted_recipient")


def check_recipient(ctx: RcptContext, lists: list[tuple[str, list[str]]]) -> Verdict | None:
    """Run the delayed lists in Postfix's order; None means the RCPT is accepted."""
    for name, rules in lists:
        result = evaluate_list(name, rules, ctx)
        if isinstance(result, Verdict):
            return result
    if ctx.reject_unlisted:
        return unlisted_recipient(ctx)
    return None
