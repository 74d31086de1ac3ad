"""gponsim's command line: parse options, call the library, report clearly.

Nothing here knows a protocol; every command is a thin shell over a library
module (gponsim.server.lab, gponsim.clients.smtp, gponsim.config, ...).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from gponsim import __version__

LANG = click.Choice(["es", "en"])
EXPLAIN = click.Choice(["first", "session", "all", "none"])
EXPLAIN_HELP = ("Commentary: the first time each explanation comes up (once per run), "
                "the first time in each session, every time, or never.")


def _lang(value: str | None) -> str:
    if value:
        return value
    from gponsim.commentary import default_lang

    return default_lang()


def _config_error(exc) -> "click.ClickException":
    err = click.ClickException(str(exc))
    err.exit_code = 2
    return err


def _sinks(lang, quiet, steps_file, explain, reveal):
    from gponsim.steps import StepBus
    from gponsim.sinks.jsonl import JsonlRecorder

    bus = StepBus()
    if not quiet:
        from gponsim.sinks.narrator import Narrator

        bus.add(Narrator(lang=_lang(lang), explain=explain, reveal=reveal))
    if steps_file:
        bus.add(JsonlRecorder(steps_file, reveal=reveal))
    return bus


def narration_options(f):
    f = click.option("--reveal-secrets", is_flag=True,
                     help="Show passwords and AUTH data instead of ********.")(f)
    f = click.option("--explain", type=EXPLAIN, default="first", show_default=True, help=EXPLAIN_HELP)(f)
    f = click.option("--steps", "steps_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also record every Step as JSON lines in this file.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No narration on the terminal.")(f)
    f = click.option("--lang", type=LANG, help="Language of the commentary (default: from the locale, else en).")(f)
    return f


class _MainGroup(click.Group):
    """A file or folder the user named that cannot be read or written ends the
    command with one line naming it (exit 2), not a traceback; Ctrl-C exits 130.
    ``GPONSIM_DEBUG=1`` shows the traceback instead."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:       # Ctrl-C: exit 130 as shells and other tools do
            click.echo("", err=True)
            raise SystemExit(130)
        except OSError as exc:
            if exc.filename is None or os.environ.get("GPONSIM_DEBUG"):
                raise
            err = click.ClickException(f"{exc.filename}: {exc.strerror or exc}")
            err.exit_code = 2
            raise err from exc


@click.group(cls=_MainGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gponsim")
def main() -> None:
    """gponsim: learn how e-mail really works on the GPON lab's mail server.

    \b
    Follow a guided lesson (its own lab on free ports, narrated, with checkpoints):
      gponsim lesson send-mail --lang es
    Start the lab (Postfix SMTP on 25 and 587, Dovecot's auth socket, mbox delivery):
      gponsim serve --port-offset 10000
    Send a mail through it, narrated step by step:
      gponsim send --as user1 --to user2@gponlab.local --subject Hola --port-offset 10000
    Then open gponlab/var/mail/user2 and gponlab/var/log/mail.log.
    """


# ---------------------------------------------------------------------- serve

def _parse_ports(values: tuple[str, ...]) -> dict[str, int]:
    ports = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not number.isdigit() or int(number) > 65535:
            raise click.BadParameter(f"{value!r}: expected SERVICE=PORT, e.g. submission=2587 (0 = any free port)",
                                     param_hint="--port")
        ports[name] = int(number)
    return ports


@main.command()
@click.option("--lab-root", type=click.Path(file_okay=False, path_type=Path), default=Path("gponlab"),
              show_default=True, help="Folder holding all lab state (the lab server's '/').")
@click.option("--config", "config_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Lab profile written by `gponsim config init` (default: the lab document's).")
@click.option("--port-offset", type=click.IntRange(0, 64000), default=0, show_default=True,
              help="Add N to every standard port (25 → 25+N): run without root.")
@click.option("--port", "port_overrides", multiple=True, metavar="SERVICE=PORT",
              help="Put one master.cf service on another port (0 = any free port).")
@click.option("--listen", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 to serve a classroom).")
@click.option("--keylog", type=click.Path(dir_okay=False, path_type=Path), envvar="SSLKEYLOGFILE",
              help="Write TLS secrets (NSS key log) so captures can be decrypted.")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the bound ports as JSON to this file once the lab is listening.")
@click.option("--relay", type=click.Choice(["sim", "real", "none", "dns"]), default="sim", show_default=True,
              help="Outgoing mail: the built-in Gmail simulator (smtp.gmail.com mapped to it), "
                   "the real relayhost (a lab with internet), none (mail stays deferred), or dns "
                   "(relayhost looked up in the DNS of <lab root>/etc/resolv.conf, as on the lab "
                   "network of `gponsim net`).")
@click.option("--allow-mynetworks-relay", is_flag=True,
              help="With --relay real and a listener other computers reach: let every computer "
                   "in mynetworks relay through the real account (refused without this flag).")
@click.option("--capture", "capture_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also capture the lab's traffic on loopback into this pcapng file, with the "
                   "--keylog secrets embedded (needs root or CAP_NET_RAW; without it the lab "
                   "runs anyway).")
@narration_options
def serve(lab_root, config_dir, port_offset, port_overrides, listen, keylog, ready_file, relay,
          allow_mynetworks_relay,
          capture_file, lang, quiet, steps_file, explain, reveal_secrets):
    """Run the lab's mail server, narrating every protocol step.

    Services come from the profile's master.cf (smtp = 25, submission = 587),
    users from <lab root>/etc/dovecot/users (user1/pass and user2/pass at
    first start). Mail for user2 lands in <lab root>/var/mail/user2 and every
    event is logged, as Postfix does, in <lab root>/var/log/mail.log.
    Ctrl-C stops it; whatever was queued is delivered at the next start.
    SIGHUP reloads the profile (as `postfix reload` and `systemctl reload dovecot`).
    """
    from gponsim.config import ConfigError
    from gponsim.server.lab import Lab, LabError, LabOptions

    ports = _parse_ports(port_overrides)
    bus = _sinks(lang, quiet, steps_file, explain, reveal_secrets)
    options = LabOptions(lab_root=lab_root, config_dir=config_dir, listen=listen,
                         port_offset=port_offset, ports=ports, keylog=keylog, relay=relay,
                         allow_mynetworks_relay=allow_mynetworks_relay)
    from twisted.internet import reactor

    from gponsim.server.foreground import run_in_foreground

    try:
        lab = Lab(options, emit=bus.emit, reactor=reactor)
    except ConfigError as exc:
        raise _config_error(exc)
    unsimulated = lab.profile.unsimulated()
    if unsimulated:
        names = ", ".join(f"{u.name} ({Path(u.file).name}:{u.line})" for u in unsimulated)
        click.echo(f"gponsim: note: {len(unsimulated)} setting(s) of the profile are read but not "
                   f"simulated: {names}. `gponsim config explain` says why.", err=True)
    for warning in lab.profile.warnings():     # e.g. Postfix delivering to an LMTP socket nobody makes
        click.echo(f"gponsim: warning: {warning.text(_lang(lang))}",
                   err=True)
    sniffer: list = []

    def started(bound):
        click.echo(f"gponsim: lab running in {lab.root}  ({', '.join(f'{k} on {listen}:{v}' for k, v in bound.items())})",
                   err=True)
        if "gmail" in bound:
            click.echo(f"gponsim: outgoing mail: relayhost {lab.profile.main('relayhost')} goes to the "
                       f"Gmail simulator on 127.0.0.1:{bound['gmail']} (mail it accepts lands in "
                       f"{lab.root / 'internet'}/<domain>/<user>)", err=True)
        if capture_file:
            sniffer.extend(_start_capture(capture_file, bound.values(), keylog))
        click.echo("gponsim: press Ctrl-C to stop", err=True)
        if ready_file:
            lab.write_ready_file(ready_file)

    def reload():
        def refused(f):
            click.echo(f"gponsim: reload refused, the lab keeps its configuration: "
                       f"{f.getErrorMessage()}", err=True)
        lab.reload().addCallbacks(lambda _: click.echo("gponsim: configuration reloaded", err=True),
                                  refused)

    def on_hangup():
        # `kill -HUP`: like `postfix reload` and `systemctl reload dovecot`
        signal.signal(signal.SIGHUP, lambda _s, _f: reactor.callFromThread(reload))

    exc = run_in_foreground(reactor, lab, lab.start, lambda: lab.stop(), started, on_hangup)
    for running in sniffer:
        written = running.stop()
        dropped = f"; {running.drops} dropped by the kernel, the capture fell behind" if running.drops else ""
        click.echo(f"gponsim: capture written to {written} ({running.count} packets{dropped})", err=True)
    bus.close()
    if exc is not None:
        if isinstance(exc, ConfigError):
            raise _config_error(exc)
        if isinstance(exc, LabError):
            raise click.ClickException(str(exc))
        raise exc


def _start_capture(path: Path, ports, keylog: Path | None = None) -> list:
    """A capture beside the lab; without permission, say so and go on without it."""
    from gponsim.capture.live import CapturePermission, Sniffer

    try:
        running = Sniffer(path, set(ports), keylog=keylog)
    except CapturePermission as exc:
        click.echo(f"gponsim: not capturing: {exc}. The lab runs without a capture.", err=True)
        return []
    click.echo(f"gponsim: capturing the lab's traffic into {path} (pcapng"
               + (f", with the TLS secrets of {keylog} embedded)" if keylog else ")"), err=True)
    return [running]


# ------------------------------------------------------------------------ net

def _state_dir(value):
    from gponsim.net.state import default_dir

    return Path(value) if value else default_dir()


state_dir_option = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                                help="Where the running network is written down (default: "
                                     "/run/gponsim/net as root, else $XDG_RUNTIME_DIR/gponsim/net; "
                                     "env GPONSIM_NET_STATE).")


def _net_call(fn):
    from gponsim.net.control import ControlError
    from gponsim.net.build import BuildError
    from gponsim.net.daemon import NetworkError
    from gponsim.net.kernel import KernelError
    from gponsim.net.topology import TopologyError

    try:
        return fn()
    except (ControlError, BuildError, NetworkError, TopologyError, KernelError) as exc:
        raise click.ClickException(str(exc))


@main.group()
def net():
    """The lab's real network on this computer: hosts in network namespaces.

    \b
    gponsim net up                       # mail, router, dns, pc1-pc3, internet, outside
    gponsim net status                   # hosts, addresses, lab root, root or rootless
    gponsim net exec pc1 -- swaks --server mail.gponlab.local --port 587 --tls \\
        --auth-user user1 --auth-password pass --to user2@gponlab.local
    gponsim net exec pc1 -- dig MX gponlab.local
    gponsim net exec mail -- tshark -i enp0s3     # what the server's interface sees
    gponsim net down                     # removes everything it made
    """


@net.command("up")
@click.option("--pcs", type=click.IntRange(0, 99), help="How many student PCs (pc1 ... pcN; default 3).")
@click.option("--lab-root", type=click.Path(file_okay=False, path_type=Path), default=Path("gponlab"),
              show_default=True, help="The server's '/': mail.log, mailboxes, queue.")
@click.option("--config", "config_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Lab profile written by `gponsim config init` (default: the lab document's).")
@click.option("--mode", type=click.Choice(["auto", "root", "rootless"]), default="auto", show_default=True,
              help="root: named namespaces (ip netns) and /etc/netns; rootless: inside a user "
                   "namespace of its own (what a normal user gets); auto: root when root.")
@click.option("--prefix", default="", help="Prefix of the namespace names (two networks on one computer).")
@click.option("--foreground", is_flag=True, help="Stay attached, narrating every Step; Ctrl-C takes it down.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait until ready.")
@state_dir_option
@click.option("--lang", type=LANG, help="Language of the narration (default: from the locale).")
def net_up(pcs, lab_root, config_dir, mode, prefix, foreground, timeout, state_dir, lang):
    """Build the lab network and start its services; returns when every one answers."""
    from gponsim.net import control

    mode, why = _net_call(lambda: control.choose_mode(mode))
    folder = _state_dir(state_dir)
    if foreground:
        return _net_foreground(folder, lab_root, pcs, mode, prefix, config_dir, _lang(lang), why)
    net = _net_call(lambda: control.up(folder, lab_root=lab_root, pcs=pcs, mode=mode, prefix=prefix,
                                       config_dir=config_dir, lang=_lang(lang), timeout=timeout))
    _print_status(net, folder, why)
    click.echo(f"gponsim: the lab network is up in {net.seconds:.1f} s ({mode}); "
               f"narration in {folder / 'narration.log'}", err=True)


def _net_foreground(folder, lab_root, pcs, mode, prefix, config_dir, lang, why):
    from gponsim.net import daemon
    from gponsim.sinks.jsonl import JsonlRecorder
    from gponsim.sinks.narrator import Narrator
    from gponsim.steps import StepBus

    folder.mkdir(parents=True, exist_ok=True)

    def ready(net):
        _print_status(net, folder, why)
        click.echo(f"gponsim: the lab network is up in {net.seconds:.1f} s; Ctrl-C takes it down", err=True)
    _net_call(lambda: daemon.run(
        folder, lab_root=lab_root, pcs=pcs, mode=mode, prefix=prefix, config_dir=config_dir,
        sinks=lambda: StepBus([Narrator(lang=lang), JsonlRecorder(folder / "steps.jsonl")]),
        on_ready=ready))


@net.command("daemon", hidden=True)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--lab-root", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--pcs", type=int)
@click.option("--mode", type=click.Choice(["root", "rootless"]), required=True)
@click.option("--prefix", default="")
@click.option("--config", "config_dir", type=click.Path(path_type=Path))
@click.option("--lang", type=LANG, default="en")
def net_daemon(state_dir, lab_root, pcs, mode, prefix, config_dir, lang):
    """The network's own process (started by `net up`)."""
    from gponsim.net import daemon
    from gponsim.sinks.jsonl import JsonlRecorder
    from gponsim.sinks.narrator import Narrator
    from gponsim.steps import StepBus

    _net_call(lambda: daemon.run(
        state_dir, lab_root=lab_root, pcs=pcs, mode=mode, prefix=prefix, config_dir=config_dir,
        sinks=lambda: StepBus([Narrator(lang=lang), JsonlRecorder(Path(state_dir) / "steps.jsonl")])))


@net.command("down")
@state_dir_option
def net_down(state_dir):
    """Stop the lab network and remove every namespace, link, file and process it made."""
    from gponsim.net import control

    net = _net_call(lambda: control.down(_state_dir(state_dir)))
    if net is None:
        click.echo("gponsim: the lab network is not up", err=True)
        return
    click.echo(f"gponsim: the lab network is down ({len(net.hosts) - 1} hosts removed; "
               f"the lab root {net.lab_root} stays)", err=True)


@net.command("status")
@state_dir_option
def net_status(state_dir):
    """The hosts with their addresses, the lab root, and whether it runs rootless."""
    from gponsim.net import control

    folder = _state_dir(state_dir)
    net = control.status(folder)
    if net is None:
        click.echo("gponsim: the lab network is not up (`gponsim net up`)")
        raise SystemExit(3)
    _print_status(net, folder, None)


def _print_status(net, folder, why):
    from gponsim.net import topology

    topo = topology.load(len([h for h in net.hosts if h.startswith("pc") and h[2:].isdigit()]))
    mode = {"root": "root (named namespaces: ip netns list; /etc/netns/<host>)",
            "rootless": "rootless (inside an unprivileged user namespace of its own)"}[net.mode]
    click.echo(f"mode:      {mode}")
    click.echo(f"process:   {net.pid}")
    click.echo(f"lab root:  {net.lab_root}  (mail.log: var/log/mail.log, mailboxes: var/mail/)")
    click.echo(f"narration: {folder / 'narration.log'}  steps: {folder / 'steps.jsonl'}")
    for name, host in topo.hosts.items():
        ns = net.hosts[name].named or net.hosts[name].netns
        ifaces = "  ".join(f"{i.name} {' '.join(i.addresses)}" for i in host.interfaces)
        click.echo(f"  {name:<9} {host.fqdn:<24} {ifaces}   [{ns}]")


@net.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@state_dir_option
def net_exec(host, command, state_dir):
    """Run COMMAND in HOST (its network, resolv.conf, hosts and name); its exit code is ours.

    \b
    gponsim net exec pc1 -- dig MX gponlab.local
    gponsim net exec outside -- swaks --server mail.gponlab.local --to someone@example.org
    """
    from gponsim.net import control

    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    _net_call(lambda: control.exec_in(_state_dir(state_dir), host, argv))


# ----------------------------------------------------------------------- send

@main.command()
@click.option("--as", "user", required=True, help="Lab user to log in as (user1, user2, ...).")
@click.option("--password", default="pass", show_default=True, help="That user's password.")
@click.option("--to", "recipients", multiple=True, required=True, help="Recipient (repeatable).")
@click.option("--from", "sender", help="Envelope and header sender (default: USER@gponlab.local).")
@click.option("--subject", default="Hola desde gponsim", show_default=True)
@click.option("--body", default="Hola,\n\nEste es un mensaje de prueba del laboratorio GPON.\n")
@click.option("--server", default="127.0.0.1", show_default=True, help="Address of the lab.")
@click.option("--port-offset", type=click.IntRange(0, 64000), default=0, show_default=True,
              help="The same offset given to `gponsim serve`.")
@click.option("--port", type=click.IntRange(1, 65535), help="Exact port (overrides the service's port).")
@click.option("--smtp25", is_flag=True, help="Use port 25 (MTA to MTA: no AUTH) instead of submission 587.")
@click.option("--no-tls", is_flag=True, help="Do not STARTTLS (on 587 the server will answer 530).")
@click.option("--no-auth", is_flag=True, help="Do not authenticate.")
@click.option("--mech", type=click.Choice(["PLAIN", "LOGIN"], case_sensitive=False), default="PLAIN",
              show_default=True, help="SASL mechanism.")
@click.option("--no-initial-response", is_flag=True, help="AUTH PLAIN, then the credentials after 334.")
@narration_options
def send(user, password, recipients, sender, subject, body, server, port_offset, port, smtp25,
         no_tls, no_auth, mech, no_initial_response, lang, quiet, steps_file, explain, reveal_secrets):
    """Send a mail through the lab, like Thunderbird does, narrating each step.

    By default: port 587, STARTTLS, AUTH PLAIN as --as, MAIL, RCPT, DATA, QUIT.
    """
    from gponsim.clients.smtp import build_message, say, send_mail

    lang = _lang(lang)
    bus = _sinks(lang, quiet, steps_file, explain, reveal_secrets)
    sender = sender or f"{user}@gponlab.local"
    target = port or ((25 if smtp25 else 587) + port_offset)
    message = build_message(sender, list(recipients), subject, body)
    result = _narrated(bus, lambda: send_mail(
        host=server, port=target, sender=sender, recipients=list(recipients), message=message,
        user=None if (no_auth or smtp25) else user, password=password, starttls=not no_tls,
        mechanism=mech, initial_response=not no_initial_response, emit=bus.emit), lang)
    click.echo(say("queued", lang, qid=result.queue_id), err=True)


def _narrated(bus, send, lang: str = "en"):
    """Run a scripted client with its narration; a refusal becomes a clear error."""
    from gponsim.clients.smtp import SmtpClientError

    try:
        return send()
    except SmtpClientError as exc:
        raise click.ClickException(exc.text(lang))
    finally:
        bus.close()


# -------------------------------------------------------------------- diagram

@main.group()
def diagram():
    """Architecture and sequence diagrams, drawn by Graphviz from what was observed."""


def _diagram_output(out, fmt, default_stem, lang=None):
    """The file to write; a path under a file is an error that says so. Missing folders
    are created when it is written."""
    from gponsim.diagrams import FORMATS
    from gponsim.diagrams.labels import message

    if fmt not in FORMATS:
        raise click.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")
    suffix = {"mermaid": ".mmd"}.get(fmt, "." + fmt)
    target = out or Path(default_stem + suffix)
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _config_error(message("not_a_folder", _lang(lang), out=target, parent=parent))
            break
    return target


def _load_steps_or_fail(source):
    from gponsim.diagrams import load_steps

    try:
        return load_steps(source)
    except (OSError, ValueError) as exc:
        raise _config_error(exc)


def _drawn(fn, target=None, lang=None):
    from gponsim.diagrams import DotMissing
    from gponsim.diagrams.labels import message

    try:
        return fn()
    except DotMissing as exc:
        raise click.ClickException(f"{exc}. The .dot and .mmd sources were written beside "
                                   f"the requested file.")
    except OSError as exc:
        # Writing the diagram (a page beside ``target``, a folder above it); not reading.
        where = Path(exc.filename) if exc.filename else None
        if target is None or where is None or \
                (where.parent != target.parent and where not in (target.parent, *target.parent.parents)):
            raise
        raise _config_error(message("cannot_write", _lang(lang), out=where, why=exc.strerror or exc))


format_option = click.option("--format", "fmt", default="svg", show_default=True,
                             help="svg, png, pdf, dot (Graphviz source) or mermaid (the lab document's style).")


@diagram.command("architecture")
@click.option("--from", "source", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Steps (*.steps.jsonl) to label the edges with; without it, the documented architecture.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), help="Output file.")
@format_option
@click.option("--lang", type=LANG, help="Language of the labels.")
def diagram_architecture(source, out, fmt, lang):
    """The lab document's architecture: client, Postfix, Dovecot, queue, mailboxes, SASL, Gmail.

    With --from, each edge says what was observed on it and unused parts are faded.
    """
    from gponsim.diagrams import draw_architecture

    target = _diagram_output(out, fmt, "architecture", lang)
    steps = _load_steps_or_fail(source) if source else None
    written = _drawn(lambda: draw_architecture(steps, target, fmt=fmt, lang=_lang(lang)), target, lang)
    click.echo(str(written))


@diagram.command("sequence")
@click.option("--from", "source", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Steps (*.steps.jsonl, from --steps) or a capture (pcap, pcapng) to draw.")
@click.option("--flow", type=click.Choice(["all", "send", "receive", "sasl"]), default="all", show_default=True,
              help="Which of the lab document's flows to draw.")
@click.option("--session", help="Only this session id (with --packets: a connection's number, as in "
                                "`gponsim analyze`'s summary, or its session id).")
@click.option("--packets", "packets_view", is_flag=True,
              help="The TCP ladder of one connection of a capture: one arrow per packet (SYN, SYN/ACK, ACK, "
                   "data segments with what they carry, ACKs, FIN).")
@click.option("--keylog", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --packets: the TLS key log, to show what TLS records carry.")
@click.option("--notes", is_flag=True, help="Add the commentary as notes.")
@click.option("--no-collapse", is_flag=True, help="Draw repeated runs one by one.")
@click.option("--page-rows", type=click.IntRange(4, 2000), default=14, show_default=True,
              help="Rows per page (14: >= 18 px text on a 1920x1080 projector); each phase of a "
                   "conversation starts a page, longer ones become several files.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), help="Output file.")
@format_option
@click.option("--lang", type=LANG, help="Language of the labels.")
def diagram_sequence(source, flow, session, packets_view, keylog, notes, no_collapse, page_rows, out, fmt,
                     lang):
    """One arrow per Step between the lab's components (TLS in blue, failures in red).

    With --packets, one arrow per TCP packet of one connection of a capture.
    """
    from gponsim.diagrams import draw_sequence

    if packets_view or keylog:
        return _diagram_ladder(source, flow, session, packets_view, keylog, notes, page_rows, out, fmt, lang)
    from gponsim.diagrams.labels import message
    from gponsim.diagrams.sequence import flows_with_steps

    target = _diagram_output(out, fmt, f"sequence-{flow}", lang)
    steps = _load_steps_or_fail(source)
    if session is not None and not any(s.session == session for s in steps):
        known = list(dict.fromkeys(s.session for s in steps))
        shown = ", ".join(known[:12]) + (f" … ({len(known)} in all)" if len(known) > 12 else "")
        raise click.BadParameter(f"no session {session!r} in {source} (sessions: {shown or 'none'})",
                                 param_hint="--session")
    flows = flows_with_steps(steps, session)
    if flow not in flows:       # an empty diagram would say nothing: say why instead
        lang = _lang(lang)
        where = message("in_session", lang, session=session) if session else ""
        raise _config_error(message("empty_flow", lang, file=source, flow=flow, where=where,
                                    flows=", ".join(flows) or message("none", lang)))
    written = _drawn(lambda: draw_sequence(steps, target, fmt=fmt, lang=_lang(lang), flow=flow,
                                           session=session, notes=notes, collapse=not no_collapse,
                                           page_rows=page_rows), target, lang)
    for path in written:
        click.echo(str(path))


def _diagram_ladder(source, flow, session, packets_view, keylog, notes, page_rows, out, fmt, lang):
    from gponsim.capture.pcap import CaptureError
    from gponsim.diagrams import draw_ladder
    from gponsim.diagrams.ladder import NoConnection

    if not packets_view:
        raise click.BadParameter("a key log is for --packets (a capture's TCP ladder)", param_hint="--keylog")
    if flow != "all":
        raise click.BadParameter("--flow chooses Steps; --packets draws one connection (--session)",
                                 param_hint="--flow")
    target = _diagram_output(out, fmt, "ladder", lang)
    try:
        written = _drawn(lambda: draw_ladder(source, target, session=session, keylog=keylog, fmt=fmt,
                                             lang=_lang(lang), notes=notes, page_rows=page_rows), target, lang)
    except CaptureError as exc:
        raise _config_error(f"--packets draws a capture (pcap or pcapng): {exc}")
    except NoConnection as exc:
        raise click.BadParameter(str(exc), param_hint="--session" if session else "--from")
    for path in written:
        click.echo(str(path))


# --------------------------------------------------------------------- lesson

def _run_lesson_options(f):
    f = click.option("--capture", type=click.Choice(["auto", "here", "namespace", "recorded"]), default="auto",
                     show_default=True,
                     help="For lessons that capture: here (root or CAP_NET_RAW), namespace (the whole lesson in "
                          "a user + network namespace of its own, no root needed), recorded (the capture this "
                          "lesson recorded, shipped in captures/); auto tries them in that order.")(f)
    f = click.option("--network", is_flag=True,
                     help="Run on the lab network (namespaces; root or user namespaces): the lesson's "
                          "clients on pc1 (192.168.40.101), the internet's MTA on internet, the server "
                          "at 192.168.40.50, names from the lab's DNS.")(f)
    f = click.option("--timeout", type=click.FloatRange(5, 3600), default=300, show_default=True,
                     help="With --interactive: seconds to wait for each thing the student does.")(f)
    f = click.option("--interactive", is_flag=True,
                     help="The student acts with their own mail client (Thunderbird); "
                          "the lesson says what to do and waits for it.")(f)
    f = click.option("--listen", default="127.0.0.1", show_default=True,
                     help="Address the lesson's lab listens on (0.0.0.0 for students' own PCs).")(f)
    f = click.option("--port-offset", type=click.IntRange(0, 64000),
                     help="Standard ports + N instead of free ports (e.g. to point Thunderbird at it).")(f)
    f = click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                     help="Folder for the run's files (default: captures/<lesson>-<time>/).")(f)
    f = click.option("--min-score", type=click.FloatRange(0, 100), metavar="PERCENT",
                     help="The quiz (asked then, as with --quiz) must reach this score, "
                          "or the exit code is 1.")(f)
    f = click.option("--student", metavar="NAME", help="The student's name, kept in summary.json.")(f)
    f = click.option("--quiz", is_flag=True, help="Ask the lesson's questions at the end.")(f)
    f = click.option("--pace", type=click.Choice(["step", "none"]), default="none", show_default=True,
                     help="step: wait for Enter between steps (teaching live); what the lab does "
                          "meanwhile is shown after the next step's text.")(f)
    f = click.option("--show-startup", is_flag=True,
                     help="Narrate the lab's start-up (Dovecot's auth handshake, ...) instead of one line.")(f)
    f = click.option("--explain", type=EXPLAIN, default="first", show_default=True, help=EXPLAIN_HELP)(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No protocol narration (lesson text and results only).")(f)
    f = click.option("--lang", type=LANG, help="Language (default: from the locale, else en).")(f)
    return f


def _run_lesson(lesson, lang, quiet, explain, show_startup, pace, quiz, student, min_score, out,
                port_offset, listen, interactive, timeout, capture, network):
    from gponsim.lessons.capturing import CaptureModeError
    from gponsim.lessons.network import NetworkUnavailable
    from gponsim.net.build import BuildError
    from gponsim.lessons.runner import LessonInterrupted, OutputFolderError, RunOptions, run_lesson
    from gponsim.lessons.words import word
    from gponsim.server.lab import LabError
    from gponsim.steps import StepBus

    try:
        summary = run_lesson(lesson, RunOptions(lang=_lang(lang), pace=pace, quiz=quiz, out=out,
                                                port_offset=port_offset, listen=listen,
                                                interactive=interactive, timeout=timeout,
                                                capture=capture, narrate=not quiet,
                                                explain=explain, show_startup=show_startup,
                                                student=student, min_score=min_score,
                                                network=network), StepBus())
    except (NetworkUnavailable, BuildError) as exc:
        raise click.ClickException(str(exc))
    except CaptureModeError as exc:
        raise click.UsageError(str(exc))
    except OutputFolderError as exc:
        raise _config_error(exc)
    except LabError as exc:
        from gponsim.lessons.runner import lab_error_text

        raise click.ClickException(lab_error_text(exc, _lang(lang), port_offset))
    except LessonInterrupted as exc:              # the runner said so; exit as a shell expects
        raise SystemExit(128 + exc.signum)
    except KeyboardInterrupt:                     # before the lab started (or a second Ctrl-C)
        click.echo(word("interrupted_early", _lang(lang)), err=True)
        raise SystemExit(130)
    if not summary.passed:
        raise SystemExit(1)


class _LessonGroup(click.Group):
    """`gponsim lesson ID` runs a lesson by its id; `list` and `run FILE` are commands."""

    def list_commands(self, ctx):
        from gponsim.lessons.model import lesson_files

        return list(self.commands) + [p.stem for p in lesson_files()]

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        from gponsim.lessons.model import LessonError, find_lesson

        try:
            lesson = find_lesson(name)
        except LessonError:
            return None

        @_run_lesson_options
        def run_by_id(**kw):
            _run_lesson(lesson, **kw)
        return click.Command(name, callback=run_by_id, params=run_by_id.__click_params__,
                             help=f"{lesson.title['en']} / {lesson.title['es']}",
                             short_help=lesson.title["en"])


@main.group(cls=_LessonGroup)
def lesson():
    """Guided lessons on the lab, with narration, checkpoints, diagrams and a quiz.

    \b
      gponsim lesson list
      gponsim lesson send-mail --lang es
      gponsim lesson run my-lesson.toml
    """


@lesson.command("list")
@click.option("--lang", type=LANG, help="Language of the titles.")
def lesson_list(lang):
    """The lessons of the course, each with the lab document's section it follows."""
    from gponsim.lessons.model import LessonError, lesson_files, load_lesson

    for n, path in enumerate(lesson_files(), 1):
        try:
            les = load_lesson(path)
        except LessonError as exc:
            click.echo(f"{n:>2}. {path.stem:18} (broken: {exc})")
            continue
        # (sections are the lab document's own titles, in Spanish: quoted as such)
        where = {"es": "documento del laboratorio", "en": "lab document"}[_lang(lang)]
        click.echo(f"{n:>2}. {les.id:18} {les.title[_lang(lang)]}  [{where}: «{les.section}»]")


@lesson.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_run_lesson_options
def lesson_run(file, **kw):
    """Run a lesson from its TOML file (an instructor's own lesson, for example)."""
    from gponsim.lessons.model import LessonError, load_lesson

    try:
        les = load_lesson(file)
    except LessonError as exc:
        raise _config_error(exc)
    _run_lesson(les, **kw)


# --------------------------------------------------------------------- slides

@main.command()
@click.argument("lessons", nargs=-1)
@click.option("--all", "all_lessons", is_flag=True, help="Every lesson of the course, and an index page.")
@click.option("--from", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A lesson's run folder (from `gponsim lesson ID --out DIR`); without it the lesson runs first.")
@click.option("--runs", "runs_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of run folders named by lesson (RUNS/ID, from `gponsim lesson ID --out "
                   "RUNS/ID`): each lesson found there is not run again.")
@click.option("--format", "fmt", type=click.Choice(["html", "pptx", "both"]), default="html", show_default=True)
@click.option("--lang", type=LANG, help="Language of the slides.")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("slides"),
              show_default=True, help="Folder for the decks.")
def slides(lessons, all_lessons, run_dir, runs_dir, fmt, lang, out):
    """Instructor decks from lessons and what really happened in a run.

    \b
      gponsim slides send-mail --format both --lang es
      gponsim slides --all -o course-slides
      gponsim slides sasl --from captures/sasl-20261127-101500
      gponsim slides --all --runs my-runs     # my-runs/send-mail/, my-runs/sasl/, ...
    """
    import subprocess
    import tempfile

    from gponsim.lessons.model import LessonError, find_lesson, lesson_files
    from gponsim.slides import SlidesError, make_slides, write_index

    lang = _lang(lang)
    ids = [p.stem for p in lesson_files()] if all_lessons else list(lessons)
    if not ids:
        raise click.UsageError("name at least one lesson, or --all")
    if run_dir and len(ids) != 1:
        raise click.UsageError("--from goes with exactly one lesson")
    if run_dir and not (run_dir / "summary.json").is_file():
        raise click.BadParameter(f"{run_dir} is not a lesson's run folder (it has no summary.json); "
                                 "give one that `gponsim lesson ID` wrote, e.g. captures/ID-<time>",
                                 param_hint="--from")
    formats = ("html", "pptx") if fmt == "both" else (fmt,)
    built = []
    for lesson_id in ids:
        try:
            les = find_lesson(lesson_id)
        except LessonError as exc:
            raise _config_error(exc)
        source = run_dir
        if source is None and runs_dir is not None and (runs_dir / lesson_id / "summary.json").is_file():
            source = runs_dir / lesson_id
        if source is None and all_lessons and les.lab.get("network"):
            from gponsim.net.control import ControlError, choose_mode

            try:
                choose_mode()
            except ControlError as exc:      # no namespaces here: the rest of the course still gets decks
                click.echo(f"gponsim: skipping the lesson {lesson_id}: {exc}", err=True)
                continue
        if source is None:
            source = Path(tempfile.mkdtemp(prefix=f"gponsim-{lesson_id}-"))
            click.echo(f"gponsim: running the lesson {lesson_id} to record it…", err=True)
            # Each run in its own process: Twisted's reactor runs once per process.
            done = subprocess.run([sys.executable, "-m", "gponsim", "lesson", lesson_id, "--quiet",
                                   "--lang", lang, "--out", str(source)], capture_output=True, text=True)
            if not (source / "summary.json").exists():
                raise click.ClickException(f"the lesson {lesson_id} could not run:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        try:
            written = make_slides(les, source, out, formats=formats, lang=lang)
        except SlidesError as exc:
            raise click.ClickException(str(exc))
        built.append((les, written))
        for path in written:
            click.echo(str(path))
    if all_lessons:
        click.echo(str(write_index(built, out, lang)))


# --------------------------------------------------------------------- config

@main.group()
def config():
    """The lab profile: Postfix and Dovecot configuration files."""


@config.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@click.option("--lmtp", is_flag=True,
              help="Deliver through Dovecot's LMTP: mailbox_transport in main.cf, lmtp in "
                   "protocols, its socket in 10-master.conf, auth_username_format = %Ln "
                   "in 20-lmtp.conf (the lines shipped commented out).")
def config_init(directory, force, lmtp):
    """Write the lab profile (main.cf, master.cf, Dovecot conf.d) into DIRECTORY.

    Edit them as on the real server, then `gponsim serve --config DIRECTORY`.
    """
    from gponsim.config import ConfigError, init_config

    try:
        written = init_config(directory, force=force, lmtp=lmtp)
    except (ConfigError, FileExistsError) as exc:
        raise _config_error(exc)
    except OSError as exc:
        raise _config_error(f"cannot write the profile in {directory}: {exc.strerror or exc}")
    for path in written:
        click.echo(str(path))


@config.command("explain")
@click.argument("file", required=False)
@click.option("--config", "config_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Profile directory (default: the lab document's profile).")
@click.option("--lang", type=LANG, help="Language (default: from the locale, else en).")
def config_explain(file, config_dir, lang):
    """Explain every parameter of the profile (or of FILE, or the one
    parameter named, set or not: `gponsim config explain
    smtpd_client_connection_count_limit`), and whether gponsim simulates it."""
    from rich.console import Console

    from gponsim.config import (ConfigError, explain_rows, load_profile, parameter_rows,
                                render_explain)

    try:
        profile = load_profile(config_dir)
        rows = None
        if file is not None and not Path(file).exists():
            rows = parameter_rows(profile, file, lang=_lang(lang))
            if not rows and "/" not in file and "." not in file:
                raise click.BadParameter(
                    f"{file}: neither a file nor a Postfix or Dovecot parameter gponsim knows / "
                    f"no es un archivo ni un parámetro de Postfix o Dovecot que gponsim conozca",
                    param_hint="FILE")
        if not rows:
            if file is not None and not Path(file).exists() and not any(
                    p.name == Path(file).name for p in profile.files()):
                raise click.BadParameter(f"{file}: no such file / no existe", param_hint="FILE")
            rows = explain_rows(profile, file=file, lang=_lang(lang))
    except ConfigError as exc:
        raise _config_error(exc)
    render_explain(rows, Console(), _lang(lang))


# ---------------------------------------------------------------------- users

@main.group()
def users():
    """The lab's mail users (a Dovecot passwd-file with hashed passwords)."""


NO_LAB_USERS = {
    "es": "gponsim: no hay ningún laboratorio en {root} (ni {users} ni su cola): indica el --lab-root "
          "que usó `gponsim serve` (los usuarios se crean al arrancar el laboratorio por primera vez, "
          "o con `gponsim users add`).",
    "en": "gponsim: no lab in {root} (neither {users} nor its queue): give the --lab-root that "
          "`gponsim serve` used (the users appear when a lab first starts, or with `gponsim users add`).",
}
NEW_LAB_USERS = {
    "es": "gponsim: laboratorio nuevo en {root}: su archivo de usuarios {users} empieza con user1 y user2.",
    "en": "gponsim: a new lab in {root}: its users file {users} starts with user1 and user2.",
}


def _users(lab_root: Path, create: bool = False):
    """The lab's users file. Only ``users add`` may start a lab's folder (to prepare
    accounts before its first start); elsewhere a folder with no lab (a typo) is an error."""
    from gponsim.config import load_profile
    from gponsim.server.dovecot.passwd import Users

    profile = load_profile(None)
    root = lab_root.resolve()
    path = profile.path(profile.passwd_file(), root)
    if not path.exists() and not (root / "var" / "spool" / "postfix").is_dir():
        if not create:
            click.echo(NO_LAB_USERS[_lang(None)].format(root=root, users=path), err=True)
            raise SystemExit(2)
        click.echo(NEW_LAB_USERS[_lang(None)].format(root=root, users=path), err=True)
    return Users.ensure_default(path)


lab_root_option = click.option("--lab-root", type=click.Path(file_okay=False, path_type=Path),
                               default=Path("gponlab"), show_default=True, help="The lab's folder.")


def _users_call(fn):
    from gponsim.server.dovecot.passwd import UsersError

    try:
        return fn()
    except UsersError as exc:
        raise click.ClickException(str(exc))


@users.command("list")
@lab_root_option
def users_list(lab_root):
    """List the users."""
    for name in _users_call(lambda: _users(lab_root).names()):
        click.echo(name)


@users.command("add")
@click.argument("name")
@click.password_option("--password", help="The new user's password (asked if not given).")
@lab_root_option
def users_add(name, password, lab_root):
    """Add a user (mail for NAME@gponlab.local lands in var/mail/NAME)."""
    from gponsim.server import accounts

    _users_call(lambda: _users(lab_root, create=True).add(name, password))
    accounts.ensure(lab_root, [name])       # and a Unix account, as adduser makes
    click.echo(f"user {name} added")


@users.command("del")
@click.argument("name")
@lab_root_option
def users_del(name, lab_root):
    """Delete a user (its mailbox is kept)."""
    from gponsim.server import accounts

    _users_call(lambda: _users(lab_root).delete(name))
    accounts.Accounts(accounts.path_for(lab_root)).remove_user(name)
    click.echo(f"user {name} deleted")


@users.command("passwd")
@click.argument("name")
@click.password_option("--password", help="The new password (asked if not given).")
@lab_root_option
def users_passwd(name, password, lab_root):
    """Change a user's password."""
    _users_call(lambda: _users(lab_root).set_password(name, password))
    click.echo(f"password of {name} changed")


# ---------------------------------------------------------------------- queue

@main.command()
@lab_root_option
@click.option("--flush", is_flag=True, help="Retry every deferred message now (postqueue -f).")
@click.option("--delete", "delete_ids", multiple=True, metavar="QID",
              help="Delete a queued message (postsuper -d QID); repeatable, ALL for every one.")
def queue(lab_root, flush, delete_ids):
    """The lab's mail queue, like mailq; --flush like postqueue -f; --delete like postsuper -d."""
    from gponsim.server.postfix import postqueue as control
    from gponsim.server.maillog import MailLog
    from gponsim.server.postfix.queuefile import list_queue

    root = lab_root.resolve()
    spool = root / "var" / "spool" / "postfix"
    if not spool.is_dir():        # what postqueue says, and where the lab could be
        click.echo(f"postqueue: fatal: chdir {spool}: No such file or directory", err=True)
        click.echo(f"gponsim: no lab in {root}: give the --lab-root that `gponsim serve` used "
                   "(the queue appears when a lab first starts).", err=True)
        raise SystemExit(2)
    if delete_ids:
        ids = [e.qid for e in list_queue(root) if e.state != "active"] \
            if "ALL" in delete_ids else list(delete_ids)
        log = MailLog(root / "var" / "log" / "mail.log", hostname="mail")
        deleted = 0
        for qid in ids:
            try:
                control.delete(root, qid, log)
                click.echo(f"postsuper: {qid}: removed")
                deleted += 1
            except control.QueueControlError as exc:
                click.echo(f"postsuper: warning: {exc}", err=True)
        log.close()
        click.echo(f"postsuper: Deleted: {deleted} message{'s' if deleted != 1 else ''}")
        if deleted != len(ids):
            raise SystemExit(1)
        return
    if flush:
        try:
            n = control.request_flush(root)
        except control.QueueControlError as exc:
            click.echo(f"postqueue: fatal: {exc}", err=True)
            click.echo("gponsim: the lab is not running; deferred mail is retried when it starts.",
                       err=True)
            raise SystemExit(69)
        click.echo(f"gponsim: flush requested: {n} deferred message{'s' if n != 1 else ''} "
                   f"will be retried now", err=True)
        return
    click.echo(control.mailq_text(root), nl=False)


# ---------------------------------------------------------------------- gmail

@main.group(invoke_without_command=True)
@click.option("--lab-root", type=click.Path(file_okay=False, path_type=Path), default=Path("gponlab"),
              show_default=True, help="The lab's folder (CA, gmail-sim.conf, internet/ mailboxes).")
@click.option("--listen", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=2587, show_default=True,
              help="Port to listen on (0 = any free port).")
@click.option("--fault", type=click.Choice(["keep", "none", "refuse", "no-starttls", "greeting-421",
                                            "mail-451", "mail-550", "rcpt-450", "rcpt-550",
                                            "data-451", "data-552", "slow"]),
              default="keep", show_default=True,
              help="Set the fault in <lab root>/etc/gmail-sim.conf (keep: leave it as it is).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the bound port as JSON to this file once listening.")
@narration_options
@click.pass_context
def gmail(ctx, lab_root, listen, port, fault, ready_file, lang, quiet, steps_file, explain,
          reveal_secrets):
    """The Gmail simulator (smtp.gmail.com) on its own, narrating what it sees.

    \b
    gponsim gmail --port 2587                 # then: swaks --server 127.0.0.1 --port 2587 --tls ...
    gponsim gmail --fault rcpt-550            # a deterministic fault (see etc/gmail-sim.conf)
    gponsim gmail fault refuse                # the same for a running lab (gponsim serve)
    gponsim gmail send-to-lab --from alice@example.org --to user2@gponlab.local --port-offset 10000
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"lab_root": lab_root}
        return
    import json

    from gponsim.server.sims import gmail as gm

    root = lab_root.resolve()
    if fault != "keep":
        gm.set_fault(root, fault)
    bus = _sinks(lang, quiet, steps_file, explain, reveal_secrets)
    from twisted.internet import reactor

    sim = gm.GmailSimulator(root, emit=bus.emit, reactor=reactor, listen=listen, port=port,
                            wire_steps=True)

    def started():
        try:
            bound = sim.start()
        except Exception as exc:  # noqa: BLE001 - told to the user
            click.echo(f"gponsim: cannot listen on {listen}:{port}: {exc}", err=True)
            reactor.stop()
            return
        click.echo(f"gponsim: Gmail simulator (smtp.gmail.com) on {listen}:{bound}; CA in "
                   f"{sim.pki.ca_cert}; settings in {sim.conf_path}; mail lands in "
                   f"{root / gm.INTERNET_DIR}/<domain>/<user>", err=True)
        if ready_file:
            tmp = Path(str(ready_file) + ".tmp")
            tmp.write_text(json.dumps({"port": bound, "lab_root": str(root)}))
            tmp.replace(ready_file)

    def on_signal(signum, _frame):
        reactor.callFromThread(reactor.stop)

    def install():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    reactor.callWhenRunning(install)
    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: sim.stop())
    reactor.run()
    bus.close()


@gmail.command("fault")
@click.argument("fault", type=click.Choice(["none", "refuse", "no-starttls", "greeting-421",
                                            "mail-451", "mail-550", "rcpt-450", "rcpt-550",
                                            "data-451", "data-552", "slow"]))
@click.option("--delay", type=float, help="Seconds before each reply (with slow).")
@click.pass_context
def gmail_fault(ctx, fault, delay):
    """Choose the simulator's fault; a running lab or simulator applies it at once.

    \b
    gponsim gmail fault refuse      # relay down: mail waits in the deferred queue
    gponsim gmail fault none        # back to normal: the next retry delivers it
    """
    from gponsim.server.sims import gmail as gm

    root = ctx.obj["lab_root"].resolve()
    gm.set_fault(root, fault, delay)
    click.echo(f"gponsim: Gmail simulator fault = {fault} ({root / gm.CONF_NAME})", err=True)


@gmail.command("send-to-lab")
@click.option("--from", "sender", default="alice@example.org", show_default=True)
@click.option("--to", "recipients", multiple=True, required=True, help="Lab recipient (repeatable).")
@click.option("--subject", default="Hello from the internet", show_default=True)
@click.option("--body", default="Hi,\n\nThis mail comes from outside the lab, through port 25.\n")
@click.option("--server", default="127.0.0.1", show_default=True, help="Address of the lab.")
@click.option("--port-offset", type=click.IntRange(0, 64000), default=0, show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), help="Exact port of the lab's smtp service.")
@click.option("--helo", default="mail-sor-f41.google.com", show_default=True,
              help="The name the internet MTA gives in EHLO.")
@click.option("--no-tls", is_flag=True, help="Do not use STARTTLS even if offered.")
@click.option("--mx", is_flag=True,
              help="Find the lab as the internet does: the MX of the recipient's domain, then its "
                   "address, from the DNS of /etc/resolv.conf (on the lab network: gponsim net exec "
                   "internet -- gponsim gmail send-to-lab --mx --to user2@gponlab.local).")
@narration_options
def gmail_send_to_lab(sender, recipients, subject, body, server, port_offset, port, helo, no_tls, mx,
                      lang, quiet, steps_file, explain, reveal_secrets):
    """The internet delivers a mail to the lab on port 25 (MTA to MTA, no AUTH), narrated."""
    from gponsim.clients.smtp import build_message, say
    from gponsim.server.sims.gmail import send_to_lab

    lang = _lang(lang)
    bus = _sinks(lang, quiet, steps_file, explain, reveal_secrets)
    domain = sender.rpartition("@")[2] or "example.org"
    message = build_message(sender, list(recipients), subject, body, domain=domain)
    if mx:
        from gponsim.server.sims.internet_mta import MxError, deliver_by_mx

        try:
            route = _narrated(bus, lambda: deliver_by_mx(
                sender=sender, recipients=list(recipients), message=message, helo=helo,
                starttls=not no_tls, port=port or 25 + port_offset, emit=bus.emit))
        except MxError as exc:
            raise click.ClickException(str(exc))
        click.echo(f"gponsim: {route.describe()}", err=True)
        click.echo(f"gponsim: the lab accepted the mail, queue id {route.queue_id}", err=True)
        return
    qid = _narrated(bus, lambda: send_to_lab(
        host=server, port=port or 25 + port_offset, sender=sender, recipients=list(recipients),
        message=message, helo=helo, starttls=not no_tls, emit=bus.emit), lang)
    click.echo(say("lab_queued", lang, qid=qid), err=True)


# -------------------------------------------------------------------- analyze

@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--keylog", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="NSS key log (SSLKEYLOGFILE, gponsim serve --keylog) to decrypt TLS 1.2 and 1.3.")
@click.option("--json", "as_json", is_flag=True, help="Steps and summary as JSON on stdout.")
@click.option("--credentials", is_flag=True,
              help="List every password / AUTH exchange seen, decoded, in clear or inside TLS.")
@click.option("--extract", type=click.Path(file_okay=False, path_type=Path),
              help="Save every transferred message as .eml in this folder.")
@click.option("--packets", "packets_view", is_flag=True,
              help="The packet level: one line per packet (TCP flags, relative seq/ack, length, "
                   "window) with what it carries and what to notice.")
@click.option("--packet", "packet_range", metavar="N|N..M",
              help="Only these packets (numbers as in Wireshark, from 1); implies --packets.")
@click.option("--session", metavar="N|ID",
              help="Only this connection (its number in the summary, or its session id); "
                   "implies --packets.")
@click.option("--proto", type=click.Choice(["smtp", "imap", "pop3", "tls"]),
              help="Only the connections of this protocol (tls: those that used TLS); implies --packets.")
@click.option("--layers", is_flag=True,
              help="With --packet N: that packet layer by layer (Ethernet, IP, TCP, TLS, the "
                   "mail protocol), every field explained, and its bytes in hex.")
@narration_options
def analyze(file, keylog, as_json, credentials, extract, packets_view, packet_range, session, proto,
            layers, lang, quiet, steps_file, explain, reveal_secrets):
    """Explain a capture (pcap or pcapng) of SMTP, IMAP or POP3 traffic, step by step.

    A summary first (connections, clients, TLS, failures), then the same
    narration as the live lab. Exit code 2 when nothing could be read.

    \b
    gponsim analyze lab.pcapng --packets                 # what travels on the wire, packet by packet
    gponsim analyze lab.pcapng --packets --session 2     # one connection
    gponsim analyze lab.pcapng --packet 4 --layers       # one packet, layer by layer
    """
    try:
        if packets_view or packet_range or session or proto or layers:
            from gponsim.packets.command import run as run_packets

            code = run_packets(file, keylog=keylog, as_json=as_json, lang=_lang(lang), explain=explain,
                               reveal=reveal_secrets, packet=packet_range, session=session,
                               proto=proto, layers=layers)
        else:
            from gponsim.capture.command import run

            code = run(file, keylog=keylog, steps_file=steps_file, as_json=as_json, lang=_lang(lang),
                       credentials=credentials, extract=extract, quiet=quiet, explain=explain,
                       reveal=reveal_secrets)
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`gponsim analyze BIG | head`): end quietly, as a program
        # killed by SIGPIPE does (status 128 + 13), without writing the rest anywhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    sys.exit(code)


@main.command()
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("capture.pcapng"), show_default=True,
              help="The capture file (pcapng; TLS secrets of --keylog embedded).")
@click.option("--iface", default="lo", show_default=True, help="Interface to capture on.")
@click.option("--port-offset", type=click.IntRange(0, 64000), default=0, show_default=True,
              help="The lab's --port-offset (its ports are 25, 587, 465, 143, 993, 110, 995 + N).")
@click.option("--port", "ports", multiple=True, type=click.IntRange(1, 65535),
              help="Capture this TCP port instead (repeatable).")
@click.option("--duration", type=click.FloatRange(0, min_open=True), help="Stop after N seconds.")
@click.option("--count", type=click.IntRange(1), help="Stop after N packets.")
@click.option("--keylog", type=click.Path(dir_okay=False, path_type=Path), envvar="SSLKEYLOGFILE",
              help="The lab's key log (gponsim serve --keylog), to narrate TLS decrypted; its "
                   "secrets are embedded in the file as they appear.")
@narration_options
def capture(out, iface, port_offset, ports, duration, count, keylog, lang, quiet, steps_file,
            explain, reveal_secrets):
    """Capture the lab's traffic live (needs root or CAP_NET_RAW), narrating it.

    The file can be analyzed again later with `gponsim analyze FILE` (the
    --keylog secrets are in it) or opened in Wireshark, decrypted as well.
    """
    from gponsim.capture.command import LAB_PORTS, run_capture

    chosen = list(ports) or [p + port_offset for p in LAB_PORTS]
    sys.exit(run_capture(out, iface=iface, ports=chosen, duration=duration, count=count,
                         keylog=keylog, lang=_lang(lang), quiet=quiet, steps_file=steps_file,
                         explain=explain, reveal=reveal_secrets))


# -------------------------------------------------------------------- a class

@main.group("class")
def class_():
    """A class of students on one lab: accounts, a live web view, grades.

    \b
      gponsim class start --students 30 --listen 0.0.0.0 --web-listen 0.0.0.0
      gponsim class start --roster class.csv --port-offset 10000
      gponsim class replay class-20250301-1000/ captures/thunderbird-*/
      gponsim grade class-20250301-1000/
    """


@class_.command("start")
@click.option("--students", type=click.IntRange(1, 999), help="Make N accounts: student01, student01b, ...")
@click.option("--roster", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with a 'login' column (and name, partner, email, idnumber).")
@click.option("--lesson", "lesson_id", default="thunderbird", show_default=True,
              help="The lesson each student does (it needs a [class] table).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="The class's folder (default: class-<date>-<time>); an existing one is resumed.")
@click.option("--listen", default="127.0.0.1", show_default=True,
              help="Address the lab listens on (0.0.0.0: the students' PCs).")
@click.option("--web-listen", default="127.0.0.1", show_default=True,
              help="Address the web view listens on (0.0.0.0 for the students' pages).")
@click.option("--port-offset", type=click.IntRange(0, 64000), default=0, show_default=True,
              help="Add N to every standard port, the web view's 8080 too.")
@click.option("--port", "port_overrides", multiple=True, metavar="SERVICE=PORT",
              help="Put one service on another port (0 = any free port).")
@click.option("--web-port", type=click.IntRange(0, 65535), help="The web view's port (0 = any free port).")
@click.option("--server-name", help="What students type as the server (default: the --listen address, "
                                    "or the lab's myhostname on 0.0.0.0).")
@click.option("--config", "config_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Lab profile written by `gponsim config init`.")
@click.option("--relay", type=click.Choice(["sim", "real", "none"]), default="sim", show_default=True,
              help="Outgoing mail, as for `gponsim serve`.")
@click.option("--handouts-pdf", is_flag=True, help="Also print the handouts to PDF (headless Chromium).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the ports, the web port and the teacher's token (0600) once running.")
@click.option("--lang", type=LANG, help="Language of the terminal, the pages' default and the grades' texts.")
def class_start(students, roster, lesson_id, out, listen, web_listen, port_offset, port_overrides,
                web_port, server_name, config_dir, relay, handouts_pdf, ready_file, lang):
    """Start the lab for a class, with every student's accounts and the live web view.

    Prints the teacher's URL (with its token), where the handouts and the
    accounts file are, and runs until Ctrl-C; then writes the grades.
    """
    import time

    from gponsim.classroom.command import start
    from gponsim.classroom.run import ClassOptions

    if students and roster:
        raise click.UsageError("--students or --roster, not both")
    out = out or Path(f"class-{time.strftime('%Y%m%d-%H%M%S')}")
    if not students and not roster and not (out / "accounts.csv").exists():
        raise click.UsageError("who is in the class: --students N, or --roster FILE.csv "
                               "(or --out with a class already started, to go on with it)")
    lang = _lang(lang)
    options = ClassOptions(out=out, lesson=lesson_id,
                           students=students, roster=roster, listen=listen, web_listen=web_listen,
                           port_offset=port_offset, ports=_parse_ports(port_overrides), web_port=web_port,
                           lang=lang, config_dir=config_dir, relay=relay, server_name=server_name,
                           handouts_pdf=handouts_pdf)
    start(options, ready_file, lang)


@class_.command("replay")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--keylog", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TLS key log for a capture (default: NAME.keys or keys.log beside it).")
@click.option("--listen", default="127.0.0.1", show_default=True, help="Address of the replay page.")
@click.option("--web-port", type=click.IntRange(0, 65535), default=8081, show_default=True,
              help="Its port (0 = any free port).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the port and the token (0600) once listening.")
@click.option("--lang", type=LANG, help="The page's default language.")
def class_replay(runs, keylog, listen, web_port, ready_file, lang):
    """Replay recorded runs in the browser: a lesson's or a class's folder, a steps.jsonl,
    or a capture (pcap/pcapng with its keys): play, pause, step, speed, filter, checkpoints."""
    from gponsim.classroom.command import replay

    replay(list(runs), keylog, listen, web_port, _lang(lang), ready_file)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--capture", "captures", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A capture (pcap/pcapng) students made on the real lab server (repeatable).")
@click.option("--keylog", "keylogs", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Its TLS key log (one for all, or one per --capture).")
@click.option("--roster", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --capture: who is who (roster CSV: login, partner, ...).")
@click.option("--lesson", "lesson_id", help="The lesson whose evidence is checked (default: the run's).")
@click.option("--port", "port_overrides", multiple=True, metavar="SERVICE=PORT",
              help="With --capture: a server on another port than the standard one (e.g. submission=10587).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for grades.csv, grades.json, moodle.csv, quiz.*.gift (default: RUN/grades).")
@click.option("--lang", type=LANG, help="Language of the feedback and the Moodle column.")
def grade(run_dir, captures, keylogs, roster, lesson_id, port_overrides, out, lang):
    """Per-student grades from protocol evidence: a class run, or captures with their keys.

    Writes grades.csv (pass/fail per check), grades.json (with the evidence
    lines), moodle.csv (Moodle's grade import) and the quiz as GIFT.
    """
    from gponsim.classroom.command import grade as run_grade

    run_grade(run_dir, list(captures), list(keylogs), roster, lesson_id, out, _lang(lang),
              _parse_ports(port_overrides))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
