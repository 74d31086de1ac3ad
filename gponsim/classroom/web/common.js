/* gponsim class pages: what every page shares. No framework, no CDN: plain DOM. */
"use strict";
const BOOT = JSON.parse(document.getElementById("boot").textContent);
const LANG = BOOT.lang;
const W = BOOT.words;

/* A text given in both languages ({es, en}) in the page's one. */
function T(text) {
  if (text === null || text === undefined) return "";
  if (typeof text === "string") return text;
  return text[LANG] || text.en || "";
}

function word(key, values) {
  let s = W[key] || key;
  for (const [k, v] of Object.entries(values || {})) s = s.split("{" + k + "}").join(String(v));
  return s;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "title") node.title = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function clock(t) {
  /* HH:MM:SS, local time (by hand: a locale formatter per line costs more than the rest) */
  if (!t) return "";
  const d = new Date(t * 1000);
  const two = (n) => (n < 10 ? "0" : "") + n;
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/* Every element with data-w="key" gets that word; the language link switches. */
function fillWords() {
  for (const node of document.querySelectorAll("[data-w]")) node.textContent = word(node.dataset.w);
  const lang = document.getElementById("lang");
  if (lang) {
    const other = LANG === "es" ? "en" : "es";
    const url = new URL(location.href);
    url.searchParams.set("lang", other);
    url.searchParams.delete("token");          // the cookie keeps it
    lang.href = url.pathname + url.search;
    lang.textContent = word("ui_language");
  }
}

/* A server-sent event stream; handlers by event name; the status dot follows it. */
function stream(url, handlers) {
  const status = document.getElementById("status");
  const source = new EventSource(url);
  source.onopen = () => { if (status) { status.textContent = word("ui_connected"); status.className = "status on"; } };
  source.onerror = () => { if (status) { status.textContent = word("ui_disconnected"); status.className = "status off"; } };
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (ev) => { arrived = performance.timeOrigin + ev.timeStamp; fn(JSON.parse(ev.data)); });
  }
  window.gponsimStream = source;
  return source;
}

/* When each line reached this page (bench/class.py reads it): [n, wire time, when its
   event arrived, when it was on the page] (seconds since the epoch, this computer's clock). */
window.gponsimSeen = [];
let arrived = 0;
function seen(record) {
  if (window.gponsimSeen.length < 200000) {
    window.gponsimSeen.push([record.n, record.t, (record.arrived || arrived) / 1000,
                             (performance.timeOrigin + performance.now()) / 1000]);
  }
}

document.addEventListener("DOMContentLoaded", fillWords);
