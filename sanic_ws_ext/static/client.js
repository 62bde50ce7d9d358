// sanic-ws-ext browser client: an ES module with no dependencies.
//
//   import { WSClient } from "/ws/client.js";
//   const ws = new WSClient();                 // ws(s)://<this host>/ws
//   ws.on("chat.message", (data, msg) => ...);
//   ws.send("chat.send", { text: "hi" });      // queued while offline
//   ws.join("lobby");                          // re-joined after reconnects
//   ws.subscribe((status) => ...);             // a Svelte store: $ws.state
//
// It does not reconnect after a close the server meant (1000, or an app code
// 4000-4999, such as a kick); pass `shouldReconnect(code)` to decide otherwise.
//
// Reconnects with exponential backoff, jitter and a cap, so a restarted
// server is not hit by every client at once. Sends made while offline are
// queued (bounded) and flushed, in order, once connected again.

/**
 * Whether to reconnect after the server closed with `code`: yes, except after
 * 1000 (a normal close the server chose) and application codes 4000-4999 (the
 * app closed this client on purpose, e.g. `disconnect(id, 4000, "kicked")`).
 */
export function shouldReconnect(code) {
  return code !== 1000 && !(code >= 4000 && code <= 4999);
}

/** Default reconnect timing, in milliseconds. */
export const DEFAULT_BACKOFF = Object.freeze({ base: 500, factor: 2, max: 30000, jitter: 0.5 });

/**
 * Delay before reconnect attempt `attempt` (0 for the first): exponential,
 * capped at `max`, then scaled by a random factor in [1 - jitter, 1].
 */
export function backoffDelay(attempt, backoff = DEFAULT_BACKOFF, random = Math.random) {
  const { base, factor, max, jitter } = { ...DEFAULT_BACKOFF, ...backoff };
  const raw = Math.min(max, base * factor ** attempt);
  return raw * (1 - jitter * random());
}

/** A FIFO of outgoing frames with a bound; past it the oldest are dropped. */
export class SendQueue {
  constructor(limit = 1000) {
    this.limit = limit;
    this.items = [];
    this.dropped = 0;
  }
  push(frame) {
    this.items.push(frame);
    while (this.items.length > this.limit) {
      this.items.shift();
      this.dropped += 1;
    }
  }
  /** Hand every queued frame to `send`, in order; stops (keeping the rest) if it throws. */
  flush(send) {
    while (this.items.length) {
      send(this.items[0]);
      this.items.shift();
    }
  }
  get length() {
    return this.items.length;
  }
}

/** The websocket URL of this page's host: ws(s)://host/<path>. */
export function defaultUrl(path = "/ws") {
  const url = new URL(path, globalThis.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

export class WSClient {
  /**
   * @param {string} [url] ws:// or wss:// URL (default: this host's /ws)
   * @param {object} [options] { backoff, queueLimit, connect (default true),
   *   shouldReconnect(code), stableMs (default 5000), WebSocket (an
   *   implementation, for tests), random, now, setTimeout, clearTimeout }
   */
  constructor(url, options = {}) {
    this.url = url ?? defaultUrl();
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff ?? {}) };
    this.queue = new SendQueue(options.queueLimit ?? 1000);
    this.rooms = new Set();
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._random = options.random ?? Math.random;
    this._shouldReconnect = options.shouldReconnect ?? shouldReconnect;
    this._now = options.now ?? (() => Date.now());
    /** A connection open this long (ms) resets the backoff. */
    this.stableMs = options.stableMs ?? 5000;
    this._openedAt = null;
    this._setTimeout = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this._handlers = new Map();
    this._subscribers = new Set();
    this._socket = null;
    this._timer = null;
    this._stopped = false;
    this.status = { state: "idle", attempt: 0, closeCode: null, nextRetryMs: null };
    if (options.connect !== false) this.connect();
  }

  /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.status.state;
  }

  // -- the Svelte store contract -------------------------------------------

  /** Call `run(status)` now and on every change; returns the unsubscriber. */
  subscribe(run) {
    const subscription = { run }; // one entry per call, as Svelte's stores
    this._subscribers.add(subscription);
    run(this.status);
    return () => this._subscribers.delete(subscription);
  }

  _set(changes) {
    this.status = { ...this.status, ...changes };
    for (const { run } of [...this._subscribers]) safely(run, this.status);
  }

  // -- messages ---------------------------------------------------------------

  /**
   * Call `handler(data, envelope)` for envelopes of `type`; "*" for every
   * envelope, "binary" for binary frames (`handler(arrayBuffer)`), "text" for
   * text frames that are not envelopes (`handler(string)`). Returns a function
   * that removes the handler. A handler that throws is reported
   * (`reportError`) and does not stop the others.
   */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this._handlers.get(type)?.delete(handler);
  }

  /** Send an envelope; queued while not connected. */
  send(type, data = null) {
    this._send(JSON.stringify({ type, data }));
  }

  /** Send a binary frame (ArrayBuffer, typed array or Blob); queued while offline. */
  sendBinary(data) {
    this._send(data);
  }

  /**
   * Join a room (the server's `on_join` guard decides); kept across
   * reconnects. Rooms are state, not messages: while offline only the wanted
   * set changes, and on each connect the client joins exactly that set, before
   * anything queued is sent.
   */
  join(room) {
    this.rooms.add(room);
    if (this._isOpen()) this._socket.send(roomFrame("room.join", room));
  }

  leave(room) {
    this.rooms.delete(room);
    if (this._isOpen()) this._socket.send(roomFrame("room.leave", room));
  }

  _isOpen() {
    return this._socket !== null && this._socket.readyState === 1;
  }

  _send(frame) {
    const socket = this._socket;
    if (socket && socket.readyState === 1) {
      this.queue.flush((f) => socket.send(f)); // anything left from a failed flush first
      socket.send(frame);
    } else {
      this.queue.push(frame);
    }
  }

  _dispatch(event) {
    const handlers = (type) => [...(this._handlers.get(type) ?? [])];
    if (typeof event.data !== "string") {
      for (const h of handlers("binary")) safely(h, event.data);
      return;
    }
    let envelope = null;
    try {
      envelope = JSON.parse(event.data);
    } catch {
      // not JSON: a raw text frame
    }
    if (envelope === null || typeof envelope !== "object" || typeof envelope.type !== "string") {
      for (const h of handlers("text")) safely(h, event.data);
      return;
    }
    for (const h of handlers(envelope.type)) safely(h, envelope.data, envelope);
    for (const h of handlers("*")) safely(h, envelope.data, envelope);
  }

  // -- the connection ------------------------------------------------------------

  /** Open the connection (done by the constructor unless `connect: false`). */
  connect() {
    this._stopped = false;
    this._cancelTimer();
    if (this._socket) return;
    const reconnecting = this.status.attempt > 0;
    this._set({ state: reconnecting ? "reconnecting" : "connecting", nextRetryMs: null });
    const socket = new this._WebSocket(this.url);
    socket.binaryType = "arraybuffer";
    this._socket = socket;
    socket.onopen = () => {
      // Rooms first (the server forgot them with the old connection), then
      // what was sent while offline, in order.
      this._openedAt = this._now();
      for (const room of this.rooms) socket.send(roomFrame("room.join", room));
      this.queue.flush((frame) => socket.send(frame));
      this._set({ state: "open", closeCode: null });
    };
    socket.onmessage = (event) => this._dispatch(event);
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      if (this._stopped || !this._shouldReconnect(event.code)) {
        this._stopped = true;
        this._set({ state: "closed", closeCode: event.code });
        return;
      }
      // Attempts start over only after a connection that lasted: a server
      // that accepts and closes at once must still see the backoff grow.
      const stable = this._openedAt !== null && this._now() - this._openedAt >= this.stableMs;
      this._openedAt = null;
      const attempt = stable ? 0 : this.status.attempt;
      const delay = backoffDelay(attempt, this.backoff, this._random);
      this._schedule(delay);
      this._set({
        state: "reconnecting",
        attempt: attempt + 1,
        closeCode: event.code,
        nextRetryMs: Math.round(delay),
      });
    };
  }

  /** Close for good (no reconnect until `connect()` is called again). */
  close(code = 1000, reason = "") {
    this._stopped = true;
    this._cancelTimer();
    const socket = this._socket;
    this._socket = null; // its late onclose is ignored; connect() may start anew
    if (socket) socket.close(code, reason);
    this._set({ state: "closed", closeCode: code, nextRetryMs: null });
  }

  _schedule(delay) {
    this._cancelTimer();
    this._timer = this._setTimeout(() => {
      this._timer = null;
      this.connect();
    }, delay);
  }

  _cancelTimer() {
    if (this._timer !== null) {
      this._clearTimeout(this._timer);
      this._timer = null;
    }
  }
}

function roomFrame(type, room) {
  return JSON.stringify({ type, data: { room } });
}

/** Call `fn`; report what it throws without letting it stop the caller. */
function safely(fn, ...args) {
  try {
    fn(...args);
  } catch (error) {
    if (typeof globalThis.reportError === "function") globalThis.reportError(error);
    else console.error(error);
  }
}
