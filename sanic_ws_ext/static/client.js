// sanic-ws-ext browser client: an ES module with no dependencies.
//
//   import { WSClient } from "/ws/client.js";
//   const ws = new WSClient();                 // ws(s)://<this host>/ws
//   ws.on("chat.message", (data, msg) => ...);
//   ws.send("chat.send", { text: "hi" });      // queued while offline
//   await ws.join("lobby");                    // re-joined after reconnects
//   ws.subscribe((status) => ...);             // a Svelte store: $ws.state
//   const lobby = ws.presence("lobby");        // a Svelte store: $lobby.list
//   const { recovered } = await ws.join("chat:1"); // a history room: resumes
//   const sum = await ws.request("add", { a: 2, b: 3 }); // the handler's value
//   ws.onRequest("confirm", async (data) => window.confirm(data.text));
//
//   // A token asked for on every connect, reconnect and auth.refresh:
//   const authed = new WSClient("/ws", { token: async () => (await fetch("/ws-token")).text() });
//   authed.on("auth.error", ({ code, reason, final }) => ...);
//
// It does not reconnect after a close the server meant (1000, or an app code
// 4000-4999, such as a kick), except 4401 (with a fresh token), 4408, 4429
// and 4500-4599; pass `shouldReconnect(code)` to decide otherwise.
//
// Reconnects with exponential backoff, jitter and a cap, so a restarted
// server is not hit by every client at once. Sends made while offline are
// queued (bounded) and flushed, in order, once connected again. A heartbeat
// (a `ping` request every 15 s of silence) notices a dead network in seconds.

/**
 * Whether to reconnect after the server closed with `code`: yes, except after
 * 1000 (a normal close the server chose) and application codes 4000-4999 (the
 * app closed this client on purpose, e.g. `disconnect(id, 4000, "kicked")`).
 * Of those, the in-band refusals that another attempt may cure reconnect:
 * 4401 (unauthorized: the next attempt asks for a new token), 4408 (timeout),
 * 4429 (too many connections) and 4500-4599 (the server failed or was busy).
 * 4403 (forbidden) and the others are final.
 */
export function shouldReconnect(code) {
  if (code >= 4000 && code <= 4999) {
    return code === 4401 || code === 4408 || code === 4429 || (code >= 4500 && code <= 4599);
  }
  return code !== 1000;
}

/** Default reconnect timing, in milliseconds. */
export const DEFAULT_BACKOFF = Object.freeze({ base: 500, factor: 2, max: 30000, jitter: 0.5 });

/** Default heartbeat: a ping after this long (ms) without a frame from the server... */
export const DEFAULT_HEARTBEAT_MS = 15000;
/** ...and the connection counts as dead if nothing arrives this long (ms) after it. */
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 10000;

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
    this.keys = []; // each item's key, or undefined
    this.dropped = 0;
  }
  /** Queue `frame`; with a `key`, it replaces a queued frame of that key, in its place. */
  push(frame, key) {
    if (key !== undefined) {
      const at = this.keys.indexOf(key);
      if (at >= 0) {
        this.items[at] = frame;
        return;
      }
    }
    this.items.push(frame);
    this.keys.push(key);
    while (this.items.length > this.limit) {
      this.items.shift();
      this.keys.shift();
      this.dropped += 1;
    }
  }
  /** Hand every queued frame to `send`, in order; stops (keeping the rest) if it throws. */
  flush(send) {
    while (this.items.length) {
      send(this.items[0]);
      this.items.shift();
      this.keys.shift();
    }
  }
  get length() {
    return this.items.length;
  }
}

/**
 * Why a request got no data: `code` is the server's (a handler's
 * `MessageError` code, "handler_error", "unknown_type", ...) or the client's
 * own: "timeout" (no reply in time), "disconnected" (the connection dropped
 * after the request was sent, and no retry was left), "closed" (`close()`,
 * or a close the client does not reconnect after), and for `join()` "left"
 * (`leave()` of the room before it was joined).
 */
export class RequestError extends Error {
  constructor(code, reason = "", details = {}) {
    super(reason ? `${code}: ${reason}` : code);
    this.name = "RequestError";
    this.code = code;
    this.reason = reason;
    // The error's other fields: invalid_data's field, problem, errors, count.
    this.details = details;
  }
}

/** Default time a request waits for its reply, ms. */
export const DEFAULT_REQUEST_TIMEOUT = 10000;

/** The websocket URL of this page's host: ws(s)://host/<path>. */
export function defaultUrl(path = "/ws") {
  const url = new URL(path, globalThis.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/**
 * Append `params` (an object; null and undefined values are left out) to the
 * query of `url`. A relative URL is taken from this page's, and an http(s)
 * one becomes ws(s).
 */
export function withQuery(url, params) {
  const entries = Object.entries(params ?? {}).filter(([, v]) => v !== undefined && v !== null);
  if (!entries.length) return String(url);
  const full = new URL(String(url), globalThis.location?.href);
  if (full.protocol === "http:") full.protocol = "ws:";
  else if (full.protocol === "https:") full.protocol = "wss:";
  for (const [key, value] of entries) full.searchParams.set(key, String(value));
  return full.href;
}

/** The characters a subprotocol (an HTTP token, RFC 9110) may hold. */
const SUBPROTOCOL = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** A connection parameter (url, params or token) that could not be had. */
class ParamError extends Error {
  constructor(code, cause) {
    super(String(cause?.message ?? cause), { cause });
    this.code = code; // "token_error" | "params_error"
  }
}

export class WSClient {
  /**
   * @param {string | Function} [url] ws:// or wss:// URL (default: this
   *   host's /ws), or a function returning one (or a promise of one), called
   *   before every attempt
   * @param {object} [options] { token, params, protocols, tokenTransport,
   *   heartbeatMs, heartbeatTimeoutMs, confirmOpen, backoff, queueLimit,
   *   connect (default true), shouldReconnect(code), stableMs (default
   *   5000), WebSocket (an implementation, for tests), random, now,
   *   setTimeout, clearTimeout }
   */
  constructor(url, options = {}) {
    this.url = url ?? defaultUrl();
    /** Query parameters: an object, or a function giving one (or a promise), per attempt. */
    this.params = options.params ?? null;
    this._token = options.token ?? null;
    this.tokenTransport = options.tokenTransport ?? "query";
    if (this.tokenTransport !== "query" && this.tokenTransport !== "subprotocol") {
      const given = this.tokenTransport;
      throw new TypeError(`tokenTransport must be "query" or "subprotocol", not ${given}`);
    }
    const protocols = options.protocols ?? [];
    this.protocols = Object.freeze(typeof protocols === "string" ? [protocols] : [...protocols]);
    if (this.tokenTransport === "subprotocol" && !this.protocols.length) {
      // Browsers fail a handshake that offered protocols and got none back,
      // and the bearer entry is never echoed: the server must pick another.
      throw new TypeError('tokenTransport "subprotocol" needs `protocols`: one the server selects');
    }
    /** The subprotocol the server selected for this connection ("" when none, or not open). */
    this.protocol = "";
    this.heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
    const renewable = [this.url, this.params, this._token].some((v) => typeof v === "function");
    // Whether something new can be had for the next attempt after a 4401.
    this._renewable = renewable;
    // Wait for the server's first frame before counting a connection open
    // (see _opened): an in-band refusal opens and closes at once.
    this._confirmOpen = options.confirmOpen ?? (renewable || this._token !== null);
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff ?? {}) };
    this.queue = new SendQueue(options.queueLimit ?? 1000);
    this.rooms = new Set();
    /** History rooms: the position of the last publication taken, per room. */
    this.positions = new Map();
    this._recovering = new Set(); // rooms re-joined after a gap, until room.joined
    this._joining = new Map(); // room -> [{resolve, reject}] of join() promises
    this._joinRefs = new Map(); // ref of a room.join sent on this connection -> room
    this._lastJoin = new Map(); // room -> ref of its latest room.join on this connection
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._random = options.random ?? Math.random;
    this._customReconnect = options.shouldReconnect ?? null;
    this._now = options.now ?? (() => Date.now());
    /** A connection open this long (ms) resets the backoff. */
    this.stableMs = options.stableMs ?? 5000;
    this._openedAt = null;
    this._setTimeout = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this._handlers = new Map();
    this._subscribers = new Set();
    this._presences = new Map(); // room -> PresenceStore
    this._requests = new Map(); // ref -> a request waiting for its reply
    this._responders = new Map(); // type -> the onRequest handler
    this._refBase = Math.random().toString(36).slice(2, 10);
    this._refSeq = 0;
    this._socket = null;
    this._live = false; // the socket is open and counted so (rooms joined, queue sent)
    this._pending = null; // an attempt whose url, params or token are being had
    this._reason = null; // why the next attempt is made, when not the usual
    this._timer = null;
    this._beatTimer = null;
    this._seen = 0; // frames received on this connection
    this._seenAt = 0; // when the last one came (this._now())
    this._pingSeen = null; // this._seen when the outstanding ping went
    this._refreshing = null; // the socket an auth.refresh is under way on
    this._stopped = false;
    this.status = {
      state: "idle",
      attempt: 0,
      closeCode: null,
      closeReason: null,
      nextRetryMs: null,
    };
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

  /**
   * Send an envelope; queued while not connected. `volatile`: dropped instead
   * of queued while not connected (cursors, typing). `key`: while queued, a
   * newer send with the same key replaces it (only the latest matters).
   */
  send(type, data = null, { volatile = false, key } = {}) {
    this._send(JSON.stringify({ type, data }), { volatile, key });
  }

  /** Send a binary frame (ArrayBuffer, typed array or Blob); queued while offline. */
  sendBinary(data) {
    this._send(data);
  }

  /**
   * Send a request and resolve with the data of the server's reply (what
   * the handler returned). Rejects with a `RequestError`: the server's code
   * and reason on `ok: false`, "timeout" after `timeout` ms (default 10000,
   * for the whole request, retries included), "disconnected" when the
   * connection drops after it was sent, "closed" on `close()` (at once
   * after it, until `connect()`). A request
   * made while offline waits for the connection (its timeout runs). With
   * `retries` > 0, a request the connection dropped under is sent again,
   * with the same ref, once reconnected (up to `retries` times): the server
   * may see it twice (at-least-once), and its handler sees the same
   * `msg.ref` to do the work once.
   */
  request(type, data = null, { timeout = DEFAULT_REQUEST_TIMEOUT, retries = 0 } = {}) {
    if (this._stopped) {
      return Promise.reject(new RequestError("closed", "the client was closed"));
    }
    const ref = `${this._refBase}.${++this._refSeq}`;
    const frame = JSON.stringify({ type, data, ref });
    return new Promise((resolve, reject) => {
      const pending = { frame, retries, sent: false, resolve, reject, timer: null };
      pending.timer = this._setTimeout(() => {
        this._requests.delete(ref);
        reject(new RequestError("timeout", `no reply to ${type} within ${timeout} ms`));
      }, timeout);
      this._requests.set(ref, pending);
      if (this._isOpen()) {
        this.queue.flush((f) => this._socket.send(f)); // sends made before it go first
        this._socket.send(frame);
        pending.sent = true;
      }
    });
  }

  /**
   * Answer the server's requests of `type` (`conn.request(type, data)`):
   * `handler(data, envelope)` returns the reply's data (or a promise of it);
   * what it throws becomes `ok: false`, with the error's `code` if it is a
   * string ("handler_error" otherwise) and its message as the reason. One
   * handler per type (a new one replaces it); a request of a type without
   * one is answered "unknown_type". Requests do not reach `on()` handlers.
   * Returns a function that removes the handler.
   */
  onRequest(type, handler) {
    this._responders.set(type, handler);
    return () => {
      if (this._responders.get(type) === handler) this._responders.delete(type);
    };
  }

  _settle(envelope) {
    const pending = this._requests.get(envelope.ref);
    if (pending === undefined) return; // timed out, or not ours: dropped
    this._requests.delete(envelope.ref);
    this._clearTimeout(pending.timer);
    if (envelope.ok === true) {
      pending.resolve(envelope.data ?? null);
    } else {
      const { code, reason, ...details } = envelope.error ?? {};
      pending.reject(new RequestError(String(code ?? "error"), String(reason ?? ""), details));
    }
  }

  async _answer(envelope) {
    const { ref, type } = envelope;
    const socket = this._socket;
    const handler = this._responders.get(type);
    let reply;
    if (handler === undefined) {
      reply = { ok: false, error: { code: "unknown_type", reason: `no handler for ${type}` } };
    } else {
      try {
        const value = await handler(envelope.data, envelope);
        reply = { ok: true, data: value ?? null };
      } catch (error) {
        const code = typeof error?.code === "string" && error.code ? error.code : "handler_error";
        reply = { ok: false, error: { code, reason: String(error?.message ?? error) } };
      }
    }
    // Only on the connection that asked: after a drop the server gave up on it.
    if (socket === this._socket && this._isOpen()) {
      let frame;
      try {
        frame = JSON.stringify({ type: "reply", ref, ...reply });
      } catch (error) {
        frame = JSON.stringify({
          type: "reply",
          ref,
          ok: false,
          error: { code: "handler_error", reason: String(error?.message ?? error) },
        });
      }
      socket.send(frame);
    }
  }

  /** The connection dropped: requests it carried retry, or fail. */
  _dropRequests(code, reason) {
    for (const [ref, pending] of this._requests) {
      if (!pending.sent) continue; // never left: it waits for the next connection
      if (code === "disconnected" && pending.retries > 0) {
        pending.retries -= 1;
        pending.sent = false;
        continue;
      }
      this._requests.delete(ref);
      this._clearTimeout(pending.timer);
      pending.reject(new RequestError(code, reason));
    }
  }


  /**
   * Join a room (the server's `on_join` guard decides); kept across
   * reconnects. Rooms are state, not messages: while offline only the wanted
   * set changes, and on each connect the client joins exactly that set, before
   * anything queued is sent. Resolves to the next `room.joined` data of the
   * room: for a history room `{room, position, recovered}` (`recovered` only
   * when a position was sent, as after a reconnect). Made offline, it waits
   * for the join sent once connected.
   *
   * Rejects with a `RequestError` when the server refuses the join (its
   * code, such as "room_refused", and reason): the room is then forgotten,
   * not joined again after reconnects. A refused re-join after a reconnect
   * is reported by `on("room.refused", ({room, code, reason}) => ...)`, as
   * every refusal is. Also rejects with "left" (`leave(room)` came first) or
   * "closed" (the client closed for good).
   *
   * `since` (a history room's `{offset, epoch}`, such as `positions.get(room)`
   * saved before a `leave`): resume from there, as after a reconnect; the
   * publications missed since come before `room.joined`.
   */
  join(room, { since } = {}) {
    if (since && Number.isInteger(since.offset) && typeof since.epoch === "string") {
      this.positions.set(room, { offset: since.offset, epoch: since.epoch });
    }
    this.rooms.add(room);
    const joined = new Promise((resolve, reject) => {
      if (!this._joining.has(room)) this._joining.set(room, []);
      this._joining.get(room).push({ resolve, reject });
    });
    // A join nobody awaits (the usual `ws.join(room)`) is no unhandled
    // rejection: refusals are reported by "room.refused" too.
    joined.catch(() => {});
    if (this._isOpen()) this._sendJoin(room);
    return joined;
  }

  /** Leave a room; its presence store is cleared (the server's `room.left` does it too). */
  leave(room) {
    this.rooms.delete(room);
    this.positions.delete(room);
    this._recovering.delete(room);
    this._lastJoin.delete(room); // a refusal still on its way is no news now
    this._rejectJoins(room, new RequestError("left", `left ${room} before it was joined`));
    this._presences.get(room)?._clear();
    if (this._isOpen()) this._socket.send(roomFrame("room.leave", room));
  }

  /**
   * The presence of `room` (the same store on every call): kept up to date
   * from the server's `presence.state`, `presence.diff` and `presence.count`
   * frames, whether or not anything subscribed yet. It does not join the room.
   */
  presence(room) {
    let store = this._presences.get(room);
    if (store === undefined) {
      store = new PresenceStore(room);
      this._presences.set(room, store);
    }
    return store;
  }

  /** Connected, and counted so: rooms joined, the queue sent. */
  _isOpen() {
    return this._live && this._socket !== null && this._socket.readyState === 1;
  }

  _send(frame, { volatile = false, key } = {}) {
    if (this._isOpen()) {
      const socket = this._socket;
      this.queue.flush((f) => socket.send(f)); // anything left from a failed flush first
      socket.send(frame);
    } else if (!volatile) {
      this.queue.push(frame, key);
    }
  }

  _ref() {
    return `${this._refBase}.${++this._refSeq}`;
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
    if (typeof envelope.ref === "string") {
      // A reply to one of our requests (or joins), or a request of the server's.
      if (envelope.type !== "reply") this._answer(envelope);
      else if (this._joinRefs.has(envelope.ref)) this._joinReply(envelope);
      else this._settle(envelope);
      return;
    }
    if (!this._fresh(envelope)) return; // a history room's publication already had
    // The stores first, so that an app's handler of these frames sees them updated.
    if (PRESENCE_FRAMES.has(envelope.type)) safely(() => this._presenceFrame(envelope));
    for (const h of handlers(envelope.type)) safely(h, envelope.data, envelope);
    for (const h of handlers("*")) safely(h, envelope.data, envelope);
    if (envelope.type === "room.joined") this._joined(envelope.data);
    else if (envelope.type === "auth.refresh") this._refresh(envelope.data);
  }

  /** Call the handlers of a client-made event ("room.recovery", "auth.error", ...). */
  _emit(type, event) {
    for (const h of [...(this._handlers.get(type) ?? [])]) safely(h, event);
  }

  // -- rooms ----------------------------------------------------------------------

  /** Send a `room.join` of `room` on the open socket, with a ref to know its refusal by. */
  _sendJoin(room) {
    const ref = this._ref();
    this._joinRefs.set(ref, room);
    this._lastJoin.set(room, ref);
    this._socket.send(this._joinFrame(room, ref));
  }

  /**
   * The reply to a `room.join` (after its `room.joined`, when accepted). A
   * refusal of the room's latest join forgets the room: it is not sent again
   * on every reconnect to be refused again. One of an older join, with a
   * newer one on its way, is left for the newer's answer.
   */
  _joinReply({ ref, ok, error }) {
    const room = this._joinRefs.get(ref);
    this._joinRefs.delete(ref);
    if (ok === true || this._lastJoin.get(room) !== ref) return;
    this._lastJoin.delete(room);
    const code = String(error?.code ?? "error");
    const reason = String(error?.reason ?? "");
    this.rooms.delete(room);
    this.positions.delete(room);
    this._recovering.delete(room);
    this._presences.get(room)?._clear();
    this._rejectJoins(room, new RequestError(code, reason));
    this._emit("room.refused", { room, code, reason });
  }

  _rejectJoins(room, error) {
    const waiting = this._joining.get(room);
    this._joining.delete(room);
    for (const { reject } of waiting ?? []) reject(error);
  }

  // -- history rooms ------------------------------------------------------------

  _joinFrame(room, ref) {
    const since = this.positions.get(room);
    const data = since ? { room, since: { offset: since.offset, epoch: since.epoch } } : { room };
    return JSON.stringify({ type: "room.join", data, ref });
  }

  /**
   * Whether to hand `envelope` to the app. A publication of a history room
   * (top-level `room` and integer `offset`) already had is dropped; one past
   * a gap is dropped too, and the room re-joined from the last position: the
   * server replays the missing ones and this one, in order. One of a new
   * epoch (the history was lost) is taken, and reported as not recovered.
   */
  _fresh(envelope) {
    const { room, offset, epoch } = envelope;
    if (typeof room !== "string" || !Number.isInteger(offset)) return true;
    const known = this.positions.get(room);
    if (known && known.epoch === epoch) {
      if (offset <= known.offset) return false;
      if (offset > known.offset + 1) {
        if (!this._recovering.has(room) && this._isOpen()) {
          this._recovering.add(room);
          this._sendJoin(room);
        }
        return false;
      }
    }
    this.positions.set(room, { offset, epoch });
    if (known && known.epoch !== epoch) {
      this._report({ room, recovered: false, position: { offset, epoch } });
    }
    return true;
  }

  _joined(data) {
    const room = data?.room;
    if (typeof room !== "string") return;
    this._recovering.delete(room);
    const position = data.position;
    if (!this.rooms.has(room) && !("recovered" in data) && this._resumeServerJoin(room, position)) {
      return;
    }
    if (position && Number.isInteger(position.offset)) {
      this.positions.set(room, { offset: position.offset, epoch: position.epoch });
    } else if (position === null) {
      this.positions.delete(room); // the room's keeper restarts: the next publication tells
    }
    if ("recovered" in data) this._report({ room, recovered: data.recovered, position });
    const waiting = this._joining.get(room);
    this._joining.delete(room);
    for (const { resolve } of waiting ?? []) resolve(data);
  }

  /**
   * A history room the server put this connection in (after a reconnect,
   * say) is ahead of the last publication this client took: resume from its
   * own position (the server lets a member do that without asking its
   * guards). The live publications meanwhile are past a gap: dropped, then
   * replayed. Returns whether it resumes.
   */
  _resumeServerJoin(room, position) {
    const known = this.positions.get(room);
    if (!known || !position || !Number.isInteger(position.offset)) return false;
    if (known.epoch !== position.epoch) {
      this._report({ room, recovered: false, position });
      return false;
    }
    if (known.offset >= position.offset || !this._isOpen()) return false;
    this._recovering.add(room);
    this._sendJoin(room);
    return true;
  }

  /** `on("room.recovery", ({room, recovered, position}) => ...)`: after a resume. */
  _report(recovery) {
    this._emit("room.recovery", recovery);
  }

  _presenceFrame({ type, data }) {
    const room = data?.room;
    if (typeof room !== "string") return;
    if (type === "room.left") this._presences.get(room)?._clear();
    else if (type === "presence.state") this.presence(room)._state(data.users);
    else if (type === "presence.diff") this.presence(room)._diff(data);
    else this.presence(room)._count(data);
  }

  /** The connection is gone: every store keeps its view, marked stale. */
  _presenceStale() {
    for (const store of this._presences.values()) store._stale();
  }

  // -- authentication -------------------------------------------------------------

  /**
   * `on("auth.error", ({stage, code, reason, final, error}) => ...)`: stage
   * "connect" for a close with 4401 or 4403 (`code` the close code, `reason`
   * its reason, `final` when no attempt follows) or a token function that
   * failed ("token_error", `error` what it threw); stage "refresh" for an
   * `auth.refresh` that failed (the reply's code: "auth_refused",
   * "auth_user_mismatch", "auth_unsupported", or "timeout", "token_error",
   * "no_token_function"). With nobody listening, what a token function
   * threw goes to `reportError`.
   */
  _authError(event) {
    const { error, ...rest } = event;
    const info = error === undefined ? { final: false, ...rest } : { final: false, ...rest, error };
    if (this._handlers.get("auth.error")?.size) this._emit("auth.error", info);
    else if (error !== undefined) report(error);
  }

  /**
   * The server's `auth.refresh` push (`{expires_at}`): the token expires
   * soon. Ask the token function for a new one and send it in an
   * `auth.refresh` request; the server answers `{expires_at}` (then
   * `on("auth.refreshed", data => ...)`), or refuses (`auth.error`). One at a
   * time per connection; nothing is sent on a connection that dropped
   * meanwhile (the next one asks for a fresh token anyway).
   */
  async _refresh(data) {
    const socket = this._socket;
    if (socket === null || this._refreshing === socket) return;
    const stage = "refresh";
    if (typeof this._token !== "function") {
      const reason = "auth.refresh needs the `token` option to be a function";
      this._authError({ stage, code: "no_token_function", reason });
      return;
    }
    this._refreshing = socket;
    try {
      let token;
      try {
        const expiresAt = typeof data?.expires_at === "number" ? data.expires_at : null;
        token = await this._token({ reason: "refresh", attempt: 0, expiresAt });
        if (typeof token !== "string" || !token) {
          throw new TypeError("the token function gave no token");
        }
      } catch (error) {
        this._authError({ stage, code: "token_error", reason: messageOf(error), error });
        return;
      }
      if (socket !== this._socket || !this._isOpen()) return;
      let answer;
      try {
        answer = await this.request("auth.refresh", { token });
      } catch (error) {
        if (socket !== this._socket) return; // dropped meanwhile: the next connection asks anew
        const code = String(error?.code ?? "error");
        this._authError({ stage, code, reason: String(error?.reason ?? messageOf(error)) });
        return;
      }
      this._emit("auth.refreshed", answer ?? {});
    } finally {
      if (this._refreshing === socket) this._refreshing = null;
    }
  }

  /**
   * The URL and subprotocols of the next attempt: `url`, `params` and
   * `token` evaluated now (the functions among them called, never cached),
   * or a promise of them when one of those gave a promise.
   */
  _target(info) {
    const sources = [
      [this.url, "params_error"],
      [this.params, "params_error"],
      [this._token, "token_error"],
    ];
    const values = [];
    for (const [source, code] of sources) {
      let value;
      try {
        value = typeof source === "function" ? source(info) : source;
      } catch (error) {
        for (const v of values) if (isThenable(v)) v.catch(() => {});
        throw new ParamError(code, error);
      }
      if (isThenable(value)) {
        value = Promise.resolve(value).catch((error) => {
          throw new ParamError(code, error);
        });
      }
      values.push(value);
    }
    if (!values.some(isThenable)) return this._build(...values);
    return Promise.all(values).then((got) => this._build(...got));
  }

  _build(url, params, token) {
    if (params !== null && typeof params !== "object") {
      throw new ParamError("params_error", new TypeError("params must be an object"));
    }
    const query = { ...(params ?? {}) };
    const protocols = [...this.protocols];
    if (token !== null && token !== undefined && token !== "") {
      if (typeof token !== "string") {
        throw new ParamError("token_error", new TypeError("the token must be a string"));
      }
      if (this.tokenTransport === "query") {
        query.token = token;
      } else if (SUBPROTOCOL.test(token)) {
        protocols.push(`bearer.${token}`);
      } else {
        const reason = "the token has characters a subprotocol cannot carry (base64url is fine)";
        throw new ParamError("token_error", new TypeError(reason));
      }
    }
    try {
      return { url: withQuery(url, query), protocols };
    } catch (error) {
      throw new ParamError("params_error", error);
    }
  }

  // -- the connection ------------------------------------------------------------

  /**
   * Open the connection (done by the constructor unless `connect: false`).
   * `url`, `params` and `token` are evaluated first (the functions among
   * them called with `{reason, attempt}`: reason "connect", "reconnect", or
   * "unauthorized" after a 4401, when a cached token must not be reused).
   */
  connect() {
    this._stopped = false;
    this._cancelTimer();
    if (this._socket || this._pending) return;
    const attempt = this.status.attempt;
    this._set({ state: attempt > 0 ? "reconnecting" : "connecting", nextRetryMs: null });
    const reason = this._reason ?? (attempt > 0 ? "reconnect" : "connect");
    this._reason = null;
    let target;
    try {
      target = this._target({ reason, attempt });
    } catch (error) {
      if (reason === "unauthorized") this._reason = reason;
      this._failed(error);
      return;
    }
    if (!isThenable(target)) {
      this._open(target);
      return;
    }
    const pending = {};
    this._pending = pending;
    target.then(
      (got) => {
        if (this._pending !== pending) return; // closed meanwhile
        this._pending = null;
        this._open(got);
      },
      (error) => {
        if (this._pending !== pending) return;
        this._pending = null;
        if (reason === "unauthorized") this._reason = reason; // still, for the next one
        this._failed(error);
      },
    );
  }

  /** An attempt that got no socket (its token or URL could not be had): report, back off. */
  _failed(error) {
    if (error instanceof ParamError && error.code === "token_error") {
      const { message: reason, cause } = error;
      this._authError({ stage: "connect", code: "token_error", reason, error: cause });
    } else {
      report(error instanceof ParamError ? error.cause : error);
    }
    if (this._stopped) return; // a handler closed the client
    this._retry(this.status.closeCode, this.status.closeReason);
  }

  _open({ url, protocols }) {
    let socket;
    try {
      socket = protocols.length ? new this._WebSocket(url, protocols) : new this._WebSocket(url);
    } catch (error) {
      this._failed(error); // a malformed URL, say
      return;
    }
    socket.binaryType = "arraybuffer";
    this._socket = socket;
    this._live = false;
    this._refreshing = null;
    socket.onopen = () => {
      if (this._socket !== socket) return;
      this.protocol = socket.protocol ?? "";
      this._seen = 0;
      this._seenAt = this._now();
      if (!this._confirmOpen) {
        this._opened(socket);
        return;
      }
      // A server refusing in-band opens, then closes at once: what went out
      // meanwhile would be lost. The first frame back (the ping's answer)
      // says the connection was accepted.
      this._ping(socket);
      this._beatIn(this.heartbeatTimeoutMs);
    };
    socket.onmessage = (event) => {
      if (this._socket !== socket) return;
      this._seen += 1;
      this._seenAt = this._now();
      if (!this._live) this._opened(socket);
      this._dispatch(event);
    };
    socket.onclose = (event) => this._closed(socket, event.code, event.reason ?? "");
  }

  /** The connection is open and accepted: rooms, then what waited, in order. */
  _opened(socket) {
    // Rooms first (the server forgot them with the old connection), then
    // what was sent while offline, in order.
    this._live = true;
    this._openedAt = this._now();
    this._recovering.clear();
    for (const room of this.rooms) this._sendJoin(room);
    this.queue.flush((frame) => socket.send(frame));
    for (const pending of this._requests.values()) {
      if (pending.sent) continue;
      socket.send(pending.frame); // the same ref: the server may see it again
      pending.sent = true;
    }
    this._pingSeen = null;
    this._cancelBeat();
    if (this.heartbeatMs > 0) this._beatIn(this.heartbeatMs);
    this._set({ state: "open", closeCode: null, closeReason: null });
  }

  _ping(socket) {
    this._pingSeen = this._seen;
    socket.send(JSON.stringify({ type: "ping", ref: this._ref() }));
  }

  _beatIn(ms) {
    this._cancelBeat();
    this._beatTimer = this._setTimeout(() => {
      this._beatTimer = null;
      this._beat();
    }, ms);
  }

  /**
   * The heartbeat: after `heartbeatMs` without a frame from the server, a
   * `ping` request (the server answers it at once); nothing back within
   * `heartbeatTimeoutMs` and the connection is dead (a network that went
   * away says nothing, and TCP takes minutes to give up): closed, and
   * reconnected. Any frame counts, so a busy connection sends no pings.
   */
  _beat() {
    const socket = this._socket;
    if (socket === null) return;
    if (this._pingSeen !== null) {
      if (this._seen === this._pingSeen) {
        this._lost(socket, "heartbeat timeout");
        return;
      }
      this._pingSeen = null;
    }
    if (!this._live) return; // (opened by the frame that came)
    const idle = this._now() - this._seenAt;
    if (idle < this.heartbeatMs) {
      this._beatIn(this.heartbeatMs - idle);
      return;
    }
    this._ping(socket);
    this._beatIn(this.heartbeatTimeoutMs);
  }

  _cancelBeat() {
    if (this._beatTimer !== null) {
      this._clearTimeout(this._beatTimer);
      this._beatTimer = null;
    }
  }

  /** Give up on a socket that went silent: as a lost connection (1006), then closed. */
  _lost(socket, reason) {
    this._closed(socket, 1006, reason);
    try {
      socket.close(3008, reason); // 3008: "timeout" (IANA); its own onclose is ignored
    } catch {
      // closing a dead socket may fail: it is dropped either way
    }
  }

  _reconnects(code) {
    if (this._customReconnect !== null) return this._customReconnect(code);
    // After a 4401, only a new token (or URL) may help.
    return shouldReconnect(code) && (code !== 4401 || this._renewable);
  }

  _closed(socket, code, reason) {
    if (this._socket !== socket) return;
    this._socket = null;
    this._live = false;
    this.protocol = "";
    this._cancelBeat();
    this._pingSeen = null;
    this._refreshing = null;
    this._joinRefs.clear();
    this._lastJoin.clear();
    this._presenceStale();
    const final = this._stopped || !this._reconnects(code);
    if (final) {
      this._stopped = true;
      this._openedAt = null;
      this._closeRequests();
      this._set({ state: "closed", closeCode: code, closeReason: reason, nextRetryMs: null });
    } else {
      if (code === 4401) this._reason = "unauthorized";
      this._dropRequests("disconnected", `the connection dropped (${code})`);
      this._retry(code, reason);
    }
    if (code === 4401 || code === 4403) this._authError({ stage: "connect", code, reason, final });
  }

  /** Schedule the next attempt, the backoff growing unless the last connection lasted. */
  _retry(code, reason) {
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
      closeCode: code,
      closeReason: reason,
      nextRetryMs: Math.round(delay),
    });
  }

  /** Close for good (no reconnect until `connect()` is called again). */
  close(code = 1000, reason = "") {
    this._stopped = true;
    this._pending = null; // an attempt still getting its token is dropped
    this._cancelTimer();
    this._cancelBeat();
    const socket = this._socket;
    this._socket = null; // its late onclose is ignored; connect() may start anew
    this._live = false;
    this.protocol = "";
    this._joinRefs.clear();
    this._lastJoin.clear();
    if (socket) socket.close(code, reason);
    this._presenceStale();
    this._closeRequests();
    this._set({ state: "closed", closeCode: code, closeReason: reason, nextRetryMs: null });
  }

  /** Closed for good: no request or join waits for a connection that will not come. */
  _closeRequests() {
    for (const pending of this._requests.values()) {
      this._clearTimeout(pending.timer);
      pending.reject(new RequestError("closed", "the client was closed"));
    }
    this._requests.clear();
    for (const room of [...this._joining.keys()]) {
      this._rejectJoins(room, new RequestError("closed", "the client was closed"));
    }
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

function isThenable(value) {
  return value !== null && typeof value === "object" && typeof value.then === "function";
}

function messageOf(error) {
  return String(error?.message ?? error);
}

const PRESENCE_FRAMES = new Set(["presence.state", "presence.diff", "presence.count", "room.left"]);

/**
 * One room's presence, in the Phoenix Presence model: each key (a user, or
 * an anonymous connection's opaque ref) has one meta per connection (tab) in
 * the room, each meta with a `ref` unique per connection and metadata version.
 * Made by `ws.presence(room)`, fed by the client.
 *
 * A Svelte store: `subscribe(run)` calls `run(value)` now and on every change,
 * with `value = {room, synced, list: [{key, metas}], count: {connections,
 * users}}`. Each change makes a new `value` (an entry whose metas did not
 * change stays the same object), so `store.value` is also a snapshot for
 * React's `useSyncExternalStore`. Do not mutate it.
 *
 * `onJoin` / `onLeave` report keys, not connections: a join when a key
 * appears (its first meta), a leave when its last meta goes. A second tab, a
 * tab closed while another stays, or a metadata update (old ref out, new ref
 * in) change only the key's metas: `subscribe` sees those.
 */
export class PresenceStore {
  constructor(room) {
    this.room = room;
    this._entries = new Map(); // key -> {key, metas}, in order of arrival
    this._serverCount = null; // {connections, users} of a counts-only room
    this._synced = false;
    // No presence.state yet since the store was made, cleared or its
    // connection lost: diffs wait in _pending (see _state).
    this._awaitingState = true;
    this._pending = [];
    this._hadView = false; // false until the first state: its joins are `initial`
    this._subscribers = new Set();
    this._onJoin = new Set();
    this._onLeave = new Set();
    this.value = null;
    this._update();
  }

  /**
   * Whether the view is the server's current one: false until the room's
   * first `presence.state` (or `presence.count`), and again from a lost
   * connection until the state sent after the re-join, while the last view
   * stays visible.
   */
  get synced() {
    return this._synced;
  }

  /** `{connections, users}`: the server's, for a counts-only room; else of `list`. */
  get count() {
    return this.value.count;
  }

  /** Call `run(value)` now and on every change; returns the unsubscriber. */
  subscribe(run) {
    const subscription = { run };
    this._subscribers.add(subscription);
    run(this.value);
    return () => this._subscribers.delete(subscription);
  }

  /** `[{key, metas}]` in order of arrival; with `chooser(key, metas)`, what it returns for each. */
  list(chooser) {
    const list = this.value.list;
    return chooser ? list.map(({ key, metas }) => chooser(key, metas)) : list;
  }

  /** The metas of `key` (one per connection), or undefined if it is not present. */
  get(key) {
    return this._entries.get(key)?.metas;
  }

  /**
   * Call `fn(key, metas, {initial})` when a key appears; `initial` is true for
   * those of the first state after the store was empty (who was already
   * there, not who just came). Returns the unsubscriber.
   */
  onJoin(fn) {
    return addTo(this._onJoin, fn);
  }

  /** Call `fn(key, metas, {initial: false})` when a key's last meta goes (`metas`: its last). */
  onLeave(fn) {
    return addTo(this._onLeave, fn);
  }

  // -- fed by WSClient ----------------------------------------------------------

  /**
   * `presence.state`: the room's whole presence replaces the view (keys that
   * stay keep their place). Then the diffs received while waiting for it are
   * applied, in order, as Phoenix does. Applying rather than dropping them is
   * the safe choice because refs are never reused: a diff the state already
   * contains changes nothing (its joins replace a meta by an identical one,
   * its leaves remove refs that are gone), while one the server made after
   * the state's snapshot but delivered first would be lost if dropped.
   * Join and leave events compare the view before and after all of it, so a
   * key present before a reconnect and after it is not reported.
   */
  _state(users) {
    const incoming = new Map();
    for (const [key, raw] of entriesOf(users)) {
      const metas = readMetas(raw);
      if (metas.length) incoming.set(key, metas);
    }
    const next = new Map();
    for (const key of this._entries.keys()) if (incoming.has(key)) next.set(key, null);
    for (const [key, metas] of incoming) {
      const old = this._entries.get(key);
      next.set(key, old !== undefined && sameRefs(old.metas, metas) ? old : { key, metas });
    }
    for (const diff of this._pending) applyDiff(next, diff);
    const initial = !this._hadView;
    this._pending = [];
    this._awaitingState = false;
    this._hadView = true;
    this._synced = true;
    this._serverCount = null;
    this._change(next, initial);
  }

  /**
   * `presence.diff`: joins (a meta whose ref is present replaces it), then
   * leaves (by ref; a key left with no metas is gone). Before the state it
   * only waits.
   */
  _diff(diff) {
    if (this._awaitingState) {
      this._pending.push(diff);
      return;
    }
    const next = new Map(this._entries);
    applyDiff(next, diff);
    this._change(next, false);
  }

  /**
   * `presence.count`: a room whose presence is counts only. Any list is
   * dropped (without leave events: nobody left, the server stopped saying
   * who) and diffs wait for a state again.
   */
  _count({ connections, users }) {
    this._entries = new Map();
    this._pending = [];
    this._awaitingState = true;
    this._serverCount = { connections: toCount(connections), users: toCount(users) };
    this._synced = true;
    this._publish();
  }

  /** The connection is gone: keep the view, marked stale, until the next state. */
  _stale() {
    this._pending = [];
    this._awaitingState = true;
    if (!this._synced) return;
    this._synced = false;
    this._publish();
  }

  /**
   * The room was left: empty, and waiting for a state as a new store. No
   * leave events: the others did not leave, this client stopped looking.
   */
  _clear() {
    const changed = this._synced || this._entries.size > 0 || this._serverCount !== null;
    this._entries = new Map();
    this._serverCount = null;
    this._pending = [];
    this._awaitingState = true;
    this._hadView = false;
    this._synced = false;
    if (changed) this._publish();
  }

  _change(next, initial) {
    const before = this._entries;
    this._entries = next;
    this._update();
    const info = { initial };
    for (const [key, { metas }] of next) {
      if (!before.has(key)) for (const fn of [...this._onJoin]) safely(fn, key, metas, info);
    }
    const gone = { initial: false };
    for (const [key, { metas }] of before) {
      if (!next.has(key)) for (const fn of [...this._onLeave]) safely(fn, key, metas, gone);
    }
    this._notify();
  }

  _publish() {
    this._update();
    this._notify();
  }

  /** A new `value` from the entries (subscribers are told by _notify). */
  _update() {
    const list = [...this._entries.values()];
    let connections = 0;
    for (const { metas } of list) connections += metas.length;
    this.value = {
      room: this.room,
      synced: this._synced,
      list,
      count: this._serverCount ?? { connections, users: list.length },
    };
  }

  _notify() {
    for (const { run } of [...this._subscribers]) safely(run, this.value);
  }
}

/** Apply a `presence.diff` to `entries` (a Map of key -> {key, metas}) in place. */
function applyDiff(entries, { joins, leaves }) {
  for (const [key, raw] of entriesOf(joins)) {
    const added = readMetas(raw);
    if (!added.length) continue;
    const metas = [...(entries.get(key)?.metas ?? [])];
    for (const meta of added) {
      const at = metas.findIndex((m) => m.ref === meta.ref);
      if (at >= 0) metas[at] = meta;
      else metas.push(meta);
    }
    entries.set(key, { key, metas });
  }
  for (const [key, raw] of entriesOf(leaves)) {
    const entry = entries.get(key);
    if (entry === undefined) continue;
    const refs = new Set(readMetas(raw).map((m) => m.ref));
    const metas = entry.metas.filter((m) => !refs.has(m.ref));
    if (metas.length === entry.metas.length) continue;
    if (metas.length) entries.set(key, { key, metas });
    else entries.delete(key);
  }
}

function entriesOf(object) {
  return object !== null && typeof object === "object" ? Object.entries(object) : [];
}

/** The metas of a key as sent: objects with a string `ref` (others could never leave). */
function readMetas(raw) {
  if (!Array.isArray(raw)) return [];
  return raw.filter((m) => m !== null && typeof m === "object" && typeof m.ref === "string");
}

function sameRefs(a, b) {
  return a.length === b.length && a.every((m, i) => m.ref === b[i].ref);
}

function toCount(n) {
  return Number.isFinite(n) && n >= 0 ? n : 0;
}

function addTo(set, fn) {
  const entry = (...args) => fn(...args); // one entry per call, as subscriptions
  set.add(entry);
  return () => set.delete(entry);
}

function roomFrame(type, room) {
  return JSON.stringify({ type, data: { room } });
}

/** Call `fn`; report what it throws without letting it stop the caller. */
function safely(fn, ...args) {
  try {
    fn(...args);
  } catch (error) {
    report(error);
  }
}

/** Report an error the app did not catch, as the browser reports uncaught ones. */
function report(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}
