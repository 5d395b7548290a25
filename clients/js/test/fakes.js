// Test doubles for the adapter's unit tests only: a scripted WebSocket and a manual clock.
// (The integration test, tests/integration/test_js_client.py, runs against real shards.)

/** A clock whose timers run only when the test advances it. */
export class FakeClock {
  constructor(startMs = 1_700_000_000_000) {
    this.nowMs = startMs;
    this.seq = 0;
    /** @type {Map<number, {at: number, fn: () => void, seq: number}>} */
    this.timers = new Map();
    this.now = () => this.nowMs;
    this.setTimeout = (fn, ms) => {
      const id = ++this.seq;
      this.timers.set(id, { at: this.nowMs + Math.max(0, ms), fn, seq: id });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Move time forward, running every timer that falls due (in order, new ones included). */
  advance(ms) {
    const end = this.nowMs + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (next === null || t.at < next[1].at || (t.at === next[1].at && t.seq < next[1].seq))) {
          next = [id, t];
        }
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.nowMs = Math.max(this.nowMs, next[1].at);
      next[1].fn();
    }
    this.nowMs = end;
  }

  /** Delays of the timers now pending, in ms from now, sorted. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.nowMs).sort((a, b) => a - b);
  }
}

/** A WebSocket the test drives: it opens, receives and closes when told to. */
export class FakeWebSocket {
  /** @type {FakeWebSocket[]} */
  static instances = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.instances.push(this);
  }

  static reset() {
    FakeWebSocket.instances = [];
  }

  static get last() {
    return FakeWebSocket.instances.at(-1);
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // -- the server's side --
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(doc) {
    this.onmessage?.({ data: typeof doc === "string" ? doc : JSON.stringify(doc) });
  }

  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Requests sent with op `op`. */
  ops(op) {
    return this.sent.filter((d) => d.op === op);
  }

  /** Answer every subscribe request sent so far that has no answer yet. */
  ackSubscribes() {
    this.acked ??= new Set();
    for (const d of this.ops("subscribe")) {
      if (!this.acked.has(d.id)) {
        this.acked.add(d.id);
        this.receive({ type: "subscribed", tokens: d.tokens, id: d.id });
      }
    }
  }
}

/** Let pending promise callbacks (an async getToken) run. */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A tick frame as a shard sends it. */
export function tick(token, offset, { partition = 0, data = { p: offset }, type = "tick", resync } = {}) {
  const doc = { type, token, partition, offset, ts: 1_700_000_000_000 + offset };
  if (resync) doc.resync = true;
  doc.data = data;
  return doc;
}
