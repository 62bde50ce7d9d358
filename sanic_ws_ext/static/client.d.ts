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
  /** Frames dropped because the queue was full (oldest first). */
  dropped: number;
  readonly length: number;
  push(frame: Frame): void;
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

export class WSClient {
  constructor(url?: string, options?: WSClientOptions);
  readonly url: string;
  readonly state: State;
  readonly status: Status;
  readonly queue: SendQueue;
  readonly rooms: Set<string>;
  stableMs: number;
  /** The Svelte store contract: `$client` is the current Status. */
  subscribe(run: (status: Status) => void): () => void;
  on(type: "binary", handler: (data: ArrayBuffer) => void): () => void;
  /** Text frames that are not envelopes. */
  on(type: "text", handler: (text: string) => void): () => void;
  on<T = unknown>(type: string, handler: (data: T, envelope: Envelope<T>) => void): () => void;
  send(type: string, data?: unknown): void;
  sendBinary(data: ArrayBuffer | ArrayBufferView | Blob): void;
  join(room: string): void;
  leave(room: string): void;
  connect(): void;
  close(code?: number, reason?: string): void;
}
