/* The replay of a recorded run: play, pause, step forward and back, speed, filter by
   protocol, jump to a checkpoint; a packet's layers when the run is a capture. */
"use strict";
const ladder = new Ladder(document.getElementById("ladder"), {inline: false, onPick: (r) => pick(r)});
let run = null;
let view = [];                      // the lines shown by the filter
let pos = 0;                        // how many of them are on the ladder
let timer = null;
const hidden = new Set();

function filtered() {
  return run.lines.filter((r) => !hidden.has(r.p));
}

function render() {
  /* one line more or less: add or take away that row; otherwise draw it all again */
  const rows = ladder.box.childElementCount;
  if (pos === rows + 1) ladder.add(view[pos - 1]);
  else if (pos === rows - 1) ladder.box.lastElementChild.remove();
  else if (pos !== rows) {
    ladder.clear();
    const part = document.createDocumentFragment();
    for (let i = 0; i < pos; i++) part.append(ladder.row(view[i]));
    ladder.box.append(part);
  }
  const last = ladder.box.lastElementChild;
  for (const node of ladder.box.querySelectorAll(".current")) node.classList.remove("current");
  if (last) { last.classList.add("current"); last.scrollIntoView({block: "nearest"}); }
  document.getElementById("position").textContent = `${word("ui_position")} ${pos} / ${view.length}`;
  document.body.dataset.position = String(pos);
  if (pos > 0) pick(view[pos - 1]); else { document.getElementById("explain").textContent = ""; }
}

function pick(r) {
  const x = r.x && run.explanations[r.x];
  const box = document.getElementById("explain");
  box.textContent = "";
  box.append(el("code", {text: r.line}), el("p", {text: x ? T(x) + (x.rfc ? ` (${x.rfc})` : "") : ""}));
  const packet = document.getElementById("packet");
  packet.textContent = "";
  if (!run.capture || !r.pkt) { packet.append(el("p", {class: "none", text: word("ui_no_packet")})); return; }
  fetch(`/replay/packet.json?run=${encodeURIComponent(run.name)}&n=${r.pkt}&lang=${LANG}`)
    .then((reply) => reply.json()).then((data) => {
      packet.textContent = "";
      if (!data.available) { packet.append(el("p", {class: "none", text: data.reason})); return; }
      drawLayers(packet, data.layers);
    });
}

/* One packet layer by layer (the packets view's layer_view): each layer with what it
   is for, its fields with their values (the explanation on hover). */
function drawLayers(box, view) {
  if (!view || !Array.isArray(view.layers)) { box.append(el("pre", {text: JSON.stringify(view, null, 1)})); return; }
  box.append(el("p", {class: "summary", text: `#${view.number}: ${view.summary || ""}`}));
  for (const layer of view.layers) {
    const rows = (layer.fields || []).map((f) =>
      el("tr", {title: f.explain || ""}, el("th", {text: f.name}), el("td", {text: String(f.value)})));
    box.append(el("section", {class: "layer", "data-layer": layer.name},
                  el("h3", {text: layer.name + (layer.osi ? ` (OSI ${layer.osi})` : "")}),
                  el("p", {class: "why", text: layer.explain || ""}),
                  el("table", {}, ...rows)));
  }
}

function step(delta) {
  pos = Math.max(0, Math.min(view.length, pos + delta));
  render();
}

function stop() { if (timer) { clearTimeout(timer); timer = null; } document.body.dataset.playing = "no"; }

function play() {
  stop();
  document.body.dataset.playing = "yes";
  const speed = parseFloat(document.getElementById("speed").value);
  const next = () => {
    if (pos >= view.length) { stop(); return; }
    step(1);
    const gap = pos < view.length ? Math.min(Math.max(view[pos].t - view[pos - 1].t, 0), 1.5) : 0;
    timer = setTimeout(next, Math.max(30, 1000 * gap / speed));
  };
  next();
}

function jump(n) {
  /* to the checkpoint's line (n: its index in the run): everything up to it is shown */
  const at = view.findIndex((r) => r.i >= n);
  pos = at < 0 ? view.length : at + 1;
  render();
}

async function load(name) {
  stop();
  const reply = await fetch(`/replay/run.json?run=${encodeURIComponent(name)}`);
  run = await reply.json();
  if (!reply.ok) { document.getElementById("position").textContent = run.error; return; }
  const filters = document.getElementById("filters");
  for (const box of filters.querySelectorAll("label")) box.remove();
  hidden.clear();
  for (const proto of [...new Set(run.lines.map((r) => r.p))].sort()) {
    const input = el("input", {type: "checkbox", value: proto, checked: "checked", "data-proto": proto});
    input.addEventListener("change", () => {
      if (input.checked) hidden.delete(proto); else hidden.add(proto);
      const before = pos ? view[pos - 1].i : -1;
      view = filtered();
      pos = before < 0 ? 0 : view.filter((r) => r.i <= before).length;
      ladder.clear();
      render();
    });
    filters.append(el("label", {}, input, " " + proto));
  }
  const select = document.getElementById("checkpoint");
  select.textContent = "";
  select.append(el("option", {value: "", text: "—"}));
  for (const c of run.checkpoints) select.append(el("option", {value: String(c.n), text: c.label}));
  ladder.explanations = run.explanations;
  ladder.clear();
  view = filtered();
  pos = 0;
  render();
  document.body.dataset.loaded = name;
}

document.addEventListener("DOMContentLoaded", () => {
  const runs = document.getElementById("run");
  for (const r of BOOT.runs) runs.append(el("option", {value: r.name, text: `${r.name} (${r.kind})`}));
  runs.value = BOOT.run || (BOOT.runs[0] && BOOT.runs[0].name) || "";
  runs.addEventListener("change", () => load(runs.value));
  document.getElementById("play").addEventListener("click", play);
  document.getElementById("pause").addEventListener("click", stop);
  document.getElementById("forward").addEventListener("click", () => { stop(); step(1); });
  document.getElementById("back").addEventListener("click", () => { stop(); step(-1); });
  document.getElementById("checkpoint").addEventListener("change", (ev) => {
    if (ev.target.value !== "") { stop(); jump(parseInt(ev.target.value, 10)); }
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowRight") { stop(); step(1); }
    if (ev.key === "ArrowLeft") { stop(); step(-1); }
    if (ev.key === " ") { ev.preventDefault(); if (timer) stop(); else play(); }
  });
  if (runs.value) load(runs.value);
});
