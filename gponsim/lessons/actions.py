"""What a lesson step can do: act as a client, show a file, draw a diagram.

Each action runs in the lesson's worker thread, beside the lab's reactor, and
talks to the lab only as a real client would (sockets) or by reading its
files; everything it causes shows up as Steps.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gponsim.clients.smtp import SmtpClientError, build_message, send_mail
from gponsim.lessons.model import Action
from gponsim.sinks.memory import ListSink


@dataclass
class Context:
    """What actions may use: the lab's ports and root, the Steps so far, the output."""

    ports: dict[str, int]
    lab_root: Path
    out: Path
    record: ListSink
    lang: str
    say: Callable[[str], None]
    show_text: Callable[[str, str], None]
    artifacts: list[Path] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    profile: Path | None = None    # this run's copy of the lab profile (editable)
    mark: int = 0                  # index of the first Step of the current lesson step
    interactive: bool = False      # the student acts with their own mail client
    timeout: float = 300.0         # how long to wait for the student
    host: str = "127.0.0.1"        # where the lab listens (--listen)
    reload: Callable[[], None] | None = None   # the lab reads its edited profile again
    #: Narrate the lab's start-up Steps (of one protocol) now; returns how many.
    replay_startup: Callable[..., int] = lambda proto=None: 0
    #: Record a hint given to the student: (hint key, the text said).
    hinted: Callable[[str, str], None] = lambda key, said: None
    #: On the lab network (--network): its hosts (gponsim.lessons.network.LessonNetwork)
    network: object = None
    #: The width of the text inside a ``show_text`` panel (the terminal's, less the borders).
    text_width: int = 96

    @property
    def connect_host(self) -> str:
        """Where a scripted client connects: the lab's address, or loopback if it listens on all."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host


DEFAULT_BODY = {"es": "Hola,\n\nMensaje de la lección de gponsim.\n",
                "en": "Hello,\n\nA message from a gponsim lesson.\n"}
IDLE_SUBJECT = {"es": "Llega mientras esperas", "en": "Arrives while you wait"}


def do_send(ctx: Context, o: dict) -> None:
    """Send a mail like Thunderbird (587 + STARTTLS + AUTH) or an MTA (port 25)."""
    user = o.get("as", "user1")
    domain = o.get("domain", "gponlab.local")
    sender = o.get("from", f"{user}@{domain}")
    recipients = o.get("to", [f"user2@{domain}"])
    service = o.get("port", "submission")
    if service == "closed":
        # A port where nothing listens: what a client with a wrong port number meets.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            target = probe.getsockname()[1]
    else:
        target = ctx.ports[service]
    body = o.get("body", DEFAULT_BODY[ctx.lang])
    if o.get("size"):
        body += "x" * int(o["size"]) + "\n"
    message = build_message(sender, recipients, o.get("subject", "gponsim"), body)
    auth = o.get("auth", service == "submission")
    try:
        result = send_mail(host=ctx.connect_host, port=target, sender=sender,
                           recipients=recipients, message=message,
                           user=user if auth else None, password=o.get("password", "pass"),
                           starttls=o.get("tls", True), mechanism=o.get("mech", "PLAIN"),
                           source=_source(ctx, o))
        ctx.results["queue_id"] = result.queue_id
        outcome = "accepted"
    except SmtpClientError as exc:
        ctx.results["refused"] = " / ".join(exc.reply) if exc.reply else exc.text(ctx.lang)
        outcome = "refused"
        ctx.say(f"✉ {ctx.results['refused']}")
    expect = o.get("expect", "accepted")
    if outcome != expect:
        raise RuntimeError(f"the mail was {outcome}, the lesson expected it {expect}"
                           + (f": {ctx.results.get('refused')}" if outcome == "refused" else ""))


def do_wait_delivery(ctx: Context, o: dict) -> None:
    """Wait until ``count`` messages of this lesson (so far) reached var/mail/<user>."""
    user = o.get("user", "user2")
    count = int(o.get("count", 1))
    timeout = float(o.get("timeout", 15))
    seen: list = []

    # One message: the one the lesson's last send got accepted (its queue id), when known, so
    # that another mail (a student's earlier try through port 25, say) does not count.
    queue_id = ctx.results.get("queue_id") if count == 1 else None

    def delivered(step) -> bool:
        # local(8) wrote the mbox, or (mailbox_transport = lmtp:...) lmtp(8) heard
        # Dovecot's LMTP say it saved it
        by = (step.src, step.dst, step.verb)
        if by in (("local", "mailbox", "DELIVERED"), ("lmtp", "qmgr", "SENT")) \
                and str(step.meta.get("recipient", "")).startswith(f"{user}@") \
                and (queue_id is None or step.meta.get("qid") == queue_id):
            seen.append(step)
        return len(seen) >= count
    # Counted over the whole lesson: a delivery often lands while the step that
    # sent the mail is still being checked.
    if ctx.record.wait_for(delivered, timeout) is None:
        raise RuntimeError(f"{len(seen)} of {count} message(s) reached var/mail/{user} "
                           f"within {timeout:.0f} s")


def do_show(ctx: Context, o: dict) -> None:
    rel = o["file"]
    path = (ctx.lab_root / rel).resolve()
    if ctx.lab_root.resolve() not in path.parents:
        raise RuntimeError(f"{rel}: only files inside the lab root can be shown")
    content = path.read_text(errors="replace") if path.exists() else ""
    lines = content.splitlines()
    if o.get("tail"):
        lines = lines[-int(o["tail"]):]
    if o.get("grep"):
        lines = [line for line in lines if o["grep"] in line]
    ctx.show_text(str(path), "\n".join(lines))


def do_diagram(ctx: Context, o: dict) -> None:
    from gponsim.diagrams import DotMissing, draw_architecture, draw_sequence

    kind = o.get("kind", "sequence")
    name = o.get("name", f"{kind}-{o.get('flow', 'all')}")
    target = ctx.out / f"{name}.svg"
    try:
        steps = list(ctx.record.steps)
        if kind == "architecture":
            written = [draw_architecture(steps, target, lang=ctx.lang)]
            draw_architecture(steps, target.with_suffix(".dot"), lang=ctx.lang, fmt="dot")
        else:
            options = dict(lang=ctx.lang, flow=o.get("flow", "all"), notes=bool(o.get("notes")))
            written = draw_sequence(steps, target, **options)
            draw_sequence(steps, target.with_suffix(".dot"), fmt="dot", **options)
    except DotMissing as exc:
        ctx.say(f"{exc}; the .dot/.mmd sources are in {ctx.out}")
        return
    ctx.artifacts.extend(written)
    for path in written:
        ctx.say(f"→ {path}")


def do_startup(ctx: Context, o: dict) -> None:
    """Show what the lab said while it started (e.g. ``proto = "sasl"``: Postfix's smtpd
    opening Dovecot's auth socket), folded into one line until a step is about it."""
    ctx.replay_startup(o.get("proto"))


def do_wait_step(ctx: Context, o: dict) -> None:
    """Wait for a Step with these fields (e.g. the relay's deferral)."""
    where = o.get("where", {})
    text = o.get("line_contains", "")
    timeout = float(o.get("timeout", 15))

    def match(step) -> bool:
        return all(getattr(step, k) == v for k, v in where.items()) and text in step.line
    if ctx.record.wait_for(match, timeout, start=ctx.mark) is None:
        raise RuntimeError(f"no step with {where} {text!r} within {timeout:.0f} s")


def do_edit(ctx: Context, o: dict) -> None:
    """Change a file of this run's lab profile, as an administrator edits /etc."""
    if ctx.profile is None:
        raise RuntimeError("this lesson's lab has no editable profile")
    path = (ctx.profile / o["file"]).resolve()
    if ctx.profile.resolve() not in path.parents:
        raise RuntimeError(f"{o['file']}: only files of the profile can be edited")
    content = path.read_text(encoding="utf-8")
    if o["replace"] not in content:
        raise RuntimeError(f"{o['file']}: {o['replace']!r} not found")
    path.write_text(content.replace(o["replace"], o["with"]), encoding="utf-8")
    ctx.say(f"{o['file']}: {o['replace']} → {o['with']}")


def do_reload(ctx: Context, o: dict) -> None:
    """``postfix reload`` and ``systemctl reload dovecot``: the lab reads the
    profile it was started with again (after ``edit`` actions)."""
    if ctx.reload is None:
        raise RuntimeError("this lesson's lab cannot reload its configuration")
    ctx.reload()
    ctx.say("postfix reload; systemctl reload dovecot")


def do_flush(ctx: Context, o: dict) -> None:
    """``postqueue -f``: retry the deferred mail now.

    A relay's verdict is narrated a moment before qmgr files the message in
    the deferred queue; wait (bounded) until it is there, so the flush finds it.
    """
    import time

    from gponsim.server.postfix.postqueue import request_flush
    from gponsim.server.postfix.queuefile import list_queue

    deadline = time.monotonic() + float(o.get("timeout", 10))
    while time.monotonic() < deadline:
        entries = list_queue(ctx.lab_root)
        if not entries or any(e.state == "deferred" for e in entries):
            break
        time.sleep(0.05)
    request_flush(ctx.lab_root)


def do_gmail(ctx: Context, o: dict) -> None:
    """Make the Gmail simulator misbehave (or behave again): ``fault = "none"``."""
    from gponsim.server.sims.gmail import set_fault

    set_fault(ctx.lab_root, o.get("fault", "none"), o.get("delay"))


def _source(ctx: Context, o: dict) -> str | None:
    """``remote = true``: connect from 127.0.0.2, so the lab sees a client that is
    not on the server itself (Dovecot treats same-address clients as secured).
    On the lab network every client already runs on a host of its own."""
    return "127.0.0.2" if o.get("remote") and ctx.network is None else None


def do_read_imap(ctx: Context, o: dict) -> None:
    """Read the INBOX like a mail client: CAPABILITY, STARTTLS, login, SELECT, FETCH."""
    import imaplib
    import ssl

    source = _source(ctx, o)
    tls = o.get("tls", "starttls")
    context = ssl._create_unverified_context()     # the lab's self-signed certificate

    class Imap(imaplib.IMAP4):
        def _create_socket(self, timeout):
            return socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0) if source else None)

    class ImapSSL(imaplib.IMAP4_SSL):
        def _create_socket(self, timeout):
            sock = socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0) if source else None)
            return self.ssl_context.wrap_socket(sock, server_hostname=self.host)

    if tls == "implicit":
        client = ImapSSL(ctx.connect_host, ctx.ports["imaps"], ssl_context=context, timeout=15)
    else:
        client = Imap(ctx.connect_host, ctx.ports["imap"], timeout=15)
    try:
        client.capability()
        if tls == "starttls":
            client.starttls(ssl_context=context)
        user, password = o.get("user", "user2"), o.get("password", "pass")
        try:
            if o.get("mech", "plain").lower() == "login":
                client.login(user, password)
            else:
                client.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode())
        except imaplib.IMAP4.error as exc:
            if o.get("expect") == "refused":
                return
            raise RuntimeError(f"IMAP login refused: {exc}") from exc
        if o.get("expect") == "refused":
            raise RuntimeError("the IMAP login was accepted; the lesson expected a refusal")
        client.select("INBOX")
        if o.get("fetch", True):
            client.uid("FETCH", "1:*", "(FLAGS)")
            client.uid("FETCH", "1:*", "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Subject Date)])")
            client.fetch("1", "(BODY[])")
        if o.get("flag"):
            client.store("1", "+FLAGS", f"({o['flag']})")
        if o.get("idle"):
            _idle_until_new_mail(ctx, client, o)
        client.logout()
    finally:
        try:
            client.shutdown()
        except OSError:
            pass


def _idle_until_new_mail(ctx: Context, client, o: dict) -> None:
    """IDLE (RFC 2177) like Thunderbird, deliver a mail from the Internet, see it pushed."""
    tag = client._new_tag().decode()
    client.send(f"{tag} IDLE\r\n".encode())
    if not client.readline().startswith(b"+"):
        raise RuntimeError("the server did not accept IDLE")
    message = build_message("alice@example.org", [f"{o.get('user', 'user2')}@gponlab.local"],
                            o.get("idle_subject", IDLE_SUBJECT[ctx.lang]), "IDLE push\n")
    send_mail(host=ctx.connect_host, port=ctx.ports["smtp"], sender="alice@example.org",
              recipients=[f"{o.get('user', 'user2')}@gponlab.local"], message=message, starttls=False)
    line = client.readline()             # the server pushes "* n EXISTS" without being asked
    if b"EXISTS" not in line:
        raise RuntimeError(f"expected * n EXISTS while idling, got {line!r}")
    client.send(b"DONE\r\n")
    while not client.readline().startswith(tag.encode()):
        pass


def do_read_pop3(ctx: Context, o: dict) -> None:
    """Download the mail like a POP3 client: CAPA, STLS, USER/PASS, STAT, LIST, UIDL, RETR."""
    import poplib
    import ssl

    context = ssl._create_unverified_context()
    tls = o.get("tls", "stls")
    source = _source(ctx, o)

    class Pop3(poplib.POP3):
        def _create_socket(self, timeout):
            return socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0) if source else None)

    if tls == "implicit":
        client = poplib.POP3_SSL(ctx.connect_host, ctx.ports["pop3s"], context=context, timeout=15)
    else:
        client = Pop3(ctx.connect_host, ctx.ports["pop3"], timeout=15)
    try:
        client.capa()
        if tls == "stls":
            client.stls(context=context)
        try:
            client.user(o.get("user", "user2"))
            client.pass_(o.get("password", "pass"))
        except poplib.error_proto as exc:
            if o.get("expect") == "refused":
                return
            raise RuntimeError(f"POP3 login refused: {exc}") from exc
        count, _size = client.stat()
        client.list()
        client.uidl()
        for n in range(1, count + 1):
            client.retr(n)
            if o.get("delete"):
                client.dele(n)
        client.quit()
    finally:
        try:
            client.close()
        except OSError:
            pass


NO_CAPTURE = {
    "es": ("No se puede capturar aquí ({reason}). Capturar es leer todos los paquetes que pasan por "
           "una interfaz, los de cualquier usuario, y por eso el sistema solo lo permite a root o a un "
           "programa con la capacidad CAP_NET_RAW, igual que a tcpdump o Wireshark. Para verlo, repite "
           "la lección con sudo. La lección sigue: las sesiones se narran igual, y las comprobaciones "
           "de la captura quedan marcadas como no comprobables."),
    "en": ("Cannot capture here ({reason}). Capturing means reading every packet crossing an "
           "interface, anybody's, so the system only lets root or a program with the CAP_NET_RAW "
           "capability do it, as with tcpdump or Wireshark. To see it, run the lesson again with sudo. "
           "The lesson goes on: the sessions are narrated all the same, and the capture's checks are "
           "marked as not checkable."),
}

CAPTURING = {
    "es": "Capturando en la interfaz de loopback (lo) los puertos del laboratorio ({ports}) en {path}",
    "en": "Capturing on the loopback interface (lo) the lab's ports ({ports}) into {path}",
}


def do_capture(ctx: Context, o: dict) -> None:
    """Capture the lab's traffic on the loopback interface, then read it like an eavesdropper.

    ``action = "start"`` starts capturing; ``"stop"`` writes ``capture.pcapng`` into the
    run folder and analyzes it twice: as an eavesdropper (no keys) and with the lab's
    TLS key log. Without permission to capture (and no namespace or recording to
    stand in, see :mod:`gponsim.lessons.capturing`), the lesson says why and goes on.
    """
    from gponsim.capture.live import CapturePermission, Sniffer

    plan = ctx.results.get("capture_plan")          # how: see gponsim.lessons.capturing
    if o.get("action", "start") == "start":
        if plan is not None and plan.note and not plan.told:
            ctx.say(plan.note)
        if plan is not None and plan.mode == "recorded":
            from gponsim.lessons.capturing import RecordedCapture

            ctx.results["sniffer"] = RecordedCapture(plan, ctx.out, ctx.lab_root / "keys.log")
            return
        try:
            if ctx.network is not None:     # the server's own interface, as tcpdump -i enp0s3 on it
                ctx.results["capture_macs"] = macs = set()
                with ctx.network.in_server():
                    ctx.results["sniffer"] = Sniffer(
                        ctx.out / "capture.pcapng", set(ctx.ports.values()), iface=ctx.network.server_iface,
                        on_frame=lambda _n, _t, _link, frame: macs.add(frame[6:12].hex(":")))
            else:
                ctx.results["sniffer"] = Sniffer(ctx.out / "capture.pcapng", set(ctx.ports.values()))
        except CapturePermission as exc:
            ctx.results["capture_unavailable"] = {"es": "no hay captura: falta permiso para capturar",
                                                  "en": "no capture: no permission to capture"}[ctx.lang]
            ctx.say(NO_CAPTURE[ctx.lang].format(reason=exc))
            return
        ctx.say(CAPTURING[ctx.lang].format(path=ctx.out / "capture.pcapng",
                                           ports=" ".join(str(p) for p in sorted(set(ctx.ports.values())))))
        return
    sniffer = ctx.results.pop("sniffer", None)
    if sniffer is None:
        return
    from gponsim.capture.analyze import analyze

    path = sniffer.stop()
    ctx.artifacts.append(path)
    keys = getattr(sniffer, "keys", None) or ctx.lab_root / "keys.log"
    ctx.results["capture"] = {"plain": analyze(path), "keys": analyze(path, keylog=keys)}
    ctx.results["capture_files"] = (path, keys)
    ctx.results.pop("packet_rows", None)
    for label, analysis in (("eavesdropper", ctx.results["capture"]["plain"]),
                            ("key log", ctx.results["capture"]["keys"])):
        title = {"eavesdropper": {"es": "Lo que ve quien escucha (sin claves)", "en": "What an eavesdropper sees (no keys)"},
                 "key log": {"es": "Con el registro de claves TLS del servidor", "en": "With the server's TLS key log"}}
        rows = [f"  {c.proto:5} {c.mechanism:6} user={c.user} password={c.password}  "
                f"({'dentro de TLS' if ctx.lang == 'es' and c.inside_tls else 'en claro' if ctx.lang == 'es' else 'inside TLS' if c.inside_tls else 'in clear'})"
                for c in analysis.credentials]
        subjects = [f"  ✉ {m.get('subject', '')}" for m in analysis.messages]
        ctx.show_text(title[label][ctx.lang], "\n".join(rows + subjects) or "  —")


def do_packets(ctx: Context, o: dict) -> None:
    """Show the capture packet by packet (``gponsim analyze capture.pcapng --packets``): the
    session that sent the mail (with ``session = "mail"``, the default) or every packet."""
    from gponsim.packets.lesson import PacketRows
    from gponsim.packets.view import Renderer

    if "capture_files" not in ctx.results:
        return
    if "packet_rows" not in ctx.results:
        ctx.results["packet_rows"] = PacketRows(*ctx.results["capture_files"])
    data = ctx.results["packet_rows"]
    lines: list[str] = []
    renderer = Renderer(lines.append, ctx.lang, explain=o.get("explain", "first"), width=ctx.text_width,
                        compact=True)
    renderer.header()
    for row in data.rows[:o.get("rows")]:           # the session's first rows, or all of them
        renderer.row(row)
    title = {"es": "Paquete a paquete: gponsim analyze capture.pcapng --packets --session {s}",
             "en": "Packet by packet: gponsim analyze capture.pcapng --packets --session {s}"}[ctx.lang]
    ctx.show_text(title.format(s=data.rows[0].conn.number if data.rows and data.rows[0].conn else "?"),
                  "\n".join(lines))


def do_autoconfig(ctx: Context, o: dict) -> None:
    """Ask the lab for Thunderbird's config-v1.1.xml, as Thunderbird's account wizard does."""
    from urllib.parse import quote
    from urllib.request import urlopen

    address = o.get("address", "user1@gponlab.local")
    url = f"http://{ctx.connect_host}:{ctx.ports['autoconfig']}/mail/config-v1.1.xml?emailaddress={quote(address)}"
    with urlopen(url, timeout=10) as answer:       # loopback only: the lab's own web service
        document = answer.read().decode("utf-8")
    ctx.results["autoconfig"] = document
    ctx.show_text(url, document)


CERT_WORDS = {
    "es": {"title": "El certificado del servidor ({service}, puerto {port})",
           "refused": "Un cliente que comprueba certificados, como Thunderbird, lo rechaza: {error}",
           "subject": "Sujeto (a quién identifica)", "issuer": "Emisor (quién lo firma)",
           "valid": "Válido", "names": "Nombres", "fingerprint": "Huella SHA-256",
           "self": "Emisor = sujeto: es autofirmado. Ninguna autoridad de confianza lo respalda, por eso avisa Thunderbird.",
           "compare": "Compara esta huella con la que muestra Thunderbird en «Ver certificado» antes de confirmar la excepción."},
    "en": {"title": "The server's certificate ({service}, port {port})",
           "refused": "A client that checks certificates, like Thunderbird, refuses it: {error}",
           "subject": "Subject (whom it identifies)", "issuer": "Issuer (who signed it)",
           "valid": "Valid", "names": "Names", "fingerprint": "SHA-256 fingerprint",
           "self": "Issuer = subject: it is self-signed. No trusted authority vouches for it, so Thunderbird warns.",
           "compare": "Compare this fingerprint with the one Thunderbird shows under 'View Certificate' before confirming the exception."},
}


def do_certificate(ctx: Context, o: dict) -> None:
    """Connect like a client that checks certificates (and fails, as Thunderbird warns),
    then show the certificate the lab presents: subject, issuer, dates, names, fingerprint."""
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    service = o.get("port", "imaps")
    port = ctx.ports[service]
    words = CERT_WORDS[ctx.lang]
    checking = ssl.create_default_context()        # the system's trusted authorities
    try:
        with socket.create_connection((ctx.connect_host, port), timeout=10) as raw:
            with checking.wrap_socket(raw, server_hostname=o.get("hostname", "mail.gponlab.local")):
                error = ""
    except ssl.SSLCertVerificationError as exc:
        error = exc.verify_message or str(exc)
    der = None
    with socket.create_connection((ctx.connect_host, port), timeout=10) as raw:
        with ssl._create_unverified_context().wrap_socket(raw) as tls:   # accept it, to look at it
            der = tls.getpeercert(binary_form=True)
            # the server's side of the handshake, then its greeting (sent once the handshake
            # is done, as Dovecot does), are narrated a moment later: wait for them
            shake = ctx.record.wait_for(lambda s: s.proto == "tls"
                                        and s.verb == "IMPLICIT", 10, start=ctx.mark)
            if shake is not None:
                ctx.record.wait_for(lambda s: s.session == shake.session and (
                    s.kind == "reply" or s.verb == "DISCONNECT"), 10, start=ctx.mark)
    cert = x509.load_der_x509_certificate(der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt = ", ".join(str(n.value) for n in names)
    except x509.ExtensionNotFound:
        alt = "—"
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    fingerprint = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
    ctx.results["certificate"] = {"self_signed": cert.issuer == cert.subject, "fingerprint": fingerprint,
                                  "refused": error}
    lines = [words["refused"].format(error=error) if error else "",
             f"{words['subject']}: {cert.subject.rfc4514_string()}",
             f"{words['issuer']}: {cert.issuer.rfc4514_string()}",
             f"{words['valid']}: {cert.not_valid_before_utc:%Y-%m-%d} → {cert.not_valid_after_utc:%Y-%m-%d}",
             f"{words['names']}: {alt}",
             f"{words['fingerprint']}: {fingerprint}",
             "", words["self"] if cert.issuer == cert.subject else "", words["compare"]]
    ctx.show_text(words["title"].format(service=service, port=port),
                  "\n".join(line for line in lines if line is not None).strip())
    if not error and o.get("expect", "refused") == "refused":
        raise RuntimeError("a client that checks certificates accepted the lab's certificate")


def _network(ctx: Context, do: str):
    if ctx.network is None:
        raise RuntimeError(f"the action {do!r} needs the lab network (gponsim lesson ID --network)")
    return ctx.network


def do_dns(ctx: Context, o: dict) -> None:
    """Ask the lab's DNS from a host (``host``, pc1), as ``dig`` does: ``name``, ``type``."""
    net = _network(ctx, "dns")
    name, rtype = o.get("name", "gponlab.local"), o.get("type", "A").upper()
    host = o.get("host", "pc1")
    answers = net.lookup(host, name, rtype)
    ctx.results.setdefault("dns", []).append({"host": host, "name": name, "type": rtype,
                                              "answers": [a.data for a in answers]})
    ctx.show_text(f"{host}$ dig {rtype} {name}",
                  "\n".join(f"{a.name}.  IN  {a.type}  {a.data}" for a in answers))


def do_net(ctx: Context, o: dict) -> None:
    """What ``ip`` shows in a host: ``show`` = neigh (ARP/NDP), addr, route; ``host``."""
    net = _network(ctx, "net")
    host, what = o.get("host", "mail"), o.get("show", "neigh")
    if what not in ("neigh", "addr", "route", "-6 route", "-6 neigh"):
        raise RuntimeError(f"net: show = {what!r}: neigh, addr, route, -6 route, -6 neigh")
    args = what.split() if what.startswith("-6") else [what]
    if what == "addr":
        args = ["-br", "addr"]
    ctx.show_text(f"{host}$ ip {' '.join(args)}", net.ip(host, *args))


ACTIONS: dict[str, Callable[[Context, dict], None]] = {
    "dns": do_dns,
    "net": do_net,
    "certificate": do_certificate,
    "send": do_send,
    "wait_delivery": do_wait_delivery,
    "show": do_show,
    "packets": do_packets,
    "diagram": do_diagram,
    "wait_step": do_wait_step,
    "startup": do_startup,
    "edit": do_edit,
    "reload": do_reload,
    "flush": do_flush,
    "gmail": do_gmail,
    "read_imap": do_read_imap,
    "read_pop3": do_read_pop3,
    "capture": do_capture,
    "autoconfig": do_autoconfig,
}


def run_action(ctx: Context, action: Action) -> None:
    """Run a lesson action; with ``--interactive`` the student does the client's part."""
    from gponsim.lessons import student

    if ctx.interactive and action.do in student.ACTIONS:
        student.ACTIONS[action.do](ctx, action.options)
    else:
        ACTIONS[action.do](ctx, action.options)
