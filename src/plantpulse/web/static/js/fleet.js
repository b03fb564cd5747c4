// Fleet overview: a page of machine cards (server-side filters, sort and pagination, so 1,000
// machines cost one page), latest values over REST, then live over the WebSocket. Updates
// are coalesced: at most one DOM pass per FLUSH_MS for the whole page.
import { api, query } from "./api.js";
import { Live, mark } from "./live.js";
import { ago, badge, debounce, failed, fmt, h, shell } from "./ui.js";

const PAGE_SIZE = 48;
const FLUSH_MS = 250;

const form = document.getElementById("fleet-filters");
const list = document.getElementById("fleet");
const cards = new Map(); // machine id -> {el, values: Map(metric -> dd), seen, conn, status, alerts}
let offset = Number(new URLSearchParams(location.search).get("offset") || 0);
let total = 0;
let generation = 0;

function filters() {
  const data = new FormData(form);
  return Object.fromEntries([...data.entries()].filter(([, v]) => v !== ""));
}

function syncUrl() {
  const params = { ...filters(), offset: offset || "" };
  history.replaceState(null, "", `/app/${query(params)}`);
}

function restoreFilters() {
  const params = new URLSearchParams(location.search);
  for (const el of form.elements) {
    if (!el.name || !params.has(el.name)) continue;
    const wanted = params.get(el.name);
    // Options of location and group arrive later: keep the URL's choice meanwhile.
    if (el.tagName === "SELECT" && ![...el.options].some((o) => o.value === wanted)) {
      el.append(h("option", { value: wanted, text: wanted }));
    }
    el.value = wanted;
  }
}

function card(machine) {
  const status = badge(machine.status, `status-${machine.status}`);
  const conn = h("span", { class: `conn conn-${machine.connectivity}`, text: `● ${machine.connectivity}` });
  const alerts = badge("", "alert-badge");
  alerts.hidden = true;
  const seen = h("time", { datetime: machine.last_seen_at || "" }, ago(machine.last_seen_at));
  const values = h("dl", { class: "metrics" });
  const el = h(
    "li",
    { class: "card", dataset: { machineId: machine.id }, "aria-label": machine.name },
    h(
      "div",
      { class: "card-head" },
      h("a", { class: "card-title", href: `/app/machines/${machine.id}`, text: machine.name }),
      alerts,
      status,
    ),
    h("p", { class: "meta" }, conn, " · ", machine.location || "no location", " · last seen ", seen),
    values,
  );
  cards.set(machine.id, { el, values, valueEls: new Map(), seen, conn, status, alerts, lastSeen: machine.last_seen_at });
  return el;
}

function setValue(entry, metric, value) {
  let dd = entry.valueEls.get(metric);
  if (!dd) {
    dd = h("dd", { dataset: { metric } });
    entry.values.append(h("div", {}, h("dt", { text: metric }), dd));
    entry.valueEls.set(metric, dd);
  }
  dd.textContent = fmt(value);
}

function setAlerts(entry, count) {
  entry.alerts.hidden = count === 0;
  entry.alerts.textContent = `${count} alert${count === 1 ? "" : "s"}`;
}

async function loadAlerts(ids) {
  const page = await api(`/api/v1/alerts?active=true&limit=1000`);
  const counts = new Map();
  for (const alert of page.items) counts.set(alert.machine_id, (counts.get(alert.machine_id) || 0) + 1);
  for (const id of ids) {
    const entry = cards.get(id);
    if (entry) setAlerts(entry, counts.get(id) || 0);
  }
}

async function load() {
  const mine = ++generation;
  list.setAttribute("aria-busy", "true");
  const page = await api(`/api/v1/machines${query({ ...filters(), limit: PAGE_SIZE, offset })}`);
  if (mine !== generation) return;
  total = page.total;
  cards.clear();
  list.replaceChildren(...page.items.map(card));
  const ids = page.items.map((m) => m.id);
  document.getElementById("fleet-count").textContent =
    total === 0 ? "No machines match." : `${offset + 1}–${offset + page.items.length} of ${total} machines`;
  document.getElementById("page-info").textContent = `Page ${Math.floor(offset / PAGE_SIZE) + 1} of ${Math.max(1, Math.ceil(total / PAGE_SIZE))}`;
  document.getElementById("page-prev").disabled = offset === 0;
  document.getElementById("page-next").disabled = offset + PAGE_SIZE >= total;
  live.follow(ids);
  if (ids.length) {
    const [latest] = await Promise.all([
      api(`/api/v1/telemetry/latest?machine_ids=${ids.join(",")}`),
      loadAlerts(ids),
    ]);
    if (mine !== generation) return;
    for (const item of latest.items) {
      const entry = cards.get(item.machine_id);
      if (!entry) continue;
      for (const [metric, v] of Object.entries(item.metrics)) setValue(entry, metric, v.value);
    }
  }
  list.setAttribute("aria-busy", "false");
  performance.mark("pp-fleet-rendered");
}

async function loadOptions() {
  const [stats, groups] = await Promise.all([
    api("/api/v1/machines/stats"),
    api("/api/v1/groups?limit=1000"),
  ]);
  const location = form.elements.namedItem("location");
  const group = form.elements.namedItem("group");
  for (const select of [location, group]) {
    for (const option of [...select.options]) if (option.value) option.remove();
  }
  for (const row of stats.by_location) {
    if (row.location) location.append(h("option", { value: row.location, text: `${row.location} (${row.count})` }));
  }
  for (const g of groups.items) group.append(h("option", { value: g.id, text: `${g.name} (${g.machine_count})` }));
  restoreFilters();
  const by = stats.by_status;
  document.getElementById("fleet-summary").textContent =
    `${stats.total} machines · ${by.active || 0} active · ${by.maintenance || 0} in maintenance · ` +
    `${by.error || 0} in error · ${stats.seen_last_5_minutes} seen in the last 5 min`;
}

// Live updates, coalesced.
const pending = new Map();
let flushTimer = null;
let lastFlush = 0;

function schedule() {
  if (flushTimer !== null) return;
  const wait = Math.max(0, lastFlush + FLUSH_MS - performance.now());
  flushTimer = setTimeout(() => requestAnimationFrame(flush), wait);
}

function flush() {
  flushTimer = null;
  lastFlush = performance.now();
  const shown = [];
  for (const [id, change] of pending) {
    const entry = cards.get(id);
    if (!entry) continue;
    if (change.metrics) for (const [metric, value] of Object.entries(change.metrics)) setValue(entry, metric, value);
    if (change.timestamp) shown.push(change.timestamp);
    if (change.lastSeen) {
      entry.lastSeen = change.lastSeen;
      entry.seen.textContent = ago(change.lastSeen);
      entry.seen.setAttribute("datetime", change.lastSeen);
    }
    if (change.connectivity) {
      entry.conn.className = `conn conn-${change.connectivity}`;
      entry.conn.textContent = `● ${change.connectivity}`;
    }
    if (change.status) {
      entry.status.className = `badge status-${change.status}`;
      entry.status.textContent = change.status;
    }
  }
  pending.clear();
  // The values are in the DOM; the next frame is when they are on screen.
  if (shown.length) requestAnimationFrame(() => mark("pp-live-shown", { page: "fleet", timestamps: shown }));
}

const refreshAlerts = debounce(() => loadAlerts([...cards.keys()]).catch(failed), 500);

function onEvent(event) {
  if (event.type === "reading") {
    mark("pp-live-received", { page: "fleet", timestamp: event.timestamp });
    const change = pending.get(event.machine_id) || {};
    change.metrics = { ...(change.metrics || {}), ...event.metrics };
    change.timestamp = event.timestamp;
    change.lastSeen = new Date().toISOString();
    pending.set(event.machine_id, change);
    schedule();
  } else if (event.type === "machine_status") {
    const change = pending.get(event.machine_id) || {};
    Object.assign(change, { status: event.status, connectivity: event.connectivity, lastSeen: event.last_seen_at });
    pending.set(event.machine_id, change);
    schedule();
  } else if (event.type === "alert") {
    refreshAlerts();
  }
}

const live = new Live({ onEvent, onOpen: () => {} });

async function main() {
  // The cards first: the session check and the filter options must not delay them.
  const user = shell();
  restoreFilters();
  live.start();
  const reload = () => {
    offset = 0;
    syncUrl();
    load().catch(failed);
  };
  form.addEventListener("input", debounce(reload, 250));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    reload();
  });
  document.getElementById("page-prev").addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE_SIZE);
    syncUrl();
    load().catch(failed);
  });
  document.getElementById("page-next").addEventListener("click", () => {
    offset += PAGE_SIZE;
    syncUrl();
    load().catch(failed);
  });
  setInterval(() => {
    for (const entry of cards.values()) entry.seen.textContent = ago(entry.lastSeen);
  }, 10_000);
  await Promise.all([user, load()]);
  await loadOptions().catch(failed);
}

main().catch(failed);
