// The Corvus console: every figure comes from the services' public gRPC APIs, relayed
// as JSON by /console/api (unary) and /console/stream (server-sent events). Each figure
// an automated check compares with the API carries data-figure="<name>".
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: "", experiment: "", segment: "", region: "" };
const rates = [];
let live = null;
// What the last snapshot counted: when it moves, the figures are read again.
let counted = "";

function keyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const name of ["key", "experiment", "segment", "region"]) {
    if (params.get(name)) state[name] = params.get(name);
  }
  if (params.get("key")) localStorage.setItem("corvus.key", params.get("key"));
  state.key = state.key || localStorage.getItem("corvus.key") || "";
}

async function api(service, method, body) {
  const response = await fetch(`/console/api/${service}/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.key}` },
    body: JSON.stringify(body || {}),
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`${method}: ${json.message}${json.field ? ` (${json.field})` : ""}`);
  return json;
}

// A server-streaming method, each message to `onMessage`, until `signal` aborts.
async function stream(service, method, body, onMessage, signal) {
  const response = await fetch(`/console/stream/${service}/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.key}` },
    body: JSON.stringify(body || {}),
    signal,
  });
  if (!response.ok) throw new Error(`${method}: ${(await response.json()).message}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) onMessage(JSON.parse(data));
    }
  }
}

const M = "corvus.measurement.v1.MeasurementService";
const O = "corvus.orchestration.v1.OrchestrationService";
const S = "corvus.scoring.v1.ScoringService";
const I = "corvus.identity.v1.IdentityService";

// A number as proto3 JSON leaves it out when it is 0.
const num = (x) => x || 0;

function fixed(x, digits = 2) {
  return x === undefined || x === null || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

function cell(text, figure) {
  const td = document.createElement("td");
  td.textContent = text;
  if (figure) td.dataset.figure = figure.name, td.dataset.value = String(figure.value);
  return td;
}

function table(headers, rows) {
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const h of headers) head.appendChild(Object.assign(document.createElement("th"), { textContent: h }));
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const c of row) tr.appendChild(c instanceof Node ? c : cell(String(c)));
  }
  return t;
}

// A line over `points` ([x, y]), with an optional band ([x, low, high]) and marks.
function chart(svg, points, band, marks) {
  svg.innerHTML = "";
  if (!points.length) return;
  const [w, h] = [600, svg.viewBox.baseVal.height];
  const ys = points.map((p) => p[1]).concat((band || []).flatMap((b) => [b[1], b[2]]));
  const [lo, hi] = [Math.min(...ys), Math.max(...ys)];
  const xs = points.map((p) => p[0]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const sx = (x) => (x1 === x0 ? w / 2 : ((x - x0) / (x1 - x0)) * (w - 20) + 10);
  const sy = (y) => (hi === lo ? h / 2 : h - 10 - ((y - lo) / (hi - lo)) * (h - 20));
  const ns = "http://www.w3.org/2000/svg";
  if (band && band.length) {
    const poly = document.createElementNS(ns, "polygon");
    const top = band.map((b) => `${sx(b[0])},${sy(b[2])}`);
    const bottom = band.slice().reverse().map((b) => `${sx(b[0])},${sy(b[1])}`);
    poly.setAttribute("points", top.concat(bottom).join(" "));
    poly.setAttribute("class", "band");
    svg.appendChild(poly);
  }
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "));
  svg.appendChild(line);
  for (const [x, y] of marks || []) {
    const dot = document.createElementNS(ns, "circle");
    Object.entries({ cx: sx(x), cy: sy(y), r: 5, class: "peak" }).forEach(([k, v]) => dot.setAttribute(k, v));
    svg.appendChild(dot);
  }
}

async function experiments() {
  const list = (await api(M, "ListExperiments")).experiments || [];
  const select = $("experiment");
  select.innerHTML = "";
  for (const e of list) select.appendChild(new Option(e.name, e.name));
  if (!state.experiment && list.length) state.experiment = list[0].name;
  select.value = state.experiment;
}

async function results() {
  const target = $("results");
  target.innerHTML = "";
  if (!state.experiment) return;
  const filter = { experiment: state.experiment, segment: state.segment };
  const r = await api(M, "GetExperimentResults", filter);
  $("experiment-summary").textContent =
    `${r.experiment}: baseline ${r.baseline}; ${(r.arms || []).map((a) => `${a.name} ${a.users || 0}`).join(", ")}; ` +
    `sample-ratio check p = ${fixed(r.srmP, 4)}`;
  for (const m of r.metrics || []) {
    const frequentist = (m.settings || []).find((s) => s.setting === "SETTING_FREQUENTIST_RELATIVE");
    const bayesian = (m.settings || []).find((s) => s.setting === "SETTING_BAYESIAN_RELATIVE");
    const rows = (m.observed || []).map((arm) => {
      const c = frequentist && frequentist.arms.find((a) => a.name === arm.name).comparison;
      const b = bayesian && bayesian.arms.find((a) => a.name === arm.name).comparison;
      const name = `results.${m.metric}.${arm.name}`;
      return [
        arm.name,
        cell(String(arm.users || 0), { name: `${name}.users`, value: arm.users || 0 }),
        cell(fixed(num(arm.mean), 4), { name: `${name}.mean`, value: num(arm.mean) }),
        c ? cell(`${fixed(100 * num(c.expected), 1)} %`, { name: `${name}.lift`, value: num(c.expected) }) : cell("baseline"),
        c ? `[${fixed(100 * num(c.ciLower), 1)}, ${fixed(100 * num(c.ciUpper), 1)}] %` : "",
        c ? cell(fixed(num(c.pValue), 4), { name: `${name}.p_value`, value: num(c.pValue) }) : cell(""),
        b ? `${fixed(100 * num(b.chanceToWin), 1)} %` : "",
      ];
    });
    target.appendChild(Object.assign(document.createElement("h3"), { textContent: m.metric + (m.guardrail ? " (guardrail)" : "") }));
    target.appendChild(table(["arm", "people", "mean", "lift", "95 % interval", "p", "chance to win"], rows));
  }
}

async function campaign() {
  $("funnel").innerHTML = "";
  if (!state.experiment) return;
  const r = await api(M, "GetCampaignReport", { experiment: state.experiment, breakdown: "BREAKDOWN_CHANNEL", segment: state.segment });
  const rows = [r.overall].concat(r.rows || []).map((row) => {
    const name = `report.${row.key || "overall"}`;
    const lift = row.conversionLift;
    return [
      row.key || "overall",
      cell(String(row.people || 0), { name: `${name}.people`, value: row.people || 0 }),
      String(row.sent || 0), String(row.delivered || 0), String(row.opened || 0), String(row.clicked || 0),
      cell(String(row.converted || 0), { name: `${name}.converted`, value: row.converted || 0 }),
      fixed(num(row.revenue), 2),
      lift ? `${fixed(100 * num(lift.expected), 1)} % [${fixed(100 * num(lift.ciLower), 1)}, ${fixed(100 * num(lift.ciUpper), 1)}]` : "",
    ];
  });
  $("funnel").appendChild(table(["channel", "people", "sent", "delivered", "opened", "clicked", "converted", "revenue", "lift vs holdout"], rows));
  const f = r.fatigue;
  if (f && f.points) {
    const points = f.points.map((p) => [p.touches || 0, p.response || 0]);
    const band = f.points.map((p) => [p.touches || 0, p.ciLower || 0, p.ciUpper || 0]);
    const peak = f.points.filter((p) => (p.touches || 0) === (f.peakTouches || 0)).map((p) => [p.touches || 0, p.response || 0]);
    chart($("fatigue"), points, band, peak);
    $("fatigue-note").textContent = `${f.metric} by sends: best at ${f.peakTouches || "–"}` +
      (f.dropsAt ? `, lower from ${f.dropsAt} on: send less` : "");
  }
}

async function satisfaction() {
  const filter = { breakdown: "FEEDBACK_BREAKDOWN_DAY", segment: state.segment, region: state.region };
  const [nps, csat] = await Promise.all([
    api(M, "GetSatisfaction", { ...filter, kind: "FEEDBACK_KIND_NPS" }),
    api(M, "GetSatisfaction", { ...filter, kind: "FEEDBACK_KIND_CSAT" }),
  ]);
  const days = (nps.rows || []).map((r, i) => [i, r.score || 0]);
  chart($("nps-chart"), days, (nps.rows || []).map((r, i) => [i, r.ciLower || 0, r.ciUpper || 0]));
  const overall = (name, r) => [
    name,
    cell(String(r.responses || 0), { name: `satisfaction.${name}.responses`, value: r.responses || 0 }),
    cell(r.responses ? fixed(num(r.score), 1) : "–", { name: `satisfaction.${name}.score`, value: num(r.score) }),
    r.responses ? `[${fixed(num(r.ciLower), 1)}, ${fixed(num(r.ciUpper), 1)}]` : "",
  ];
  const target = $("satisfaction-table");
  target.innerHTML = "";
  target.appendChild(table(["", "answers", "score", "95 % interval"], [overall("NPS", nps.overall), overall("CSAT", csat.overall)]));
}

async function audiences() {
  const [a, s] = await Promise.all([api(S, "ListAudiences"), api(S, "ListSegments").catch(() => ({}))]);
  $("audience-list").innerHTML = "";
  $("audience-list").appendChild(table(["audience", "members", "description"],
    (a.audiences || []).map((x) => [x.name, String(x.size || 0), x.description || ""])));
  $("segment-list").innerHTML = "";
  $("segment-list").appendChild(table(["segment", "people", "what sets it apart"],
    (s.segments || []).map((x) => [x.name, String(x.size || 0), x.description || ""])));
}

async function alerts() {
  const list = (await api(O, "ListAlerts", { newestFirst: true, segment: state.segment, region: state.region, page: { pageSize: 10 } })).alerts || [];
  const ul = $("alerts");
  ul.innerHTML = "";
  for (const a of list) {
    ul.appendChild(Object.assign(document.createElement("li"), { textContent: `${a.raisedAt} ${a.rule}: ${a.reason}` }));
  }
}

function startLive() {
  if (live) live.abort();
  live = new AbortController();
  stream(M, "StreamMetrics", { experiments: state.experiment ? [state.experiment] : [] }, (m) => {
    rates.push(m.eventsPerSecond || 0);
    if (rates.length > 60) rates.shift();
    $("rate").textContent = fixed(m.eventsPerSecond || 0, 1);
    $("rate").dataset.value = String(m.eventsPerSecond || 0);
    $("nps-today").textContent = m.npsToday && m.npsToday.responses ? fixed(m.npsToday.score, 1) : "–";
    $("csat-today").textContent = m.csatToday && m.csatToday.responses ? fixed(m.csatToday.score, 1) : "–";
    $("mentions-today").textContent = String((m.mentionsToday && m.mentionsToday.responses) || 0);
    chart($("rate-chart"), rates.map((r, i) => [i, r]));
    const now = JSON.stringify([(m.experiments || []).map((e) => (e.arms || []).map((a) => a.users)),
      m.npsToday && m.npsToday.responses, m.csatToday && m.csatToday.responses]);
    if (counted && now !== counted) figures().catch((e) => ($("error").textContent = e.message));
    counted = now;
  }, live.signal).catch((e) => e.name !== "AbortError" && ($("error").textContent = e.message));
  stream(O, "StreamAlerts", {}, () => alerts().catch(() => {}), live.signal).catch(() => {});
}

async function profile(kind, value) {
  const r = await api(I, "GetProfile", { identifier: { kind, value }, includeScores: true });
  const p = r.profile || {};
  const rows = [
    ["profile", p.profileId],
    ["identifiers", (p.identifiers || []).map((i) => `${i.kind}: ${i.value}`).join(", ")],
    ["traits", (p.traits || []).map((t) => `${t.name}: ${JSON.stringify(t.value)}`).join(", ")],
    ["audiences", (p.segments || []).join(", ")],
    ["scores", (p.scores || []).map((s) => `${s.name}: ${s.label || fixed(s.value, 3)}`).join(", ")],
    ["events", String(p.eventCount || 0)],
  ];
  $("profile").innerHTML = "";
  $("profile").appendChild(table(["", ""], rows));
}

// Views: each key's own filters, kept in this browser under the key's first characters.
function viewsKey() {
  return `corvus.views.${state.key.slice(0, 12)}`;
}

function loadViews() {
  const views = JSON.parse(localStorage.getItem(viewsKey()) || "{}");
  const select = $("views");
  select.innerHTML = '<option value="">Saved views</option>';
  for (const name of Object.keys(views)) select.appendChild(new Option(name, name));
  return views;
}

async function refresh() {
  $("error").textContent = "";
  state.key = $("key").value || state.key;
  localStorage.setItem("corvus.key", state.key);
  state.segment = $("segment").value;
  state.region = $("region").value;
  try {
    await experiments();
    await figures();
    startLive();
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("error").textContent = e.message;
  }
}

// Every section's figures, read again: on a refresh, and whenever the live snapshot
// counts more people or answers than the last.
async function figures() {
  await Promise.all([results(), campaign(), satisfaction(), audiences(), alerts()]);
}

keyFromFragment();
$("key").value = state.key;
$("segment").value = state.segment;
$("region").value = state.region;
loadViews();
$("refresh").addEventListener("click", refresh);
$("experiment").addEventListener("change", () => { state.experiment = $("experiment").value; refresh(); });
$("save-view").addEventListener("click", () => {
  const views = loadViews();
  const name = $("view-name").value || `view ${Object.keys(views).length + 1}`;
  views[name] = { experiment: state.experiment, segment: $("segment").value, region: $("region").value };
  localStorage.setItem(viewsKey(), JSON.stringify(views));
  loadViews();
});
$("views").addEventListener("change", () => {
  const view = loadViews()[$("views").value];
  if (!view) return;
  Object.assign(state, view);
  $("segment").value = view.segment;
  $("region").value = view.region;
  refresh();
});
$("lookup").addEventListener("submit", (e) => {
  e.preventDefault();
  profile($("id-kind").value, $("id-value").value).catch((err) => ($("error").textContent = err.message));
});
if (state.key) refresh();
