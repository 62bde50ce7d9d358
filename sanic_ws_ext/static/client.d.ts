// Types for sanic-ws-ext's browser client (client.js).

export interface Backoff {
  /** First delay, ms (default 500). */
  base: number;
  /** Growth per attempt (default 2). */
  factor: number;
  /** Largest delay, ms (default 30000). */
  max: number;
  /** Random share taken off each delay, 0..1 (default 0.5). */
  jitter: number;
}

export const DEFAULT_BACKOFF: Readonly<Backoff>;

export function backoffDelay(attempt: number, backoff?: Partial<Backoff>, random?: () => number): number;

export function defaultUrl(path?: string): string;

/**
 * `url` with `params` added to its query (null and undefined left out); a
 * relative URL is taken from the page's, and http(s) becomes ws(s).
 */
export function withQuery(url: string | URL, params?: Record<string, unknown> | null): string;

/**
 * False after 1000 and 4000-4999 (closes the server meant), true otherwise;
 * but true after the in-band refusals another attempt may cure: 4401 (with a
 * new token), 4408, 4429 and 4500-4599.
 */
export function shouldReconnect(code: number): boolean;

/** Default heartbeat interval, ms (15000): a ping after this long without a frame. */
export const DEFAULT_HEARTBEAT_MS: number;
/** Default heartbeat timeout, ms (10000): dead if nothing comes this long after a ping. */
export const DEFAULT_HEARTBEAT_TIMEOUT_MS: number;

export type Frame = string | ArrayBuffer | ArrayBufferView | Blob;

export class SendQueue {
  constructor(limit?: number);
  limit: number;
  items: Frame[];
  /** Each item's key (undefined: none). */
  keys: (string | undefined)[];
  /** Frames dropped because the queue was full (oldest first). */
  dropped: number;
  readonly length: number;
  /** With a key: replaces the queued frame of that key, in its place. */
  push(frame: Frame, key?: string): void;
  flush(send: (frame: Frame) => void): void;
}

export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface Status {
  state: State;
  /** Reconnect attempts since the last open connection. */
  attempt: number;
  /** Close code of the last connection, if it closed (1006 after a heartbeat timeout). */
  closeCode: number | null;
  /** Its close reason ("token expired", "heartbeat timeout", ...). */
  closeReason: string | null;
  /** Delay before the next attempt, while reconnecting. */
  nextRetryMs: number | null;
}

export interface Envelope<T = unknown> {
  type: string;
  data: T;
  timestamp?: number;
  /** A request's id (the server's requests carry one; see `onRequest`). */
  ref?: string;
}

/**
 * Why a request got no data (or a join was not made). `code`: the server's
 * (a handler's MessageError code, "handler_error", "unknown_type",
 * "room_refused", ...) or the client's own: "timeout", "disconnected"
 * (dropped after it was sent, no retry left), "closed" (`close()`, or a
 * close the client does not reconnect after), "left" (`leave()` before the
 * room was joined).
 */
export class RequestError extends Error {
  constructor(code: string, reason?: string, details?: Record<string, unknown>);
  readonly name: "RequestError";
  readonly code: string;
  readonly reason: string;
  /** The error's other fields: `invalid_data`'s `field`, `problem`, `errors`, `count`. */
  readonly details: Record<string, unknown>;
}

/** Default time a request waits for its reply, ms (10000). */
export const DEFAULT_REQUEST_TIMEOUT: number;

export interface RequestOptions {
  /** Ms to wait for the reply, retries included (default 10000). */
  timeout?: number;
  /** Times to send it again (same ref) after a reconnect (default 0). */
  retries?: number;
}

/** What the url, params and token functions are called with, on each attempt. */
export interface ConnectInfo {
  /**
   * "connect" (the first attempt), "reconnect", "unauthorized" (the last
   * token was refused with 4401: do not give a cached one again), or
   * "refresh" (the server's auth.refresh; token function only).
   */
  reason: "connect" | "reconnect" | "unauthorized" | "refresh";
  /** Attempts since the last open connection (0 for a refresh). */
  attempt: number;
  /** With reason "refresh": when the current token expires (Unix seconds), if the server said. */
  expiresAt?: number | null;
}

/** A value, or a function giving it (or a promise of it), called on every attempt. */
export type PerAttempt<T> = T | ((info: ConnectInfo) => T | Promise<T>);

/** `on("auth.error", ...)`. */
export interface AuthError {
  /** "connect": a 4401/4403 close, or a token function that failed; "refresh": an auth.refresh. */
  stage: "connect" | "refresh";
  /**
   * A close code (4401, 4403), or "token_error" (the token function threw or
   * gave no usable token), the refresh reply's code ("auth_refused",
   * "auth_user_mismatch", "auth_unsupported"), "timeout", or
   * "no_token_function" (a refresh asked for, with a fixed token).
   */
  code: number | string;
  reason: string;
  /** No attempt follows: the client is closed (4403; 4401 with nothing new to offer). */
  final: boolean;
  /** What the token function threw. */
  error?: unknown;
}

/** `on("auth.refreshed", ...)`: the server took the new token. */
export interface AuthRefreshed {
  /** When the new token expires, Unix seconds. */
  expires_at?: number;
  [field: string]: unknown;
}

/** `on("room.refused", ...)`: a join (or a re-join after a reconnect) the server refused. */
export interface RoomRefused {
  room: string;
  code: string;
  reason: string;
}

export interface WSClientOptions {
  /**
   * A token, or a function giving one (`async () => (await fetch("/ws-token")).text()`),
   * called before every connect and reconnect and on the server's
   * auth.refresh. null: none this time.
   */
  token?: PerAttempt<string | null>;
  /** Query parameters, or a function giving them, per attempt. */
  params?: PerAttempt<Record<string, string | number | boolean | null | undefined> | null>;
  /** Subprotocols to offer (the server selects one: `ws.protocol`). */
  protocols?: string | string[];
  /**
   * Where the token goes: "query" (default, `?token=`) or "subprotocol"
   * (the entry `bearer.<token>`, besides `protocols`, which must hold one
   * the server selects: the bearer entry is never echoed).
   */
  tokenTransport?: "query" | "subprotocol";
  /** Ms without a frame before a ping (default 15000); 0: no heartbeat. */
  heartbeatMs?: number;
  /** Ms to wait for any frame after a ping before the connection counts as dead (default 10000). */
  heartbeatTimeoutMs?: number;
  /**
   * Count a connection open only once the server's first frame came (the
   * answer to a ping sent at once), so nothing is sent into an in-band
   * refusal. Default: true with a token or a url/params function.
   */
  confirmOpen?: boolean;
  backoff?: Partial<Backoff>;
  /** Frames kept while offline (default 1000); past it the oldest are dropped. */
  queueLimit?: number;
  /** Connect in the constructor (default true). */
  connect?: boolean;
  /** Whether to reconnect after a close with this code (default: shouldReconnect). */
  shouldReconnect?: (code: number) => boolean;
  /** A connection open this long (ms) resets the backoff (default 5000). */
  stableMs?: number;
  now?: () => number;
  WebSocket?: typeof WebSocket;
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}

/** One connection's presence in a room: a `ref` plus the app's fields. */
export interface PresenceMeta {
  /** Unique per connection-in-room and per metadata version. */
  ref: string;
  [field: string]: unknown;
}

/** A key (a user, or an anonymous connection's opaque ref) and its metas, one per connection. */
export interface Presence<M extends { ref: string } = PresenceMeta> {
  key: string;
  metas: M[];
}

export interface PresenceCount {
  connections: number;
  users: number;
}

/** What `subscribe` gives: a new object at each change; do not mutate it. */
export interface PresenceValue<M extends { ref: string } = PresenceMeta> {
  room: string;
  /** False until the room's first state (or count), and from a lost connection to the next. */
  synced: boolean;
  /** In order of arrival; an entry whose metas did not change stays the same object. */
  list: Presence<M>[];
  /** The server's, for a counts-only room; else the keys and metas of `list`. */
  count: PresenceCount;
}

export interface PresenceEventInfo {
  /** A key of the first state after the store was empty: already there, not just come. */
  initial: boolean;
}

export type PresenceCallback<M extends { ref: string } = PresenceMeta> = (
  key: string,
  metas: M[],
  info: PresenceEventInfo,
) => void;

/** One room's presence (`ws.presence(room)`): a Svelte store of PresenceValue. */
export class PresenceStore<M extends { ref: string } = PresenceMeta> {
  constructor(room: string);
  readonly room: string;
  readonly value: PresenceValue<M>;
  readonly synced: boolean;
  readonly count: PresenceCount;
  subscribe(run: (value: PresenceValue<M>) => void): () => void;
  list(): Presence<M>[];
  list<T>(chooser: (key: string, metas: M[]) => T): T[];
  /** The key's metas, or undefined if it is not present. */
  get(key: string): M[] | undefined;
  /** A key appeared (its first meta). */
  onJoin(callback: PresenceCallback<M>): () => void;
  /** A key's last meta went (`metas`: its last ones). */
  onLeave(callback: PresenceCallback<M>): () => void;
}

/** Where a history room's stream is: the last offset, in an epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** The data of `room.joined`, which `join()` resolves to. */
export interface RoomJoined {
  room: string;
  /** History rooms: the position now (null while the room's keeper restarts). */
  position?: Position | null;
  /** History rooms re-joined with a position: whether everything missed came. */
  recovered?: boolean;
}

/** `on("room.recovery", ...)`: after a history room was re-joined, or its epoch changed. */
export interface Recovery {
  room: string;
  /** False: something was missed and cannot be replayed; reload the room's state. */
  recovered: boolean;
  position: Position | null;
}

/**
 * A map of message types to their data, as `python -m sanic_ws_ext types
 * module:app` writes it: what the client sends, what the server sends, what
 * each request resolves to.
 */
export interface MessageMap {
  client: object;
  server: object;
  replies: object;
}

/** The default: any type, any data (`unknown`). */
export interface UntypedMessages {
  client: Record<string, unknown>;
  server: Record<string, unknown>;
  replies: Record<string, unknown>;
}

/** The data of the protocol's own frames (see docs/reference/protocol.md). */
export interface BuiltinServerMessages {
  error: {
    code: string;
    reason: string;
    /** invalid_data: the path of the first field in error ("a.b[2]"; "" for data itself). */
    field?: string;
    problem?: string;
    errors?: { field: string; problem: string }[];
    count?: number;
  };
  "room.joined": RoomJoined;
  "room.left": { room: string };
  "room.recovery": Recovery;
  "presence.state": { room: string; users: Record<string, PresenceMeta[]> };
  "presence.diff": {
    room: string;
    joins: Record<string, PresenceMeta[]>;
    leaves: Record<string, { ref: string }[]>;
  };
  "presence.count": { room: string; connections: number };
}

type Keys<T> = keyof T & string;
/** Types the server sends: the map's, and the protocol's own. */
export type ServerType<M extends MessageMap> = Keys<M["server"]> | Keys<BuiltinServerMessages>;
export type ServerData<M extends MessageMap, K extends string> = K extends Keys<BuiltinServerMessages>
  ? BuiltinServerMessages[K]
  : K extends Keys<M["server"]>
    ? M["server"][K]
    : unknown;
export type ClientData<M extends MessageMap, K extends string> = K extends Keys<M["client"]>
  ? M["client"][K]
  : unknown;
export type ReplyData<M extends MessageMap, K extends string> = K extends Keys<M["replies"]>
  ? M["replies"][K]
  : unknown;
/** `data` may be left out when the type takes none (or any). */
type SendArgs<D, O> = undefined extends D ? [data?: D, options?: O] : [data: D, options?: O];
/** The untyped signatures apply only to an untyped map (`string` keys). */
type Fallback<M extends MessageMap> = string extends Keys<M["client"]> ? string : never;
type FallbackServer<M extends MessageMap> = string extends Keys<M["server"]> ? string : never;

/**
 * `new WSClient<Messages>(url)` with a generated `Messages` map: `send`,
 * `request` and `on` accept only its types, with their data.
 */
export class WSClient<M extends MessageMap = UntypedMessages> {
  constructor(url?: PerAttempt<string | URL>, options?: WSClientOptions);
  readonly url: PerAttempt<string | URL>;
  readonly params: WSClientOptions["params"] | null;
  readonly protocols: readonly string[];
  readonly tokenTransport: "query" | "subprotocol";
  /** The subprotocol the server selected ("" when none, or not open). */
  readonly protocol: string;
  heartbeatMs: number;
  heartbeatTimeoutMs: number;
  readonly state: State;
  readonly status: Status;
  readonly queue: SendQueue;
  readonly rooms: Set<string>;
  /** History rooms: the position of the last publication taken, per room. */
  readonly positions: Map<string, Position>;
  stableMs: number;
  /** The Svelte store contract: `$client` is the current Status. */
  subscribe(run: (status: Status) => void): () => void;
  on(type: "binary", handler: (data: ArrayBuffer) => void): () => void;
  /** Text frames that are not envelopes. */
  on(type: "text", handler: (text: string) => void): () => void;
  /** A history room was re-joined with a position (or its epoch changed). */
  on(type: "room.recovery", handler: (recovery: Recovery) => void): () => void;
  /** A join, or a re-join after a reconnect, was refused: the room is forgotten. */
  on(type: "room.refused", handler: (refused: RoomRefused) => void): () => void;
  /** 4401 or 4403, a failed token function, or a refused refresh. */
  on(type: "auth.error", handler: (error: AuthError) => void): () => void;
  /** The server took the token sent after its auth.refresh. */
  on(type: "auth.refreshed", handler: (data: AuthRefreshed) => void): () => void;
  on<K extends ServerType<M>>(
    type: K,
    handler: (data: ServerData<M, K>, envelope: Envelope<ServerData<M, K>>) => void,
  ): () => void;
  on<T = unknown>(type: FallbackServer<M>, handler: (data: T, envelope: Envelope<T>) => void): () => void;
  /**
   * Queued while not connected, except `volatile` sends (dropped); a queued
   * send with the same `key` is replaced by the newer one.
   */
  send<K extends Keys<M["client"]>>(
    type: K,
    ...args: SendArgs<ClientData<M, K>, { volatile?: boolean; key?: string }>
  ): void;
  /** Resolves with the reply's data; rejects with a RequestError. */
  request<K extends Keys<M["client"]>>(
    type: K,
    ...args: SendArgs<ClientData<M, K>, RequestOptions>
  ): Promise<ReplyData<M, K>>;
  request<T = unknown>(type: Fallback<M>, data?: unknown, options?: RequestOptions): Promise<T>;
  /**
   * Answer the server's requests of `type`: the value (or promise) returned
   * is the reply's data; a throw is `ok: false` (code: the error's string
   * `code`, else "handler_error"). Returns the remover.
   */
  onRequest<T = unknown>(
    type: string,
    handler: (data: T, envelope: Envelope<T>) => unknown,
  ): () => void;
  sendBinary(data: ArrayBuffer | ArrayBufferView | Blob): void;
  /**
   * Resolves to the room's next `room.joined` data (re-joined after
   * reconnects, with `since`); made offline, once connected. Rejects with a
   * RequestError when refused (the room is then forgotten), or "left" /
   * "closed".
   */
  join(room: string, options?: { since?: Position }): Promise<RoomJoined>;
  /** Also empties the room's presence store. */
  leave(room: string): void;
  /** The room's presence store (the same one each call); it does not join the room. */
  presence<M extends { ref: string } = PresenceMeta>(room: string): PresenceStore<M>;
  connect(): void;
  close(code?: number, reason?: string): void;
}
