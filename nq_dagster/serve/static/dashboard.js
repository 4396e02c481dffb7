// The live dashboard of `nq serve`: a client of the server's own API (REST for the state at load, the WebSocket
// stream for every new prediction and realized outcome). Bounded: each source keeps the last WINDOW points,
// OUTCOMES outcomes and STRIP pattern columns; cards are redrawn at most every REDRAW_MS.
"use strict";

const WINDOW = 300, OUTCOMES = 500, STRIP = 120, REDRAW_MS = 250, KEY = "nq.apiKey";
const PATTERNS = ["synchronous", "travelling_wave", "standing_wave", "chaotic", "emergent", "rhythmic", "burst", "sparse"];
const BINS = [[1 / 3, 0.5], [0.5, 0.6], [0.6, 0.7], [0.7, 0.8], [0.8, 0.9], [0.9, 1.0001]];
const $ = (sel, el = document) => el.querySelector(sel);
const cards = new Map();  // source -> card state
let key = sessionStorage.getItem(KEY), ws = null, backoff = 500, stopped = false, received = [];

class AuthError extends Error {}

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

function setConn(state, text) {
  const c = $("#conn");
  c.className = "conn " + (state === "on" ? "on" : "off");
  c.dataset.state = state;
  c.textContent = text;
}

function askForKey(message) {
  stopped = true;
  if (ws) ws.close();
  if (message) banner(message);
  $("#keyform").hidden = false;
  $("#change-key").hidden = true;
  $("#key").focus();
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + key } });
  if (r.status === 401 || r.status === 403) {
    let msg = "";
    try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new AuthError((r.status === 401 ? "The API key was refused (401): " : "This key may not read this (403): ") + msg);
  }
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function fmt(x, d = 3) { return x === null || x === undefined || Number.isNaN(x) ? "-" : Number(x).toFixed(d); }

function pct(arr, q) {
  if (!arr.length) return null;
  const s = [...arr].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))];
}

function makeCard(source, model) {
  const root = el("article", { class: "card", "data-source": source });
  const report = el("a", { class: "report", onclick: () => openReport(source) }, "report");
  root.append(
    el("h2", {}, el("span", { class: "name" }, source), el("span", { class: "score" }), report),
    el("div", { class: "meta" }),
    el("div", { class: "last" }, "waiting for predictions..."),
    el("div", { class: "chart" }),
    el("div", { class: "row" },
      el("div", {}, el("h3", {}, "live reliability (realized outcomes)"), el("div", { class: "rel" })),
      el("div", {}, el("h3", {}, "quantum feature selection"), el("div", { class: "quantum" }))),
    el("h3", {}, "pattern strengths (last " + STRIP + " predictions)"),
    el("div", { class: "strip-wrap" }, el("div", { class: "labels" }, ...PATTERNS.map(p => el("span", {}, p))),
      el("canvas", { class: "strip", width: STRIP, height: 8 })),
  );
  $("#sources").append(root);
  const c = {
    source, root, model, t: [], v: [], up: [], down: [], hold: [], lat: [], strip: [], outcomes: [], last: null,
    dirty: true, plot: null,
  };
  const width = Math.max(300, root.clientWidth - 24);
  c.plot = new uPlot({
    width, height: 160, legend: { show: false }, cursor: { show: false },
    scales: { x: { time: true } },
    series: [{}, { label: "value", stroke: "#0969da", width: 1 },
      { label: "up", stroke: "#1a7f37", width: 0, points: { show: true, size: 5, fill: "#1a7f37" } },
      { label: "down", stroke: "#cf222e", width: 0, points: { show: true, size: 5, fill: "#cf222e" } },
      { label: "hold", stroke: "#8c959f", width: 0, points: { show: true, size: 4, fill: "#8c959f" } }],
    axes: [{}, { size: 60 }],
  }, [[], [], [], [], []], $(".chart", root));
  cards.set(source, c);
  renderStatic(c);
  return c;
}

function renderStatic(c) {
  const m = c.model || {};
  const v = m.validation;
  $(".score", c.root).textContent = v ? `validation ${fmt(v.score, 0)}/100, accuracy ${fmt(v.accuracy)} on ${v.predictions} held-out` : "no validation report yet";
  $(".report", c.root).hidden = !v;
  $(".meta", c.root).textContent = `model ${m.model_version || "-"} (trained ${m.trained_at ? m.trained_at.slice(0, 19) : "-"}, ${m.trained_rows || "-"} rows)`;
  const q = m.quantum || {};
  const conv = q.convergence || {};
  $(".quantum", c.root).replaceChildren(el("table", { class: "rel" },
    el("tr", {}, el("th", {}, "energy"), el("td", {}, fmt(q.energy, 4))),
    el("tr", {}, el("th", {}, "phase coherence"), el("td", {}, fmt(q.phase_coherence, 3))),
    el("tr", {}, el("th", {}, "converged"), el("td", {}, conv.converged === undefined ? "-" : String(conv.converged))),
    el("tr", {}, el("th", {}, "selected"), el("td", {}, (m.selected_features || []).join(", ") || "-"))));
}

function push(arr, x, n) { arr.push(x); if (arr.length > n) arr.splice(0, arr.length - n); }

function addPrediction(p) {
  let c = cards.get(p.source);
  if (!c) c = makeCard(p.source, null);
  const t = Date.parse(p.timestamp) / 1000;
  if (c.t.length && t <= c.t[c.t.length - 1]) return;  // already shown (history and stream overlap)
  const v = p.value === undefined ? null : p.value;
  push(c.t, t, WINDOW); push(c.v, v, WINDOW);
  push(c.up, p.direction === "up" ? v : null, WINDOW);
  push(c.down, p.direction === "down" ? v : null, WINDOW);
  push(c.hold, p.direction === "hold" ? v : null, WINDOW);
  if (p.processing_time_ms !== null && p.processing_time_ms !== undefined) push(c.lat, p.processing_time_ms, WINDOW);
  const pats = (p.neuromorphic_results || {}).patterns || {};
  push(c.strip, PATTERNS.map(k => pats[k] || 0), STRIP);
  c.last = p;
  c.dirty = true;
}

function addOutcome(o) {
  const c = cards.get(o.source);
  if (!c) return;
  if (c.outcomes.length && c.outcomes[c.outcomes.length - 1].timestamp >= o.timestamp) return;
  push(c.outcomes, o, OUTCOMES);
  c.dirty = true;
}

function renderCard(c) {
  c.plot.setData([c.t, c.v, c.up, c.down, c.hold]);
  const p = c.last;
  if (p) {
    const pr = p.probabilities || {};
    $(".last", c.root).replaceChildren(
      el("span", { class: "dir-" + p.direction }, p.direction), ` with confidence ${fmt(p.confidence)} at ${p.timestamp.slice(0, 19)} `,
      el("span", { class: "muted" }, `(down ${fmt(pr.down, 2)} / hold ${fmt(pr.hold, 2)} / up ${fmt(pr.up, 2)}; `
        + `latency p50 ${fmt(pct(c.lat, 0.5), 1)} ms, p95 ${fmt(pct(c.lat, 0.95), 1)} ms over ${c.lat.length})`));
    $(".last", c.root).dataset.predictionId = p.prediction_id;
  }
  // live reliability: realized accuracy per stated-confidence bin; the mark is the bin's mean stated confidence
  const recent = c.outcomes.slice(-100);
  const acc = recent.length ? recent.filter(o => o.correct).length / recent.length : null;
  const conf = recent.length ? recent.reduce((s, o) => s + o.confidence, 0) / recent.length : null;
  const rows = BINS.map(([lo, hi]) => {
    const inBin = c.outcomes.filter(o => o.confidence >= lo && o.confidence < hi);
    const a = inBin.length ? inBin.filter(o => o.correct).length / inBin.length : null;
    const mc = inBin.length ? inBin.reduce((s, o) => s + o.confidence, 0) / inBin.length : null;
    return el("tr", {}, el("td", {}, `${fmt(lo, 2)}-${fmt(Math.min(hi, 1), 2)}`), el("td", {}, String(inBin.length)),
      el("td", {}, fmt(a, 2)),
      el("td", { class: "bar" }, el("span", { style: `width:${a === null ? 0 : Math.round(a * 100)}%` }),
        mc === null ? "" : el("i", { style: `left:${Math.round(mc * 100)}%` })));
  });
  $(".rel", c.root).replaceChildren(
    el("div", { class: "muted" }, `last ${recent.length} realized: accuracy ${fmt(acc, 3)} vs stated confidence ${fmt(conf, 3)}`),
    el("table", { class: "rel" }, el("tr", {}, el("th", {}, "confidence"), el("th", {}, "n"), el("th", {}, "accuracy"), el("th", {}, "")), ...rows));
  // pattern heat strip: one column per prediction, one row per pattern
  const cv = $("canvas.strip", c.root), ctx = cv.getContext("2d");
  const img = ctx.createImageData(STRIP, 8);
  const off = STRIP - c.strip.length;
  c.strip.forEach((col, x) => col.forEach((s, y) => {
    const i = 4 * (y * STRIP + off + x), k = Math.max(0, Math.min(1, s));
    img.data[i] = 255 - Math.round(200 * k); img.data[i + 1] = 255 - Math.round(120 * k); img.data[i + 2] = 255 - Math.round(30 * k); img.data[i + 3] = 255;
  }));
  ctx.putImageData(img, 0, 0);
  c.dirty = false;
}

function redraw() {
  for (const c of cards.values()) if (c.dirty) renderCard(c);
  const now = performance.now();
  received = received.filter(t => now - t < 10000);
  $("#rate").textContent = cards.size ? `${cards.size} sources, ${(received.length / 10).toFixed(1)} predictions/s` : "";
}

async function openReport(source) {
  try {
    const r = await fetch(`/reports/${encodeURIComponent(source)}.html`, { headers: { Authorization: "Bearer " + key } });
    if (!r.ok) { banner(`report of ${source}: HTTP ${r.status}`); return; }
    const url = URL.createObjectURL(await r.blob());
    window.open(url, "_blank");
  } catch (e) { banner(`report of ${source}: ${e.message}`); }
}

async function load() {
  const [models, preds, outs] = await Promise.all([api("/api/v1/models"), api("/api/v1/predictions?limit=" + WINDOW),
    api("/api/v1/outcomes")]);
  for (const [s, m] of Object.entries(models.models)) {
    const c = cards.get(s) || makeCard(s, m);
    c.model = m; renderStatic(c);
  }
  for (const recs of Object.values(preds)) recs.forEach(addPrediction);
  for (const os of Object.values(outs)) os.forEach(addOutcome);
  const pf = models.portfolio;
  $("#portfolio").hidden = !pf;
  if (pf) {
    $("#portfolio").replaceChildren(el("h3", {}, "quantum portfolio (latest cross-source run)"),
      el("table", { class: "rel" }, el("tr", {}, el("th", {}, "source"), el("th", {}, "predicted edge"), el("th", {}, "volatility"), el("th", {}, "chosen")),
        ...pf.map(r => el("tr", {}, el("td", {}, r.source), el("td", {}, fmt(r.predicted_edge, 5)), el("td", {}, fmt(r.volatility, 5)), el("td", {}, r.chosen ? "yes" : "no")))));
  }
}

function connect() {
  if (stopped) return;
  const proto = location.protocol === "https:" ? "wss://" : "ws://";
  ws = new WebSocket(proto + location.host + "/ws/predictions");
  ws.onopen = () => ws.send(JSON.stringify({ type: "subscription", sources: [...cards.keys()], api_key: key }));
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "subscribed") { backoff = 500; banner(""); setConn("on", "live"); }
    else if (m.type === "batch") {  // one message per engine batch: its predictions, then its outcomes
      for (const p of m.predictions) { addPrediction(p); received.push(performance.now()); }
      for (const o of m.outcomes) addOutcome(o);
    }
  };
  ws.onclose = (ev) => {
    if (ev.code === 4401 || ev.code === 4403) { askForKey("The stream refused the key: " + (ev.reason || ev.code)); setConn("off", "refused"); return; }
    if (stopped) return;
    const wait = backoff;
    backoff = Math.min(backoff * 2, 10000);
    setConn("reconnecting", `reconnecting in ${(wait / 1000).toFixed(1)} s` + (ev.code === 1013 ? " (fell behind)" : ""));
    setTimeout(() => start().catch(() => {}), wait);
  };
}

async function start() {
  if (!key) { askForKey(""); return; }
  stopped = false;
  try {
    await load();
  } catch (e) {
    if (e instanceof AuthError) { setConn("off", "refused"); askForKey(e.message); return; }
    const wait = backoff;
    backoff = Math.min(backoff * 2, 10000);
    setConn("reconnecting", `server unreachable; retrying in ${(wait / 1000).toFixed(1)} s`);
    setTimeout(() => start().catch(() => {}), wait);
    return;
  }
  $("#keyform").hidden = true;
  $("#change-key").hidden = false;
  connect();
}

$("#keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  key = $("#key").value.trim();
  sessionStorage.setItem(KEY, key);
  banner("");
  start();
});
$("#change-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); key = null; askForKey(""); });
setInterval(redraw, REDRAW_MS);
start();
