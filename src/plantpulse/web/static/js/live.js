// One WebSocket per page to /api/v1/ws. The token goes in the first message, never in the
// URL; a refreshed token is sent again so the socket outlives the access token. Reconnects
// with backoff; the page re-reads what it may have missed through `onOpen`.
import { accessToken, onToken, refresh } from "./api.js";

const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_FORBIDDEN = 4403;

export class Live {
  constructor({ onEvent, onOpen = () => {}, onState = () => {} }) {
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.onState = onState;
    this.ids = new Set();
    this.all = false;
    this.types = null;
    this.ws = null;
    this.backoff = 1000;
    this.stopped = false;
    onToken((token) => this.send({ action: "auth", token }));
  }

  start() {
    this.connect();
    return this;
  }

  async connect() {
    if (this.stopped) return;
    let token;
    try {
      token = await accessToken();
    } catch {
      return; // signed out: the page is on its way to the sign-in page
    }
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/ws`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.addEventListener("open", () => ws.send(JSON.stringify({ action: "auth", token })));
    ws.addEventListener("message", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (event.type === "welcome") {
        this.backoff = 1000;
        this.resubscribe();
        this.onState("live");
        this.onOpen();
        return;
      }
      if (event.type === "subscribed") {
        // What the server now sends this page (tests wait for it instead of sleeping).
        mark("pp-live-subscribed", { all: event.all, machine_ids: event.machine_ids });
        return;
      }
      this.onEvent(event);
    });
    ws.addEventListener("close", async (close) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onState("offline");
      if (this.stopped || close.code === CLOSE_FORBIDDEN) return;
      if (close.code === CLOSE_UNAUTHENTICATED) {
        try {
          await refresh();
        } catch {
          return;
        }
      }
      setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 15_000);
    });
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  resubscribe() {
    if (this.all) this.send({ action: "subscribe_all", ...(this.types ? { types: this.types } : {}) });
    else if (this.ids.size) this.send({ action: "subscribe", machine_ids: [...this.ids] });
  }

  /** Follow exactly these machines (replacing the previous set). */
  follow(ids) {
    const next = new Set(ids);
    const gone = [...this.ids].filter((id) => !next.has(id));
    if (gone.length) this.send({ action: "unsubscribe", machine_ids: gone });
    this.ids = next;
    this.all = false;
    if (next.size) this.send({ action: "subscribe", machine_ids: [...next] });
  }

  /** Every machine; `types` limits the events (e.g. ["alert"] for an alerts screen). */
  followAll(types = null) {
    this.all = true;
    this.types = types;
    this.resubscribe();
  }

  stop() {
    this.stopped = true;
    this.ws?.close();
  }
}

// Benchmark marks (Performance API): when a reading arrived and when it was on screen.
// Bounded, so a page left open for days does not collect marks forever.
let marks = 0;
export function mark(name, detail) {
  if (++marks > 2000) {
    performance.clearMarks();
    marks = 0;
  }
  performance.mark(name, { detail });
}
