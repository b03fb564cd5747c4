// Small DOM helpers shared by the pages, and the page shell (session, navigation by
// permission, sign out). Text goes in with textContent only: nothing from the API is parsed
// as HTML.
import { ApiError, api, logout, me, session, toLogin } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
export function fmt(value, unit) {
  if (value === null || value === undefined) return "–";
  const text = typeof value === "number" ? number.format(value) : String(value);
  return unit ? `${text} ${unit}` : text;
}

export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export function notify(message, kind = "info") {
  const box = document.getElementById("notices");
  if (!box) return;
  const note = h("div", { class: `notice ${kind}`, text: message });
  box.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 8000 : 4000);
}

export function failed(error) {
  if (error instanceof ApiError && error.status === 401) return; // on the way to sign-in
  notify(error.message || String(error), "error");
}

export function badge(text, cls) {
  return h("span", { class: `badge ${cls}`, text });
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** Show what the user's permissions allow ([data-requires]); the API refuses the rest. */
export function applyPermissions(user, root = document) {
  const granted = new Set(user.permissions);
  for (const el of root.querySelectorAll("[data-requires]")) {
    el.hidden = !el.dataset.requires.split(" ").every((p) => granted.has(p));
  }
}

async function alertCount() {
  const el = document.getElementById("nav-alert-count");
  if (!el) return;
  try {
    const page = await api("/api/v1/alerts?active=true&acknowledged=false&limit=1");
    el.textContent = String(page.total);
    el.hidden = page.total === 0;
    el.setAttribute("aria-label", `${page.total} unacknowledged`);
  } catch {
    el.hidden = true;
  }
}

/** Every signed-in page starts here: no session means the sign-in page. */
export async function shell() {
  if (!session()) {
    toLogin();
    return new Promise(() => {});
  }
  document.getElementById("sign-out")?.addEventListener("click", () => logout());
  const user = await me();
  const who = document.getElementById("who");
  if (who) who.textContent = `${user.username} (${user.role})`;
  applyPermissions(user);
  // Not urgent: after the page's own first requests.
  setTimeout(alertCount, 300);
  setInterval(alertCount, 30_000);
  return user;
}

export function can(user, permission) {
  return user.permissions.includes(permission);
}

/** A field-by-field view of a 422 envelope: {field: message}, "" for the whole form. */
export function fieldErrors(error) {
  const out = {};
  if (!(error instanceof ApiError)) return { "": String(error) };
  const items = error.body.errors || [];
  for (const item of items) {
    const loc = (item.loc || []).filter((p) => p !== "body");
    const field = loc.length ? String(loc[0]) : "";
    const msg = String(item.msg || "").replace(/^Value error, /, "");
    out[field] = out[field] ? `${out[field]}; ${msg}` : msg;
  }
  if (!items.length) out[""] = error.message;
  return out;
}

export function showFieldErrors(form, errors) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  for (const [field, message] of Object.entries(errors)) {
    const input = field ? form.elements.namedItem(field) : null;
    const id = `err-${form.id}-${field || "form"}`;
    const p = h("p", { class: "field-error", id, role: "alert", text: message });
    if (input && input.closest) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", id);
      (input.closest("label") || input).after(p);
    } else {
      form.prepend(p);
    }
  }
}
