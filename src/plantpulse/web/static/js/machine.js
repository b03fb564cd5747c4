// One machine: latest values, a live chart per metric (last N minutes, streaming), a history
// chart that asks for at most one bucket per pixel, CSV export of the visible range.
import { api, query } from "./api.js";
import { historyChart, historyData, liveChart, seconds } from "./charts.js";
import { Live, mark } from "./live.js";
import { ago, badge, can, debounce, failed, fmt, h, shell, when } from "./ui.js";

const machineId = document.getElementById("machine").dataset.machineId;
const FLUSH_MS = 250;
// Bucket widths the history may ask for (the API takes <n><s|m|h|d>).
const INTERVALS = [
  ["1s", 1], ["2s", 2], ["5s", 5], ["10s", 10], ["15s", 15], ["30s", 30],
  ["1m", 60], ["2m", 120], ["5m", 300], ["10m", 600], ["15m", 900], ["30m", 1800],
  ["1h", 3600], ["2h", 7200], ["3h", 10800], ["6h", 21600], ["12h", 43200],
  ["1d", 86400], ["2d", 172800], ["7d", 604800],
];
const RANGES = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };

let user;
let units = new Map(); // metric -> unit
let liveMinutes = 15;
const live = new Map(); // metric -> {el, chart, t: [], v: [], bad: []}
let history = { metric: null, from: 0, to: 0, chart: null, stack: [] };

/** The coarsest-needed bucket: the smallest width with at most one bucket per pixel. */
export function pickInterval(rangeMs, widthPx) {
  const needed = rangeMs / 1000 / Math.max(1, widthPx);
  for (const [name, secs] of INTERVALS) if (secs >= needed) return name;
  return INTERVALS[INTERVALS.length - 1][0];
}

function chartWidth(el) {
  return Math.max(200, Math.floor(el.clientWidth - 16));
}

// ----------------------------------------------------------------------------- header ----
async function loadMachine() {
  const machine = await api(`/api/v1/machines/${machineId}`);
  document.title = `${machine.name} · PlantPulse`;
  document.getElementById("machine-name").textContent = machine.name;
  renderBadges(machine.status, machine.connectivity);
  const groups = machine.groups.map((g) => g.name).join(", ");
  document.getElementById("machine-meta").textContent = [
    machine.location || "no location",
    machine.sensor_type,
    groups && `groups: ${groups}`,
    `last seen ${ago(machine.last_seen_at)}`,
  ].filter(Boolean).join(" · ");
  return machine;
}

function renderBadges(status, connectivity) {
  document.getElementById("machine-badges").replaceChildren(
    badge(status, `status-${status}`),
    " ",
    h("span", { class: `conn conn-${connectivity}`, text: `● ${connectivity}` }),
  );
}

const latestEls = new Map();
function setLatest(metric, value, timestamp) {
  let dd = latestEls.get(metric);
  if (!dd) {
    dd = h("dd", { dataset: { metric } });
    const small = h("dt", { text: metric });
    document.getElementById("latest").append(h("div", {}, small, dd));
    latestEls.set(metric, dd);
  }
  dd.textContent = fmt(value, units.get(metric));
  dd.title = when(timestamp);
}

// ------------------------------------------------------------------------------- live ----
function liveSeries(metric) {
  let series = live.get(metric);
  if (series) return series;
  const el = h("div", { class: "chart", role: "img", "aria-label": `${metric}, live` }, h("h3", { text: metric }));
  document.getElementById("live-charts").append(el);
  series = { el, chart: null, t: [], v: [], bad: [] };
  live.set(metric, series);
  return series;
}

function drawLive(metric) {
  const s = live.get(metric);
  const data = can(user, "telemetry:read-invalid") ? [s.t, s.v, s.bad] : [s.t, s.v];
  if (!s.chart) {
    s.chart = liveChart(s.el, { metric, unit: units.get(metric), width: chartWidth(s.el), data });
  } else {
    s.chart.setData(data);
  }
}

function trimLive(s, now) {
  const oldest = now / 1000 - liveMinutes * 60;
  let drop = 0;
  while (drop < s.t.length && s.t[drop] < oldest) drop++;
  if (drop) {
    s.t.splice(0, drop);
    s.v.splice(0, drop);
    s.bad.splice(0, drop);
  }
}

function push(s, t, value, valid) {
  // Readings arrive in order almost always; a late one is put in its place.
  let i = s.t.length;
  while (i > 0 && s.t[i - 1] > t) i--;
  if (i > 0 && s.t[i - 1] === t) {
    s.v[i - 1] = valid ? value : null;
    s.bad[i - 1] = valid ? null : value;
    return;
  }
  s.t.splice(i, 0, t);
  s.v.splice(i, 0, valid ? value : null);
  s.bad.splice(i, 0, valid ? null : value);
}

async function loadLive() {
  const invalid = can(user, "telemetry:read-invalid");
  const page = await api(
    `/api/v1/machines/${machineId}/telemetry${query({
      start_time: `-${liveMinutes}m`, order: "asc", limit: 10000, include_invalid: invalid || "",
    })}`,
  );
  for (const s of live.values()) {
    s.t.length = s.v.length = s.bad.length = 0;
  }
  for (const row of page.items) {
    const t = seconds(row.timestamp);
    for (const [metric, value] of Object.entries(row)) {
      if (metric === "timestamp" || metric === "valid") continue;
      push(liveSeries(metric), t, value, row.valid ? row.valid[metric] !== false : true);
    }
  }
  for (const metric of page.fields) liveSeries(metric);
  for (const metric of live.keys()) drawLive(metric);
}

const dirty = new Set();
let flushTimer = null;
let lastFlush = 0;
let shown = [];
function schedule() {
  if (flushTimer !== null) return;
  const wait = Math.max(0, lastFlush + FLUSH_MS - performance.now());
  flushTimer = setTimeout(() => requestAnimationFrame(flush), wait);
}
function flush() {
  flushTimer = null;
  lastFlush = performance.now();
  const now = Date.now();
  for (const metric of dirty) {
    trimLive(live.get(metric), now);
    drawLive(metric);
  }
  dirty.clear();
  const done = shown;
  shown = [];
  if (done.length) requestAnimationFrame(() => mark("pp-live-shown", { page: "machine", timestamps: done }));
}

function onEvent(event) {
  if (event.machine_id !== machineId) return;
  if (event.type === "reading") {
    mark("pp-live-received", { page: "machine", timestamp: event.timestamp });
    const t = seconds(event.timestamp);
    for (const [metric, value] of Object.entries(event.metrics)) {
      const valid = event.valid ? event.valid[metric] !== false : true;
      push(liveSeries(metric), t, value, valid);
      if (valid) setLatest(metric, value, event.timestamp);
      dirty.add(metric);
    }
    shown.push(event.timestamp);
    schedule();
  } else if (event.type === "machine_status") {
    renderBadges(event.status, event.connectivity);
  } else if (event.type === "alert") {
    loadAlerts().catch(failed);
  }
}

// ---------------------------------------------------------------------------- history ----
let historyRequest = 0;
async function loadHistory() {
  const el = document.getElementById("history-chart");
  const metric = history.metric;
  if (!metric) {
    document.getElementById("history-info").textContent = "No readings yet.";
    return;
  }
  const mine = ++historyRequest;
  const width = chartWidth(el);
  const interval = pickInterval(history.to - history.from, width);
  const invalid = can(user, "telemetry:read-invalid") && document.getElementById("show-invalid").checked;
  const url = `/api/v1/machines/${machineId}/telemetry${query({
    start_time: new Date(history.from).toISOString(),
    end_time: new Date(history.to).toISOString(),
    fields: metric,
    interval,
    agg: "avg,min,max",
    order: "asc",
    include_invalid: invalid || "",
  })}`;
  document.getElementById("history-info").textContent = "Loading…";
  const page = await api(url);
  if (mine !== historyRequest) return;
  performance.mark("pp-history-data", { detail: { points: page.items.length, interval } });
  const data = historyData(page.items, metric, { invalid });
  if (history.chart) history.chart.destroy();
  history.chart = historyChart(el, {
    metric,
    unit: units.get(metric),
    width,
    data,
    onSelect: (from, to) => zoom(from, to),
  });
  // Show exactly the requested window, even where it has no data.
  history.chart.setScale("x", { min: history.from / 1000, max: history.to / 1000 });
  requestAnimationFrame(() =>
    performance.mark("pp-history-drawn", { detail: { points: page.items.length, interval } }),
  );
  document.getElementById("history-info").textContent =
    `${when(new Date(history.from).toISOString())} – ${when(new Date(history.to).toISOString())} · ` +
    `${page.items.length} points of ${interval} (avg with min–max band)`;
}

function setRange(from, to, { push = false } = {}) {
  if (push) history.stack.push([history.from, history.to]);
  history.from = from;
  history.to = to;
  loadHistory().catch(failed);
}

function zoom(from, to) {
  if (to - from < 10_000) return; // below 10 s there is nothing finer to show
  setRange(from, to, { push: true });
}

function selectRange(name) {
  for (const b of document.querySelectorAll("[data-range]")) b.setAttribute("aria-pressed", String(b.dataset.range === name));
  const custom = document.getElementById("custom-range");
  custom.hidden = name !== "custom";
  if (name === "custom") {
    const local = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60e3).toISOString().slice(0, 16);
    custom.elements.from.value = local(history.from);
    custom.elements.to.value = local(history.to);
    return;
  }
  history.stack = [];
  const now = Date.now();
  setRange(now - RANGES[name], now);
}

async function exportCsv() {
  const response = await api(
    `/api/v1/machines/${machineId}/telemetry/export${query({
      format: "csv",
      start_time: new Date(history.from).toISOString(),
      end_time: new Date(history.to).toISOString(),
    })}`,
    { raw: true },
  );
  const disposition = response.headers.get("Content-Disposition") || "";
  const name = /filename="([^"]+)"/.exec(disposition)?.[1] || "readings.csv";
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ----------------------------------------------------------------------------- alerts ----
async function loadAlerts() {
  const page = await api(`/api/v1/alerts${query({ machine_id: machineId, limit: 20 })}`);
  const list = document.getElementById("machine-alerts");
  if (!page.items.length) {
    list.replaceChildren(h("li", { class: "muted", text: "No alerts." }));
    return;
  }
  list.replaceChildren(
    ...page.items.map((a) =>
      h(
        "li",
        {},
        badge(a.severity, `sev-${a.severity}`),
        " ",
        a.message,
        " · ",
        a.cleared_at ? `cleared ${ago(a.cleared_at)}` : "active",
        a.acknowledged_at ? " · acknowledged" : "",
        " · raised ",
        when(a.raised_at),
      ),
    ),
  );
}

// ------------------------------------------------------------------------------- main ----
// After a reconnect, re-read the window: events sent while the socket was down are missed.
let opened = 0;
const stream = new Live({ onEvent, onOpen: () => opened++ && loadLive().catch(failed) });

async function main() {
  user = await shell();
  const [, metrics, latest] = await Promise.all([
    loadMachine().catch((error) => {
      if (error.status === 404) document.getElementById("machine-name").textContent = "No such machine";
      throw error;
    }),
    api(`/api/v1/machines/${machineId}/metrics`),
    api(`/api/v1/machines/${machineId}/telemetry/latest`),
  ]);
  units = new Map(metrics.map((m) => [m.name, m.unit]));
  for (const [metric, v] of Object.entries(latest.metrics)) setLatest(metric, v.value, v.timestamp);
  const select = document.getElementById("history-metric");
  const names = [...new Set([...metrics.map((m) => m.name), ...Object.keys(latest.metrics)])].sort();
  for (const name of names) {
    const m = metrics.find((x) => x.name === name);
    const range = m && (m.min_value !== null || m.max_value !== null) ? ` (plausible ${fmt(m.min_value)}…${fmt(m.max_value)})` : "";
    select.append(h("option", { value: name, text: `${name}${units.get(name) ? ` [${units.get(name)}]` : ""}${range}` }));
  }
  history.metric = names[0] || null;
  stream.start();
  stream.follow([machineId]);
  await loadLive().catch(failed);
  const now = Date.now();
  history.from = now - RANGES["24h"];
  history.to = now;
  await Promise.all([loadHistory().catch(failed), loadAlerts().catch(failed)]);

  select.addEventListener("change", () => {
    history.metric = select.value;
    loadHistory().catch(failed);
  });
  document.getElementById("show-invalid").addEventListener("change", () => loadHistory().catch(failed));
  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => selectRange(button.dataset.range));
  }
  document.getElementById("custom-range").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    const from = Date.parse(form.elements.from.value);
    const to = Date.parse(form.elements.to.value);
    if (!(from < to)) return failed(new Error("The start must be before the end."));
    history.stack = [];
    setRange(from, to);
  });
  document.getElementById("history-chart").addEventListener("dblclick", () => {
    const previous = history.stack.pop();
    if (previous) setRange(previous[0], previous[1]);
  });
  document.getElementById("export-csv").addEventListener("click", () => exportCsv().catch(failed));
  document.getElementById("live-window").addEventListener("change", (event) => {
    liveMinutes = Number(event.target.value);
    loadLive().catch(failed);
  });
  const redraw = () => {
    for (const s of live.values()) {
      s.chart?.destroy();
      s.chart = null;
    }
    for (const metric of live.keys()) drawLive(metric);
    loadHistory().catch(failed);
  };
  document.addEventListener("themechange", redraw);
  window.addEventListener("resize", debounce(redraw, 300));
}

main().catch(failed);
