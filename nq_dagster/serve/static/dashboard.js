// The live dashboard of `nq serve`: a client of the server's own API (REST for the state at load, the WebSocket
// stream for every new prediction and realized outcome). Bounded: each source keeps the last WINDOW points,
// OUTCOMES outcomes and STRIP pattern columns; cards are redrawn at most every REDRAW_MS. Each prediction is
// marked hit or miss when the outcome that a later tick realizes arrives; a source whose report found no skill,
// or whose live accuracy is significantly below its stated confidence, gets a banner on its card.
"use strict";

const WINDOW = 300, OUTCOMES = 500, STRIP = 120, REDRAW_MS = 250, KEY = "nq.apiKey";
const RECENT = 8, ROLL = 50, METRICS_MS = 5000, PERF_POINTS = 120, VALIDATION_MS = 60000;
const SLOW_MS = 1000;  // the outcome views (marks, accuracy chart, banner) redraw at most this often per card
const REPORT_COOKIE = "nq_report_key";  // the key for /reports/ links (a plain URL carries no header)
const LIVE_ALERT_P = 0.01, LIVE_ALERT_MIN = 30;  // live accuracy below stated confidence: binomial p, outcomes
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

// the reports are plain links (bookmarkable, no blob: URL): the key travels in a cookie scoped to /reports/
function setReportCookie(k) {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = k ? `${REPORT_COOKIE}=${encodeURIComponent(k)}; Path=/reports; SameSite=Strict${secure}`
    : `${REPORT_COOKIE}=; Path=/reports; Max-Age=0`;
}

// P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to OUTCOMES)
function binomCdf(k, n, p) {
  if (p <= 0) return 1; if (p >= 1) return k >= n ? 1 : 0;
  let logc = 0, s = 0;  // log C(n, 0)
  for (let i = 0; i <= k; i++) {
    if (i > 0) logc += Math.log((n - i + 1) / i);
    s += Math.exp(logc + i * Math.log(p) + (n - i) * Math.log(1 - p));
  }
  return Math.min(1, s);
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
  const report = el("a", { class: "report", href: `/reports/${encodeURIComponent(source)}.html`, target: "_blank", rel: "noopener" }, "report");
  root.append(
    el("h2", {}, el("span", { class: "name" }, source), el("span", { class: "score" }), report),
    el("div", { class: "skill-banner", role: "status", hidden: "" }),
    el("div", { class: "meta" }),
    el("div", { class: "last" }, "waiting for predictions..."),
    el("div", { class: "chart" }),
    el("div", { class: "row" },
      el("div", {}, el("h3", {}, "latest predictions"), el("ol", { class: "recent" })),
      el("div", {}, el("h3", {}, `accuracy vs stated confidence (rolling ${ROLL})`), el("div", { class: "accchart" }))),
    el("div", { class: "row" },
      el("div", {}, el("h3", {}, "live reliability (realized outcomes)"), el("div", { class: "rel" })),
      el("div", {}, el("h3", {}, "quantum feature selection"), el("div", { class: "quantum" }))),
    el("h3", {}, "pattern strengths (last " + STRIP + " predictions)"),
    el("div", { class: "strip-wrap" }, el("div", { class: "labels" }, ...PATTERNS.map(p => el("span", {}, p.replace("_", " ")))),
      el("canvas", { class: "strip", width: STRIP, height: 8 })),
  );
  $("#sources").append(root);
  $("#empty").hidden = true;
  const c = {
    source, root, model, t: [], v: [], up: [], down: [], hold: [], lat: [], strip: [], outcomes: [], last: null,
    recent: [], results: new Map(), dirty: true, plot: null, acc: null, slowAt: 0,
    hi95: [], lo95: [], hi80: [], lo80: [],
  };
  const width = Math.max(240, root.clientWidth - 24);
  c.plot = new uPlot({
    width, height: 160, legend: { show: false }, cursor: { show: false },
    scales: { x: { time: true } },
    series: [{}, { label: "value", stroke: "#0969da", width: 1 },
      { label: "up", stroke: "#1a7f37", width: 0, points: { show: true, size: 5, fill: "#1a7f37" } },
      { label: "down", stroke: "#cf222e", width: 0, points: { show: true, size: 5, fill: "#cf222e" } },
      { label: "hold", stroke: "#8c959f", width: 0, points: { show: true, size: 4, fill: "#8c959f" } },
      // the record's intervals around the value: where the value one horizon later falls, at 95 % and 80 %
      { label: "95 % high", stroke: "rgba(9,105,218,0.25)", width: 1 },
      { label: "95 % low", stroke: "rgba(9,105,218,0.25)", width: 1 },
      { label: "80 % high", stroke: "rgba(9,105,218,0.4)", width: 1 },
      { label: "80 % low", stroke: "rgba(9,105,218,0.4)", width: 1 }],
    bands: [{ series: [5, 6], fill: "rgba(9,105,218,0.08)" }, { series: [7, 8], fill: "rgba(9,105,218,0.12)" }],
    axes: [{}, { size: 60 }],
  }, [[], [], [], [], [], [], [], [], []], $(".chart", root));
  c.acc = new uPlot({
    width: Math.max(180, $(".accchart", root).clientWidth || Math.floor(width / 2)), height: 120, cursor: { show: false },
    legend: { show: true, live: false },
    scales: { x: { time: true }, y: { range: [0, 1] } },
    series: [{}, { label: "accuracy", stroke: "#0969da", width: 1.5 },
      { label: "stated confidence", stroke: "#bf8700", width: 1.5, dash: [4, 3] }],
    axes: [{}, { size: 36 }],
  }, [[], [], []], $(".accchart", root));
  cards.set(source, c);
  renderStatic(c);
  return c;
}

function renderStatic(c) {
  const m = c.model || {};
  const v = m.validation;
  // the score is 0 exactly when the report found no significant skill (the score's definition)
  $(".score", c.root).textContent = v ? `validation ${fmt(v.score, 0)}/100${v.score === 0 ? " (no skill)" : ""}, accuracy ${fmt(v.accuracy)} on ${v.predictions} held-out` : "no validation report yet";
  $(".report", c.root).hidden = !v;
  $(".meta", c.root).textContent = `model ${m.model_version || "-"} (trained ${m.trained_at ? m.trained_at.slice(0, 19) : "-"}, ${m.trained_rows || "-"} rows)`;
  const q = m.quantum || {};
  const conv = q.convergence || {};
  $(".quantum", c.root).replaceChildren(el("table", { class: "rel" },
    el("tr", {}, el("th", {}, "energy"), el("td", {}, fmt(q.energy, 4))),
    el("tr", {}, el("th", {}, "phase coherence"), el("td", {}, fmt(q.phase_coherence, 3))),
    el("tr", {}, el("th", {}, "annealer converged"), el("td", {}, conv.converged === undefined ? "-" : String(conv.converged))),
    el("tr", {}, el("th", {}, "selected"), el("td", {}, (m.selected_features || []).join(", ") || "-"))),
    // what `converged` means: the answer is the exact optimum; the note gives what each annealer achieved
    q.note ? el("p", { class: "muted" }, q.note) : "");
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
  const i95 = p.interval_95, i80 = p.interval_80;  // [low, high] of the change; null for an older model
  push(c.hi95, v !== null && i95 ? v + i95[1] : null, WINDOW); push(c.lo95, v !== null && i95 ? v + i95[0] : null, WINDOW);
  push(c.hi80, v !== null && i80 ? v + i80[1] : null, WINDOW); push(c.lo80, v !== null && i80 ? v + i80[0] : null, WINDOW);
  if (p.processing_time_ms !== null && p.processing_time_ms !== undefined) push(c.lat, p.processing_time_ms, WINDOW);
  const pats = (p.neuromorphic_results || {}).patterns || {};
  push(c.strip, PATTERNS.map(k => pats[k] || 0), STRIP);
  push(c.recent, { t: Date.parse(p.timestamp), id: p.prediction_id, direction: p.direction, confidence: p.confidence }, RECENT);
  c.last = p;
  c.dirty = true;
}

function addOutcome(o) {
  const c = cards.get(o.source);
  if (!c) return;
  if (c.outcomes.length && c.outcomes[c.outcomes.length - 1].timestamp >= o.timestamp) return;
  // a tick that came after a gap longer than the horizon allows does not tell the outcome: counted, not scored
  if (o.realized === false) { c.gaps = (c.gaps || 0) + 1; c.dirty = true; return; }
  push(c.outcomes, o, OUTCOMES);
  c.results.set(Date.parse(o.timestamp), o.correct);  // the outcome names its prediction by time
  if (c.results.size > OUTCOMES) c.results.delete(c.results.keys().next().value);
  c.dirty = true;
}

// the card's banner: the report found no skill, or live accuracy is significantly below stated confidence
function skillBanner(c) {
  const v = (c.model || {}).validation;
  const msgs = [];
  if (v && v.score === 0) {
    msgs.push(`No skill: its validation report found no significant skill over the baselines (score 0/100). `
      + `Its directions and confidences are not evidence of anything.`);
  }
  const n = c.outcomes.length;
  if (n >= LIVE_ALERT_MIN) {
    const k = c.outcomes.filter(o => o.correct).length;
    const conf = c.outcomes.reduce((s, o) => s + o.confidence, 0) / n;
    const p = binomCdf(k, n, conf);
    if (p < LIVE_ALERT_P) {
      msgs.push(`Live accuracy ${fmt(k / n)} over ${n} outcomes is significantly below its stated confidence `
        + `${fmt(conf)} (binomial p = ${p.toExponential(1)}).`);
    }
  }
  const b = $(".skill-banner", c.root);
  b.textContent = msgs.join(" ");
  b.hidden = !msgs.length;
}

// rolling accuracy and mean stated confidence over the last ROLL outcomes, at each outcome's realization time
function accuracySeries(outcomes) {
  const xs = [], acc = [], conf = [];
  let hits = 0, cs = 0;
  outcomes.forEach((o, i) => {
    hits += o.correct ? 1 : 0; cs += o.confidence;
    if (i >= ROLL) { hits -= outcomes[i - ROLL].correct ? 1 : 0; cs -= outcomes[i - ROLL].confidence; }
    const n = Math.min(i + 1, ROLL);
    xs.push(Date.parse(o.realized_at || o.timestamp) / 1000); acc.push(hits / n); conf.push(cs / n);
  });
  return [xs, acc, conf];
}

function renderCard(c) {
  c.plot.setData([c.t, c.v, c.up, c.down, c.hold, c.hi95, c.lo95, c.hi80, c.lo80]);
  const p = c.last;
  if (p) {
    const pr = p.probabilities || {};
    $(".last", c.root).replaceChildren(
      el("span", { class: "dir-" + p.direction }, p.direction), ` with confidence ${fmt(p.confidence)} at ${p.timestamp.slice(0, 19)} `,
      el("span", { class: "muted" }, `(down ${fmt(pr.down, 2)} / hold ${fmt(pr.hold, 2)} / up ${fmt(pr.up, 2)}; `
        + `latency p50 ${fmt(pct(c.lat, 0.5), 1)} ms, p95 ${fmt(pct(c.lat, 0.95), 1)} ms over ${c.lat.length})`));
    $(".last", c.root).dataset.predictionId = p.prediction_id;
  }
  // the outcome views change with every tick too, but a person reads them at a glance: at most once a second
  // per card, so that 20 sources at 100 predictions/s keep the latest prediction on time
  const now = performance.now();
  let later = false;
  if (now - c.slowAt >= SLOW_MS) {
    c.slowAt = now;
    renderOutcomes(c);
  } else {
    later = true;  // drawn at a later redraw
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
    el("div", { class: "muted" }, `last ${recent.length} realized: accuracy ${fmt(acc, 3)} vs stated confidence ${fmt(conf, 3)}`
      + (c.gaps ? `; ${c.gaps} unrealized (a gap in the ticks longer than the horizon allows)` : "")),
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
  c.dirty = later;
}

function renderOutcomes(c) {
  // always RECENT rows (empty ones while fewer predictions came): the page's size does not change with the stream
  const shown = c.recent.slice().reverse();
  $(".recent", c.root).replaceChildren(...Array.from({ length: RECENT }, (_, i) => {
    const r = shown[i];
    if (!r) return el("li", { class: "empty" }, el("span", { class: "mark" }), el("span", {}), el("span", {}));
    const res = c.results.get(r.t);
    const state = res === undefined ? "pending" : res ? "hit" : "miss";
    return el("li", { class: state, "data-prediction-id": r.id, "data-outcome": state },
      el("span", { class: "mark" }, state === "hit" ? "\u2713 hit" : state === "miss" ? "\u2717 miss" : "\u2026 pending"),
      " ", el("span", { class: "dir-" + r.direction }, r.direction), ` ${fmt(r.confidence, 2)} `,
      el("span", { class: "muted" }, new Date(r.t).toISOString().slice(11, 19)));
  }));
  c.acc.setData(accuracySeries(c.outcomes));
  skillBanner(c);
}

function redraw() {
  for (const c of cards.values()) if (c.dirty) renderCard(c);
  const now = performance.now();
  received = received.filter(t => now - t < 10000);
  $("#rate").textContent = cards.size ? `${cards.size} sources, ${(received.length / 10).toFixed(1)} predictions/s` : "";
}

async function load() {
  const [models, preds, outs] = await Promise.all([api("/api/v1/models"), api("/api/v1/predictions?limit=" + WINDOW),
    api("/api/v1/outcomes")]);
  for (const [s, m] of Object.entries(models.models)) {
    const c = cards.get(s) || makeCard(s, m);
    c.model = m; renderStatic(c);
  }
  $("#empty").hidden = cards.size > 0;  // an empty data directory: say what to run first
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

// one message, or a batch of them: {"type": "batch", "items" | "messages": [...]} or with "predictions" and
// "outcomes" lists (the server may group a batch's messages into one)
function handle(m) {
  if (!m || typeof m !== "object") return;
  if (m.type === "subscribed") { backoff = 500; banner(""); setConn("on", "live"); }
  else if (m.type === "prediction") { addPrediction(m.prediction); received.push(performance.now()); }
  else if (m.type === "outcome") addOutcome(m.outcome);
  else if (m.type === "batch") {
    (m.items || m.messages || []).forEach(handle);
    (m.predictions || []).forEach(p => { addPrediction(p); received.push(performance.now()); });
    (m.outcomes || []).forEach(addOutcome);
  }
}

// performance: throughput, latency percentiles and success rate from /api/v1/metrics, polled
const perf = { t: [], rate: [], p50: [], p95: [], plot: null, timer: null };
async function pollMetrics() {
  // no model at the last look: the server loads a newly trained one by itself, so look again; the stream's
  // subscription names the sources it had (none): a new one needs a new subscription
  if (!cards.size) {
    try { await load(); if (cards.size && ws) ws.close(); } catch (e) { /* the next poll tries again */ }
  }
  let m;
  try { m = await api("/api/v1/metrics"); } catch (e) { return; }
  const panel = $("#perf");
  panel.hidden = false;
  const sr = m.success_rate === null || m.success_rate === undefined ? "-" : (100 * m.success_rate).toFixed(1) + " %";
  $("#perf-figures").replaceChildren(...[
    ["throughput", `${fmt(m.predictions_per_second, 1)} /s`, "perf-rate"],
    ["latency p50 / p95 / p99", `${fmt(m.p50_latency_ms, 1)} / ${fmt(m.p95_latency_ms, 1)} / ${fmt(m.p99_latency_ms, 1)} ms`, "perf-latency"],
    ["success rate (5 min)", sr, "perf-success"],
    ["predictions served", String(m.total_predictions ?? "-"), "perf-total"],
    ["WebSocket clients", String(m.active_connections ?? "-"), "perf-clients"],
  ].map(([k, v, id]) => el("div", { class: "fig" }, el("span", { class: "muted" }, k), el("b", { id }, v))));
  push(perf.t, Date.now() / 1000, PERF_POINTS); push(perf.rate, m.predictions_per_second ?? null, PERF_POINTS);
  push(perf.p50, m.p50_latency_ms ?? null, PERF_POINTS); push(perf.p95, m.p95_latency_ms ?? null, PERF_POINTS);
  if (!perf.plot) {
    perf.plot = new uPlot({
      width: Math.max(240, $("#perf").clientWidth - 24), height: 110, cursor: { show: false },
      legend: { show: true, live: false },
      // the window the panel keeps (PERF_POINTS polls), from the first poll on: one point is not years wide
      // (from the data: uPlot widens a single value's range by years before a range function sees it)
      scales: { x: { time: true, range: (u) => { const hi = u.data[0].at(-1) ?? Date.now() / 1000;
        return [hi - PERF_POINTS * METRICS_MS / 1000, hi + METRICS_MS / 1000]; } } },
      series: [{}, { label: "predictions/s", stroke: "#0969da", width: 1.5, scale: "rate", points: { show: true, size: 3 } },
        { label: "p50 ms", stroke: "#1a7f37", width: 1, scale: "ms" },
        { label: "p95 ms", stroke: "#cf222e", width: 1, scale: "ms" }],
      axes: [{}, { scale: "rate", size: 44 }, { scale: "ms", side: 1, size: 56, grid: { show: false } }],
    }, [[], [], [], []], $("#perf-chart"));
  }
  perf.plot.setData([perf.t, perf.rate, perf.p50, perf.p95]);
}

// the validation score per source over time: one point per trained model version (each version's report), from
// /api/v1/validation/history at load and every VALIDATION_MS (a training adds a point at most once a run)
const PALETTE = ["#0969da", "#bf8700", "#1a7f37", "#cf222e", "#8250df", "#1b7c83", "#bc4c00", "#6e7781", "#e16f24", "#4d2d00"];
const validation = { plot: null, timer: null, sources: [] };
function validationSeries(hist) {
  const sources = Object.keys(hist).filter(s => hist[s].length).sort();
  const xs = [...new Set(sources.flatMap(s => hist[s].map(p => Date.parse(p.validated_at) / 1000)))].sort((a, b) => a - b);
  const ys = sources.map(s => {
    const at = new Map(hist[s].map(p => [Date.parse(p.validated_at) / 1000, p.score]));
    return xs.map(x => at.has(x) ? at.get(x) : null);
  });
  return { sources, data: [xs, ...ys] };
}
async function pollValidation() {
  let hist;
  try { hist = await api("/api/v1/validation/history"); } catch (e) { return; }
  const { sources, data } = validationSeries(hist);
  $("#perf-validation").hidden = !sources.length;
  if (sources.length) $("#perf").hidden = false;
  // one line per source and version, what the chart cannot say: the newest score and its status
  $("#perf-validation-figures").replaceChildren(...sources.map(s => {
    const pts = hist[s], last = pts[pts.length - 1], prev = pts.length > 1 ? pts[pts.length - 2] : null;
    return el("div", { class: "fig", "data-source": s }, el("span", { class: "muted" }, `${s} (${pts.length} version${pts.length > 1 ? "s" : ""})`),
      el("b", {}, `${fmt(last.score, 0)}/100` + (prev ? ` (was ${fmt(prev.score, 0)})` : "") + (last.score === 0 ? " no skill" : "")
        + (last.status === "rejected" ? ", rejected" : "")));
  }));
  if (!sources.length) return;
  if (!validation.plot || validation.sources.join() !== sources.join()) {  // a new source: a new legend
    if (validation.plot) validation.plot.destroy();
    validation.sources = sources;
    validation.plot = new uPlot({
      width: Math.max(240, $("#perf").clientWidth - 24), height: 120, cursor: { show: false },
      legend: { show: true, live: false },
      // a single version (a source trained once) is a point in a day's width, not in years'
      scales: { x: { time: true, range: (u) => { const x = u.data[0], lo = x[0], hi = x.at(-1);
        return lo === hi ? [lo - 43200, hi + 43200] : [lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo)]; } }, y: { range: [0, 100] } },
      series: [{}, ...sources.map((s, i) => ({ label: s, stroke: PALETTE[i % PALETTE.length], width: 1.5,
        spanGaps: true, points: { show: true, size: 6, fill: PALETTE[i % PALETTE.length] } }))],
      axes: [{}, { size: 36 }],
    }, data, $("#perf-validation-chart"));
  } else {
    validation.plot.setData(data);
  }
}

// the upload form: the file's bytes to POST /api/v1/upload; the answer's row-level reasons shown as a table
async function uploadFile(ev) {
  ev.preventDefault();
  const file = $("#upload-file").files[0], source = $("#upload-source").value.trim();
  const out = $("#upload-result");
  if (!file || !source) return;
  out.textContent = `uploading ${file.name}...`;
  const qs = new URLSearchParams({ source, filename: file.name, skip_bad_rows: $("#upload-skip").checked });
  let r, body = null;
  try {
    r = await fetch("/api/v1/upload?" + qs, { method: "POST", body: await file.arrayBuffer(),
      headers: { Authorization: "Bearer " + key, "Content-Type": "application/octet-stream" } });
    body = await r.json();
  } catch (e) { out.textContent = `upload failed: ${e.message}`; return; }
  if (body.error) {  // refused before ingest: role, size, a parameter
    const why = r.status === 403 ? "this key may not upload: it needs the developer or admin role. " : "";
    out.replaceChildren(el("p", { class: "upload-status error", "data-status": String(r.status) }, why + body.error.message));
    return;
  }
  const stored = Object.entries(body.sources).map(([s, n]) => `${n} rows for ${s}`).join(", ") || "no rows";
  const lines = [el("p", { class: "upload-status", "data-status": body.status },
    `${body.file}: ${body.status}, ${stored} stored` + (body.reason ? `. ${body.reason}` : "")
    + `. ${source} now has ${body.stored_rows} rows; training needs ${body.rows_needed_to_train}.`)];
  body.notes.forEach(n => lines.push(el("p", { class: "muted" }, "note: " + n)));
  if (body.bad_rows.length) {
    lines.push(el("p", {}, `${body.bad_rows_total} bad row(s)` + (body.bad_rows_total > body.bad_rows.length ? `, the first ${body.bad_rows.length}:` : ":")));
    lines.push(el("table", { class: "rel bad-rows" },
      el("tr", {}, ...["row", "column", "problem", "value", "fix"].map(h => el("th", {}, h))),
      ...body.bad_rows.map(b => el("tr", {}, el("td", {}, String(b.row)), el("td", {}, b.column), el("td", {}, b.problem),
        el("td", {}, b.value), el("td", {}, b.fix)))));
  }
  out.replaceChildren(...lines);
}

function connect() {
  if (stopped) return;
  const proto = location.protocol === "https:" ? "wss://" : "ws://";
  ws = new WebSocket(proto + location.host + "/ws/predictions");
  ws.onopen = () => ws.send(JSON.stringify({ type: "subscription", sources: [...cards.keys()], api_key: key }));
  ws.onmessage = (ev) => handle(JSON.parse(ev.data));
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
  setReportCookie(key);
  $("#upload").hidden = false;
  if (!perf.timer) { pollMetrics(); perf.timer = setInterval(pollMetrics, METRICS_MS); }
  if (!validation.timer) { pollValidation(); validation.timer = setInterval(pollValidation, VALIDATION_MS); }
  connect();
}

$("#keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  key = $("#key").value.trim();
  sessionStorage.setItem(KEY, key);
  banner("");
  start();
});
$("#upload-form").addEventListener("submit", uploadFile);
$("#change-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); setReportCookie(null); key = null; askForKey(""); });
// charts follow the card's width (a phone held upright, a resized window)
window.addEventListener("resize", () => {
  for (const c of cards.values()) {
    const w = Math.max(240, c.root.clientWidth - 24);
    c.plot.setSize({ width: w, height: 160 });
    c.acc.setSize({ width: Math.max(200, $(".accchart", c.root).clientWidth), height: 120 });
  }
  if (perf.plot) perf.plot.setSize({ width: Math.max(240, $("#perf").clientWidth - 24), height: 110 });
  if (validation.plot) validation.plot.setSize({ width: Math.max(240, $("#perf").clientWidth - 24), height: 120 });
});
setInterval(redraw, REDRAW_MS);
start();
