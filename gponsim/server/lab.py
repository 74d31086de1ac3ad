"""The lab: assembles the services of the GPON mail server from its profile.

Start order is the real server's: Dovecot's auth socket first, then the
queue (which delivers whatever a previous run left queued), then Postfix's
smtpd listeners from master.cf (smtp on 25, submission on 587).

The lab root is the lab server's "/": every absolute path of the profile
(``/var/mail``, ``/var/spool/postfix/private/auth``,
``/etc/ssl/certs/ssl-cert-snakeoil.pem``) lives under it, and nothing is
written anywhere else.
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer
from twisted.internet.error import CannotListenError

from gponsim.commentary import annotate
from gponsim.config import LabProfile, load_profile
from gponsim.server.postfix import cleanup
from gponsim.server import accounts, tls
from gponsim.server.postfix import aliases
from gponsim.server.postfix.local_recipients import LocalRecipients
from gponsim.server.resolver import HostsFile, client_name
from gponsim.server.maillog import MailLog, pid_for
from gponsim.server.sendnow import listen_tcp
from gponsim.server.tls import listening_factory
from gponsim.server.postfix.lmtp import LmtpClient
from gponsim.server.postfix.lmtp import settings_from_profile as lmtp_settings
from gponsim.server.postfix.mta import Mta, QueueSettings
from gponsim.server.postfix import postqueue as queue_control
from gponsim.server.sims.gmail import GmailSimulator
from gponsim.server.postfix.smtp import SmtpRelayClient, dns_resolver, ensure_hosts, settings_from_profile
from gponsim.server.postfix.inet_addr import machine_addresses, own_addresses
from gponsim.server.postfix.restrictions import parse_networks
from gponsim.server.dovecot.auth import AuthServer
from gponsim.server.postfix.xsasl import AuthClient, valid_base64
from gponsim.server.postfix.smtpd import SmtpdContext, SmtpdFactory, SmtpdSettings
from gponsim.server.dovecot.services import start_dovecot_services
from gponsim.server.dovecot.passwd import Users
from gponsim.steps import Emit, Step, null_emit


class LabError(Exception):
    """Something that keeps the lab from starting, told in plain words."""


class PortError(LabError):
    """A port the lab cannot listen on: ``why`` is "in use" or "privileged" (the words
    are English; a caller may say it again in another language from these fields)."""

    def __init__(self, text: str, *, port: int, name: str, address: str, why: str) -> None:
        super().__init__(text)
        self.port, self.name, self.address, self.why = port, name, address, why


@dataclass
class LabOptions:
    lab_root: Path = Path("gponlab")
    config_dir: Path | None = None
    listen: str = "127.0.0.1"
    port_offset: int = 0
    ports: dict[str, int] = field(default_factory=dict)   # per-service override, 0 = any free
    free_ports: bool = False        # every service on any free port (lessons, tests)
    keylog: Path | None = None
    auth_failure_delay: float | None = None                # None = from 10-auth.conf
    relay: str = "sim"     # sim: built-in Gmail simulator; real: the real relayhost; none;
    #                        dns: relayhost looked up in the DNS of <lab root>/etc/resolv.conf
    #                        (the lab network, gponsim net: the simulator is another host)
    #: more addresses to listen on besides ``listen`` (the lab network: the server's IPv6)
    listen_also: tuple[str, ...] = ()
    #: with relay = real and a listener other PCs reach, let mynetworks relay anyway
    allow_mynetworks_relay: bool = False
    #: the server's interface addresses (``inet_interfaces = all``); None: this
    #: computer's own (the lab network gives the mail host's)
    interfaces: tuple[str, ...] | None = None


def smtpd_settings(profile: LabProfile, service: str) -> SmtpdSettings:
    """The effective settings of one smtpd service (main.cf + its -o overrides)."""
    p = lambda name: profile.service_param(service, name)  # noqa: E731
    yes = lambda name: p(name).strip().lower() == "yes"  # noqa: E731
    lst = lambda name: profile.split_list(p(name))  # noqa: E731
    level = p("smtpd_tls_security_level").strip() or "none"
    return SmtpdSettings(
        service=service,
        syslog_name=p("syslog_name"),
        myhostname=p("myhostname"),
        banner=p("smtpd_banner"),
        local_domains=frozenset(d.lower() for d in lst("mydestination")),
        myorigin=profile.myorigin(),
        mynetworks=parse_networks(lst("mynetworks")),
        relay_domains=frozenset(d.lower() for d in lst("relay_domains")),
        tls_level=level,
        tls_auth_only=yes("smtpd_tls_auth_only"),
        sasl_enabled=yes("smtpd_sasl_auth_enable"),
        sasl_service=p("smtpd_sasl_service"),
        client_restrictions=lst("smtpd_client_restrictions"),
        helo_restrictions=lst("smtpd_helo_restrictions"),
        sender_restrictions=lst("smtpd_sender_restrictions"),
        relay_restrictions=lst("smtpd_relay_restrictions"),
        recipient_restrictions=lst("smtpd_recipient_restrictions"),
        reject_unlisted_recipient=yes("smtpd_reject_unlisted_recipient"),
        message_size_limit=int(p("message_size_limit") or 0),
        line_length_limit=int(p("line_length_limit") or 2048),
        recipient_limit=int(p("smtpd_recipient_limit") or 1000),
        timeout=profile.time_value(p("smtpd_timeout"), "s"),
        hard_error_limit=int(p("smtpd_hard_error_limit") or 20),
        disable_vrfy=yes("disable_vrfy_command"),
        tls_loglevel=int(p("smtpd_tls_loglevel") or 0),
        connection_count_limit=int(p("smtpd_client_connection_count_limit") or 0),
        connection_rate_limit=int(p("smtpd_client_connection_rate_limit") or 0),
        event_limit_exceptions=_address_patterns(lst("smtpd_client_event_limit_exceptions")),
    )


def _address_patterns(items) -> list:
    """The networks of a Postfix address list (``$mynetworks`` expanded); host
    and domain names never match the lab's clients, all ``unknown``."""
    nets = []
    for item in items:
        try:
            nets += parse_networks([item])
        except ValueError:
            continue
    return nets


class Lab:
    """The running lab. ``start()`` returns a Deferred firing with the ports."""

    def __init__(self, options: LabOptions, emit: Emit = null_emit, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.options = options
        self.emit = emit
        self.root = Path(options.lab_root).resolve()
        self.profile = load_profile(options.config_dir)
        self.ports: dict[str, int] = {}
        self._listeners: list = []
        self.keylog = tls.KeyLog(options.keylog) if options.keylog else None
        self.stop_signal = 15      # what `postfix stop` sends; Ctrl-C records 2
        self.auth_server = self.auth_client = self.mta = self.log = self.users = None
        self.lmtp = None          # Dovecot's LMTP service (protocols = ... lmtp)
        self._own_addresses: tuple[str, ...] | None = None

    # ---------------------------------------------------------------- paths

    def path(self, value: str, relative_to: str | None = None) -> Path:
        return self.profile.path(value, self.root, relative_to)

    @property
    def auth_socket(self) -> Path:
        return self.profile.auth_socket_path(self.root)

    # ---------------------------------------------------------------- start

    def _prepare(self):
        """Folders, log, users and the TLS certificate; returns the TLS options."""
        profile = self.profile
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in ("var/mail", "var/log", "var/spool/postfix"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            where = exc.filename or self.root
            raise LabError(f"cannot create the lab's folders in {self.root} ({where}: "
                           f"{exc.strerror}): choose a folder you can write with --lab-root") from exc
        hostname = profile.main("myhostname")
        self.log = MailLog(self.root / "var/log/mail.log", hostname=hostname.split(".")[0])
        self._remove_stale_temporaries()
        self.users = Users.ensure_default(self.path(profile.passwd_file()))
        self.accounts = accounts.ensure(self.root, self.users.names())
        self.aliases = aliases.ensure(self.root)
        self.hosts = HostsFile(self.root / "etc" / "hosts")
        self._dns_names = None          # client names from the lab's DNS (relay mode dns)
        cert = self.path(profile.main("smtpd_tls_cert_file"))
        key = self.path(profile.main("smtpd_tls_key_file"))
        try:
            tls.ensure_certificate(cert, key, hostname)
            # Dovecot's own ssl_cert/ssl_key (10-ssl.conf); on Debian they are
            # links to the snakeoil pair that Postfix uses, made when
            # dovecot-core is installed (its postinst), unless they exist.
            dovecot_cert = self.path(profile.dovecot_file("ssl_cert")
                                     or "/etc/dovecot/private/dovecot.pem")
            dovecot_key = self.path(profile.dovecot_file("ssl_key")
                                    or "/etc/dovecot/private/dovecot.key")
            tls.link_certificate(dovecot_cert, dovecot_key, cert, key)
            self.dovecot_tls_options = tls.server_options(dovecot_cert, dovecot_key, self.keylog)
            return tls.server_options(cert, key, self.keylog)
        except tls.TLSSetupError as exc:
            raise LabError(str(exc)) from exc

    def local_recipients(self) -> LocalRecipients:
        """``local_recipient_maps`` over the lab's etc/passwd and etc/aliases."""
        profile = self.profile
        return LocalRecipients(profile.list("local_recipient_maps"), profile.list("alias_maps"),
                               account_exists=self.accounts.exists,
                               alias_exists=self.aliases.__contains__,
                               delimiter=profile.main("recipient_delimiter"))

    def _remove_stale_temporaries(self) -> None:
        """Mailbox rewrites that a crash or a kill cut short left their
        temporary files (``.<name>.gponsim-<pid>.tmp``): delete them, so a
        full disk is not filled for ever by half a copy of a mailbox."""
        from gponsim.server.mailstore.leftovers import remove_stale_temporaries

        folders = [self.root / "var/mail"]
        home = self.root / "home"
        if home.is_dir():
            folders += [Path(d) for d, _dirs, _files in os.walk(home)]
        for folder in folders:
            for path in remove_stale_temporaries(folder):
                self.log.write("gponsim/mailstore", pid_for("mailstore"),
                               f"removed {path.relative_to(self.root)}: an unfinished "
                               f"mailbox rewrite of a process that is gone")

    def _smtpd_context(self, mechanisms) -> SmtpdContext:
        from gponsim.server.postfix.anvil import Anvil

        unit = self.profile.time_value(self.profile.main("anvil_rate_time_unit"), "s")
        return SmtpdContext(emit=self.emit, log=self._log, auth=_AuthGlue(self.auth_client),
                            queue=self.mta.cleanup, mechanisms=mechanisms,
                            local_user_exists=self.local_recipients().exists,
                            client_name=self.client_name,
                            received_header=self._received_header,
                            anvil=Anvil(self.reactor.seconds, unit or 60.0),
                            own_addresses=self._interface_addresses(),
                            rewrite_log_tag=f"{self.profile.main('syslog_name')}/trivial-rewrite")

    def _smtpd_factory(self, context: SmtpdContext, service: str, tls_options) -> SmtpdFactory:
        return SmtpdFactory(context, smtpd_settings(self.profile, service), tls_options,
                            implicit_tls=self._wrappermode(service))

    def _wrappermode(self, service: str) -> bool:
        """``smtpd_tls_wrappermode = yes`` (Debian's commented-out ``submissions``,
        port 465): TLS from the first byte."""
        return self.profile.service_param(service, "smtpd_tls_wrappermode").strip().lower() == "yes"

    def _interface_addresses(self) -> tuple[str, ...]:
        """The server's own addresses (``inet_interfaces``, ``proxy_interfaces``):
        an address literal naming one is a local domain, and cleanup adds
        missing headers for clients there (:mod:`~.postfix.inet_addr`)."""
        if self._own_addresses is None:
            o, profile = self.options, self.profile
            machine = o.interfaces if o.interfaces is not None else machine_addresses()
            self._own_addresses = own_addresses(
                profile.list("inet_interfaces"), profile.list("proxy_interfaces"),
                profile.main("inet_protocols"), machine=machine,
                listening=(o.listen, *o.listen_also))
        return self._own_addresses

    def check_open_relay(self) -> None:
        """Refuse ``--relay real`` when other computers could relay through the
        teacher's real account: the lab listens beyond loopback and
        ``mynetworks`` (``permit_mynetworks``) trusts more than this machine."""
        import ipaddress

        if self.options.relay != "real" or self.options.allow_mynetworks_relay:
            return
        listen = self.options.listen
        if listen not in ("0.0.0.0", "::") and ipaddress.ip_address(listen).is_loopback:
            return
        def loopback(net) -> bool:
            mapped = getattr(net.network_address, "ipv4_mapped", None)   # [::ffff:127.0.0.0]/104
            return net.is_loopback or (mapped is not None and mapped.is_loopback)
        wide = [str(n) for n in parse_networks(self.profile.split_list(
                    self.profile.main("mynetworks"))) if not loopback(n)
                and not (n.num_addresses == 1 and str(n.network_address) == listen)]
        if wide:
            raise LabError(
                f"refusing to start: with --relay real and --listen {listen}, every computer in "
                f"mynetworks ({', '.join(wide)}) could send mail to the Internet through the real "
                f"relayhost's account without a password (permit_mynetworks). Narrow mynetworks "
                f"in main.cf (e.g. 127.0.0.0/8), or add --allow-mynetworks-relay if that is what "
                f"you want. / Con --relay real y --listen {listen}, cualquier equipo de "
                f"mynetworks podría enviar correo a Internet con la cuenta real sin contraseña; "
                f"reduzca mynetworks o añada --allow-mynetworks-relay.")

    @defer.inlineCallbacks
    def start(self):
        profile = self.profile
        self.check_open_relay()
        tls_options = self._prepare()
        hostname = profile.main("myhostname")

        failure_delay = self.options.auth_failure_delay
        if failure_delay is None:
            failure_delay = profile.auth_failure_delay()
        self.auth_server = AuthServer(self.users, mechanisms=profile.auth_mechanisms(),
                                      emit=self.emit, failure_delay=failure_delay,
                                      reactor=self.reactor,
                                      verbose=profile.dovecot_bool("auth_verbose"),
                                      log=lambda text: self.log.write("dovecot",
                                                                      pid_for("dovecot"), text))
        listener = profile.postfix_auth_listener()      # 10-master.conf's mode, user, group
        socket_owner = {} if listener is None else {
            "mode": listener.mode, "user": listener.user, "group": listener.group}
        try:
            self._listeners.append(self.auth_server.listen(self.auth_socket, **socket_owner))
        except Exception as exc:  # noqa: BLE001 - told to the user below
            raise LabError(f"cannot open Dovecot's auth socket {self.auth_socket}: {exc}") from exc
        self.auth_client = AuthClient(str(self.auth_socket), emit=self.emit, reactor=self.reactor)
        mechanisms = yield self.auth_client.mechanisms()
        self._start_lmtp()        # before the queue: recovered mail may go there at once

        relay_transport = self._setup_relay()
        transports = {"lmtp": LmtpClient(lmtp_settings(profile, self.root), emit=self.emit,
                                          log=self.log, reactor=self.reactor)}
        if relay_transport:
            transports["smtp"] = relay_transport
        self.mta = Mta(self.root, QueueSettings.from_profile(profile, self._interface_addresses()),
                       user_exists=self.accounts.exists, log=self.log, emit=self.emit,
                       aliases=self.aliases.lookup if profile.list("alias_maps") else None,
                       reactor=self.reactor, transports=transports)
        yield self.mta.start()
        try:      # postqueue -f's way in (gponsim queue --flush)
            self._listeners.append(queue_control.listen_flush(self.reactor, self.root,
                                                              self._flush_queue))
        except Exception as exc:  # noqa: BLE001 - e.g. a socket path over 107 bytes
            self.log.postfix("postqueue", f"warning: cannot listen on public/flush: {exc}")

        context = self._smtpd_context(mechanisms)
        for svc in profile.smtpd_services():
            factory = self._smtpd_factory(context, svc.name, tls_options)
            factory = listening_factory(factory, tls_options, self._wrappermode(svc.name))
            self.ports[svc.name] = self._listen(svc.name, self.port_for(svc.name, svc.port), factory)
        start_dovecot_services(self, self.dovecot_tls_options)   # IMAP 143/993, POP3 110/995
        self._start_autoconfig(hostname)
        self.log.write("postfix/master", pid_for("master"), "daemon started -- version 3.7.11, configuration /etc/postfix")
        return dict(self.ports)

    def _start_lmtp(self) -> None:
        """Dovecot's LMTP service, when ``protocols`` includes ``lmtp``."""
        from gponsim.server.dovecot.lmtp import start_lmtp

        try:
            self.lmtp = start_lmtp(self)
        except OSError as exc:
            raise LabError(f"cannot open Dovecot's LMTP socket: {exc.strerror or exc}") from exc

    def _setup_relay(self):
        """smtp(8) towards relayhost; with ``relay = sim`` the Gmail simulator
        is started first and the relay host is mapped to it."""
        self.gmail = None
        mode = self.options.relay
        if mode == "none" or self.profile.relayhost() is None:
            return None
        if mode == "dns":      # as Postfix: smtp_host_lookup = dns, /etc/resolv.conf's servers
            settings = settings_from_profile(self.profile, self.root)
            settings.hosts_file = None
            settings.resolver = dns_resolver(self.root / "etc" / "resolv.conf", self.reactor)
            return SmtpRelayClient(settings, emit=self.emit, log=self.log, reactor=self.reactor,
                                   keylog=self.keylog)
        ensure_hosts(self.root / "etc" / "hosts")
        connect_port = None
        settings = settings_from_profile(self.profile, self.root, real=(mode == "real"))
        if mode == "sim":
            creds = self.profile.sasl_credentials(settings.host, settings.nexthop)
            self.gmail = GmailSimulator(self.root, emit=self.emit, reactor=self.reactor,
                                        listen="127.0.0.1", port=self.options.ports.get("gmail", 0),
                                        wire_steps=False, cafile=settings.cafile,
                                        # Gmail's account is the relay user of sasl_passwd;
                                        # its app password is the lab document's (written
                                        # in etc/gmail-sim.conf at first start)
                                        account=creds[0] if creds else None,
                                        keylog=self.keylog)
            try:
                connect_port = self.gmail.start()
            except CannotListenError as exc:
                raise LabError(f"cannot start the Gmail simulator: {exc.socketError}") from exc
            self.ports["gmail"] = connect_port
            settings.connect_port = connect_port
            settings.before_connect = self.gmail.apply_config
            self.emit(annotate(Step(
                t=time.time(), session="lab", proto="relay", src="smtp", dst="relay",
                dir="internal", kind="event", verb="SIMULATOR",
                line=(f"relayhost = {settings.nexthop} -> Gmail simulator on "
                      f"127.0.0.1:{connect_port} ({settings.host} is 127.0.0.1 in "
                      f"etc/hosts; the real one cannot be reached from the lab)"),
                meta={"host": settings.host, "port": settings.port,
                      "simulator_port": connect_port})))
        return SmtpRelayClient(settings, emit=self.emit, log=self.log, reactor=self.reactor,
                               keylog=self.keylog)

    @defer.inlineCallbacks
    def reload(self):
        """``postfix reload`` and ``systemctl reload dovecot`` after the profile
        was edited: the files are read again and what depends on them while
        the lab runs follows — the queue's routing (``mailbox_transport``),
        lmtp(8)'s settings, Dovecot's LMTP service (``protocols``, its sockets,
        ``auth_username_format``). Listening ports and TLS stay as started. A
        profile with an error raises ConfigError and changes nothing."""
        profile = load_profile(self.options.config_dir)
        self.profile = profile
        self.log.write("postfix/postfix-script", pid_for("postfix-script"),
                       "refreshing the Postfix mail system")
        self.log.write("postfix/master", pid_for("master"),
                       "reload -- version 3.7.11, configuration /etc/postfix")
        if self.mta is not None:
            lmtp_client = self.mta.agents.get("lmtp")
            if isinstance(lmtp_client, LmtpClient):
                lmtp_client.settings = lmtp_settings(profile, self.root)
            self.mta.set_mailbox_transport(profile.main("mailbox_transport"))
        self.log.write("dovecot", pid_for("dovecot"),
                       "master: Warning: SIGHUP received - reloading configuration")
        if self.lmtp is not None:
            yield self.lmtp.stop()
            self.lmtp = None
        self._start_lmtp()

    def _flush_queue(self) -> int:
        return self.mta.flush() if self.mta is not None else 0

    def _start_autoconfig(self, hostname: str) -> None:
        """Thunderbird's autoconfig on port 80 (+ offset): the lab's servers and ports."""
        from gponsim.server import autoconfig

        domain = self.profile.myorigin()
        # Students' clients reach the lab at the address it listens on; on all
        # addresses, at its name (the lab's DNS resolves it).
        host = hostname if self.options.listen in ("0.0.0.0", "::") else self.options.listen
        factory = autoconfig.site(lambda: autoconfig.client_config(domain, host, self.ports),
                                  log=lambda text: self.log.write("gponsim/autoconfig",
                                                                  pid_for("autoconfig"), text))
        self.ports["autoconfig"] = self._listen("autoconfig", self.port_for("autoconfig", 80), factory)

    def port_for(self, name: str, standard: int) -> int:
        """Where a service listens: --port NAME=N, else any free port with
        ``free_ports``, else its standard port plus --port-offset."""
        if name in self.options.ports:
            return self.options.ports[name]
        return 0 if self.options.free_ports else standard + self.options.port_offset

    def _listen(self, name: str, port: int, factory) -> int:
        bound = self._listen_on(self.options.listen, name, port, factory)
        for address in self.options.listen_also:
            self._listen_on(address, name, bound, factory)
        return bound

    def _listen_on(self, address: str, name: str, port: int, factory) -> int:
        try:
            listener = listen_tcp(self.reactor, port, factory, interface=address)
        except CannotListenError as exc:
            code = getattr(exc.socketError, "errno", None)
            if code == errno.EACCES:
                raise PortError(
                    f"port {port} ({name}) needs root: ports below 1024 are privileged. "
                    f"Run as root, or add --port-offset 10000 (then {name} is on port {port + 10000}).",
                    port=port, name=name, address=address, why="privileged") from exc
            if code == errno.EADDRINUSE:
                raise PortError(
                    f"port {port} ({name}) on {address} is already in use by another "
                    f"program (a real Postfix, or another gponsim?). Stop it, or use --port-offset.",
                    port=port, name=name, address=address, why="in use") from exc
            raise LabError(f"cannot listen on {address} port {port} ({name}): "
                           f"{exc.socketError}") from exc
        self._listeners.append(listener)
        return listener.getHost().port

    def client_name(self, ip: str, warn):
        """smtpd's verified client name: from the lab's etc/hosts (never the
        computer's DNS); on the lab network (relay mode ``dns``) also from the
        lab's own DNS, as a Deferred."""
        if not self.profile.bool("smtpd_peername_lookup"):
            return "unknown"
        if self.options.relay == "dns":
            if self._dns_names is None:
                from twisted.names import client as dns_client
                from gponsim.server.dns_names import LabDnsNames
                resolver = dns_client.Resolver(resolv=str(self.root / "etc" / "resolv.conf"),
                                               reactor=self.reactor)
                self._dns_names = LabDnsNames(self.hosts, resolver)
            return self._dns_names.client_name(ip, warn)
        return client_name(self.hosts, ip, warn)

    def _log(self, program: str, text: str) -> None:
        self.log.write(program, pid_for(program), text)

    def _received_header(self, session, qid: str) -> str:
        return cleanup.received_header(
            helo=session.helo_name or session.client_ip, client_name=session.client_name,
            client_ip=session.client_ip, protocol=session._protocol(), qid=qid,
            recipients=session.recipients, myhostname=session.settings.myhostname)

    def write_ready_file(self, path: Path) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps({"ports": self.ports, "lab_root": str(self.root),
                                   "pid": os.getpid()}))
        tmp.replace(path)

    # ----------------------------------------------------------------- stop

    @defer.inlineCallbacks
    def stop(self):
        for listener in reversed(self._listeners):
            yield defer.maybeDeferred(listener.stopListening)
        self._listeners = []
        worker = getattr(getattr(self, "dovecot_context", None), "worker", None)
        if worker is not None:
            # IMAP/POP3 commands in progress answer before the lab goes (a lesson
            # may end on the very command a student's client is waiting for)
            yield worker.idle(STOP_GRACE)
        if self.auth_client is not None:
            self.auth_client.close()
        if self.mta is not None:
            yield self.mta.stop()
        if getattr(self, "lmtp", None) is not None:
            yield self.lmtp.stop()
        if getattr(self, "gmail", None) is not None:
            yield self.gmail.stop()
        if self.log is not None:
            self.log.write("postfix/master", pid_for("master"),
                           f"terminating on signal {self.stop_signal}")
        if self.keylog is not None:
            self.keylog.close()


#: How long a stopping lab waits for the mailbox commands in progress.
STOP_GRACE = 5.0


class _AuthGlue:
    """What smtpd needs of the auth client (plus Postfix's base64 pre-check)."""

    def __init__(self, client: AuthClient) -> None:
        self._client = client
        self.valid_base64 = staticmethod(valid_base64)

    def start(self, mech, **kw):
        return self._client.start(mech, **kw)

    def respond(self, request_id, resp_b64, session):
        return self._client.respond(request_id, resp_b64, session=session)

    def abort(self, request_id):
        self._client.abort(request_id)
