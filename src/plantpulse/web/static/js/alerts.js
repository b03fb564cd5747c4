// Alerts: active and recently cleared, live over the WebSocket; acknowledge with a comment.
// A new critical alert beeps (Web Audio, after the first user gesture, as browsers require)
// and shows a desktop notification if the user allowed them; both can be muted.
import { api, query } from "./api.js";
import { Live } from "./live.js";
import { badge, can, debounce, failed, fmt, h, notify, shell, when } from "./ui.js";

const MUTE_KEY = "plantpulse.alerts.muted";
const names = new Map(); // machine id -> name
let user;
let current = null; // the alert being acknowledged

function muted() {
  return localStorage.getItem(MUTE_KEY) === "1";
}

async function machineNames(ids) {
  const missing = [...new Set(ids)].filter((id) => !names.has(id));
  await Promise.all(
    missing.map(async (id) => {
      try {
        names.set(id, (await api(`/api/v1/machines/${id}`)).name);
      } catch {
        names.set(id, id.slice(0, 8));
      }
    }),
  );
}

function machineLink(id) {
  return h("a", { href: `/app/machines/${id}`, text: names.get(id) || id.slice(0, 8) });
}

function ackCell(alert) {
  if (!alert.acknowledged_at) return h("td", { text: "no" });
  return h("td", {}, `yes, ${when(alert.acknowledged_at)}`, alert.ack_comment ? h("br") : null, alert.ack_comment ? `“${alert.ack_comment}”` : null);
}

const ACTIVE = ["Severity", "Machine", "Alert", "Value", "Raised", "Acknowledged", ""];
const RECENT = ["Severity", "Machine", "Alert", "Value", "Raised", "Cleared", "Acknowledged"];

/** Column names on the cells too: on a phone the table stacks and shows them. */
function labelled(row, names) {
  [...row.children].forEach((cell, i) => names[i] && cell.setAttribute("data-label", names[i]));
  return row;
}

function activeRow(alert) {
  const action =
    !alert.acknowledged_at && can(user, "alerts:acknowledge")
      ? h("button", { type: "button", onclick: () => openAck(alert), text: "Acknowledge", "aria-label": `Acknowledge ${alert.message}` })
      : "";
  return labelled(
    h(
      "tr",
      { dataset: { alertId: alert.id } },
      h("td", {}, badge(alert.severity, `sev-${alert.severity}`)),
      h("td", {}, machineLink(alert.machine_id)),
      h("td", { text: alert.message }),
      h("td", { text: fmt(alert.value) }),
      h("td", { text: when(alert.raised_at) }),
      ackCell(alert),
      h("td", {}, action),
    ),
    ACTIVE,
  );
}

function recentRow(alert) {
  return labelled(
    h(
      "tr",
      { dataset: { alertId: alert.id } },
      h("td", {}, badge(alert.severity, `sev-${alert.severity}`)),
      h("td", {}, machineLink(alert.machine_id)),
      h("td", { text: alert.message }),
      h("td", { text: fmt(alert.value) }),
      h("td", { text: when(alert.raised_at) }),
      h("td", { text: when(alert.cleared_at) }),
      ackCell(alert),
    ),
    RECENT,
  );
}

async function load() {
  const since = new Date(Date.now() - 7 * 86400e3).toISOString();
  const [active, recent] = await Promise.all([
    api(`/api/v1/alerts${query({ active: true, limit: 500 })}`),
    api(`/api/v1/alerts${query({ active: false, since, limit: 100 })}`),
  ]);
  await machineNames([...active.items, ...recent.items].map((a) => a.machine_id));
  const activeBody = document.getElementById("active-alerts");
  activeBody.replaceChildren(...active.items.map(activeRow));
  if (!active.items.length) activeBody.append(h("tr", {}, h("td", { colspan: 7, class: "muted", text: "No active alerts." })));
  document.getElementById("active-count").textContent = String(active.total);
  const recentBody = document.getElementById("recent-alerts");
  recentBody.replaceChildren(...recent.items.map(recentRow));
  if (!recent.items.length) recentBody.append(h("tr", {}, h("td", { colspan: 7, class: "muted", text: "Nothing cleared in the last 7 days." })));
}

// ------------------------------------------------------------------------ acknowledge ----
const dialog = document.getElementById("ack-dialog");
const ackForm = document.getElementById("ack-form");
const ackError = document.getElementById("ack-error");

function openAck(alert) {
  current = alert;
  document.getElementById("ack-what").textContent = `${names.get(alert.machine_id) || ""}: ${alert.message}`;
  ackForm.elements.comment.value = "";
  ackError.hidden = true;
  dialog.showModal();
}

ackForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const comment = ackForm.elements.comment.value.trim();
  try {
    await api(`/api/v1/alerts/${current.id}/acknowledge`, { method: "POST", body: { comment: comment || null } });
    dialog.close();
    notify("Alert acknowledged.");
    await load();
  } catch (error) {
    ackError.textContent = error.message;
    ackError.hidden = false;
  }
});
document.getElementById("ack-cancel").addEventListener("click", () => dialog.close());

// ---------------------------------------------------------------------- sound, notify ----
let audio = null;
document.addEventListener(
  "pointerdown",
  () => {
    audio = audio || new AudioContext();
  },
  { once: true },
);

function beep() {
  if (!audio || muted()) return;
  const osc = audio.createOscillator();
  const gain = audio.createGain();
  osc.frequency.value = 880;
  gain.gain.setValueAtTime(0.2, audio.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.6);
  osc.connect(gain).connect(audio.destination);
  osc.start();
  osc.stop(audio.currentTime + 0.6);
}

function desktop(alert) {
  if (muted() || !("Notification" in window) || Notification.permission !== "granted") return;
  new Notification(`Critical: ${names.get(alert.machine_id) || "machine"}`, { body: alert.message, tag: alert.id });
}

function renderMute() {
  const button = document.getElementById("mute");
  button.setAttribute("aria-pressed", String(muted()));
  button.textContent = muted() ? "Sound muted" : "Mute sound";
}

// ------------------------------------------------------------------------------- live ----
const reload = debounce(() => load().catch(failed), 200);

async function onEvent(event) {
  if (event.type !== "alert") return;
  if (event.action === "raised" && event.alert.severity === "critical") {
    await machineNames([event.alert.machine_id]);
    beep();
    desktop(event.alert);
    notify(`Critical alert: ${names.get(event.alert.machine_id)}: ${event.alert.message}`, "error");
  }
  reload();
}

async function main() {
  user = await shell();
  renderMute();
  document.getElementById("mute").addEventListener("click", () => {
    localStorage.setItem(MUTE_KEY, muted() ? "0" : "1");
    renderMute();
  });
  const notifyButton = document.getElementById("notify");
  if (!("Notification" in window)) notifyButton.hidden = true;
  notifyButton.addEventListener("click", async () => {
    const result = await Notification.requestPermission();
    notify(result === "granted" ? "Desktop notifications are on for critical alerts." : "Desktop notifications are blocked.");
  });
  const live = new Live({ onEvent, onOpen: reload }).start();
  live.followAll(["alert"]);
  await load();
}

main().catch(failed);
