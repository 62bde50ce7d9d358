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

/** False after 1000 and 4000-4999 (closes the server meant), true otherwise. */
export function shouldReconnect(code: number): boolean;

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
  /** Close code of the last connection, if it closed. */
  closeCode: number | null;
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
 * Why a request got no data. `code`: the server's (a handler's MessageError
 * code, "handler_error", "unknown_type", ...) or the client's own:
 * "timeout", "disconnected" (dropped after it was sent, no retry left),
 * "closed" (`close()`, or a close the client does not reconnect after).
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

export interface WSClientOptions {
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
  constructor(url?: string, options?: WSClientOptions);
  readonly url: string;
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
  /** Resolves to the room's next `room.joined` data (re-joined after reconnects, with `since`). */
  join(room: string): Promise<RoomJoined>;
  /** Also empties the room's presence store. */
  leave(room: string): void;
  /** The room's presence store (the same one each call); it does not join the room. */
  presence<M extends { ref: string } = PresenceMeta>(room: string): PresenceStore<M>;
  connect(): void;
  close(code?: number, reason?: string): void;
}
