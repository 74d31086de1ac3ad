"""Drive a real Thunderbird for end-to-end tests: a profile writer and a small
Marionette client (Firefox's remote protocol: ``<length>:<json>`` over TCP).

Thunderbird runs under its own Xvfb (started here, by PID) with a fresh
profile whose ``user.js`` keeps it quiet and on loopback: no updates,
telemetry, start page, ISP autoconfig or default-client check. Accounts are
declared in ``user.js``; passwords and the lab's self-signed certificate are
given through Marionette's chrome context (login manager + cert override)
before Thunderbird is asked to connect, so it never shows a dialog.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from labproc import wait_until


def missing_tools() -> list[str]:
    """Programs this driver needs that are not installed."""
    return [tool for tool in ("thunderbird", "xvfb-run", "Xvfb") if shutil.which(tool) is None]


def thunderbird_marks() -> list:
    """``pytestmark`` for a real-Thunderbird test module: slow, and skipped
    (naming what is missing) where Thunderbird or Xvfb is not installed."""
    import pytest

    missing = missing_tools()
    return [pytest.mark.slow,
            pytest.mark.skipif(bool(missing), reason=f"real-Thunderbird test needs {', '.join(missing)} "
                               "(apt-get install thunderbird xvfb xauth)")]


def remote_loopback() -> str:
    """The lab listens on 127.0.0.2 and Thunderbird connects from 127.0.0.1:
    client IP != server IP, so Dovecot treats it as a remote student
    (LOGINDISABLED until STARTTLS). Falls back to 127.0.0.1 where the
    system has no 127/8 beyond 127.0.0.1."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# Profile

QUIET_PREFS: dict[str, object] = {
    # first run, start page, default client, rights notice
    "mail.provider.enabled": False,
    "mailnews.start_page.enabled": False,
    "mailnews.start_page.url": "about:blank",
    "mail.shell.checkDefaultClient": False,
    "mail.rights.override": True,
    "mail.rights.version": 1,
    "mail.spotlight.firstRunDone": True,
    "mail.winsearch.firstRunDone": True,
    "mail.biff.show_alert": False,
    "mail.biff.play_sound": False,
    "mail.biff.show_tray_icon": False,
    "mail.biff.use_system_alert": False,
    "mail.startup.enabledMailCheckOnce": True,
    "mail.inappnotifications.enabled": False,
    "mail.account_hub.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.aboutwelcome.enabled": False,
    # no ISP autoconfig, no ISPDB, no guessing
    "mailnews.auto_config.fetchFromISP.enabled": False,
    "mailnews.auto_config.fetchFromExchange.enabled": False,
    "mailnews.auto_config.guess.enabled": False,
    "mailnews.auto_config_url": "http://127.0.0.1:9/",
    "mailnews.mx_service_url": "http://127.0.0.1:9/",
    # updates, add-ons, telemetry, crash reports, safe browsing, captive portal
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.update.checkInstallTime": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.blocklist.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.policy.dataSubmissionPolicyBypassNotification": True,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.crashreporter.enabled": False,
    "browser.crashReports.unsubmittedCheck.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.proxy.type": 0,
    "services.settings.server": "http://127.0.0.1:9/",
    "security.OCSP.enabled": 0,
    "security.remote_settings.crlite_filters.enabled": False,
    "security.certerrors.mitm.priming.enabled": False,
    "mail.instrumentation.postUrl": "",
    "mail.instrumentation.askUser": False,
    "mail.instrumentation.userOptedIn": False,
    "mailnews.headers.showSender": True,
    # no chat, calendar network, RSS
    "messenger.startup.action": 0,
    "calendar.timezone.useSystemTimezone": True,
    "mail.chat.enabled": False,
    # the message pane and the shutdown
    "browser.sessionstore.resume_from_crash": False,
    "mail.tabs.drawInTitlebar": False,
    "toolkit.startup.max_resumed_crashes": -1,
    "browser.tabs.remote.autostart": True,
    # no offline autosync fetches that would hide "fetched after IDLE"
    "mail.server.default.autosync_offline_stores": False,
    "mail.server.default.offline_download": False,
    # Marionette
    "marionette.enabled": True,
}


@dataclass
class ImapAccount:
    user: str
    email: str
    host: str
    port: int
    socket_type: int = 2          # 2 = STARTTLS, 3 = SSL/TLS
    full_name: str = ""


@dataclass
class SmtpServer:
    user: str
    host: str
    port: int
    try_ssl: int = 2              # 2 = STARTTLS, 3 = SSL/TLS


@dataclass
class Profile:
    """A Thunderbird profile: one IMAP account (its own identity) and one SMTP
    server; ``extra_identities`` are more (email, full name) identities on the
    same account that send through the same SMTP server. Without ``imap`` and
    ``smtp`` the profile has only Local Folders: a Thunderbird just installed,
    whose accounts the test creates as a student does (``create_account``)."""

    path: Path
    imap: ImapAccount | None = None
    smtp: SmtpServer | None = None
    extra_identities: list[tuple[str, str]] = field(default_factory=list)
    marionette_port: int = 0
    prefs: dict[str, object] = field(default_factory=dict)

    def all_prefs(self) -> dict[str, object]:
        p = dict(QUIET_PREFS)
        if self.imap is None:
            p.update({
                "marionette.port": self.marionette_port,
                "mail.accountmanager.accounts": "account1",
                "mail.accountmanager.localfoldersserver": "server1",
                "mail.account.account1.server": "server1",
                "mail.server.server1.type": "none",
                "mail.server.server1.name": "Local Folders",
                "mail.server.server1.hostname": "Local Folders",
                "mail.server.server1.userName": "nobody",
                "mail.server.server1.directory-rel": "[ProfD]Mail/Local Folders",
                # accounts made later: no Sent copies, no offline downloads
                "mail.identity.default.fcc": False,
                "mail.server.default.offline_download": False,
            })
            p.update(self.prefs)
            return p
        ids = ["id1"] + [f"id{i + 2}" for i in range(len(self.extra_identities))]
        p.update({
            "marionette.port": self.marionette_port,
            "mail.accountmanager.accounts": "account1,account2",
            "mail.accountmanager.defaultaccount": "account1",
            "mail.accountmanager.localfoldersserver": "server2",
            "mail.account.account1.server": "server1",
            "mail.account.account1.identities": ",".join(ids),
            "mail.account.account2.server": "server2",
            "mail.server.server1.type": "imap",
            "mail.server.server1.name": self.imap.email,
            "mail.server.server1.hostname": self.imap.host,
            "mail.server.server1.realhostname": self.imap.host,
            "mail.server.server1.port": self.imap.port,
            "mail.server.server1.socketType": self.imap.socket_type,
            "mail.server.server1.authMethod": 3,
            "mail.server.server1.userName": self.imap.user,
            "mail.server.server1.realuserName": self.imap.user,
            # connect only when the test asks, once passwords and the
            # certificate override are in place
            "mail.server.server1.login_at_startup": False,
            "mail.server.server1.check_new_mail": False,
            "mail.server.server1.use_idle": True,
            "mail.server.server1.max_cached_connections": 1,
            "mail.server.server1.offline_download": False,
            "mail.server.server1.autosync_offline_stores": False,
            "mail.server.server1.directory-rel": "[ProfD]ImapMail/server1",
            "mail.server.server2.type": "none",
            "mail.server.server2.name": "Local Folders",
            "mail.server.server2.hostname": "Local Folders",
            "mail.server.server2.userName": "nobody",
            "mail.server.server2.directory-rel": "[ProfD]Mail/Local Folders",
            "mail.smtpservers": "smtp1",
            "mail.smtp.defaultserver": "smtp1",
            "mail.smtpserver.smtp1.type": "smtp",
            "mail.smtpserver.smtp1.hostname": self.smtp.host,
            "mail.smtpserver.smtp1.port": self.smtp.port,
            "mail.smtpserver.smtp1.try_ssl": self.smtp.try_ssl,
            "mail.smtpserver.smtp1.authMethod": 3,
            "mail.smtpserver.smtp1.username": self.smtp.user,
            "mail.smtpserver.smtp1.description": "gponlab submission",
        })
        for key, (email, name) in zip(ids, [(self.imap.email, self.imap.full_name)] + self.extra_identities):
            p.update({
                f"mail.identity.{key}.useremail": email,
                f"mail.identity.{key}.fullName": name,
                f"mail.identity.{key}.smtpServer": "smtp1",
                f"mail.identity.{key}.valid": True,
                # no Sent copy (an IMAP APPEND the test does not look at)
                f"mail.identity.{key}.fcc": False,
                f"mail.identity.{key}.compose_html": False,
                f"mail.identity.{key}.draft_folder": "",
            })
        p.update(self.prefs)
        return p

    def write(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in self.all_prefs().items()]
        (self.path / "user.js").write_text("\n".join(lines) + "\n")
        return self.path


# --------------------------------------------------------------------------
# Marionette

class MarionetteError(Exception):
    pass


class AlertOpen(MarionetteError):
    """A dialog opened while a command ran: Marionette refused the command (with the
    prompts "ignore" the dialog stays open for ``alert()`` to read and answer)."""


class Marionette:
    """A minimal Marionette client: NewSession, SetContext, ExecuteScript."""

    def __init__(self, host: str, port: int, timeout: float = 30.0, unix: str | None = None):
        if unix:     # through a Unix socket (Thunderbird in another network namespace)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(unix)
                self.sock.settimeout(2)
                try:
                    if not self.sock.recv(1, socket.MSG_PEEK):
                        raise ConnectionRefusedError("Marionette not listening yet")
                finally:
                    self.sock.settimeout(timeout)
            except OSError:
                self.sock.close()
                raise
        else:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        self._id = 0
        hello = self._recv()
        if not isinstance(hello, dict) or hello.get("marionetteProtocol") != 3:
            raise MarionetteError(f"unexpected Marionette greeting: {hello!r}")

    def _recv(self):
        while b":" not in self._buf:
            self._fill()
        size, _, rest = self._buf.partition(b":")
        n = int(size)
        self._buf = rest
        while len(self._buf) < n:
            self._fill()
        data, self._buf = self._buf[:n], self._buf[n:]
        return json.loads(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise MarionetteError("Marionette connection closed")
        self._buf += chunk

    def command(self, name: str, params: dict | None = None):
        self._id += 1
        body = json.dumps([0, self._id, name, params or {}]).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body)
        while True:
            msg = self._recv()
            if isinstance(msg, list) and msg[0] == 1 and msg[1] == self._id:
                break
        _, _, error, result = msg
        if error:
            kind = AlertOpen if error.get("error") == "unexpected alert open" else MarionetteError
            raise kind(f"{name}: {error.get('error')}: {error.get('message')}\n"
                       f"{error.get('stacktrace', '')}")
        return result

    def start_chrome_session(self, prompts: str = "dismiss and notify") -> None:
        """``prompts``: what Marionette does with a dialog it did not expect (WebDriver's
        unhandledPromptBehavior); "ignore" leaves it open for ``alert()`` to read and answer."""
        # Marionette takes the capabilities as they are (geckodriver's matching of
        # alwaysMatch/firstMatch is not in it): a nested object would be ignored.
        self.command("WebDriver:NewSession", {"unhandledPromptBehavior": prompts})
        self.command("Marionette:SetContext", {"value": "chrome"})
        self.command("WebDriver:SetTimeouts", {"script": 30000})

    def js(self, script: str, *args):
        """Run privileged JavaScript (chrome context); an async function body:
        ``await`` works and ``return`` gives the value back."""
        wrapped = ("const __done = arguments[arguments.length - 1];\n"
                   "(async (...args) => {\n" + script + "\n})(...Array.from(arguments).slice(0, -1))"
                   ".then(v => __done({ok: v === undefined ? null : v}), "
                   "e => __done({err: String(e) + '\\n' + (e && e.stack || '')}));")
        result = self.command("WebDriver:ExecuteAsyncScript",
                              {"script": wrapped, "args": list(args), "newSandbox": False})
        value = result.get("value") if isinstance(result, dict) else result
        if isinstance(value, dict) and "err" in value:
            raise MarionetteError(value["err"])
        return value.get("ok") if isinstance(value, dict) else value

    def quit(self) -> None:
        try:
            self.command("Marionette:Quit", {"flags": ["eForceQuit"]})
        except (MarionetteError, OSError):
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# JavaScript run in Thunderbird's chrome context

JS_TRUST = """
const [host, ports, pem, logins] = args;
// Passwords: the login manager, as when the student ticks "remember".
for (const [origin, user, pass] of logins) {
  const info = Cc["@mozilla.org/login-manager/loginInfo;1"].createInstance(Ci.nsILoginInfo);
  info.init(origin, null, origin, user, pass, "", "");
  await Services.logins.addLoginAsync(info);
}
// The lab's self-signed certificate: a permanent exception for each port,
// as "Confirm Security Exception" does.
const b64 = pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\\s+/g, "");
const certdb = Cc["@mozilla.org/security/x509certdb;1"].getService(Ci.nsIX509CertDB);
const cert = certdb.constructX509FromBase64(b64);
const overrides = Cc["@mozilla.org/security/certoverride;1"].getService(Ci.nsICertOverrideService);
for (const port of ports) {
  overrides.rememberValidityOverride(host, port, {}, cert, false);
}
return Services.appinfo.version;
"""

JS_CHECK_INBOX = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const server = MailServices.accounts.defaultAccount.incomingServer;
const inbox = server.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
const win = Services.wm.getMostRecentWindow("mail:3pane");
const msgWindow = win && win.msgWindow ? win.msgWindow : null;
if (inbox) {
  inbox.getNewMessages(msgWindow, null);
} else {
  server.getNewMessages(server.rootFolder, msgWindow, null);
}
return !!inbox;
"""

JS_INBOX_COUNT = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const server = MailServices.accounts.defaultAccount.incomingServer;
const inbox = server.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
if (!inbox) return -1;
const subjects = [];
for (const hdr of inbox.messages) subjects.push(hdr.mime2DecodedSubject);
return subjects;
"""

JS_SEND = """
const [fromEmail, to, subject, body, wait] = args;
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
let identity = null, accountKey = "";
for (const account of MailServices.accounts.accounts) {
  for (const id of account.identities) {
    if (id.email == fromEmail) { identity = id; accountKey = account.key; }
  }
}
if (!identity) throw new Error("no identity " + fromEmail);
const fields = Cc["@mozilla.org/messengercompose/composefields;1"].createInstance(Ci.nsIMsgCompFields);
fields.from = (identity.fullName ? identity.fullName + " " : "") + "<" + identity.email + ">";
fields.to = to;
fields.subject = subject;
fields.body = body;
fields.forcePlainText = true;
const params = Cc["@mozilla.org/messengercompose/composeparams;1"].createInstance(Ci.nsIMsgComposeParams);
params.composeFields = fields;
params.identity = identity;
params.type = Ci.nsIMsgCompType.New;
params.format = Ci.nsIMsgCompFormat.PlainText;
const msgCompose = MailServices.compose.initCompose(params);
const progress = Cc["@mozilla.org/messenger/progress;1"].createInstance(Ci.nsIMsgProgress);
const done = new Promise((resolve, reject) => {
  progress.registerListener({
    QueryInterface: ChromeUtils.generateQI(["nsIWebProgressListener", "nsISupportsWeakReference"]),
    onStateChange(webProgress, request, stateFlags, status) {
      if (stateFlags & Ci.nsIWebProgressListener.STATE_STOP) {
        if (Components.isSuccessCode(status)) resolve(true);
        else reject(new Error("send failed: 0x" + (status >>> 0).toString(16)));
      }
    },
    onProgressChange() {}, onLocationChange() {}, onStatusChange() {},
    onSecurityChange() {}, onContentBlockingEvent() {},
  });
});
let sent;
try {
  sent = msgCompose.sendMsg(Ci.nsIMsgSend.nsMsgDeliverNow, identity, accountKey, progress);
} catch (e) {
  // Older releases: sendMsg(mode, identity, accountKey, msgWindow, progress).
  sent = msgCompose.sendMsg(Ci.nsIMsgSend.nsMsgDeliverNow, identity, accountKey, null, progress);
}
const win = Services.wm.getMostRecentWindow("mail:3pane");
win.__gponsimSend = { state: "sending" };
const finished = (async () => {
  if (sent && typeof sent.then == "function") await sent;
  await done;
})().then(() => { win.__gponsimSend = { state: "sent" }; },
          e => { win.__gponsimSend = { state: "failed", error: String(e) }; });
if (args[4]) await finished;   // wait: the caller wants the outcome
if (win.__gponsimSend.state == "failed") throw new Error(win.__gponsimSend.error);
return win.__gponsimSend.state;
"""


#: The title :meth:`Thunderbird.dialogs` gives a prompt that Marionette sees (it has no other).
PROMPT = "(prompt)"

JS_CREATE_ACCOUNT = """
// What the account wizard does after "Continue": fetch the provider's
// config-v1.1.xml (FetchConfig.fromISP asks http://autoconfig.<domain>/mail/
// config-v1.1.xml?emailaddress=...; here the URL is the one the lab prints,
// as the lab's name and port 80 are not reachable from a test), read it with
// Thunderbird's own parser, fill in %EMAILLOCALPART% and the password, and
// create the account ("Done"). The first incoming server of the XML wins, as
// in the wizard.
const [url, email, realname, password] = args;
const fetching = ChromeUtils.importESModule("resource:///modules/accountcreation/FetchHTTP.sys.mjs");
// Thunderbird 153 exports fetchHTTP (a promise); 140 ESR the FetchHTTP class with callbacks.
const fetchHTTP = fetching.fetchHTTP || ((where, how) => new Promise(
  (resolve, reject) => new fetching.FetchHTTP(where, how, resolve, reject).start()));
const { readFromXML } = ChromeUtils.importESModule("resource:///modules/accountcreation/readFromXML.sys.mjs");
const { AccountConfig } = ChromeUtils.importESModule("resource:///modules/accountcreation/AccountConfig.sys.mjs");
const { CreateInBackend } = ChromeUtils.importESModule("resource:///modules/accountcreation/CreateInBackend.sys.mjs");
const xml = await fetchHTTP(url, { urlArgs: { emailaddress: email } });
const config = readFromXML(xml, "isp-http").copy();
AccountConfig.replaceVariables(config, realname, email, password);
config.rememberPassword = true;
const account = await CreateInBackend.createAccountInBackend(config);
const inc = account.incomingServer;
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const smtp = MailServices.outgoingServer.getServerByIdentity(account.defaultIdentity);
return {
  key: account.key,
  incoming: { type: inc.type, hostname: inc.hostName ?? inc.hostname ?? inc.realHostName, port: inc.port, socketType: inc.socketType,
              username: inc.username, authMethod: inc.authMethod },
  outgoing: { hostname: smtp.QueryInterface(Ci.nsISmtpServer).hostname, port: smtp.QueryInterface(Ci.nsISmtpServer).port,
              socketType: smtp.socketType, username: smtp.username, authMethod: smtp.authMethod },
  alternatives: config.incomingAlternatives.map(a => [a.type, a.port, a.socketType]),
};
"""

JS_CREATE_ACCOUNT_ISP = """
// The wizard's own lookup at the mail provider (FetchConfig.fromISP): https and http
// variants of autoconfig.<domain>/mail/config-v1.1.xml and <domain>/.well-known/...,
// the first that answers wins; then the same steps as JS_CREATE_ACCOUNT.
const [email, realname, password] = args;
const { FetchConfig } = ChromeUtils.importESModule("resource:///modules/accountcreation/FetchConfig.sys.mjs");
const { AccountConfig } = ChromeUtils.importESModule("resource:///modules/accountcreation/AccountConfig.sys.mjs");
const { CreateInBackend } = ChromeUtils.importESModule("resource:///modules/accountcreation/CreateInBackend.sys.mjs");
const domain = email.split("@")[1];
const found = await FetchConfig.fromISP(domain, email, new AbortController().signal);
const config = found.copy();
AccountConfig.replaceVariables(config, realname, email, password);
config.rememberPassword = true;
const account = await CreateInBackend.createAccountInBackend(config);
const inc = account.incomingServer;
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const smtp = MailServices.outgoingServer.getServerByIdentity(account.defaultIdentity);
return {
  key: account.key, source: found.source, subSource: found.subSource,
  incoming: { type: inc.type, hostname: inc.hostName ?? inc.hostname ?? inc.realHostName, port: inc.port,
              socketType: inc.socketType, username: inc.username, authMethod: inc.authMethod },
  outgoing: { hostname: smtp.QueryInterface(Ci.nsISmtpServer).hostname, port: smtp.QueryInterface(Ci.nsISmtpServer).port,
              socketType: smtp.socketType, username: smtp.username, authMethod: smtp.authMethod },
};
"""

JS_ACCOUNT_PREAMBLE = """
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
function accountOf(email) {
  if (!email) return MailServices.accounts.defaultAccount;
  for (const account of MailServices.accounts.accounts) {
    for (const id of account.identities) if (id.email == email) return account;
  }
  throw new Error("no account for " + email);
}
"""

JS_CHECK_INBOX_OF = JS_ACCOUNT_PREAMBLE + """
const server = accountOf(args[0]).incomingServer;
const inbox = server.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
const win = Services.wm.getMostRecentWindow("mail:3pane");
const msgWindow = win && win.msgWindow ? win.msgWindow : null;
if (inbox) inbox.getNewMessages(msgWindow, null);
else server.getNewMessages(server.rootFolder, msgWindow, null);
return !!inbox;
"""

JS_INBOX_SUBJECTS_OF = JS_ACCOUNT_PREAMBLE + """
const inbox = accountOf(args[0]).incomingServer.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
if (!inbox) return null;
const subjects = [];
for (const hdr of inbox.messages) subjects.push(hdr.mime2DecodedSubject);
return subjects;
"""

JS_DIALOGS = """
// Thunderbird's open dialog windows (e.g. "Send Message Error"): title, text and
// buttons; with args = [title, button] that dialog's button is pressed.
const [pick, button] = args;
const found = [];
for (const win of Services.wm.getEnumerator(null)) {
  const dialog = win.document.getElementById("commonDialog");
  if (!dialog) continue;
  const title = win.document.title;
  const text = (win.document.getElementById("infoBody") || {}).textContent || "";
  found.push({ title, text });
  if (pick && title == pick) dialog.getButton(button || "accept").click();
}
return found;
"""

JS_SEND_STATE = """
const win = Services.wm.getMostRecentWindow("mail:3pane");
return win.__gponsimSend || null;
"""

JS_SET_PASSWORD = JS_ACCOUNT_PREAMBLE + """
const [email, password] = args;
const server = accountOf(email).incomingServer;
server.forgetPassword();
server.password = password;
return true;
"""


# --------------------------------------------------------------------------
# The running Thunderbird

class Thunderbird:
    """Xvfb + Thunderbird, started by PID and stopped by PID."""

    def __init__(self, profile: Profile, workdir: Path, *, keylog: Path | None = None,
                 prompts: str = "dismiss and notify", wrap: list[str] | None = None,
                 marionette_unix: str | None = None):
        """``wrap``: a command prefix that runs Thunderbird elsewhere (``gponsim net exec
        pc1 --``); ``marionette_unix``: then Marionette is reached through this Unix
        socket, forwarded to its port there (Xvfb stays here: its socket is a file)."""
        self.wrap = list(wrap or [])
        self.marionette_unix = marionette_unix
        self.prompts = prompts
        self.profile = profile
        self.workdir = Path(workdir)
        self.keylog = keylog
        self.xvfb: subprocess.Popen | None = None
        self.proc: subprocess.Popen | None = None
        self.marionette: Marionette | None = None
        self.display: str | None = None

    def start(self, timeout: float = 60.0) -> "Thunderbird":
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        if not self.profile.marionette_port:
            self.profile.marionette_port = free_port()
        self.profile.write()
        self.xvfb_log = open(self.workdir / "xvfb.log", "wb")
        rfd, wfd = os.pipe()
        try:
            self.xvfb = subprocess.Popen(
                ["Xvfb", "-displayfd", str(wfd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                stdout=subprocess.DEVNULL, stderr=self.xvfb_log, pass_fds=(wfd,), start_new_session=True)
            os.close(wfd)
            wfd = -1
            number = b""
            deadline = time.monotonic() + 20
            import select
            while not number.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([rfd], [], [], left)[0]:
                    raise AssertionError("Xvfb did not report its display")
                chunk = os.read(rfd, 16)
                if not chunk:
                    raise AssertionError(f"Xvfb exited: {(self.workdir / 'xvfb.log').read_text()}")
                number += chunk
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
        self.display = ":" + number.decode().strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DBUS_", "WAYLAND"))}
        env.update({
            "HOME": str(home), "DISPLAY": self.display, "MOZ_CRASHREPORTER_DISABLE": "1",
            "MOZ_DISABLE_AUTO_SAFE_MODE": "1", "MOZ_NO_REMOTE": "1", "TMPDIR": str(self.workdir),
            "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
        })
        if self.keylog:
            env["SSLKEYLOGFILE"] = str(self.keylog)
        self.tb_log = open(self.workdir / "thunderbird.log", "wb")
        self.proc = subprocess.Popen(
            [*self.wrap, "thunderbird", "--profile", str(self.profile.path), "--no-remote", "--marionette",
             "-remote-allow-system-access"],
            stdout=self.tb_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def connect():
            if self.proc.poll() is not None:
                raise AssertionError(f"thunderbird exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return Marionette("127.0.0.1", self.profile.marionette_port, unix=self.marionette_unix)
            except (OSError, MarionetteError):
                return None
        self.marionette = wait_until(connect, timeout, "Thunderbird's Marionette port")
        self.marionette.start_chrome_session(self.prompts)
        # the 3-pane window and the account manager are up
        wait_until(lambda: self.marionette.js(
            "const w = Services.wm.getMostRecentWindow('mail:3pane');"
            "if (!w || w.document.readyState != 'complete') return false;"
            "const { MailServices } = ChromeUtils.importESModule('resource:///modules/MailServices.sys.mjs');"
            + ("return !!MailServices.accounts.defaultAccount;" if self.profile.imap is not None
               else "return MailServices.accounts.accounts.length > 0;")), timeout, "Thunderbird's main window")
        return self

    def log(self) -> str:
        path = self.workdir / "thunderbird.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def js(self, script: str, *args):
        return self.marionette.js(script, *args)

    def trust(self, host: str, ports: list[int], cert_pem: str, logins: list[tuple[str, str, str]]) -> str:
        return self.js(JS_TRUST, host, ports, cert_pem, [list(x) for x in logins])

    def check_inbox(self, email: str | None = None) -> bool:
        """"Get Messages" for the default account, or for the account of ``email``."""
        return self.js(JS_CHECK_INBOX_OF, email) if email else self.js(JS_CHECK_INBOX)

    def inbox_subjects(self, email: str | None = None):
        return self.js(JS_INBOX_SUBJECTS_OF, email) if email else self.js(JS_INBOX_COUNT)

    def create_account(self, autoconfig_url: str, email: str, name: str, password: str) -> dict:
        """The account wizard with autoconfig: the settings come from the lab's XML."""
        return self.js(JS_CREATE_ACCOUNT, autoconfig_url, email, name, password)

    def create_account_by_domain(self, email: str, name: str, password: str) -> dict:
        """The account wizard as in class: Thunderbird itself finds the settings of the
        address's domain (http://autoconfig.<domain>/mail/config-v1.1.xml, the name
        resolved by the system's DNS); nothing about the server is typed."""
        return self.js(JS_CREATE_ACCOUNT_ISP, email, name, password)

    def alert(self) -> str | None:
        """The text of the dialog Thunderbird shows (e.g. "Login to account ... failed"), or None."""
        try:
            return self.marionette.command("WebDriver:GetAlertText")["value"]
        except MarionetteError as exc:
            if "no such alert" in str(exc):
                return None
            raise

    def answer_alert(self, accept: bool) -> None:
        """Press the dialog's first button (accept) or Cancel."""
        self.marionette.command("WebDriver:AcceptAlert" if accept else "WebDriver:DismissAlert")

    def set_password(self, email: str, password: str) -> bool:
        return self.js(JS_SET_PASSWORD, email, password)

    def send(self, from_email: str, to: str, subject: str, body: str, wait: bool = True):
        """Compose and send; ``wait=False`` returns at once ("sending"): a dialog Thunderbird
        opens on an error would hold the send, ``send_state()`` tells how it ended."""
        result = self.js(JS_SEND, from_email, to, subject, body, wait)
        return True if wait else result

    def send_state(self) -> dict | None:
        return self.js(JS_SEND_STATE)

    def dialogs(self, press: str | None = None, button: str = "accept") -> list[dict]:
        """Thunderbird's open dialogs (title, text); ``press`` = a title presses its ``button``.

        A prompt Marionette itself sees (Thunderbird 140 shows the send error as one;
        153 as a dialog window) comes first, titled :data:`PROMPT`: while it is open
        no script runs."""
        text = self.alert()
        if text is not None:
            if press == PROMPT:
                self.answer_alert(button == "accept")
            return [{"title": PROMPT, "text": text}]
        return self.js(JS_DIALOGS, press, button)

    def stop(self) -> None:
        """Quit Thunderbird (Marionette, then SIGTERM/SIGKILL to its own PID and
        process group), then Xvfb by its PID."""
        if self.marionette:
            if self.proc and self.proc.poll() is None:
                self.marionette.quit()
            self.marionette.close()
            self.marionette = None
        for proc in (self.proc, self.xvfb):
            if proc is None:
                continue
            if proc.poll() is None:
                try:
                    proc.wait(10 if proc is self.proc else 0.01)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            # children (content processes) are in the session we created
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for f in ("tb_log", "xvfb_log"):
            if getattr(self, f, None):
                getattr(self, f).close()
