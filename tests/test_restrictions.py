"""Postfix's RCPT-time restriction evaluation, rule by rule."""

import pytest

from gponsim.server.postfix.address import own_address_set
from gponsim.server.postfix.restrictions import (
    RcptContext, UnsupportedRestriction, check_recipient, in_networks, parse_networks,
)

LAB_NETS = parse_networks("127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 192.168.0.0/16".split())
LOCAL = frozenset({"mail.gponlab.local", "gponlab.local", "localhost.localdomain", "localhost"})
RELAY = ["permit_mynetworks", "permit_sasl_authenticated", "defer_unauth_destination"]


def ctx(ip="203.0.113.5", rcpt="bob@gmail.com", user=None, unlisted=True):
    domain = rcpt.rsplit("@", 1)[1] if "@" in rcpt else ""
    return RcptContext(client_ip=ip, client_name="unknown", sasl_username=user, recipient=rcpt,
                       recipient_domain=domain, mynetworks=LAB_NETS, local_domains=LOCAL,
                       local_user_exists=lambda u: u in {"user1", "user2"}, reject_unlisted=unlisted)


def lists(client=(), relay=RELAY):
    return [("smtpd_client_restrictions", list(client)), ("smtpd_relay_restrictions", list(relay))]


def test_mynetworks_match_v4_v6_and_mapped():
    assert in_networks("127.0.0.1", LAB_NETS)
    assert in_networks("::1", LAB_NETS)
    assert in_networks("::ffff:127.0.0.9", LAB_NETS)
    assert in_networks("192.168.40.50", LAB_NETS)
    assert not in_networks("203.0.113.5", LAB_NETS)
    assert not in_networks("not-an-ip", LAB_NETS)


def test_outsider_relaying_is_deferred_with_454():
    v = check_recipient(ctx(), lists())
    assert v.reply == "454 4.7.1 <bob@gmail.com>: Relay access denied"


def test_reject_unauth_destination_is_554():
    v = check_recipient(ctx(), lists(relay=["reject_unauth_destination"]))
    assert v.reply == "554 5.7.1 <bob@gmail.com>: Relay access denied"


def test_mynetworks_and_sasl_may_relay():
    assert check_recipient(ctx(ip="192.168.1.50"), lists()) is None
    assert check_recipient(ctx(user="user1"), lists()) is None


def test_local_users_known_and_unknown():
    assert check_recipient(ctx(rcpt="user2@gponlab.local"), lists()) is None
    assert check_recipient(ctx(rcpt="User2+tag@GPONLAB.local".lower()), lists()) is None
    v = check_recipient(ctx(rcpt="nosuchuser@gponlab.local"), lists())
    assert v.reply == ("550 5.1.1 <nosuchuser@gponlab.local>: Recipient address rejected: "
                       "User unknown in local recipient table")
    # submission: smtpd_reject_unlisted_recipient=no accepts it (local(8) bounces later)
    assert check_recipient(ctx(rcpt="nosuchuser@gponlab.local", unlisted=False), lists()) is None


def test_submission_client_restrictions():
    client = ["permit_sasl_authenticated", "reject"]
    v = check_recipient(ctx(ip="192.168.1.50", rcpt="user2@gponlab.local"), lists(client=client))
    assert v.reply == "554 5.7.1 <unknown[192.168.1.50]>: Client host rejected: Access denied"
    assert check_recipient(ctx(ip="192.168.1.50", user="user1"), lists(client=client)) is None


def test_unknown_restriction_is_reported():
    with pytest.raises(UnsupportedRestriction):
        check_recipient(ctx(), lists(relay=["check_policy_service inet:127.0.0.1:10023"]))


def test_an_address_literal_of_the_server_is_a_local_destination():
    own = own_address_set(["127.0.0.1", "::1"])
    for rcpt, reply in (("user2@[127.0.0.1]", None),
                        ("nadie@[IPv6:::1]", "550 5.1.1 <nadie@[IPv6:::1]>: Recipient address "
                                             "rejected: User unknown in local recipient table"),
                        ("user2@[127.0.0.2]", "454 4.7.1 <user2@[127.0.0.2]>: Relay access denied")):
        c = ctx(rcpt=rcpt)
        c.own_addresses = own
        v = check_recipient(c, lists())
        assert (v.reply if v else None) == reply


def test_mailer_daemon_and_double_bounce_are_never_looked_up():
    for rcpt in ("@gponlab.local", "MAILER-DAEMON@gponlab.local", "double-bounce@localhost"):
        assert check_recipient(ctx(rcpt=rcpt), lists()) is None
    v = check_recipient(ctx(rcpt="mailer-daemon+x@gponlab.local"), lists())
    assert v.reply.startswith("550 5.1.1")
