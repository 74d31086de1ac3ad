/* The teacher's dashboard: students × checks, live; the class's counters on the
   architecture diagram; the latest lines; sessions nobody owns yet. */
"use strict";
const STUCK_AFTER = 180;            // seconds without progress (and not done)
const MAX_LINES = 150;
let plan = null;
let students = {};
let skew = 0;                       // server clock - this clock (seconds)
const lines = document.getElementById("lines");

function now() { return Date.now() / 1000 + skew; }

function buildGrid() {
  const head = document.querySelector("#grid thead");
  head.textContent = "";
  const tasks = el("tr", {class: "tasks"}, el("th", {rowspan: "2", text: word("ui_student")}),
                   el("th", {rowspan: "2", text: word("ui_current")}));
  const checks = el("tr", {class: "checks"});
  for (const task of plan.tasks) {
    const mine = plan.evidence.filter((e) => e.task === task.step);
    if (!mine.length) continue;
    tasks.append(el("th", {colspan: String(mine.length), text: T(task.title)}));
    for (const e of mine) {
      checks.append(el("th", {class: e.graded ? "check" : "check ungraded", title: T(e.title),
                              "data-check": e.id, text: e.id}));
    }
  }
  for (const key of ["ui_score", "ui_last_error", "ui_last_seen"]) {
    tasks.append(el("th", {rowspan: "2", text: word(key)}));
  }
  head.append(tasks, checks);
}

function taskTitle(step) {
  const task = plan.tasks.find((t) => t.step === step);
  return task ? T(task.title) : "";
}

const rows = new Map();
function rowFor(login) {
  let row = rows.get(login);
  if (row) return row;
  row = el("tr", {"data-student": login});
  row.append(el("th", {class: "who"}), el("td", {class: "current"}));
  for (const e of plan.evidence) row.append(el("td", {class: "mark", "data-check": e.id, "data-state": "pending", text: "·"}));
  row.append(el("td", {class: "score"}), el("td", {class: "error"}), el("td", {class: "seen"}));
  row.addEventListener("click", () => showDetail(login));
  document.querySelector("#grid tbody").append(row);
  rows.set(login, row);
  return row;
}

function updateStudent(data) {
  students[data.student.login] = data;
  pendingStudents.set(data.student.login, data);
  later();
}

function drawStudent(data) {
  const s = data.student;
  const row = rowFor(s.login);
  row.querySelector(".who").textContent = s.name ? `${s.name} (${s.login})` : s.login;
  row.querySelector(".current").textContent = data.done ? word("ui_done") :
    (data.first_seen ? taskTitle(data.current) : word("ui_not_started"));
  for (const [id, m] of Object.entries(data.marks)) {
    const cell = row.querySelector(`td[data-check="${id}"]`);
    const state = m.passed === true ? "pass" : (m.passed === false ? "fail" : "pending");
    cell.dataset.state = state;
    cell.textContent = state === "pass" ? "✓" : (state === "fail" ? "✗" : "·");
    cell.title = m.line ? `${m.line}\n${m.session} ${clock(m.t)}` : "";
  }
  row.querySelector(".score").textContent = `${data.score[0]}/${data.score[1]}`;
  const err = data.last_error;
  const cell = row.querySelector(".error");
  cell.textContent = !err ? "" : (err.line.startsWith(err.code) ? err.line : `${err.code}: ${err.line}`);
  cell.title = err ? `${err.session} ${clock(err.t)}` : "";
  row.dataset.done = data.done ? "yes" : "no";
  drawStuck(row, data);
}

function drawStuck(row, data) {
  const since = data.last_progress || data.first_seen;
  const seen = row.querySelector(".seen");
  let text = data.last_seen ? clock(data.last_seen) : "";
  const isStuck = Boolean(!data.done && data.first_seen && now() - since > STUCK_AFTER);
  row.classList.toggle("stuck", isStuck);
  if (isStuck) text += " · " + word("ui_stuck", {min: Math.floor((now() - since) / 60)});
  if (seen.textContent !== text) seen.textContent = text;
  return isStuck;
}

function refreshSummary() {
  let stuck = 0, done = 0;
  for (const data of Object.values(students)) {
    if (data.done) done++;
    else if (data.first_seen && now() - (data.last_progress || data.first_seen) > STUCK_AFTER) stuck++;
  }
  document.getElementById("summary").textContent =
    `${done}/${Object.keys(students).length} ${word("ui_done")} · ${word("ui_stuck_on")}: ${stuck}`;
}

function refreshStuck() {
  for (const data of Object.values(students)) drawStuck(rowFor(data.student.login), data);
  refreshSummary();
}

/* Lines and students arrive faster than a screen is drawn: they wait for the next frame
   and go on the page together (one layout per frame, not one per line). */
let pendingLines = [];
let pendingStudents = new Map();
let frameAsked = false;
let lastFlush = 0;
const FLUSH_MS = 100;

function later() {
  if (frameAsked) return;
  frameAsked = true;
  const flush = () => {
    frameAsked = false;
    const batch = pendingLines;
    pendingLines = [];
    if (batch.length) {
      const part = document.createDocumentFragment();
      for (let i = batch.length - 1; i >= 0; i--) part.append(lineItem(batch[i]));
      lines.prepend(part);
      while (lines.childElementCount > MAX_LINES) lines.lastElementChild.remove();
      for (const r of batch) seen(r);
    }
    const sessions = pendingSessions;
    pendingSessions = new Map();
    for (const info of sessions.values()) drawSession(info);
    const changed = pendingStudents;
    pendingStudents = new Map();
    for (const data of changed.values()) drawStudent(data);
    if (changed.size) refreshSummary();
  };
  // at most one update of the page per FLUSH_MS: under load, fewer and bigger layouts
  const wait = Math.max(0, lastFlush + FLUSH_MS - performance.now());
  const go = () => { lastFlush = performance.now(); flush(); };
  if (document.hidden || wait > 0) setTimeout(() => requestAnimationFrame(go), wait);
  else requestAnimationFrame(go);
}

function lineItem(r) {
  const who = r.who || (r.acct ? r.acct + "?" : "");
  return el("li", {"data-n": String(r.n), "data-session": r.s, class: r.fail ? "fail" : (r.tls ? "tls" : "")},
            el("span", {class: "time", text: clock(r.t)}), el("span", {class: "who", text: who}),
            el("span", {class: "sess", text: r.s}), el("code", {text: r.line.split("\n")[0]}));
}

function addLine(r) {
  r.arrived = arrived;
  pendingLines.push(r);
  later();
}

let pendingSessions = new Map();
function sessionChanged(info) {
  pendingSessions.set(info.session, info);
  later();
}

function drawSession(info) {
  for (const item of lines.querySelectorAll(`li[data-session="${info.session}"]`)) {
    item.querySelector(".who").textContent = info.student || (info.account ? info.account + "?" : "");
  }
  const list = document.getElementById("unattributed");
  const old = list.querySelector(`li[data-session="${info.session}"]`);
  if (info.student) { if (old) old.remove(); return; }
  const item = el("li", {"data-session": info.session},
                  el("code", {text: `${info.session} ${info.service} ${info.ip} ${info.account || ""}`}));
  if (old) old.replaceWith(item); else list.prepend(item);
}

let counterNodes = {};
function drawDiagram() {
  const box = document.getElementById("diagram");
  if (!BOOT.diagram) return;
  const svg = new DOMParser().parseFromString(BOOT.diagram, "image/svg+xml").documentElement;
  box.append(document.importNode(svg, true));
  for (const g of box.querySelectorAll("g.node")) {
    const name = g.querySelector("title").textContent;
    const shape = g.querySelector("polygon, ellipse, path");
    if (!shape) continue;
    const b = shape.getBBox();
    const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("x", String(b.x + b.width - 2));
    t.setAttribute("y", String(b.y - 3));
    t.setAttribute("text-anchor", "end");
    t.setAttribute("class", "counter");
    t.setAttribute("data-node", name);
    g.append(t);
    counterNodes[name] = t;
  }
}

function updateCounters(counters) {
  for (const [node, [count, failed]] of Object.entries(counters)) {
    const t = counterNodes[node];
    if (!t) continue;
    t.textContent = failed ? `${count} (${failed}✗)` : String(count);
    t.classList.toggle("failing", failed > 0);
  }
}

async function showDetail(login) {
  const box = document.getElementById("detail");
  box.hidden = false;
  document.getElementById("detail-who").textContent = login;
  const reply = await fetch(`/teacher/sessions.json?student=${encodeURIComponent(login)}`);
  const list = document.getElementById("detail-sessions");
  list.textContent = "";
  for (const s of await reply.json()) {
    const link = el("a", {href: `/projector?session=${encodeURIComponent(s.session)}`, target: "_blank",
                          text: word("ui_project")});
    list.append(el("li", {"data-session": s.session},
                   el("code", {text: `${clock(s.started)} ${s.service} ${s.account} ${s.session} (${s.lines} ${word("ui_lines")})`}),
                   " ", link));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  drawDiagram();
  stream("/teacher/events", {
    hello: (h) => { skew = h.now - Date.now() / 1000; },
    class: (c) => {
      plan = c.plan;
      document.getElementById("lesson").textContent = T(plan.title);
      buildGrid();
      document.querySelector("#grid tbody").textContent = "";
      rows.clear();
      for (const s of c.students) { students[s.student.login] = s; drawStudent(s); }
      refreshSummary();
      updateCounters(c.counters);
      for (const u of c.unattributed) sessionChanged(u);
      lines.textContent = "";
      const part = document.createDocumentFragment();
      for (const r of c.recent.slice().reverse()) part.append(lineItem(r));
      lines.append(part);
    },
    student: updateStudent,
    line: addLine,
    session: sessionChanged,
    counters: updateCounters,
  });
  setInterval(refreshStuck, 5000);
});
