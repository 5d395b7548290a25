// @ts-check
/**
 * `ShardcastClient`: the WebSocket adapter around the pure core (`core.js`).
 *
 * It owns the socket and the timers and nothing else: which frames to keep,
 * what a close code means, how long to wait and which URL comes next are
 * decided by the core. Browser-safe: no Node modules, no bare imports, the
 * WebSocket class and the clock are injectable (Node 20 has no global
 * WebSocket without `--experimental-websocket`).
 */

import { ClientError, Close, ErrorCode, SUBPROTOCOL } from "./codes.js";
import {
  Backoff, Keepalive, Pending, Policy, Positions, UrlRotation, checkTokens, chunks, closePolicy,
  parseFrame, positive, refreshDelayMs,
} from "./core.js";

/** Event names `on()` accepts. */
export const EVENTS = Object.freeze([
  "update", "state", "gap", "error", "unsubscribed", "auth_failed", "duplicate",
]);

const OPEN = 1; // WebSocket.OPEN, also for classes that lack the static constant
const RATE_LIMIT_RETRY_MS = 1000; // a shard's request bucket refills at 20/s: one second is plenty
const COOL_DOWN_MS = 30_000; // a URL that said "going away" is tried last for this long
const DEFAULT_MAX_TOKENS_PER_REQUEST = 100; // the shard's default --max-tokens-per-request
const MAX_TIMER_MS = 2 ** 31 - 1; // longer delays fire at once in browsers and Node (a 30-day token!)

/**
 * One connection's state: thrown away whole when the socket closes, so
 * nothing of an old socket (a late reply, a timer) can act on a new one.
 */
class Conn {
  /**
   * @param {string} url
   * @param {import("./index.js").WebSocketLike} ws
   * @param {string | null} token
   */
  constructor(url, ws, token) {
    this.url = url;
    this.ws = ws;
    this.token = token; // sent in the first message, if any
    this.tokenSent = false;
    /** @type {number | null} */
    this.openedAt = null;
    this.ready = false; // authenticated (or no auth): subscribe requests may go out
    this.connected = false; // ready and the desired set resubscribed: the `connected` state
    this.pending = new Pending();
    /** @type {Set<number>} subscribe requests of the resubscription still unanswered */
    this.awaiting = new Set();
    /** @type {Set<string>} tokens subscribed (or being subscribed) on this connection */
    this.tokens = new Set();
    /** @type {Set<any>} timers of this connection */
    this.timers = new Set();
    /** @type {Keepalive | null} */
    this.keepalive = null;
    /** @type {any} the pending token refresh */
    this.refreshTimer = undefined;
  }
}

export class ShardcastClient {
  /** @param {import("./index.js").ClientOptions} options */
  constructor(options) {
    const o = options ?? {};
    const urls = o.urls ?? (o.url !== undefined ? [o.url] : undefined);
    if (!Array.isArray(urls) || urls.length === 0 || !urls.every(isWsUrl)) {
      throw new TypeError("ShardcastClient: give `urls` (a non-empty array of ws:// or wss:// URLs) or `url`");
    }
    if (o.token !== undefined && (typeof o.token !== "string" || !o.token)) {
      throw new TypeError("ShardcastClient: `token` must be a non-empty string");
    }
    if (o.getToken !== undefined && typeof o.getToken !== "function") {
      throw new TypeError("ShardcastClient: `getToken` must be a function");
    }
    const WS = o.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError("ShardcastClient: no WebSocket class; pass `WebSocket` "
        + "(Node 20: run with --experimental-websocket, or pass one from a library)");
    }
    this._WS = WS;
    this._staticToken = o.token ?? null;
    this._getToken = o.getToken ?? null;
    this._protocols = o.protocols ?? [SUBPROTOCOL];
    this._random = o.random ?? Math.random;
    this._now = o.now ?? (() => Date.now());
    this._setTimeout = o.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this._clearTimeout = o.clearTimeout ?? ((t) => globalThis.clearTimeout(/** @type {any} */ (t)));
    this._pingMs = positive(o.pingIntervalS ?? 15, "pingIntervalS") * 1000;
    this._pongMs = positive(o.pongTimeoutS ?? 10, "pongTimeoutS") * 1000;
    this._connectMs = positive(o.connectTimeoutS ?? 10, "connectTimeoutS") * 1000;
    this._refreshBeforeS = positive(o.refreshBeforeS ?? 30, "refreshBeforeS");
    this._resetAfterMs = positive(o.backoff?.resetAfterS ?? 5, "backoff.resetAfterS") * 1000;
    this._perRequest = positive(o.maxTokensPerRequest ?? DEFAULT_MAX_TOKENS_PER_REQUEST,
      "maxTokensPerRequest");
    this._backoff = new Backoff({ ...o.backoff, random: this._random });
    this._rotation = new UrlRotation(urls, this._random);
    this._positions = new Positions();
    /** @type {Set<string>} what the app wants, resubscribed after every reconnect */
    this._desired = new Set();
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map(EVENTS.map((n) => [n, new Set()]));
    this._stats = { updates: 0, duplicates: 0, reconnects: 0, resyncs: 0, gaps: 0 };
    this._phase = "idle"; // idle → connecting ⇄ waiting → closed
    /** @type {Conn | null} */
    this._conn = null;
    this._retryTimer = null;
    this._attempt = 0; // connection attempts since the last `connected`
    this._reqId = 0;
    /** @type {string | null} the token in use (from `token` or the last `getToken`) */
    this._token = this._staticToken;
    /** @type {number | null} when that token should be refreshed (ms) */
    this._refreshAt = null;
    this._gen = 0; // bumped on every attempt: an awaited getToken of an old one is ignored
    if (o.tokens !== undefined) this.subscribe(o.tokens);
  }

  // -- public API -----------------------------------------------------------

  /**
   * Listen to an event; returns a function that removes the listener.
   * @param {string} name
   * @param {(payload: any) => void} fn
   */
  on(name, fn) {
    const set = this._listeners.get(name);
    if (set === undefined) throw new TypeError(`unknown event ${JSON.stringify(name)}: one of ${EVENTS}`);
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    set.add(fn);
    return () => {
      set.delete(fn);
    };
  }

  /**
   * Add tokens to the desired set; sent at once when connected, else on connect.
   * @param {string[] | string} tokens
   */
  subscribe(tokens) {
    const fresh = checkTokens(tokens).filter((t) => !this._desired.has(t));
    for (const t of fresh) this._desired.add(t);
    const conn = this._conn;
    if (conn !== null && conn.ready && fresh.length > 0) this._sendSubscribe(conn, fresh, false);
  }

  /**
   * Remove tokens from the desired set (and forget their positions).
   * @param {string[] | string} tokens
   */
  unsubscribe(tokens) {
    const gone = checkTokens(tokens).filter((t) => this._desired.has(t));
    for (const t of gone) {
      this._desired.delete(t);
      this._positions.delete(t);
    }
    const conn = this._conn;
    if (conn === null || !conn.ready) return;
    const onConn = gone.filter((t) => conn.tokens.delete(t));
    for (const part of chunks(onConn, this._perRequest)) {
      this._send(conn, { op: "unsubscribe", tokens: part });
    }
  }

  /** Start connecting (and keep reconnecting until `close()`). */
  connect() {
    if (this._phase === "closed") throw new Error("ShardcastClient: closed; make a new client");
    if (this._phase === "idle") void this._open(this._rotation.current);
    return this;
  }

  /** Stop for good: close the socket with 1000, no reconnect. */
  close() {
    if (this._phase === "closed") return;
    this._stop(Close.NORMAL, "client closed");
  }

  /**
   * The last accepted update of a token, or undefined.
   * @param {string} token
   */
  last(token) {
    return this._positions.get(token);
  }

  /** Counters: updates, duplicates, reconnects, resyncs, gaps (a copy). */
  get stats() {
    return { ...this._stats };
  }

  // -- connecting -------------------------------------------------------------

  /** @param {string} url */
  async _open(url) {
    this._phase = "connecting";
    const gen = ++this._gen;
    this._emitState("connecting", { url });
    let token = null;
    if (this._staticToken !== null || this._getToken !== null) {
      try {
        token = await this._tokenForConnect();
      } catch (err) {
        if (gen !== this._gen) return;
        this._emit("error", { code: ClientError.TOKEN_HOOK_FAILED, message: errText(err) });
        this._retry(this._backoff.next(), this._rotation.current, Close.ABNORMAL, "getToken failed");
        return;
      }
      if (gen !== this._gen) return; // closed (or restarted) while the hook ran
      if (!token) {
        this._authFailed(Close.TOKEN_EXPIRED, "getToken returned no token");
        return;
      }
    }
    let ws;
    try {
      ws = new this._WS(url, this._protocols);
    } catch (err) {
      this._emit("error", { code: ClientError.CONNECT_FAILED, message: errText(err) });
      this._retry(this._backoff.next(), this._rotation.next(this._now()), Close.ABNORMAL, errText(err));
      return;
    }
    const conn = new Conn(url, ws, token);
    this._conn = conn;
    try {
      ws.binaryType = "arraybuffer";
    } catch {
      // some WebSocket implementations have no binaryType: only text frames matter
    }
    ws.onopen = () => this._onOpen(conn);
    ws.onmessage = (ev) => this._onMessage(conn, ev);
    ws.onclose = (ev) => this._onClose(conn, Number(ev?.code ?? Close.ABNORMAL), String(ev?.reason ?? ""));
    ws.onerror = () => {}; // a close event follows every error
    // A host that drops packets leaves a socket connecting for minutes: give up sooner.
    this._later(conn, this._connectMs, () => {
      if (conn.openedAt === null) this._drop(conn, Close.ABNORMAL, "connect timed out");
    });
  }

  /** The token for a new connection: the one in use until its refresh time, else the hook's. */
  async _tokenForConnect() {
    if (this._getToken === null) return this._staticToken;
    if (this._token !== null && (this._refreshAt === null || this._now() < this._refreshAt)) {
      return this._token;
    }
    const token = await this._getToken();
    this._token = typeof token === "string" && token ? token : null;
    this._refreshAt = null;
    return this._token;
  }

  /** @param {Conn} conn */
  _onOpen(conn) {
    if (conn !== this._conn) return;
    conn.openedAt = this._now();
    conn.keepalive = new Keepalive(this._pingMs, this._pongMs, conn.openedAt);
    this._armKeepalive(conn, this._pingMs);
    if (conn.token !== null) {
      conn.tokenSent = true;
      this._send(conn, { op: "auth", token: conn.token });
    } else {
      this._ready(conn);
    }
  }

  /** Authenticated (or no auth): resubscribe the whole desired set, in requests of ≤ 100. */
  _ready(conn) {
    conn.ready = true;
    this._sendSubscribe(conn, [...this._desired], true);
    this._maybeConnected(conn);
  }

  /**
   * @param {Conn} conn
   * @param {string[]} tokens
   * @param {boolean} initial part of the resubscription that `connected` waits for
   */
  _sendSubscribe(conn, tokens, initial) {
    for (const part of chunks(tokens, this._perRequest)) {
      for (const t of part) conn.tokens.add(t);
      const id = this._send(conn, { op: "subscribe", tokens: part });
      if (initial) conn.awaiting.add(id);
    }
  }

  /** @param {Conn} conn */
  _maybeConnected(conn) {
    if (conn.connected || !conn.ready || conn.awaiting.size > 0) return;
    conn.connected = true;
    this._backoff.reset();
    this._attempt = 0;
    this._emitState("connected", { url: conn.url });
  }

  // -- receiving --------------------------------------------------------------

  /** @param {Conn} conn @param {{data: unknown}} ev */
  _onMessage(conn, ev) {
    if (conn !== this._conn) return;
    const now = this._now();
    conn.keepalive?.received(now);
    if (typeof ev?.data !== "string") {
      this._emit("error", { code: ClientError.BAD_FRAME, message: "binary frame from the server" });
      return;
    }
    const f = parseFrame(ev.data);
    switch (f.type) {
      case "update":
        this._onUpdate(f.update, now);
        break;
      case "authenticated":
        conn.pending.take(f.id);
        this._onAuthenticated(conn, f.expires);
        break;
      case "subscribed":
        this._settle(conn, conn.pending.take(f.id));
        break;
      case "unsubscribed":
        if (f.reason === "grant") this._onGrantNarrowed(conn, f.tokens ?? []);
        else conn.pending.take(f.id);
        break;
      case "pong":
        conn.pending.take(f.id);
        break;
      case "error":
        this._onErrorReply(conn, f);
        break;
      case "invalid":
        this._emit("error", { code: ClientError.BAD_FRAME, message: f.reason });
        break;
      default: // a frame type newer than this client: ignore
    }
  }

  /** @param {import("./core.js").Update} u @param {number} now */
  _onUpdate(u, now) {
    if (!this._desired.has(u.token)) return; // unsubscribed meanwhile: ticks still in flight
    const update = Object.freeze({ ...u, receivedAt: now });
    if (!this._positions.accept(update)) {
      this._stats.duplicates += 1;
      this._emit("duplicate", { token: u.token, partition: u.partition, offset: u.offset });
      return;
    }
    this._stats.updates += 1;
    if (u.kind === "resync") this._stats.resyncs += 1;
    this._emit("update", update);
  }

  /** @param {Conn} conn @param {number} expiresS */
  _onAuthenticated(conn, expiresS) {
    this._token = conn.token;
    this._scheduleRefresh(conn, expiresS);
    if (!conn.ready) this._ready(conn);
  }

  /** A refresh narrowed the grant: the shard dropped these; so do we. */
  _onGrantNarrowed(conn, tokens) {
    for (const t of tokens) {
      this._desired.delete(t);
      this._positions.delete(t);
      conn.tokens.delete(t);
    }
    this._emit("unsubscribed", { tokens, reason: "grant" });
  }

  /** An error frame: report it with the shard's code, and repair what the request needed. */
  _onErrorReply(conn, f) {
    const req = f.id !== undefined ? conn.pending.take(f.id)
      : f.code === ErrorCode.RATE_LIMITED ? conn.pending.takeOldest() : undefined;
    const event = { code: f.code, message: f.message };
    if (f.tokens !== undefined) event.tokens = f.tokens;
    else if (req !== undefined && req.tokens.length > 0) event.tokens = req.tokens;
    this._emit("error", event);
    if (req === undefined || conn !== this._conn) return;
    if (f.code === ErrorCode.RATE_LIMITED) {
      this._resendLater(conn, req); // stays awaited (if it was) until resent
      return;
    }
    const initial = conn.awaiting.delete(req.id);
    if (req.op === "auth" && f.code === ErrorCode.BAD_REQUEST && !conn.ready) {
      this._ready(conn); // this shard runs without auth: carry on without it
    } else if (req.op === "subscribe") {
      this._onSubscribeRefused(conn, req, f.code === ErrorCode.FORBIDDEN ? f.tokens ?? [] : null, initial);
    }
    this._maybeConnected(conn);
  }

  /**
   * A subscribe was refused whole (nothing of it subscribed): forget forbidden
   * tokens and ask again for the rest; for other refusals (capacity,
   * too_many_tokens) the tokens stay desired, for the next connection.
   * @param {Conn} conn
   * @param {{tokens: string[]}} req
   * @param {string[] | null} denied the forbidden tokens, or null for other refusals
   * @param {boolean} initial
   */
  _onSubscribeRefused(conn, req, denied, initial) {
    if (denied === null) {
      for (const t of req.tokens) conn.tokens.delete(t);
      return;
    }
    const no = new Set(denied);
    for (const t of no) {
      this._desired.delete(t);
      this._positions.delete(t);
      conn.tokens.delete(t);
    }
    const rest = req.tokens.filter((t) => !no.has(t) && this._desired.has(t));
    if (rest.length > 0) this._sendSubscribe(conn, rest, initial);
  }

  /** A request the shard's rate limit ignored: send it again (what is still wanted) in a second. */
  _resendLater(conn, req) {
    this._later(conn, RATE_LIMIT_RETRY_MS, () => {
      const initial = conn.awaiting.delete(req.id);
      if (req.op === "subscribe") {
        const still = req.tokens.filter((t) => this._desired.has(t));
        if (still.length > 0) this._sendSubscribe(conn, still, initial);
      } else if (req.op === "unsubscribe") {
        const still = req.tokens.filter((t) => !this._desired.has(t));
        if (still.length > 0) this._send(conn, { op: "unsubscribe", tokens: still });
      } else if (req.op === "auth" && conn.token !== null) {
        this._send(conn, { op: "auth", token: conn.token });
      }
      this._maybeConnected(conn);
    });
  }

  /** @param {Conn} conn @param {{id: number} | undefined} req */
  _settle(conn, req) {
    if (req !== undefined && conn.awaiting.delete(req.id)) this._maybeConnected(conn);
  }

  // -- closing ----------------------------------------------------------------

  /** @param {Conn} conn @param {number} code @param {string} reason */
  _onClose(conn, code, reason) {
    if (conn !== this._conn) return;
    this._detach(conn);
    this._conn = null;
    const now = this._now();
    if (conn.openedAt !== null && now - conn.openedAt >= this._resetAfterMs) this._backoff.reset();
    const hasTokenSource = this._staticToken !== null || this._getToken !== null;
    switch (closePolicy(code, { tokenSent: conn.tokenSent, hasTokenSource })) {
      case Policy.RECONNECT_NOW:
        this._rotation.cool(conn.url, now + COOL_DOWN_MS);
        this._retry(0, this._rotation.next(now), code, reason);
        return;
      case Policy.RESUBSCRIBE_GAP: {
        const tokens = [...conn.tokens].filter((t) => this._desired.has(t));
        this._stats.gaps += 1;
        this._emit("gap", { tokens, code });
        break;
      }
      case Policy.REFRESH_TOKEN:
        if (this._getToken === null) {
          this._authFailed(code, reason || "token expired and no getToken to refresh it");
          return;
        }
        this._token = null; // the hook is asked again before the next socket opens
        break;
      case Policy.STOP_AUTH:
        this._authFailed(code, reason);
        return;
      case Policy.STOP:
        this._emit("error", { code: ClientError.CLOSED, message: `closed with ${code} ${reason}`.trim() });
        this._stop(code, reason);
        return;
      default:
    }
    if (this._phase === "closed") return; // a listener closed the client
    this._retry(this._backoff.next(), this._rotation.next(now), code, reason);
  }

  /** Schedule the next attempt. */
  _retry(delayMs, url, code, reason) {
    if (this._phase === "closed") return;
    this._phase = "waiting";
    this._attempt += 1;
    this._stats.reconnects += 1;
    this._emitState("reconnecting", { url, delayMs, code, reason });
    this._retryTimer = this._setTimeout(() => {
      this._retryTimer = null;
      if (this._phase === "waiting") void this._open(url);
    }, delayMs);
  }

  _authFailed(code, reason) {
    this._emit("auth_failed", { code, reason });
    this._stop(code, reason);
  }

  /** Stop for good: no timer, no socket, no reconnect. */
  _stop(code, reason) {
    this._phase = "closed";
    this._gen += 1;
    if (this._retryTimer !== null) this._clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const conn = this._conn;
    this._conn = null;
    if (conn !== null) {
      this._detach(conn);
      try {
        conn.ws.close(Close.NORMAL, "client closed");
      } catch {
        // already closing
      }
    }
    this._emitState("closed", { url: conn?.url ?? null, code, reason });
  }

  /** Drop a connection we gave up on (no pong, connect timed out): hang up, handle it as closed. */
  _drop(conn, code, reason) {
    try {
      if (conn.openedAt === null) conn.ws.close(); // a code is not allowed on a socket still connecting
      else conn.ws.close(Close.PONG_TIMEOUT, reason);
    } catch {
      // a socket still connecting may refuse; the handlers are detached below anyway
    }
    this._onClose(conn, code, reason);
  }

  /** @param {Conn} conn */
  _detach(conn) {
    for (const t of conn.timers) this._clearTimeout(t);
    conn.timers.clear();
    const ws = conn.ws;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  // -- timers of a connection -------------------------------------------------

  /** Run `fn` after `ms` (at most ~24.8 days) if `conn` is still the live connection. */
  _later(conn, ms, fn) {
    const t = this._setTimeout(() => {
      conn.timers.delete(t);
      if (conn === this._conn) fn();
    }, Math.min(ms, MAX_TIMER_MS));
    conn.timers.add(t);
    return t;
  }

  _armKeepalive(conn, ms) {
    this._later(conn, ms, () => {
      const ka = conn.keepalive;
      if (ka === null) return;
      const { action, inMs } = ka.check(this._now());
      if (action === "dead") {
        this._drop(conn, Close.PONG_TIMEOUT, `no answer to a ping within ${this._pongMs / 1000} s`);
        return;
      }
      if (action === "ping") this._send(conn, { op: "ping" });
      this._armKeepalive(conn, inMs);
    });
  }

  /** @param {Conn} conn @param {number} expiresS */
  _scheduleRefresh(conn, expiresS) {
    if (conn.refreshTimer !== undefined) {
      this._clearTimeout(conn.refreshTimer);
      conn.timers.delete(conn.refreshTimer);
    }
    const delay = refreshDelayMs(expiresS, this._now(), this._refreshBeforeS);
    this._refreshAt = this._now() + delay;
    if (this._getToken === null) return; // a fixed token cannot be refreshed: 4011 will stop us
    conn.refreshTimer = this._later(conn, delay, () => void this._refresh(conn, expiresS));
  }

  /** Ask the hook for a new token and send it on the live connection. */
  async _refresh(conn, expiresS) {
    let token;
    try {
      token = await this._getToken();
    } catch (err) {
      if (conn !== this._conn) return;
      this._emit("error", { code: ClientError.TOKEN_HOOK_FAILED, message: errText(err) });
      const left = expiresS * 1000 - this._now();
      if (left > 2000) conn.refreshTimer = this._later(conn, left / 2, () => void this._refresh(conn, expiresS));
      return; // else the shard closes with 4011 and the hook gets one more chance
    }
    if (conn !== this._conn || typeof token !== "string" || !token) return;
    conn.token = token;
    this._send(conn, { op: "auth", token });
  }

  // -- sending and events -----------------------------------------------------

  /** Send a request with a fresh id; returns the id. */
  _send(conn, doc) {
    const id = ++this._reqId;
    conn.pending.add(id, { op: doc.op, tokens: doc.tokens ?? [] });
    if (conn.ws.readyState === OPEN) {
      try {
        conn.ws.send(JSON.stringify({ ...doc, id }));
      } catch {
        // the socket is closing: its close event brings the reconnect
      }
    }
    return id;
  }

  _emitState(state, fields) {
    this._emit("state", {
      state, url: null, attempt: this._attempt, delayMs: 0, code: null, reason: "", ...fields,
    });
  }

  /** Call every listener; one that throws neither stops the others nor the client. */
  _emit(name, payload) {
    for (const fn of [...this._listeners.get(name)]) {
      try {
        fn(payload);
      } catch (err) {
        if (name !== "error") {
          this._emit("error", { code: ClientError.LISTENER_ERROR, message: `${name} listener: ${errText(err)}` });
        }
      }
    }
  }
}

/** An absolute ws:// or wss:// URL (a typo here would otherwise mean reconnecting forever). */
function isWsUrl(u) {
  if (typeof u !== "string") return false;
  try {
    const { protocol } = new URL(u);
    return protocol === "ws:" || protocol === "wss:";
  } catch {
    return false;
  }
}

/** @param {unknown} err */
function errText(err) {
  return err instanceof Error ? err.message : String(err);
}
