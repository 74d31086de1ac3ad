"""The analyzer on the real captures of ../shared/pcaps (see its INDEX.md).

Every capture must decode without an exception, and the facts below were
checked by hand against tshark 4.x (`tshark -r F -T fields -e smtp.req.command
-e smtp.response.code -e imap.request.command -e pop.request.command`) and
the capture's INDEX.md row. Where gponsim and tshark differ, a comment says
why (tshark does not parse BDAT, nor commands pipelined after the final dot).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gponsim.capture.analyze import analyze
from gponsim.sinks.memory import ListSink

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"
# Every capture file of the shared folder (their notes, *.md, are not captures).
FILES = sorted(p for p in PCAPS.glob("*/*") if p.is_file() and p.suffix != ".md") if PCAPS.is_dir() else []

needs_pcaps = pytest.mark.skipif(not FILES, reason=f"the shared captures are not here ({PCAPS})")

# file: commands (all protocols, in order), SMTP reply codes, and other facts.
FACTS = {
    "zeek/smtp.pcap": dict(
        cmds="EHLO AUTH MAIL RCPT DATA QUIT EHLO MAIL RCPT RCPT RCPT DATA",
        codes="220 250 334 334 235 250 250 354 250 221 220 250 250 250 250 250 354 250",
        auth=["LOGIN"], clients=["GP", "[192.168.133.100]"],
        software=["Microsoft Office Outlook 12.0", "Apple Mail (2.2102)"],
        creds=[("LOGIN", "gurpartap@patriots.in", "punjab@123")]),
    "zeek/smtp-starttls.pcap": dict(cmds="EHLO STARTTLS", codes="220 250 220", starttls=True,
                                    clients=["openssl.client.net"], tls="TLSv1.2",
                                    subject="CN=mx.google.com"),
    "zeek/imap-starttls.pcap": dict(cmds="CAPABILITY STARTTLS", starttls=True, tls="TLSv1.2",
                                    cipher="TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    "zeek/pop3-starttls.pcap": dict(cmds="STLS", starttls=True, tls="TLSv1.2",
                                    cipher="TLS_DHE_RSA_WITH_AES_256_GCM_SHA384"),
    "zeek/imaps-telesec.pcap": dict(cmds="", tls="TLSv1.2", implicit=True,
                                    cipher="TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    "zeek/smtp-multi-addr.pcap": dict(cmds="EHLO MAIL RCPT DATA",
                                      codes="220 250 250 250 354 250 451",
                                      clients=["gras-os-desk.cern.ch"]),
    # Client side only: no replies at all.
    "zeek/smtp-one-side-only.pcap": dict(cmds="EHLO MAIL RCPT DATA MAIL RCPT DATA QUIT", codes="",
                                         messages=2, one_direction=True),
    # tshark lists only EHLO and QUIT: it does not parse the pipelined MAIL/RCPT/BDAT.
    "zeek/smtp-bdat-pipeline-8bitmime.pcap": dict(
        cmds="EHLO MAIL RCPT BDAT MAIL RCPT BDAT QUIT", codes="220 250 250 250 250 250 250 250 221",
        messages=2, clients=["vger.kernel.org"]),
    "ndpi/smtp.pcap": dict(cmds="EHLO HELO MAIL " + "RCPT " * 30 + "DATA QUIT",
                           codes="220 500 250 250 " + "250 " * 30 + "354 250 221",
                           clients=["delta.peach.mil"]),
    "ndpi/smtp-starttls.pcap": dict(cmds="EHLO STARTTLS EHLO STARTTLS", codes="220 250 220 220 250 220",
                                    starttls=True, sni="dovecot.weberlab.de"),
    "ndpi/smtps.pcapng": dict(cmds="", implicit=True),
    "ndpi/imap.pcap": dict(cmds="CAPABILITY LOGIN LIST LSUB SELECT UID FETCH",
                           creds=[("LOGIN", "samir", "pfres")]),
    "ndpi/imaps.pcap": dict(cmds="", implicit=True, sni="mail.ntop.org"),
    "ndpi/pop3.pcap": dict(
        cmds="USER PASS LIST UIDL RETR QUIT CAPA QUIT AUTH CAPA AUTH CAPA QUIT AUTH CAPA AUTH "
             "QUIT AUTH CAPA AUTH STAT LIST UIDL RETR RETR RETR QUIT",
        creds=[("USER/PASS", "cicciopernacchio@mail.com", "pippozzo"),
               ("PLAIN", "digitalinvestigator@networksims.com", "napier"),
               ("PLAIN", "digitalinvestigator@networksims.com", "napier123"),
               ("PLAIN", "digitalinvestigator@networksims.com", "napier123")]),
    "ndpi/pop3_stls.pcap": dict(cmds="AUTH CAPA STLS", starttls=True, sni="pop.lavabit.com",
                                tls="TLSv1"),
    "ndpi/pops.pcapng": dict(cmds="", implicit=True, sni="pop.secureserver.net"),
    "arkime/imap.pcap": dict(
        cmds="CAPABILITY LOGIN LIST SELECT FETCH NOOP NOOP FETCH " + "NOOP " * 11
             + "STORE STORE EXPUNGE SELECT FETCH NOOP CLOSE",
        creds=[("LOGIN", "neulingern", "XXXXXX")],
        messages=1),             # "* 12 FETCH (RFC822 {3339}" (the rest: BODY[HEADER.FIELDS])
    "arkime/smtp-data-250.pcap": dict(cmds="EHLO AUTH MAIL RCPT DATA",
                                      codes="220 250 235 250 250 354 250 421", auth=["PLAIN"],
                                      creds=[("PLAIN", "12345678@aol.com", "passwd")]),
    "arkime/smtp-data-521.pcap": dict(cmds="EHLO AUTH RSET MAIL RCPT DATA RSET",
                                      codes="220 250 334 235 250 250 250 354 521", auth=["PLAIN"]),
    # The part after STARTTLS is stored decrypted. tshark misses the two sessions on 2525
    # and the QUIT pipelined after the final dot.
    "arkime/smtp-decrypted.pcap": dict(
        cmds="EHLO STARTTLS EHLO MAIL RCPT DATA QUIT EHLO STARTTLS EHLO MAIL RCPT BDAT QUIT "
             "EHLO STARTTLS EHLO MAIL RCPT BDAT QUIT EHLO STARTTLS EHLO MAIL RCPT DATA QUIT",
        codes="220 250 220 250 250 250 354 250 221 220 250 220 250 250 250 250 221 "
              "220 250 220 250 250 250 250 221 220 250 220 250 250 250 354 250 221",
        starttls=True, software=["sendEmail-1.56"], inside_tls=True),
    "arkime/smtp-originating.pcap": dict(cmds="EHLO MAIL RCPT DATA QUIT",
                                         codes="220 250 250 250 354 250 221",
                                         software=["Apple Mail (2.1283)"]),
    "arkime/smtp-zip.pcap": dict(cmds="EHLO MAIL RCPT DATA QUIT", codes="220 250 250 250 354 250 221",
                                 software=["Mutt/1.5.20 (2009-12-10)"], attachment=".zip"),
    "arkime/smtp-subject-gb2312-b.pcap": dict(cmds="EHLO MAIL RCPT DATA QUIT",
                                              codes="220 250 250 250 354 250 221",
                                              software=["Microsoft-MacOutlook/14.3.9.131030"]),
    "suricata-verify/smtp-raw-extraction.pcap": dict(
        cmds="EHLO AUTH MAIL RCPT DATA QUIT", codes="220 250 334 334 235 250 250 354 250 221",
        clients=["Percival"], creds=[("LOGIN", "galunt", "V1v1tr0n")]),
    # QUIT is pipelined after the final dot (tshark shows the 221 but not the QUIT).
    "suricata-verify/bug-1045-smtp-alpine.pcap": dict(cmds="EHLO MAIL RCPT DATA QUIT",
                                                      codes="220 250 250 250 354 250 221",
                                                      software=["Alpine 2.00 (DEB 1167 2008-08-23)"]),
    "suricata-verify/smtp-startssl.pcap": dict(cmds="EHLO STARTTLS", codes="220 250 220",
                                               starttls=True, tls="TLSv1.3"),
    "suricata-verify/smtp-tls-protodetect.pcap": dict(cmds="", implicit=True),
    "suricata-verify/pop3.pcap": dict(cmds="USER PASS STAT LIST RSET UIDL" + " TOP" * 49,
                                      creds=[("USER/PASS", "moises.nunez@ingenierianumar.com",
                                              "moises.nunez")]),
    "suricata-verify/pop3-02-bug-7709-foxmail.pcap": dict(
        cmds="USER PASS QUIT USER PASS STAT LIST UIDL RETR QUIT",
        creds=[("USER/PASS", "test@tt.com", "123456"), ("USER/PASS", "test", "123456")]),
    "suricata-verify/tcp-async-01-imap-server-side.pcap": dict(cmds="", one_direction=True,
                                                               messages=1),  # BODY[] {180237}
    "chrissanders-packets/mail_sender_client_1.pcapng": dict(
        cmds="EHLO MAIL RCPT DATA QUIT", codes="220 250 250 250 354 250 221",
        clients=["[172.16.16.225]"], software=["Thunderbird/38.5.0"]),
    "chrissanders-packets/mail_sender_attachment.pcapng": dict(
        cmds="EHLO MAIL RCPT DATA QUIT", codes="220 250 250 250 354 250 221",
        software=["Thunderbird/38.5.0"], attachment="newguy.jpg"),
    "chrissanders-packets/mail_sender_server_2.pcapng": dict(
        cmds="EHLO MAIL RCPT DATA QUIT EHLO MAIL RCPT DATA QUIT",
        codes="220 250 250 250 354 250 221 220 250 250 250 354 250 221", clients=["[172.16.16.225]", "mail01"]),
    "chrissanders-packets/mail_receiver_server_3.pcapng": dict(
        cmds="EHLO MAIL RCPT DATA QUIT STARTTLS", codes="220 250 250 250 354 250 221",
        starttls=True, sni="mail02.cyberdyne.local"),
    "chrissanders-packets/email-troubles.pcap": dict(cmds="RETR RETR RETR", messages=3, midstream=True),
    "markofu-pcaps/evidence02.pcap": dict(
        cmds="EHLO AUTH MAIL RCPT DATA QUIT EHLO AUTH MAIL RCPT DATA QUIT",
        codes="220 250 334 334 235 250 250 354 250 221 220 250 334 334 235 250 250 354 250 221",
        clients=["annlaptop"] * 2, creds=[("LOGIN", "sneakyg33k@aol.com", "558r00lz")] * 2,
        attachment="secretrendezvous.docx"),
    "packetlife-backup/ipv4-smtp.cap": dict(cmds="EHLO QUIT", codes="220 250 221"),
    "packetlife-backup/ipv6-smtp.pcapng": dict(cmds="EHLO", codes="220 250"),
}


@needs_pcaps
@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_capture_decodes(path):
    sink = ListSink()
    a = analyze(path, sink.step)
    assert a.report.problems == []
    assert a.report.packets > 0 and a.connections, "no mail connection found"
    for step in sink.steps:
        step.to_json()                      # every Step is serialisable


@needs_pcaps
@pytest.mark.parametrize("name", sorted(FACTS))
def test_capture_facts(name):
    facts = FACTS[name]
    sink = ListSink()
    a = analyze(PCAPS / name, sink.step)
    steps = sink.steps
    cmds = " ".join(s.verb or "?" for s in steps if s.kind == "command")
    assert cmds == " ".join(facts["cmds"].split())
    if "codes" in facts:
        codes = " ".join(str(s.code) for s in steps if s.proto == "smtp" and s.kind == "reply")
        assert codes == " ".join(facts["codes"].split())
    if "auth" in facts:
        mechs = [s.args.split()[0].upper() for s in steps if s.kind == "command" and s.verb == "AUTH"]
        assert mechs == facts["auth"]
    if facts.get("starttls"):
        assert any(c.tls.get("how") == "STARTTLS" for c in a.connections)
    if facts.get("implicit"):
        assert any(c.tls.get("how") == "IMPLICIT" for c in a.connections)
    for field in ("tls", "cipher", "sni"):
        if field in facts:
            key = "version" if field == "tls" else field
            assert facts[field] in [c.tls.get(key) for c in a.connections]
    if "subject" in facts:
        assert any(facts["subject"] in (c.tls.get("subject") or "") for c in a.connections)
    if "clients" in facts:
        assert [c.client_name for c in a.connections if c.client_name] == facts["clients"]
    for soft in facts.get("software", []):
        assert any(soft in s for c in a.connections for s in c.software), soft
    if "creds" in facts:
        assert [(c.mechanism, c.user, c.password) for c in a.credentials] == facts["creds"]
    elif not facts.get("inside_tls"):
        assert all(not c.inside_tls for c in a.credentials)
    if "messages" in facts:
        assert len(a.messages) == facts["messages"]
    if "attachment" in facts:
        assert any(facts["attachment"] in n for m in a.messages for n in m["attachments"])
    if facts.get("one_direction"):
        assert all(len(c.directions) == 1 for c in a.connections)
    if facts.get("midstream"):
        assert all(c.midstream for c in a.connections)
    if facts.get("inside_tls"):
        assert any(s.tls for s in steps if s.kind == "command")
