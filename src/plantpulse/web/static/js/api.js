// The REST API with the user's tokens. Tokens live in sessionStorage: per tab, gone when the
// tab closes, never sent by the browser on its own (so no CSRF), never in a URL or a log.
// The multi-page dashboard needs them to survive a page load within the tab, which memory
// alone would not; the strict CSP (scripts only from this origin) is what guards them.

const KEY = "plantpulse.session";
const REFRESH_MARGIN_MS = 60_000;

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

function save(tokens) {
  sessionStorage.setItem(
    KEY,
    JSON.stringify({
      access: tokens.access_token,
      refresh: tokens.refresh_token,
      expires: Date.now() + tokens.expires_in * 1000,
      user: tokens.user.username,
    }),
  );
  scheduleRefresh();
  for (const listener of tokenListeners) listener(tokens.access_token);
}

function clear() {
  sessionStorage.removeItem(KEY);
}

const tokenListeners = new Set();
/** Called with each new access token (the live socket re-authenticates with it). */
export function onToken(listener) {
  tokenListeners.add(listener);
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { detail: response.statusText };
  }
  return new ApiError(response.status, body);
}

export async function login(username, password) {
  const response = await fetch("/api/v1/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ username, password }),
  });
  if (!response.ok) throw await errorOf(response);
  save(await response.json());
}

let refreshing = null;
/** Trade the refresh token for a new pair, once at a time (it rotates: a second use fails). */
export function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      const current = session();
      if (!current) throw new ApiError(401, { detail: "not signed in" });
      const response = await fetch("/api/v1/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ refresh_token: current.refresh }),
      });
      if (!response.ok) {
        clear();
        throw await errorOf(response);
      }
      save(await response.json());
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

let refreshTimer = null;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const current = session();
  if (!current) return;
  const wait = Math.max(1_000, current.expires - Date.now() - REFRESH_MARGIN_MS);
  refreshTimer = setTimeout(() => refresh().catch(() => toLogin()), wait);
}

export async function accessToken() {
  const current = session();
  if (!current) throw new ApiError(401, { detail: "not signed in" });
  if (current.expires - Date.now() < REFRESH_MARGIN_MS) await refresh();
  return session().access;
}

export function toLogin() {
  clear();
  const next = location.pathname + location.search;
  location.assign(`/app/login?next=${encodeURIComponent(next)}`);
}

/** JSON in, JSON out; one silent refresh and retry on 401, then back to the sign-in page. */
export async function api(path, { method = "GET", body, raw = false, signal } = {}) {
  const send = async () => {
    const headers = { Authorization: `Bearer ${await accessToken()}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  };
  let response = await send();
  if (response.status === 401) {
    try {
      await refresh();
    } catch {
      toLogin();
      throw new ApiError(401, { detail: "session expired" });
    }
    response = await send();
  }
  if (!response.ok) throw await errorOf(response);
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

export async function logout() {
  const current = session();
  if (current) {
    try {
      await api("/api/v1/auth/logout", { method: "POST", body: { refresh_token: current.refresh } });
    } catch {
      // Signing out locally matters most; the tokens expire on their own.
    }
  }
  clear();
  location.assign("/app/login");
}

let mePromise = null;
/** The signed-in user with the permissions of their role. */
export function me() {
  if (!mePromise) mePromise = api("/api/v1/auth/me");
  return mePromise;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

scheduleRefresh();
