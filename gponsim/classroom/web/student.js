/* A student's own page: their tasks (with their accounts), their checks, hints and
   sessions. Everything here is theirs: the server sends nothing of anyone else's. */
"use strict";
const ladder = new Ladder(document.getElementById("ladder"), {explainEvery: false});
let shown = null;                   // the session on the ladder (null: the newest)
const sessions = {};

function drawTasks(data) {
  const list = document.getElementById("tasks");
  if (!list.childElementCount) {
    for (const task of BOOT.tasks) {
      const marks = el("div", {class: "marks"});
      for (const e of BOOT.plan.evidence.filter((x) => x.task === task.step)) {
        marks.append(el("span", {class: "mark", "data-check": e.id, "data-state": "pending",
                                 text: "· " + T(e.title)}));
      }
      list.append(el("li", {"data-step": task.step}, el("h3", {text: task.title}),
                         el("p", {class: "do", text: task.do}), marks));
    }
  }
  for (const [id, m] of Object.entries(data.marks)) {
    const mark = list.querySelector(`.mark[data-check="${id}"]`);
    const state = m.passed === true ? "pass" : (m.passed === false ? "fail" : "pending");
    const e = BOOT.plan.evidence.find((x) => x.id === id);
    mark.dataset.state = state;
    mark.textContent = (state === "pass" ? "✓ " : (state === "fail" ? "✗ " : "· ")) + T(e.title);
    mark.title = m.line || "";
  }
  for (const item of list.children) item.classList.toggle("now", item.dataset.step === data.current);
  const hints = document.getElementById("hints");
  hints.textContent = "";
  if (!data.hints.length) hints.append(el("li", {class: "none", text: word("ui_no_hints")}));
  for (const h of data.hints.slice().reverse()) {
    hints.append(el("li", {"data-hint": h.key}, el("span", {class: "time", text: clock(h.t)}), " ", T(h.text)));
  }
}

function listSession(r) {
  if (sessions[r.s]) { sessions[r.s].count++; sessions[r.s].node.querySelector(".n").textContent = sessions[r.s].count; return; }
  const node = el("li", {"data-session": r.s},
                  el("code", {text: `${clock(r.t)} ${r.svc || r.p} ${r.acct || ""} ${r.s} `}),
                  el("span", {class: "n", text: "1"}));
  node.addEventListener("click", () => showSession(r.s));
  sessions[r.s] = {node, count: 1};
  document.getElementById("sessions").prepend(node);
}

async function showSession(session) {
  shown = session;
  const reply = await fetch(`/me/session.json?id=${encodeURIComponent(session)}`);
  if (!reply.ok) return;
  ladder.clear();
  document.getElementById("ladder-title").textContent = `${word("ui_session")} ${session}`;
  for (const r of await reply.json()) ladder.add(r);
}

function line(r) {
  seen(r);
  listSession(r);
  if (shown === null || shown === r.s) {
    if (ladder.box.dataset.session !== r.s) {
      ladder.clear();
      ladder.box.dataset.session = r.s;
      document.getElementById("ladder-title").textContent = `${word("ui_session")} ${r.s}`;
    }
    ladder.add(r);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const me = BOOT.me;
  document.getElementById("me").textContent = word("ui_student_title", {login: me.login}) +
    (me.name ? ` · ${me.name}` : "");
  stream("/me/events", {
    explain: (x) => ladder.explanation(x),
    student: drawTasks,
    line,
  });
});
