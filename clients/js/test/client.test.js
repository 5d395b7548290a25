// Unit tests of the WebSocket adapter (src/client.js) with a scripted socket and a manual clock.
import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import { ShardcastClient } from "../src/index.js";
import { FakeClock, FakeWebSocket, flush, tick } from "./fakes.js";

const URLS = ["ws://a/ws", "ws://b/ws", "ws://c/ws"];

/** A client on fakes, with every event recorded in `events` as [name, payload]. */
function make(options = {}) {
  const clock = new FakeClock();
  const client = new ShardcastClient({
    urls: URLS, WebSocket: FakeWebSocket, random: () => 0, now: clock.now,
    setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, ...options,
  });
  const events = [];
  for (const name of ["update", "state", "gap", "error", "unsubscribed", "auth_failed", "duplicate"]) {
    client.on(name, (p) => events.push([name, p]));
  }
  const of = (name) => events.filter(([n]) => n === name).map(([, p]) => p);
  return { client, clock, events, of };
}

/** Open the current fake socket and answer its subscribes: the client is `connected`. */
function up(ws = FakeWebSocket.last) {
  ws.open();
  ws.ackSubscribes();
  return ws;
}

beforeEach(() => FakeWebSocket.reset());

describe("connecting and subscribing", () => {
  test("offers the shardcast.v1 subprotocol to the randomly picked URL", () => {
    const { client } = make({ random: () => 0.5 });
    client.connect();
    assert.equal(FakeWebSocket.last.url, "ws://b/ws");
    assert.deepEqual(FakeWebSocket.last.protocols, ["shardcast.v1"]);
  });

  test("resubscribes the desired set in requests of at most 100 and is connected once all are acked", () => {
    const { client, of } = make();
    const tokens = Array.from({ length: 250 }, (_, i) => `T${i}`);
    client.subscribe(tokens);
    client.connect();
    const ws = FakeWebSocket.last;
    ws.open();
    const subs = ws.ops("subscribe");
    assert.deepEqual(subs.map((d) => d.tokens.length), [100, 100, 50]);
    assert.deepEqual(subs.flatMap((d) => d.tokens), tokens);
    ws.receive({ type: "subscribed", tokens: subs[0].tokens, id: subs[0].id });
    ws.receive({ type: "subscribed", tokens: subs[2].tokens, id: subs[2].id });
    assert.deepEqual(of("state").map((s) => s.state), ["connecting"]);
    ws.receive({ type: "subscribed", tokens: subs[1].tokens, id: subs[1].id });
    assert.deepEqual(of("state").map((s) => [s.state, s.url]), [["connecting", "ws://a/ws"], ["connected", "ws://a/ws"]]);
  });

  test("subscribe after connect sends only the new tokens; unsubscribe sends a request and forgets the value", () => {
    const { client } = make({ tokens: ["A"] });
    client.connect();
    const ws = up();
    client.subscribe(["A", "B", "C"]);
    assert.deepEqual(ws.ops("subscribe").map((d) => d.tokens), [["A"], ["B", "C"]]);
    ws.receive(tick("B", 5));
    assert.equal(client.last("B").offset, 5);
    client.unsubscribe(["B", "Z"]);
    assert.deepEqual(ws.ops("unsubscribe").map((d) => d.tokens), [["B"]]);
    assert.equal(client.last("B"), undefined);
    ws.receive(tick("B", 6)); // still in flight after the unsubscribe: not surfaced
    assert.equal(client.last("B"), undefined);
    assert.equal(client.stats.updates, 1);
  });

  test("an invalid token is refused at subscribe, before anything is sent", () => {
    const { client } = make();
    assert.throws(() => client.subscribe(["OK", "not ok"]), TypeError);
    client.connect();
    assert.deepEqual(up().ops("subscribe"), []);
  });

  test("an unknown event name or a bad option is refused", () => {
    const { client } = make();
    assert.throws(() => client.on("updates", () => {}), TypeError);
    assert.throws(() => new ShardcastClient({ urls: [], WebSocket: FakeWebSocket }), TypeError);
    for (const url of ["", "/ws", "http://a/ws", "ws//a", 7]) {
      assert.throws(() => new ShardcastClient({ url, WebSocket: FakeWebSocket }), TypeError, String(url));
    }
    assert.ok(new ShardcastClient({ url: "wss://a.example/ws", WebSocket: FakeWebSocket }));
    assert.throws(() => new ShardcastClient({ url: "ws://a/ws", WebSocket: FakeWebSocket, pingIntervalS: 0 }), TypeError);
    assert.throws(() => new ShardcastClient({ url: "ws://a/ws", WebSocket: undefined, token: "" }), TypeError);
  });

  test("on() returns a function that removes the listener", () => {
    const { client } = make({ tokens: ["A"] });
    const seen = [];
    const off = client.on("update", (u) => seen.push(u.offset));
    client.connect();
    const ws = up();
    ws.receive(tick("A", 1));
    off();
    ws.receive(tick("A", 2));
    assert.deepEqual(seen, [1]);
  });
});

describe("updates and positions", () => {
  test("ticks, snapshots and resyncs surface with their kind, position and receive time", () => {
    const { client, clock, of } = make({ tokens: ["A"] });
    client.connect();
    const ws = up();
    ws.receive(tick("A", 3, { type: "snapshot" }));
    ws.receive(tick("A", 4));
    ws.receive(tick("A", 90, { type: "snapshot", resync: true }));
    assert.deepEqual(of("update").map((u) => [u.kind, u.offset, u.data.p, u.receivedAt]),
      [["snapshot", 3, 3, clock.nowMs], ["tick", 4, 4, clock.nowMs], ["resync", 90, 90, clock.nowMs]]);
    assert.deepEqual(client.stats, { updates: 3, duplicates: 0, reconnects: 0, resyncs: 1, gaps: 0 });
    assert.equal(client.last("A").kind, "resync");
  });

  test("after a reconnect the new shard's snapshot of a value already held is a duplicate, never an update", () => {
    const { client, clock, of } = make({ tokens: ["A"] });
    client.connect();
    const ws = up();
    ws.receive(tick("A", 10));
    ws.serverClose(1012, "drained");
    clock.advance(0);
    const ws2 = up(FakeWebSocket.last);
    ws2.receive(tick("A", 10, { type: "snapshot" }));
    ws2.receive(tick("A", 9));
    ws2.receive(tick("A", 11));
    assert.deepEqual(of("update").map((u) => u.offset), [10, 11]);
    assert.deepEqual(of("duplicate"), [{ token: "A", partition: 0, offset: 10 }, { token: "A", partition: 0, offset: 9 }]);
    assert.equal(client.stats.duplicates, 2);
  });

  test("a payload that is not JSON arrives as bytes", () => {
    const { client, of } = make({ tokens: ["A"] });
    client.connect();
    up().receive('{"type":"tick","token":"A","partition":0,"offset":1,"ts":5,"data_b64":"AQI="}');
    assert.deepEqual(of("update")[0].data, new Uint8Array([1, 2]));
  });

  test("a malformed frame is reported as bad_frame and the connection carries on", () => {
    const { client, of } = make({ tokens: ["A"] });
    client.connect();
    const ws = up();
    ws.receive("{{{");
    ws.onmessage({ data: new ArrayBuffer(2) });
    ws.receive(tick("A", 1));
    assert.deepEqual(of("error").map((e) => e.code), ["bad_frame", "bad_frame"]);
    assert.equal(of("update").length, 1);
    assert.equal(ws.closedWith, null);
  });

  test("a listener that throws neither stops the other listeners nor the client", () => {
    const { client, of } = make({ tokens: ["A"] });
    const seen = [];
    client.on("update", () => {
      throw new Error("boom");
    });
    client.on("update", (u) => seen.push(u.offset));
    client.connect();
    const ws = up();
    ws.receive(tick("A", 1));
    ws.receive(tick("A", 2));
    assert.deepEqual(seen, [1, 2]);
    assert.deepEqual(of("error").map((e) => e.code), ["listener_error", "listener_error"]);
  });
});

describe("close codes", () => {
  for (const code of [1001, 1012]) {
    test(`${code}: reconnects at once to another URL and resubscribes`, () => {
      const { client, clock, of } = make({ tokens: ["A", "B"] });
      client.connect();
      up().serverClose(code, "bye");
      const r = of("state").at(-1);
      assert.deepEqual([r.state, r.url, r.delayMs, r.code, r.reason], ["reconnecting", "ws://b/ws", 0, code, "bye"]);
      clock.advance(0);
      const ws2 = FakeWebSocket.last;
      assert.equal(ws2.url, "ws://b/ws");
      ws2.open();
      assert.deepEqual(ws2.ops("subscribe").map((d) => d.tokens), [["A", "B"]]);
      assert.equal(client.stats.reconnects, 1);
    });
  }

  test("after a drain the drained URL is not the next choice even when the next one fails", () => {
    const { client, clock } = make({ tokens: ["A"] });
    client.connect();
    up().serverClose(1012);
    clock.advance(0);
    FakeWebSocket.last.serverClose(1006); // b refuses
    clock.advance(0); // random() = 0: no backoff delay
    assert.deepEqual(FakeWebSocket.instances.map((w) => w.url), ["ws://a/ws", "ws://b/ws", "ws://c/ws"]);
  });

  for (const code of [1006, 4008, 4029, 4001, 1011, 4999]) {
    test(`${code}: reconnects to the next URL after a jittered backoff`, () => {
      const { client, clock, of } = make({ tokens: ["A"], random: () => 0.5 });
      client.connect(); // b (random 0.5)
      FakeWebSocket.last.open();
      FakeWebSocket.last.serverClose(code);
      const r = of("state").at(-1);
      assert.deepEqual([r.state, r.url, r.delayMs, r.code], ["reconnecting", "ws://c/ws", 125, code]);
      clock.advance(124);
      assert.equal(FakeWebSocket.instances.length, 1);
      clock.advance(1);
      assert.equal(FakeWebSocket.last.url, "ws://c/ws");
    });
  }

  test("failed attempts back off exponentially up to the cap, and a connection resets it", () => {
    const { client, clock, of } = make({ random: () => 1, backoff: { initialS: 0.25, maxS: 1 } });
    client.connect();
    for (let i = 0; i < 5; i++) {
      FakeWebSocket.last.serverClose(1006);
      clock.advance(of("state").at(-1).delayMs);
    }
    assert.deepEqual(of("state").filter((s) => s.state === "reconnecting").map((s) => [s.delayMs, s.attempt]),
      [[250, 1], [500, 2], [1000, 3], [1000, 4], [1000, 5]]);
    up();
    FakeWebSocket.last.serverClose(1006);
    assert.deepEqual([of("state").at(-1).delayMs, of("state").at(-1).attempt], [250, 1]);
  });

  test("4010: emits gap with the connection's tokens, then reconnects with backoff and resubscribes", () => {
    const { client, clock, of } = make({ tokens: ["A", "B"] });
    client.connect();
    const ws = up();
    ws.receive(tick("A", 5));
    ws.serverClose(4010, "lost");
    assert.deepEqual(of("gap"), [{ tokens: ["A", "B"], code: 4010 }]);
    assert.equal(client.stats.gaps, 1);
    clock.advance(1000);
    const ws2 = FakeWebSocket.last;
    ws2.open();
    assert.deepEqual(ws2.ops("subscribe").map((d) => d.tokens), [["A", "B"]]);
    ws2.receive(tick("A", 5, { type: "snapshot" }));
    ws2.receive(tick("A", 8));
    assert.deepEqual(of("update").map((u) => u.offset), [5, 8]);
  });

  test("4003: reports auth_failed and stops for good, no new socket", async () => {
    const { client, clock, of } = make({ token: "t1" });
    client.connect();
    await flush();
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(4003, "bad signature");
    clock.advance(120_000);
    assert.deepEqual(of("auth_failed"), [{ code: 4003, reason: "bad signature" }]);
    assert.deepEqual(of("state").map((s) => s.state), ["connecting", "closed"]);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  test("4012 after a token was sent stops; 4012 with no token at all stops too", async () => {
    const withToken = make({ token: "t1" });
    withToken.client.connect();
    await flush();
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(4012);
    assert.deepEqual(withToken.of("auth_failed").map((e) => e.code), [4012]);
    const without = make();
    without.client.connect();
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(4012);
    without.clock.advance(60_000);
    assert.deepEqual(without.of("auth_failed").map((e) => e.code), [4012]);
    assert.equal(FakeWebSocket.instances.length, 2);
  });

  for (const code of [1002, 1003, 1007, 1009]) {
    test(`${code}: our own protocol error stops the client and is reported`, () => {
      const { client, clock, of } = make();
      client.connect();
      FakeWebSocket.last.open();
      FakeWebSocket.last.serverClose(code, "oops");
      clock.advance(60_000);
      assert.deepEqual(of("error"), [{ code: "closed", message: `closed with ${code} oops` }]);
      assert.deepEqual(of("state").at(-1).state, "closed");
      assert.equal(FakeWebSocket.instances.length, 1);
    });
  }

  test("close() closes with 1000 and never reconnects; connect() afterwards throws", () => {
    const { client, clock, of } = make({ tokens: ["A"] });
    client.connect();
    const ws = up();
    client.close();
    assert.deepEqual(ws.closedWith, { code: 1000, reason: "client closed" });
    ws.serverClose(1000); // detached: no effect
    clock.advance(60_000);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.deepEqual(of("state").map((s) => s.state), ["connecting", "connected", "closed"]);
    assert.throws(() => client.connect(), /closed/);
  });

  test("close() while waiting to reconnect cancels the attempt", () => {
    const { client, clock } = make();
    client.connect();
    FakeWebSocket.last.serverClose(1006);
    client.close();
    clock.advance(60_000);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.deepEqual(clock.pending(), []);
  });
});

describe("auth", () => {
  test("sends the token in the first message and subscribes only once authenticated", async () => {
    const { client, clock, of } = make({ token: "jwt-1", tokens: ["A"] });
    client.connect();
    await flush();
    const ws = FakeWebSocket.last;
    ws.open();
    assert.deepEqual(ws.sent.map((d) => d.op), ["auth"]);
    assert.equal(ws.sent[0].token, "jwt-1");
    assert.ok(!ws.url.includes("jwt-1"));
    ws.receive({ type: "authenticated", expires: clock.nowMs / 1000 + 600, id: ws.sent[0].id });
    assert.deepEqual(ws.sent.map((d) => d.op), ["auth", "subscribe"]);
    ws.ackSubscribes();
    assert.equal(of("state").at(-1).state, "connected");
  });

  test("the hook is called again refreshBeforeS before expiry and its token sent on the same socket", async () => {
    const tokens = ["jwt-1", "jwt-2", "jwt-3"];
    let calls = 0;
    const { client, clock, of } = make({
      getToken: async () => tokens[calls++], refreshBeforeS: 30, tokens: ["A"], pingIntervalS: 3600,
    });
    client.connect();
    await flush();
    const ws = FakeWebSocket.last;
    ws.open();
    ws.receive({ type: "authenticated", expires: clock.nowMs / 1000 + 600, id: ws.sent[0].id });
    ws.ackSubscribes();
    assert.equal(calls, 1);
    clock.advance(569_999);
    await flush();
    assert.equal(calls, 1);
    clock.advance(1);
    await flush();
    assert.equal(calls, 2);
    const refresh = ws.ops("auth").at(-1);
    assert.equal(refresh.token, "jwt-2");
    ws.receive({ type: "authenticated", expires: clock.nowMs / 1000 + 600, id: refresh.id });
    clock.advance(570_000);
    await flush();
    assert.deepEqual(ws.ops("auth").map((d) => d.token), ["jwt-1", "jwt-2", "jwt-3"]);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.deepEqual(of("state").map((s) => s.state), ["connecting", "connected"]);
  });

  test("a reconnect before the refresh time reuses the token; after 4011 the hook is asked first", async () => {
    let calls = 0;
    const { client, clock } = make({ getToken: () => `jwt-${++calls}` });
    client.connect();
    await flush();
    let ws = FakeWebSocket.last;
    ws.open();
    ws.receive({ type: "authenticated", expires: clock.nowMs / 1000 + 600, id: ws.sent[0].id });
    ws.serverClose(1012);
    clock.advance(0);
    await flush();
    ws = FakeWebSocket.last;
    ws.open();
    assert.deepEqual([calls, ws.sent[0].token], [1, "jwt-1"]);
    ws.serverClose(4011, "token expired");
    clock.advance(10_000);
    await flush();
    FakeWebSocket.last.open();
    assert.deepEqual([calls, FakeWebSocket.last.sent[0].token], [2, "jwt-2"]);
  });

  test("4011 when the hook then yields nothing: auth_failed, closed, no socket opened", async () => {
    const answers = ["jwt-1", null];
    const { client, clock, of } = make({ getToken: async () => answers.shift() });
    client.connect();
    await flush();
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(4011, "token expired");
    clock.advance(10_000);
    await flush();
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.equal(of("auth_failed").length, 1);
    assert.equal(of("state").at(-1).state, "closed");
  });

  test("4011 with a fixed token and no hook: auth_failed and stop", async () => {
    const { client, clock, of } = make({ token: "jwt-1" });
    client.connect();
    await flush();
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(4011, "token expired");
    clock.advance(60_000);
    assert.deepEqual(of("auth_failed"), [{ code: 4011, reason: "token expired" }]);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  test("a hook that throws is reported and retried with backoff, not a stop", async () => {
    let calls = 0;
    const { client, clock, of } = make({
      getToken: async () => {
        calls += 1;
        if (calls === 1) throw new Error("token service down");
        return "jwt-ok";
      },
    });
    client.connect();
    await flush();
    assert.deepEqual(of("error").map((e) => [e.code, e.message]), [["token_hook_failed", "token service down"]]);
    assert.equal(FakeWebSocket.instances.length, 0);
    clock.advance(10_000);
    await flush();
    assert.equal(FakeWebSocket.instances.length, 1);
    FakeWebSocket.last.open();
    assert.equal(FakeWebSocket.last.sent[0].token, "jwt-ok");
  });

  test("a token valid for 60 days is refreshed after at most 2**31-1 ms (timers overflow beyond)", async () => {
    const { client, clock } = make({ getToken: async () => "jwt", pingIntervalS: 3600 });
    client.connect();
    await flush();
    const ws = FakeWebSocket.last;
    ws.open();
    ws.receive({ type: "authenticated", expires: clock.nowMs / 1000 + 60 * 86400, id: ws.sent[0].id });
    assert.equal(Math.max(...clock.pending()), 2 ** 31 - 1);
  });

  test("a narrowed grant on refresh: unsubscribed event, and the tokens are forgotten", async () => {
    const { client, clock, of } = make({ token: "jwt", tokens: ["A", "B"] });
    client.connect();
    await flush();
    const ws = FakeWebSocket.last;
    ws.open();
    ws.receive({ type: "authenticated", expires: clock.nowMs / 1000 + 600, id: ws.sent[0].id });
    ws.ackSubscribes();
    ws.receive(tick("B", 1));
    ws.receive({ type: "unsubscribed", tokens: ["B"], reason: "grant" });
    assert.deepEqual(of("unsubscribed"), [{ tokens: ["B"], reason: "grant" }]);
    assert.equal(client.last("B"), undefined);
    ws.serverClose(1012);
    clock.advance(0);
    await flush();
    const ws2 = FakeWebSocket.last;
    ws2.open();
    ws2.receive({ type: "authenticated", expires: clock.nowMs / 1000 + 600, id: ws2.sent[0].id });
    assert.deepEqual(ws2.ops("subscribe").map((d) => d.tokens), [["A"]]);
  });

  test("a shard with auth off answers bad_request to auth: the client carries on without it", async () => {
    const { client, of } = make({ token: "jwt", tokens: ["A"] });
    client.connect();
    await flush();
    const ws = FakeWebSocket.last;
    ws.open();
    ws.receive({ type: "error", code: "bad_request", message: "authentication is off on this shard", id: ws.sent[0].id });
    ws.ackSubscribes();
    assert.equal(of("state").at(-1).state, "connected");
    assert.deepEqual(of("error").map((e) => e.code), ["bad_request"]);
  });
});

describe("error replies", () => {
  test("forbidden: the shard's tokens leave the desired set, the rest of the request is asked again", () => {
    const { client, clock, of } = make({ tokens: ["A", "B", "C"] });
    client.connect();
    const ws = FakeWebSocket.last;
    ws.open();
    const req = ws.ops("subscribe")[0];
    ws.receive({ type: "error", code: "forbidden", message: "not granted: B", tokens: ["B"], id: req.id });
    assert.deepEqual(of("error"), [{ code: "forbidden", message: "not granted: B", tokens: ["B"] }]);
    assert.deepEqual(ws.ops("subscribe").map((d) => d.tokens), [["A", "B", "C"], ["A", "C"]]);
    assert.equal(of("state").at(-1).state, "connecting");
    ws.ackSubscribes();
    assert.equal(of("state").at(-1).state, "connected");
    ws.serverClose(1012);
    clock.advance(0);
    up(FakeWebSocket.last);
    assert.deepEqual(FakeWebSocket.last.ops("subscribe").map((d) => d.tokens), [["A", "C"]]);
  });

  test("rate_limited (no id): the oldest unanswered request is sent again a second later", () => {
    const { client, clock, of } = make({ tokens: ["A"] });
    client.connect();
    const ws = FakeWebSocket.last;
    ws.open();
    ws.receive({ type: "error", code: "rate_limited", message: "too many requests, slow down" });
    assert.deepEqual(of("error"), [{ code: "rate_limited", message: "too many requests, slow down", tokens: ["A"] }]);
    clock.advance(999);
    assert.equal(ws.ops("subscribe").length, 1);
    clock.advance(1);
    assert.deepEqual(ws.ops("subscribe").map((d) => d.tokens), [["A"], ["A"]]);
    assert.equal(of("state").at(-1).state, "connecting"); // still waiting for the resent request
    ws.ackSubscribes();
    assert.equal(of("state").at(-1).state, "connected");
  });

  test("capacity and too_many_tokens are reported with the request's tokens, which stay desired", () => {
    const { client, clock, of } = make({ tokens: ["A"] });
    client.connect();
    const ws = FakeWebSocket.last;
    ws.open();
    const req = ws.ops("subscribe")[0];
    ws.receive({ type: "error", code: "capacity", message: "full", id: req.id });
    assert.deepEqual(of("error"), [{ code: "capacity", message: "full", tokens: ["A"] }]);
    assert.equal(of("state").at(-1).state, "connected");
    ws.serverClose(1012);
    clock.advance(0);
    FakeWebSocket.last.open();
    assert.deepEqual(FakeWebSocket.last.ops("subscribe").map((d) => d.tokens), [["A"]]);
  });
});

describe("keepalive", () => {
  test("pings after pingIntervalS of quiet; any frame keeps it alive", () => {
    const { client, clock } = make({ pingIntervalS: 15, pongTimeoutS: 10 });
    client.connect();
    const ws = up();
    clock.advance(14_999);
    assert.equal(ws.ops("ping").length, 0);
    clock.advance(1);
    assert.equal(ws.ops("ping").length, 1);
    ws.receive({ type: "pong", id: ws.ops("ping")[0].id });
    clock.advance(14_999);
    assert.equal(ws.ops("ping").length, 1);
    assert.equal(ws.closedWith, null);
  });

  test("no answer to a ping within pongTimeoutS: hang up (4000) and reconnect with backoff", () => {
    const { client, clock, of } = make({ pingIntervalS: 15, pongTimeoutS: 10 });
    client.connect();
    const ws = up();
    clock.advance(15_000);
    clock.advance(9_999);
    assert.equal(ws.closedWith, null);
    clock.advance(1);
    assert.equal(ws.closedWith.code, 4000);
    const r = of("state").find((s) => s.state === "reconnecting");
    assert.deepEqual([r.code, r.url], [4000, "ws://b/ws"]);
    assert.equal(FakeWebSocket.last.url, "ws://b/ws");
  });

  test("a socket not open within connectTimeoutS is dropped and the next URL tried with backoff", () => {
    const { client, clock, of } = make({ connectTimeoutS: 10 });
    client.connect();
    const ws = FakeWebSocket.last;
    clock.advance(9_999);
    assert.equal(ws.closedWith, null);
    clock.advance(1);
    assert.deepEqual(ws.closedWith, { code: undefined, reason: undefined });
    const r = of("state").find((s) => s.state === "reconnecting");
    assert.deepEqual([r.code, r.reason, r.url], [1006, "connect timed out", "ws://b/ws"]);
    assert.equal(FakeWebSocket.last.url, "ws://b/ws");
  });

  test("a socket that opened in time is not dropped by the connect timeout", () => {
    const { client, clock } = make({ connectTimeoutS: 10, pingIntervalS: 3600 });
    client.connect();
    const ws = up();
    clock.advance(60_000);
    assert.equal(ws.closedWith, null);
    assert.equal(FakeWebSocket.instances.length, 1);
  });
});
