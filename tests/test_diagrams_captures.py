"""Diagrams of real captures of servers that are not the lab (shared pcaps, skipped
when /work/shared/pcaps is absent): Steps recorded by `gponsim analyze --steps`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conftest import PCAPS
from gponsim.cli import main
from gponsim.diagrams import build_sequence, load_steps


def analyzed(tmp_path_factory, name):
    """The Steps `gponsim analyze` records for a shared capture, and their file."""
    pcap = PCAPS / name
    if not pcap.exists():
        pytest.skip(f"{pcap} is absent (the shared captures are not beside the project)")
    out = tmp_path_factory.mktemp("cap") / "steps.jsonl"
    run = CliRunner().invoke(main, ["analyze", str(pcap), "-q", "--steps", str(out)])
    assert run.exit_code == 0, run.output
    return load_steps(out), out


@pytest.fixture(scope="module")
def zeek_smtp(tmp_path_factory):
    """Outlook 12 authenticating to Exim 4.69 on port 25; Apple Mail to SubEthaSMTP."""
    return analyzed(tmp_path_factory, "zeek/smtp.pcap")


def test_different_recipients_do_not_collapse(zeek_smtp):
    steps, _ = zeek_smtp
    rows = [r for p in build_sequence(steps) for r in p.rows]
    rcpts = [r.label for r in rows if r.label.startswith("RCPT")]
    assert rcpts == ["RCPT TO: <raj_deol2002in@yahoo.co.in>", "RCPT TO:<ericlim220@yahoo.com>",
                     "RCPT TO:<felica4uu@hotmail.com>", "RCPT TO:<davis_mark1@outlook.com>"]
    assert all(r.repeat == 1 for r in rows if r.label.startswith("RCPT"))


def test_a_foreign_server_is_named_as_the_capture_shows_it(zeek_smtp):
    """Outlook authenticating to Exim is a mail client talking to Exim, not an
    "External Server" relaying to the lab's Postfix; so is Apple Mail (its X-Mailer)."""
    from gponsim.diagrams.dot import sequence_dot
    from gponsim.diagrams.mermaid import sequence_mermaid

    steps, _ = zeek_smtp
    pages = build_sequence(steps, lang="es")
    names = {name for p in pages for name in p.names.values()}
    assert names == {"Microsoft Office Outlook 12.0 · GP\n10.10.1.4", "Exim 4.69\n74.53.140.153:25",
                     "Apple Mail (2.2102)\n192.168.133.100", "Servidor SMTP · uprise\n192.168.133.102:25"}
    for page in pages:
        assert not {"internet", "smtpd", "client"} & set(page.participants), page.participants
        assert page.service == "client-smtp"
        assert set(page.names) == set(page.participants)
        clients = [p for p in page.participants if page.names[p] in names and p.startswith("peer-c")]
        assert page.participants[:len(clients)] == clients         # the client on the left
    dot, mermaid = sequence_dot(pages[0], "es"), sequence_mermaid(pages[0], "es")
    for text in (dot, mermaid):
        assert "Exim 4.69" in text and "Servidor externo" not in text and "Postfix" not in text
    assert "cliente de correo en el puerto 25" in dot and "de servidor a servidor" not in dot


def test_the_architecture_does_not_put_a_foreign_capture_on_the_lab(zeek_smtp):
    from gponsim.diagrams.architecture import architecture_dot, observe

    steps, _ = zeek_smtp
    assert not any(o.count for o in observe(steps).values())
    text = architecture_dot(steps, "en")
    assert "Receive Incoming\\n" not in text and "session(s)" in text
    assert "In the capture, not the lab" in text
    assert "Exim 4.69\\n74.53.140.153:25" in text and "Microsoft Office Outlook 12.0 · GP\\n10.10.1.4" in text
    assert "1 session(s) · SMTP 25 · AUTH · in clear" in text


def test_the_packet_ladder_names_a_foreign_servers_client(tmp_path):
    from gponsim.diagrams.ladder import build_ladder

    pcap = PCAPS / "zeek" / "smtp.pcap"
    if not pcap.exists():
        pytest.skip(f"{pcap} is absent (the shared captures are not beside the project)")
    pages, _ = build_ladder(pcap, session="2", lang="en")
    assert [pages[0].names[p] for p in pages[0].participants] == [
        "Apple Mail (2.2102)\n192.168.133.100", "SMTP server · uprise\n192.168.133.102:25"]


def test_a_mail_client_on_port_25_of_postfix_is_a_client(tmp_path_factory):
    """Thunderbird (its User-Agent, no Received:) sending to Postfix on port 25: the lab's
    roles, but the mail client, not another mail server, and in the send flow."""
    steps, _ = analyzed(tmp_path_factory, "chrissanders-packets/mail_sender_client_1.pcapng")
    pages = build_sequence(steps, flow="send")
    assert pages and {p.service for p in pages} == {"client-smtp"}
    assert {a for p in pages for a in p.participants} == {"client", "smtpd"}
    assert all(not p.names for p in pages)
    assert not [r for p in build_sequence(steps, flow="receive") for r in p.rows]


def test_a_relay_passing_on_a_clients_message_is_a_mail_server(tmp_path_factory):
    """mail01 relays Thunderbird's message to mail02: the message names Thunderbird, but
    it went through mail01 (Received:), so mail01 is a mail server, server to server."""
    steps, _ = analyzed(tmp_path_factory, "chrissanders-packets/mail_sender_server_2.pcapng")
    from gponsim.diagrams.sequence import services

    assert sorted(services(steps).values()) == ["client-smtp", "smtp"]
    relay = [p for p in build_sequence(steps, flow="receive") if p.service == "smtp"]
    assert relay and {a for p in relay for a in p.participants} == {"internet", "smtpd"}


def test_an_empty_flow_is_an_error_that_names_the_flows_there(zeek_smtp, tmp_path):
    """`--flow receive` of clients' sessions would draw only a lifeline: it says why instead."""
    _, steps_file = zeek_smtp
    out = tmp_path / "recv.svg"
    run = CliRunner().invoke(main, ["diagram", "sequence", "--from", str(steps_file), "--flow", "receive",
                                    "--format", "dot", "-o", str(out), "--notes", "--lang", "es"])
    assert run.exit_code == 2, run.output
    assert "nada que dibujar" in run.output and "flujo 'receive'" in run.output
    assert "flujos con pasos: all, send, sasl" in run.output
    assert not list(tmp_path.iterdir())
    run = CliRunner().invoke(main, ["diagram", "sequence", "--from", str(steps_file), "--flow", "receive",
                                    "--session", "nope", "-o", str(out)])
    assert run.exit_code == 2 and "no session 'nope'" in run.output
    session = next(s.session for s in zeek_smtp[0])
    run = CliRunner().invoke(main, ["diagram", "sequence", "--from", str(steps_file), "--flow", "receive",
                                    "--session", session, "-o", str(out), "--lang", "en"])
    assert run.exit_code == 2 and f"in session {session}; flows with Steps: all, send, sasl" in run.output
    run = CliRunner().invoke(main, ["diagram", "sequence", "--from", str(steps_file), "--flow", "send",
                                    "--format", "dot", "-o", str(out)])
    assert run.exit_code == 0, run.output


def test_the_output_path_under_a_file_is_explained(zeek_smtp, tmp_path):
    _, steps_file = zeek_smtp
    (tmp_path / "afile").write_text("")
    for lang, said in (("en", "afile is a file, not a folder"), ("es", "afile es un archivo, no una carpeta")):
        for kind in ("sequence", "architecture"):
            run = CliRunner().invoke(main, ["diagram", kind, "--from", str(steps_file), "--format", "dot",
                                            "-o", str(tmp_path / "afile" / "sub" / "a.dot"), "--lang", lang])
            assert run.exit_code == 2 and said in run.output, run.output
            assert "File exists" not in run.output
    # Missing folders are made (as the README says).
    run = CliRunner().invoke(main, ["diagram", "architecture", "--from", str(steps_file), "--format", "dot",
                                    "-o", str(tmp_path / "new" / "dir" / "a.dot")])
    assert run.exit_code == 0 and (tmp_path / "new" / "dir" / "a.dot").is_file()
