/* The ladder: one session's exchange, line by line, client on the left, the server's
   component on the right; each line with its explanation; TLS marked, failures red. */
"use strict";

const ACTOR = {
  es: {client: "cliente", smtpd: "smtpd (Postfix)", imap: "imap (Dovecot)", pop3: "pop3 (Dovecot)",
       auth: "auth (Dovecot)", cleanup: "cleanup", qmgr: "qmgr", local: "local", mailbox: "buzón",
       smtp: "smtp (Postfix)", relay: "Gmail", lmtp: "lmtp", "dovecot-lmtp": "LMTP (Dovecot)", internet: "Internet"},
  en: {client: "client", smtpd: "smtpd (Postfix)", imap: "imap (Dovecot)", pop3: "pop3 (Dovecot)",
       auth: "auth (Dovecot)", cleanup: "cleanup", qmgr: "qmgr", local: "local", mailbox: "mailbox",
       smtp: "smtp (Postfix)", relay: "Gmail", lmtp: "lmtp", "dovecot-lmtp": "LMTP (Dovecot)", internet: "Internet"},
};

class Ladder {
  constructor(box, options) {
    this.box = box;
    this.explanations = {};
    this.explainEvery = (options && options.explainEvery) || false;
    this.inline = !(options && options.inline === false);   // explanations under the lines
    this.explained = new Set();
    this.onPick = options && options.onPick;
  }
  clear() { this.box.textContent = ""; this.explained.clear(); }
  explanation(x) { if (x && x.id) this.explanations[x.id] = x; }
  actor(name) { return (ACTOR[LANG] || ACTOR.en)[name] || name; }
  row(r) {
    const dir = r.d === "c2s" ? "c2s" : (r.d === "s2c" ? "s2c" : "internal");
    const classes = ["row", dir];
    if (r.fail) classes.push("fail");
    if (r.tls) classes.push("tls");
    const arrow = dir === "c2s" ? "→" : (dir === "s2c" ? "←" : "·");
    // the client's side on the left, the server's component on the right, whoever speaks
    const left = dir === "s2c" ? r.dst : r.src, right = dir === "s2c" ? r.src : r.dst;
    const from = el("span", {class: "actor from", text: this.actor(left)});
    const to = el("span", {class: "actor to", text: this.actor(right)});
    const text = el("code", {class: "text", text: r.line});
    const lock = r.tls ? el("span", {class: "lock", title: "TLS", text: "TLS"}) : null;
    const body = el("div", {class: "msg"}, el("span", {class: "arrow", text: arrow}), text, lock);
    const node = el("div", {class: classes.join(" "), "data-n": String(r.n), "data-session": r.s,
                            "data-proto": r.p},
                    el("span", {class: "time", text: clock(r.t)}), from, body, to);
    const x = r.x && this.explanations[r.x];
    if (x && this.inline && (this.explainEvery || !this.explained.has(r.x))) {
      this.explained.add(r.x);
      node.append(el("div", {class: "ex", text: T(x) + (x.rfc ? " (" + x.rfc + ")" : "")}));
    }
    if (this.onPick) node.addEventListener("click", () => this.onPick(r, node));
    return node;
  }
  add(r) {
    const node = this.row(r);
    this.box.append(node);
    return node;
  }
}
