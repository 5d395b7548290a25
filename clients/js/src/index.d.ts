// Types of the shardcast client (src/index.js). Protocol: shardcast.v1, see clients/js/README.md.

/** The WebSocket class the client uses: the browser's, Node ≥ 22's global one, or any compatible class. */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType?: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface BackoffOptions {
  /** First delay bound in seconds (default 0.25). */
  initialS?: number;
  /** Largest delay bound in seconds (default 10). */
  maxS?: number;
  /** A connection up this long (or fully resubscribed) starts the backoff again (default 5). */
  resetAfterS?: number;
}

export interface ClientOptions {
  /** Shard URLs (ws:// or wss://); the first is picked at random, reconnects rotate. */
  urls?: string[];
  /** One front-door URL (instead of `urls`). */
  url?: string;
  /** A JWT connection token, sent in the first message (never in the URL). */
  token?: string;
  /** Called for a token before connecting and `refreshBeforeS` before it expires; may be async.
   *  Returning nothing (null, undefined, "") when a token is needed stops the client with `auth_failed`. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** The WebSocket class (default `globalThis.WebSocket`; Node 20 needs `--experimental-websocket`). */
  WebSocket?: WebSocketConstructor;
  /** Initial desired tokens (the same as calling `subscribe` before `connect`). */
  tokens?: string[];
  backoff?: BackoffOptions;
  /** Send a ping after this long without receiving anything (default 15). */
  pingIntervalS?: number;
  /** Give up on the connection if a ping gets nothing back within this (default 10). */
  pongTimeoutS?: number;
  /** Give up on a socket not open within this, as if it had closed with 1006 (default 10). */
  connectTimeoutS?: number;
  /** Refresh the token this long before its expiry (default 30; at most half the time left). */
  refreshBeforeS?: number;
  /** Subprotocols offered (default ["shardcast.v1"]). */
  protocols?: string[];
  /** Tokens per subscribe/unsubscribe request (default 100, the shard's default cap). */
  maxTokensPerRequest?: number;
  /** Testing hooks: random source in [0, 1), clock (ms) and timers. */
  random?: () => number;
  now?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}

export type UpdateKind = "tick" | "snapshot" | "resync";

export interface Update {
  readonly token: string;
  readonly kind: UpdateKind;
  /** The payload: parsed JSON, or the bytes of a payload that is not JSON (`data_b64`). */
  readonly data: unknown;
  /** Kafka partition and offset: per token, offsets only grow within a partition. */
  readonly partition: number;
  readonly offset: number;
  /** Producer timestamp, ms since the epoch. */
  readonly ts: number;
  /** When the client received it, ms since the epoch. */
  readonly receivedAt: number;
}

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

export interface StateEvent {
  state: ConnectionState;
  /** The URL being connected to (or, for `reconnecting`, the one tried next). */
  url: string | null;
  /** Attempts since the last `connected`. */
  attempt: number;
  /** For `reconnecting`: the wait before the next attempt. */
  delayMs: number;
  /** For `reconnecting`/`closed`: the close code that caused it. */
  code: number | null;
  reason: string;
}

export interface GapEvent {
  tokens: string[];
  code: 4010;
}

export interface ErrorEvent {
  /** The shard's error code (`forbidden`, `rate_limited`, …) or one of `ClientError`. */
  code: string;
  message: string;
  tokens?: string[];
}

export interface UnsubscribedEvent {
  tokens: string[];
  reason: string;
}

export interface AuthFailedEvent {
  code: number;
  reason: string;
}

export interface DuplicateEvent {
  token: string;
  partition: number;
  offset: number;
}

export interface ClientEvents {
  update: Update;
  state: StateEvent;
  gap: GapEvent;
  error: ErrorEvent;
  unsubscribed: UnsubscribedEvent;
  auth_failed: AuthFailedEvent;
  duplicate: DuplicateEvent;
}

export type EventName = keyof ClientEvents;

export interface ClientStats {
  updates: number;
  duplicates: number;
  reconnects: number;
  resyncs: number;
  gaps: number;
}

export declare const EVENTS: readonly EventName[];

export declare class ShardcastClient {
  constructor(options: ClientOptions);
  /** Listen to an event; returns a function that removes the listener. */
  on<K extends EventName>(name: K, fn: (payload: ClientEvents[K]) => void): () => void;
  /** Add tokens to the desired set (sent at once when connected, else on connect); throws TypeError on an invalid token. */
  subscribe(tokens: string[] | string): void;
  /** Remove tokens from the desired set and forget their last values. */
  unsubscribe(tokens: string[] | string): void;
  /** Start connecting; reconnects until `close()`. Throws once closed. */
  connect(): this;
  /** Stop for good (close code 1000). */
  close(): void;
  /** The last accepted update of a token. */
  last(token: string): Update | undefined;
  /** A copy of the counters. */
  readonly stats: ClientStats;
}

export declare const Close: Readonly<{
  NORMAL: 1000; GOING_AWAY: 1001; PROTOCOL_ERROR: 1002; UNSUPPORTED_DATA: 1003; NO_STATUS: 1005;
  ABNORMAL: 1006; INVALID_PAYLOAD: 1007; POLICY_VIOLATION: 1008; MESSAGE_TOO_BIG: 1009;
  INTERNAL_ERROR: 1011; SERVICE_RESTART: 1012; TRY_AGAIN_LATER: 1013; PONG_TIMEOUT: 4000;
  IDLE_TIMEOUT: 4001; AUTH_FAILED: 4003; SLOW_CONSUMER: 4008; DATA_LOST: 4010; TOKEN_EXPIRED: 4011;
  AUTH_TIMEOUT: 4012; RATE_LIMITED: 4029;
}>;

export declare const ErrorCode: Readonly<{
  INVALID_JSON: "invalid_json"; NOT_AN_OBJECT: "not_an_object"; UNKNOWN_OP: "unknown_op";
  BAD_REQUEST: "bad_request"; INVALID_TOKEN: "invalid_token"; TOO_MANY_TOKENS: "too_many_tokens";
  RATE_LIMITED: "rate_limited"; UNAUTHENTICATED: "unauthenticated"; FORBIDDEN: "forbidden";
  CAPACITY: "capacity";
}>;

export declare const ClientError: Readonly<{
  BAD_FRAME: "bad_frame"; CLOSED: "closed"; CONNECT_FAILED: "connect_failed";
  TOKEN_HOOK_FAILED: "token_hook_failed"; LISTENER_ERROR: "listener_error";
}>;

export declare const SUBPROTOCOL: "shardcast.v1";

// -- the pure core (exported for tests and for clients built on it) ------------------------------

export type PolicyName =
  "reconnect_now" | "backoff" | "resubscribe_gap" | "refresh_token" | "stop_auth" | "stop";

export declare const Policy: Readonly<{
  RECONNECT_NOW: "reconnect_now"; BACKOFF: "backoff"; RESUBSCRIBE_GAP: "resubscribe_gap";
  REFRESH_TOKEN: "refresh_token"; STOP_AUTH: "stop_auth"; STOP: "stop";
}>;

export declare const TOKEN_RE: RegExp;

export declare function closePolicy(
  code: number, ctx?: { tokenSent?: boolean; hasTokenSource?: boolean }): PolicyName;

export declare class Backoff {
  constructor(opts?: { initialS?: number; maxS?: number; random?: () => number });
  attempt: number;
  readonly initialMs: number;
  readonly maxMs: number;
  boundMs(attempt: number): number;
  next(): number;
  reset(): void;
}

export declare class UrlRotation {
  constructor(urls: string[], random?: () => number);
  readonly urls: string[];
  readonly current: string;
  cool(url: string, untilMs: number): void;
  next(nowMs: number): string;
}

export type CoreUpdate = Omit<Update, "receivedAt"> & { receivedAt?: number };

export declare class Positions {
  accept(u: CoreUpdate): boolean;
  get(token: string): CoreUpdate | undefined;
  delete(token: string): void;
  readonly size: number;
}

export type Frame =
  | { type: "update"; update: CoreUpdate }
  | { type: "subscribed" | "unsubscribed" | "pong"; id?: number | string; tokens?: string[]; reason?: string }
  | { type: "authenticated"; id?: number | string; expires: number }
  | { type: "error"; id?: number | string; code: string; message: string; tokens?: string[] }
  | { type: "invalid"; reason: string }
  | { type: "unknown"; name: string };

export declare function parseFrame(text: string): Frame;
export declare function decodeBase64(b64: string): Uint8Array | null;
export declare function checkTokens(tokens: unknown): string[];
export declare function chunks<T>(items: T[], size: number): T[][];
export declare function refreshDelayMs(expiresS: number, nowMs: number, refreshBeforeS: number): number;

export declare class Keepalive {
  constructor(pingIntervalMs: number, pongTimeoutMs: number, nowMs: number);
  received(nowMs: number): void;
  check(nowMs: number): { action: "wait" | "ping" | "dead"; inMs: number };
}

export declare class Pending {
  constructor(max?: number);
  add(id: number, req: { op: string; tokens: string[] }): void;
  take(id: unknown): { id: number; op: string; tokens: string[] } | undefined;
  takeOldest(): { id: number; op: string; tokens: string[] } | undefined;
  readonly size: number;
}
