/* The projector: one session's exchange as a ladder that grows as it happens, every
   line with its explanation. */
"use strict";
const ladder = new Ladder(document.getElementById("ladder"), {explainEvery: true});
let current = null;

function title(r) {
  const who = r.who ? ` · ${r.who}` : (r.acct ? ` · ${r.acct}` : "");
  document.getElementById("session-title").textContent =
    `${word("ui_session")} ${r.s}${r.svc ? " · " + r.svc : ""}${who}`;
}

function add(r) {
  seen(r);
  if (current !== r.s) {            // following the newest session: a new one starts a new ladder
    current = r.s;
    ladder.clear();
  }
  document.getElementById("waiting").hidden = true;
  title(r);
  ladder.add(r).scrollIntoView({block: "end"});
}

document.addEventListener("DOMContentLoaded", () => {
  const follow = document.getElementById("follow");
  const choices = [["latest", word("ui_follow_latest")]].concat(
    BOOT.students.map((s) => [s.login, s.name ? `${s.name} (${s.login})` : s.login]));
  if (BOOT.session) choices.unshift(["", BOOT.session]);
  for (const [value, text] of choices) follow.append(el("option", {value, text}));
  follow.value = BOOT.session ? "" : BOOT.follow;
  follow.addEventListener("change", () => {
    const url = new URL(location.href);
    url.searchParams.delete("session");
    url.searchParams.delete("token");
    url.searchParams.set("follow", follow.value || "latest");
    location.href = url.pathname + url.search;
  });
  const query = BOOT.session ? `session=${encodeURIComponent(BOOT.session)}` : `follow=${encodeURIComponent(BOOT.follow || "latest")}`;
  stream(`/projector/events?${query}`, {
    explain: (x) => ladder.explanation(x),
    line: add,
    session: (info) => { if (info.session === current && info.student) {
      const t = document.getElementById("session-title");
      if (!t.textContent.includes(info.student)) t.textContent += ` · ${info.student}`; } },
  });
});
