// @ts-check
/**
 * The client's decisions, with no I/O: which frames to keep, what a close code
 * means, how long to wait, which URL next, when to ping and refresh.
 *
 * Everything here is a pure function or a small class fed with values (frame
 * text, codes, times, random numbers), so each rule is unit-tested without a
 * socket or a clock; `client.js` owns the WebSocket and the timers.
 */

import { Close } from "./codes.js";

/** Tokens are 1-64 characters of `A-Z a-z 0-9 . _ : / -` (what shards accept). */
export const TOKEN_RE = /^[A-Za-z0-9._:/-]{1,64}$/;

/** What to do after a connection closed (see `closePolicy`). */
export const Policy = Object.freeze({
  RECONNECT_NOW: "reconnect_now",
  BACKOFF: "backoff",
  RESUBSCRIBE_GAP: "resubscribe_gap",
  REFRESH_TOKEN: "refresh_token",
  STOP_AUTH: "stop_auth",
  STOP: "stop",
});

/** Codes that say our own frames were wrong: reconnecting would only repeat the mistake. */
/** @type {Set<number>} */
const CLIENT_BUGS = new Set([
  Close.PROTOCOL_ERROR, Close.UNSUPPORTED_DATA, Close.INVALID_PAYLOAD, Close.MESSAGE_TOO_BIG,
]);

/**
 * What a close code means for the client.
 *
 * 1001/1012 (shard going away or drained) → reconnect at once to another URL:
 * the shard asked us to move, and a drain already spreads its closes over a
 * window. 4010 → reconnect, resubscribe and tell the app about the gap. 4011 →
 * get a new token first. 4003, and 4012 after we sent a token (or with no way
 * to get one) → stop for good: the same token would fail again. Our own
 * protocol errors → stop. Everything else (4008 slow, 4029 flood, 4001 idle,
 * 1006 dropped, 1011, codes we do not know yet) → capped, jittered backoff.
 *
 * @param {number} code
 * @param {{tokenSent?: boolean, hasTokenSource?: boolean}} [ctx]
 * @returns {string} one of `Policy`
 */
export function closePolicy(code, ctx = {}) {
  switch (code) {
    case Close.GOING_AWAY:
    case Close.SERVICE_RESTART:
      return Policy.RECONNECT_NOW;
    case Close.DATA_LOST:
      return Policy.RESUBSCRIBE_GAP;
    case Close.TOKEN_EXPIRED:
      return Policy.REFRESH_TOKEN;
    case Close.AUTH_FAILED:
      return Policy.STOP_AUTH;
    case Close.AUTH_TIMEOUT:
      return ctx.tokenSent || ctx.hasTokenSource === false ? Policy.STOP_AUTH : Policy.BACKOFF;
    default:
      return CLIENT_BUGS.has(code) ? Policy.STOP : Policy.BACKOFF;
  }
}

/**
 * Capped exponential backoff with full jitter.
 *
 * delay = random(0, min(max, initial * 2**attempt)): full jitter spreads the
 * reconnects of every client of a failed shard over the whole interval, so
 * they do not come back in one burst.
 */
export class Backoff {
  /**
   * @param {{initialS?: number, maxS?: number, random?: () => number}} [opts]
   */
  constructor({ initialS = 0.25, maxS = 10, random = Math.random } = {}) {
    this.initialMs = positive(initialS, "backoff.initialS") * 1000;
    this.maxMs = positive(maxS, "backoff.maxS") * 1000;
    this.random = random;
    this.attempt = 0;
  }

  /** The bound of the delay for `attempt` (no jitter). */
  boundMs(attempt) {
    return Math.min(this.maxMs, this.initialMs * 2 ** Math.min(attempt, 52));
  }

  /** The next delay in ms; advances the attempt counter. */
  next() {
    const r = Math.min(Math.max(Number(this.random()) || 0, 0), 1);
    const delay = r * this.boundMs(this.attempt);
    this.attempt = Math.min(this.attempt + 1, 64);
    return delay;
  }

  /** Start again from `initial` after a connection proved healthy. */
  reset() {
    this.attempt = 0;
  }
}

/**
 * Which URL to (re)connect to.
 *
 * The first is picked at random so that many clients given the same list
 * spread over the shards; each reconnect moves on to the next one. A URL whose
 * shard said it is going away (1001/1012) is "cooling" for a while: tried only
 * when every URL is cooling, so the one just left is never retried first.
 */
export class UrlRotation {
  /**
   * @param {string[]} urls
   * @param {() => number} [random]
   */
  constructor(urls, random = Math.random) {
    this.urls = [...new Set(urls)];
    if (this.urls.length === 0) throw new TypeError("at least one URL is needed");
    const r = Math.min(Math.max(Number(random()) || 0, 0), 1);
    this.index = Math.min(Math.floor(r * this.urls.length), this.urls.length - 1);
    /** @type {Map<string, number>} url → cooling until (ms) */
    this.cooling = new Map();
  }

  /** The current URL. */
  get current() {
    return this.urls[this.index];
  }

  /** Mark `url` as going away until `untilMs`: other URLs go first meanwhile. */
  cool(url, untilMs) {
    this.cooling.set(url, untilMs);
  }

  /**
   * Move on to the next URL and return it: the first after the current one that
   * is not cooling (the current one last); if all are cooling, the next one.
   * @param {number} nowMs
   */
  next(nowMs) {
    const n = this.urls.length;
    for (let step = 1; step <= n; step++) {
      const i = (this.index + step) % n;
      const until = this.cooling.get(this.urls[i]);
      if (until === undefined || until <= nowMs) {
        this.index = i;
        return this.urls[i];
      }
    }
    this.index = (this.index + 1) % n;
    return this.urls[this.index];
  }
}

/**
 * Per token, the last accepted update: what makes "never twice" hold across
 * reconnects, where a new shard's snapshot or replay may repeat a position.
 */
export class Positions {
  constructor() {
    /** @type {Map<string, Update>} */
    this.held = new Map();
  }

  /**
   * Keep `u` if it is newer than what we hold; false if it is a duplicate.
   *
   * In the same partition, offsets only grow: a tick, snapshot or resync at or
   * behind the held offset repeats a value we have. A different partition
   * means the topic was re-partitioned: its offsets start afresh, so accept.
   * @param {Update} u
   */
  accept(u) {
    const h = this.held.get(u.token);
    if (h !== undefined && h.partition === u.partition && u.offset <= h.offset) return false;
    this.held.set(u.token, u);
    return true;
  }

  /** @param {string} token */
  get(token) {
    return this.held.get(token);
  }

  /** Forget a token (unsubscribed): a later snapshot of it is news again. */
  delete(token) {
    this.held.delete(token);
  }

  get size() {
    return this.held.size;
  }
}

/**
 * @typedef {object} Update
 * @property {string} token
 * @property {"tick"|"snapshot"|"resync"} kind
 * @property {unknown} data parsed JSON, or a Uint8Array for a payload that is not JSON
 * @property {number} partition
 * @property {number} offset
 * @property {number} ts producer timestamp, ms since the epoch
 * @property {number} [receivedAt] ms since the epoch (set by the client)
 */

/**
 * @typedef {{type: "update", update: Update}
 *   | {type: "subscribed"|"unsubscribed"|"pong", id?: number|string, tokens?: string[], reason?: string}
 *   | {type: "authenticated", id?: number|string, expires: number}
 *   | {type: "error", id?: number|string, code: string, message: string, tokens?: string[]}
 *   | {type: "invalid", reason: string}
 *   | {type: "unknown", name: string}} Frame
 */

/**
 * Parse one text frame from a shard; never throws (a server's bytes are input too).
 * @param {string} text
 * @returns {Frame}
 */
export function parseFrame(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return { type: "invalid", reason: "frame is not JSON" };
  }
  if (msg === null || typeof msg !== "object" || Array.isArray(msg)) {
    return { type: "invalid", reason: "frame is not a JSON object" };
  }
  const type = msg.type;
  if (type === "tick" || type === "snapshot") return parseData(msg, type);
  const id = typeof msg.id === "number" || typeof msg.id === "string" ? msg.id : undefined;
  if (type === "subscribed" || type === "unsubscribed" || type === "pong") {
    const tokens = msg.tokens === undefined ? undefined : stringList(msg.tokens);
    if (tokens === null) return { type: "invalid", reason: `${type}: tokens is not a list of strings` };
    const reason = typeof msg.reason === "string" ? msg.reason : undefined;
    return { type, id, tokens, reason };
  }
  if (type === "authenticated") {
    if (typeof msg.expires !== "number" || !Number.isFinite(msg.expires)) {
      return { type: "invalid", reason: "authenticated: expires is not a number" };
    }
    return { type, id, expires: msg.expires };
  }
  if (type === "error") {
    const tokens = msg.tokens === undefined ? undefined : stringList(msg.tokens);
    if (typeof msg.code !== "string" || tokens === null) {
      return { type: "invalid", reason: "error: code or tokens malformed" };
    }
    const message = typeof msg.message === "string" ? msg.message : "";
    return { type, id, code: msg.code, message, tokens };
  }
  if (typeof type !== "string") return { type: "invalid", reason: "frame has no type" };
  return { type: "unknown", name: type.slice(0, 64) }; // newer shards may add frames: ignore them
}

/**
 * @param {Record<string, unknown>} msg
 * @param {"tick"|"snapshot"} type
 * @returns {Frame}
 */
function parseData(msg, type) {
  const { token, partition, offset, ts } = msg;
  if (typeof token !== "string" || !TOKEN_RE.test(token)) {
    return { type: "invalid", reason: `${type}: bad token` };
  }
  if (!isCount(partition) || !isCount(offset) || typeof ts !== "number" || !Number.isFinite(ts)) {
    return { type: "invalid", reason: `${type}: bad position` };
  }
  let data;
  if ("data" in msg) {
    data = msg.data;
  } else if (typeof msg.data_b64 === "string") {
    data = decodeBase64(msg.data_b64);
    if (data === null) return { type: "invalid", reason: `${type}: bad data_b64` };
  } else {
    return { type: "invalid", reason: `${type}: no data` };
  }
  const kind = type === "snapshot" && msg.resync === true ? "resync" : type;
  return { type: "update", update: { token, kind, data, partition, offset, ts } };
}

/** @param {unknown} v @returns {v is number} */
function isCount(v) {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** @param {unknown} v @returns {string[] | null} */
function stringList(v) {
  return Array.isArray(v) && v.every((t) => typeof t === "string") ? v : null;
}

/**
 * Bytes of a base64 string (browsers and Node ≥ 16 both have `atob`); null if malformed.
 * @param {string} b64
 * @returns {Uint8Array | null}
 */
export function decodeBase64(b64) {
  let bin;
  try {
    bin = atob(b64);
  } catch {
    return null;
  }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * Check and de-duplicate the tokens a caller gives; throws TypeError on a bad one.
 *
 * Refusing here (not at the shard) keeps one bad name from failing a whole
 * subscribe request of 100 tokens, for every reconnect to come.
 * @param {unknown} tokens
 * @returns {string[]}
 */
export function checkTokens(tokens) {
  if (typeof tokens === "string") tokens = [tokens];
  if (!Array.isArray(tokens)) throw new TypeError("tokens must be an array of strings");
  for (const t of tokens) {
    if (typeof t !== "string" || !TOKEN_RE.test(t)) {
      throw new TypeError(`invalid token ${JSON.stringify(t)}: 1-64 of A-Z a-z 0-9 . _ : / -`);
    }
  }
  return [...new Set(tokens)];
}

/**
 * Split `items` into requests of at most `size` (the shard's per-request cap).
 * @template T
 * @param {T[]} items
 * @param {number} size
 * @returns {T[][]}
 */
export function chunks(items, size) {
  const n = Math.max(1, Math.floor(size));
  const out = [];
  for (let i = 0; i < items.length; i += n) out.push(items.slice(i, i + n));
  return out;
}

/**
 * How long from `nowMs` until the token should be refreshed.
 *
 * `refreshBeforeS` before the expiry the server announced, but never later
 * than half of the time left: a token shorter-lived than the lead time is
 * refreshed half-way instead of at once (which would loop). 0 when expired.
 * @param {number} expiresS Unix seconds, as the server's `authenticated` says
 * @param {number} nowMs
 * @param {number} refreshBeforeS
 */
export function refreshDelayMs(expiresS, nowMs, refreshBeforeS) {
  const left = expiresS * 1000 - nowMs;
  if (!(left > 0)) return 0;
  return left - Math.min(refreshBeforeS * 1000, left / 2);
}

/**
 * Client-side keepalive: ping when the connection has been quiet, give up when
 * even the ping got no answer. Any frame received counts as life.
 */
export class Keepalive {
  /**
   * @param {number} pingIntervalMs
   * @param {number} pongTimeoutMs
   * @param {number} nowMs
   */
  constructor(pingIntervalMs, pongTimeoutMs, nowMs) {
    this.pingIntervalMs = pingIntervalMs;
    this.pongTimeoutMs = pongTimeoutMs;
    this.lastRx = nowMs;
    /** @type {number | null} */
    this.pingSentAt = null;
  }

  /** Something arrived from the server. */
  received(nowMs) {
    this.lastRx = nowMs;
    this.pingSentAt = null;
  }

  /**
   * What to do now, and when to check again.
   * @param {number} nowMs
   * @returns {{action: "wait"|"ping"|"dead", inMs: number}}
   */
  check(nowMs) {
    if (this.pingSentAt !== null) {
      const waited = nowMs - this.pingSentAt;
      if (waited >= this.pongTimeoutMs) return { action: "dead", inMs: 0 };
      return { action: "wait", inMs: this.pongTimeoutMs - waited };
    }
    const quiet = nowMs - this.lastRx;
    if (quiet >= this.pingIntervalMs) {
      this.pingSentAt = nowMs;
      // Check again at the next ping's time if that comes first: the pong resets nothing but state,
      // so waiting the whole pong timeout would skip pings when it exceeds the interval.
      return { action: "ping", inMs: Math.min(this.pongTimeoutMs, this.pingIntervalMs) };
    }
    return { action: "wait", inMs: this.pingIntervalMs - quiet };
  }
}

/**
 * Requests of one connection still waiting for their reply, oldest first.
 *
 * A shard answers requests in order, and its `rate_limited` error carries no
 * id: it refers to the oldest request not yet answered.
 */
export class Pending {
  /** @param {number} [max] bound: replies that never come must not grow it forever */
  constructor(max = 1000) {
    this.max = max;
    /** @type {Map<number, {op: string, tokens: string[]}>} */
    this.reqs = new Map();
  }

  /** @param {number} id @param {{op: string, tokens: string[]}} req */
  add(id, req) {
    this.reqs.set(id, req);
    if (this.reqs.size > this.max) this.reqs.delete(this.reqs.keys().next().value);
  }

  /** The request answered by a reply with `id` (removed), or undefined. */
  take(id) {
    if (typeof id !== "number") return undefined;
    const req = this.reqs.get(id);
    this.reqs.delete(id);
    return req === undefined ? undefined : { id, ...req };
  }

  /** The oldest unanswered request (removed), or undefined. */
  takeOldest() {
    const first = this.reqs.keys().next();
    return first.done ? undefined : this.take(first.value);
  }

  get size() {
    return this.reqs.size;
  }
}

/** @param {unknown} v @param {string} name */
export function positive(v, name) {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new TypeError(`${name} must be a positive number, got ${String(v)}`);
  }
  return v;
}
