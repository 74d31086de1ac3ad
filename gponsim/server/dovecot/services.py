"""Dovecot's mail-reading services in the lab: IMAP (143, 993) and POP3 (110, 995).

Which services run, and on which ports, comes from the profile as Dovecot
reads it: ``protocols`` and each ``service imap-login { inet_listener imap
{ port, ssl } }`` (port 0 disables a listener). ``--port NAME=PORT``
(NAME: imap, imaps, pop3, pop3s) and ``--port-offset`` apply as for smtpd.
"""

from __future__ import annotations

from gponsim.server.dovecot.imap import ImapContext, ImapFactory, ImapSettings
from gponsim.server.dovecot.login import LoginAuth
from gponsim.server.tls import listening_factory
from gponsim.server.mailstore.worker import MailWorker
from gponsim.server.maillog import pid_for


def imap_settings(profile) -> ImapSettings:
    greeting = profile.dovecot("login_greeting") or "Dovecot ready."
    return ImapSettings(
        greeting=greeting,
        disable_plaintext_auth=profile.dovecot_bool("disable_plaintext_auth"),
        mechanisms=profile.auth_mechanisms(),
        mail_location=profile.mail_location(),
        special_use=[(box.name, box.special_use, box.auto) for box in profile.mailboxes()],
        max_userip_connections={protocol: profile.mail_max_userip_connections(protocol)
                                for protocol in ("imap", "pop3")},
        auth_verbose=profile.dovecot_bool("auth_verbose"),
    )


def start_dovecot_services(lab, tls_options) -> dict[str, int]:
    """Listen for every enabled IMAP/POP3 listener; adds them to ``lab.ports``."""
    from gponsim.server.dovecot.pop3 import Pop3Factory

    profile = lab.profile
    settings = imap_settings(profile)

    def log(text: str) -> None:
        lab.log.write("dovecot", pid_for("dovecot"), text)

    ctx = ImapContext(lab_root=lab.root, emit=lab.emit, log=log, auth=LoginAuth(lab.auth_client),
                      settings=settings, reactor=lab.reactor,
                      # mailbox commands in threads of their own (not the reactor's pool,
                      # which checks passwords and delivers mail)
                      worker=MailWorker(lab.reactor))
    lab.dovecot_context = ctx
    started = {}
    for listener in profile.inet_listeners():
        if listener.protocol == "imap":
            factory = ImapFactory(ctx, tls_options, implicit_tls=listener.ssl)
        elif listener.protocol == "pop3":
            factory = Pop3Factory(ctx, tls_options, implicit_tls=listener.ssl)
        else:
            continue
        port = lab.port_for(listener.name, listener.port)
        started[listener.name] = lab._listen(
            listener.name, port, listening_factory(factory, tls_options, listener.ssl))
    lab.ports.update(started)
    return started
