"""gponsim's command line: parse options, call the library, report clearly.

Nothing here knows a protocol; every command is a thin shell over a library
module (gponsim.server.lab, gponsim.clients.smtp, gponsim.config, ...).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from gponsim import __version__

LANG = click.Choice(["es", "en"])
EXPLAIN = click.Choice(["first", "all", "none"])


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
    from gponsim.steps import JsonlRecorder, StepBus

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
    f = click.option("--explain", type=EXPLAIN, default="first", show_default=True,
                     help="Commentary: the first time each step appears, every time, or never.")(f)
    f = click.option("--steps", "steps_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also record every Step as JSON lines in this file.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No narration on the terminal.")(f)
    f = click.option("--lang", type=LANG, help="Language of the commentary (default: from the locale, else en).")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gponsim")
def main() -> None:
    """gponsim: learn how e-mail really works on the GPON lab's mail server.

    \b
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
@narration_options
def serve(lab_root, config_dir, port_offset, port_overrides, listen, keylog, ready_file,
          lang, quiet, steps_file, explain, reveal_secrets):
    """Run the lab's mail server, narrating every protocol step.

    Services come from the profile's master.cf (smtp = 25, submission = 587),
    users from <lab root>/etc/dovecot/users (user1/pass and user2/pass at
    first start). Mail for user2 lands in <lab root>/var/mail/user2 and every
    event is logged, as Postfix does, in <lab root>/var/log/mail.log.
    Ctrl-C stops it; whatever was queued is delivered at the next start.
    """
    from gponsim.config import ConfigError
    from gponsim.server.lab import Lab, LabError, LabOptions

    ports = _parse_ports(port_overrides)
    bus = _sinks(lang, quiet, steps_file, explain, reveal_secrets)
    options = LabOptions(lab_root=lab_root, config_dir=config_dir, listen=listen,
                         port_offset=port_offset, ports=ports, keylog=keylog)
    from twisted.internet import reactor

    try:
        lab = Lab(options, emit=bus.emit, reactor=reactor)
    except ConfigError as exc:
        raise _config_error(exc)
    for where in lab.profile.unsimulated():
        click.echo(f"gponsim: note: {where} is not simulated by gponsim (see `gponsim config explain`)", err=True)
    failure: list[BaseException] = []

    def started(bound):
        click.echo(f"gponsim: lab running in {lab.root}  ({', '.join(f'{k} on {listen}:{v}' for k, v in bound.items())})",
                   err=True)
        click.echo("gponsim: press Ctrl-C to stop", err=True)
        if ready_file:
            lab.write_ready_file(ready_file)

    def failed(f):
        failure.append(f.value)
        reactor.stop()

    def on_signal(signum, _frame):
        lab.stop_signal = signum
        reactor.callFromThread(reactor.stop)

    def install_signals():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    reactor.callWhenRunning(install_signals)
    reactor.callWhenRunning(lambda: lab.start().addCallbacks(started, failed))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: lab.stop())
    reactor.run()
    bus.close()
    if failure:
        exc = failure[0]
        if isinstance(exc, ConfigError):
            raise _config_error(exc)
        if isinstance(exc, LabError):
            raise click.ClickException(str(exc))
        raise exc


# ----------------------------------------------------------------------- demo

@main.command()
@click.option("--lab-root", type=click.Path(file_okay=False, path_type=Path), default=Path("gponlab"),
              show_default=True, help="Folder holding all lab state.")
@narration_options
def demo(lab_root, lang, quiet, steps_file, explain, reveal_secrets):
    """A first tour: start the lab, send user1 → user2 through 587, show the mailbox.

    Every step is narrated: the banner, EHLO, STARTTLS, AUTH through Dovecot's
    auth socket, MAIL/RCPT/DATA, the queue, local delivery to the mbox.
    Needs no root and no other program: the lab uses free loopback ports.
    """
    from rich.console import Console

    from gponsim.config import ConfigError
    from gponsim.lessons.tour import run_tour
    from gponsim.server.lab import LabError

    bus = _sinks(lang, quiet, steps_file, explain, reveal_secrets)
    try:
        result = run_tour(lab_root, bus)
    except ConfigError as exc:
        raise _config_error(exc)
    except (LabError, OSError, TimeoutError) as exc:
        raise click.ClickException(str(exc))
    finally:
        bus.close()
    console = Console(highlight=False)
    es = _lang(lang) == "es"
    console.rule(f"{result.mbox}")
    console.print(result.mbox.read_text(errors="replace"), markup=False, soft_wrap=True)
    console.rule(f"{result.log}")
    console.print(result.log.read_text(errors="replace"), markup=False, soft_wrap=True)
    console.print(("Listo: el mensaje {qid} está en {mbox}. Ábrelo, o lee el registro en {log}."
                   if es else "Done: message {qid} is in {mbox}. Open it, or read the log in {log}.")
                  .format(qid=result.queue_id, mbox=result.mbox, log=result.log), markup=False)


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
    from gponsim.clients.smtp import SmtpClientError, build_message, send_mail

    bus = _sinks(lang, quiet, steps_file, explain, reveal_secrets)
    sender = sender or f"{user}@gponlab.local"
    target = port or ((25 if smtp25 else 587) + port_offset)
    message = build_message(sender, list(recipients), subject, body)
    try:
        result = send_mail(host=server, port=target, sender=sender, recipients=list(recipients),
                           message=message, user=None if (no_auth or smtp25) else user,
                           password=password, starttls=not no_tls, mechanism=mech,
                           initial_response=not no_initial_response, emit=bus.emit)
    except SmtpClientError as exc:
        bus.close()
        raise click.ClickException(str(exc))
    bus.close()
    click.echo(f"gponsim: accepted by the server, queue id {result.queue_id}", err=True)


# --------------------------------------------------------------------- config

@main.group()
def config():
    """The lab profile: Postfix and Dovecot configuration files."""


@config.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def config_init(directory, force):
    """Write the lab profile (main.cf, master.cf, Dovecot conf.d) into DIRECTORY.

    Edit them as on the real server, then `gponsim serve --config DIRECTORY`.
    """
    from gponsim.config import ConfigError, init_config

    try:
        written = init_config(directory, force=force)
    except (ConfigError, FileExistsError) as exc:
        raise _config_error(exc)
    for path in written:
        click.echo(str(path))


@config.command("explain")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--config", "config_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Profile directory (default: the lab document's profile).")
@click.option("--lang", type=LANG, help="Language (default: from the locale, else en).")
def config_explain(file, config_dir, lang):
    """Explain every parameter of the profile (or of FILE), and whether gponsim simulates it."""
    from rich.console import Console

    from gponsim.config import ConfigError, explain_rows, load_profile, render_explain

    try:
        profile = load_profile(config_dir)
        rows = explain_rows(profile, file=file, lang=_lang(lang))
    except ConfigError as exc:
        raise _config_error(exc)
    render_explain(rows, Console(), _lang(lang))


# ---------------------------------------------------------------------- users

@main.group()
def users():
    """The lab's mail users (a Dovecot passwd-file with hashed passwords)."""


def _users(lab_root: Path):
    from gponsim.config import load_profile
    from gponsim.server.users import Users

    profile = load_profile(None)
    return Users.ensure_default(profile.path(profile.passwd_file(), lab_root.resolve()))


lab_root_option = click.option("--lab-root", type=click.Path(file_okay=False, path_type=Path),
                               default=Path("gponlab"), show_default=True, help="The lab's folder.")


def _users_call(fn):
    from gponsim.server.users import UsersError

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
    _users_call(lambda: _users(lab_root).add(name, password))
    click.echo(f"user {name} added")


@users.command("del")
@click.argument("name")
@lab_root_option
def users_del(name, lab_root):
    """Delete a user (its mailbox is kept)."""
    _users_call(lambda: _users(lab_root).delete(name))
    click.echo(f"user {name} deleted")


@users.command("passwd")
@click.argument("name")
@click.password_option("--password", help="The new password (asked if not given).")
@lab_root_option
def users_passwd(name, password, lab_root):
    """Change a user's password."""
    _users_call(lambda: _users(lab_root).set_password(name, password))
    click.echo(f"password of {name} changed")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
