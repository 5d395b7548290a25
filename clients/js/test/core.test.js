// Unit tests of the pure core (src/core.js): every decision, no socket, no clock.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Close } from "../src/codes.js";
import {
  Backoff, Keepalive, Pending, Policy, Positions, UrlRotation, checkTokens, chunks, closePolicy,
  decodeBase64, parseFrame, refreshDelayMs,
} from "../src/core.js";

const upd = (token, partition, offset, kind = "tick") => ({ token, kind, data: offset, partition, offset, ts: 1 });

describe("Positions", () => {
  test("a first update of a token is accepted and held", () => {
    const p = new Positions();
    assert.equal(p.accept(upd("A", 0, 5)), true);
    assert.deepEqual(p.get("A"), upd("A", 0, 5));
  });

  test("an update at or behind the held offset in the same partition is a duplicate", () => {
    const p = new Positions();
    p.accept(upd("A", 1, 10));
    assert.equal(p.accept(upd("A", 1, 10)), false);
    assert.equal(p.accept(upd("A", 1, 9, "snapshot")), false);
    assert.equal(p.accept(upd("A", 1, 0)), false);
    assert.equal(p.get("A").offset, 10);
  });

  test("an update ahead of the held offset is accepted and becomes the held one", () => {
    const p = new Positions();
    p.accept(upd("A", 1, 10));
    assert.equal(p.accept(upd("A", 1, 11)), true);
    assert.equal(p.get("A").offset, 11);
  });

  test("another partition (re-partitioned topic) is accepted even at a lower offset", () => {
    const p = new Positions();
    p.accept(upd("A", 1, 500));
    assert.equal(p.accept(upd("A", 2, 3)), true);
    assert.deepEqual([p.get("A").partition, p.get("A").offset], [2, 3]);
  });

  test("a resync snapshot is accepted ahead of the held position and dropped at or behind it", () => {
    const p = new Positions();
    p.accept(upd("A", 0, 7));
    assert.equal(p.accept(upd("A", 0, 7, "resync")), false);
    assert.equal(p.accept(upd("A", 0, 6, "resync")), false);
    assert.equal(p.accept(upd("A", 0, 90, "resync")), true);
    assert.equal(p.get("A").kind, "resync");
  });

  test("tokens are independent, and a forgotten token takes any position again", () => {
    const p = new Positions();
    p.accept(upd("A", 0, 7));
    assert.equal(p.accept(upd("B", 0, 1)), true);
    p.delete("A");
    assert.equal(p.accept(upd("A", 0, 2)), true);
    assert.equal(p.size, 2);
  });
});

describe("closePolicy", () => {
  const cases = [
    [1001, Policy.RECONNECT_NOW], [1012, Policy.RECONNECT_NOW],
    [4008, Policy.BACKOFF], [4029, Policy.BACKOFF], [1006, Policy.BACKOFF], [4001, Policy.BACKOFF],
    [1011, Policy.BACKOFF], [1000, Policy.BACKOFF], [1005, Policy.BACKOFF], [1013, Policy.BACKOFF],
    [4000, Policy.BACKOFF], [4999, Policy.BACKOFF], [3000, Policy.BACKOFF],
    [4010, Policy.RESUBSCRIBE_GAP], [4011, Policy.REFRESH_TOKEN], [4003, Policy.STOP_AUTH],
    [1002, Policy.STOP], [1003, Policy.STOP], [1007, Policy.STOP], [1009, Policy.STOP],
  ];
  for (const [code, policy] of cases) {
    test(`close ${code} → ${policy}`, () => {
      assert.equal(closePolicy(code, { tokenSent: true, hasTokenSource: true }), policy);
    });
  }

  test("4012 stops only when a token was sent or none can be had; else it backs off", () => {
    assert.equal(closePolicy(4012, { tokenSent: true, hasTokenSource: true }), Policy.STOP_AUTH);
    assert.equal(closePolicy(4012, { tokenSent: false, hasTokenSource: false }), Policy.STOP_AUTH);
    assert.equal(closePolicy(4012, { tokenSent: false, hasTokenSource: true }), Policy.BACKOFF);
  });

  test("the codes module names the shard's codes", () => {
    assert.deepEqual([Close.GOING_AWAY, Close.SERVICE_RESTART, Close.DATA_LOST, Close.TOKEN_EXPIRED,
      Close.AUTH_FAILED, Close.AUTH_TIMEOUT, Close.RATE_LIMITED], [1001, 1012, 4010, 4011, 4003, 4012, 4029]);
  });
});

describe("Backoff", () => {
  test("bounds double from initial and stop at max", () => {
    const b = new Backoff({ initialS: 0.25, maxS: 10 });
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 100].map((a) => b.boundMs(a)),
      [250, 500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
  });

  test("each delay is the injected random fraction of the attempt's bound (full jitter)", () => {
    const draws = [0.5, 0, 0.999, 1];
    const b = new Backoff({ initialS: 1, maxS: 3, random: () => draws.shift() });
    assert.deepEqual([b.next(), b.next(), b.next(), b.next()], [500, 0, 0.999 * 3000, 3000]);
    assert.equal(b.attempt, 4);
  });

  test("a random source out of [0, 1] is clamped into the bound", () => {
    const draws = [-5, 7, Number.NaN];
    const b = new Backoff({ initialS: 1, maxS: 1, random: () => draws.shift() });
    assert.deepEqual([b.next(), b.next(), b.next()], [0, 1000, 0]);
  });

  test("reset starts again from the initial bound", () => {
    const b = new Backoff({ initialS: 0.25, maxS: 10, random: () => 1 });
    b.next();
    b.next();
    b.next();
    b.reset();
    assert.equal(b.next(), 250);
  });

  test("defaults are 0.25 s and 10 s", () => {
    const b = new Backoff();
    assert.deepEqual([b.initialMs, b.maxMs], [250, 10000]);
  });

  test("non-positive settings are refused", () => {
    assert.throws(() => new Backoff({ initialS: 0 }), TypeError);
    assert.throws(() => new Backoff({ maxS: Number.NaN }), TypeError);
  });
});

describe("UrlRotation", () => {
  const urls = ["ws://a/ws", "ws://b/ws", "ws://c/ws"];

  test("the first URL is picked by the random source", () => {
    assert.equal(new UrlRotation(urls, () => 0).current, "ws://a/ws");
    assert.equal(new UrlRotation(urls, () => 0.5).current, "ws://b/ws");
    assert.equal(new UrlRotation(urls, () => 0.99).current, "ws://c/ws");
    assert.equal(new UrlRotation(urls, () => 1).current, "ws://c/ws");
  });

  test("each reconnect moves on to the next URL, wrapping around", () => {
    const r = new UrlRotation(urls, () => 0.5);
    assert.deepEqual([r.next(0), r.next(0), r.next(0), r.next(0)],
      ["ws://c/ws", "ws://a/ws", "ws://b/ws", "ws://c/ws"]);
  });

  test("a drained URL is never retried first, and cooling URLs are skipped while they cool", () => {
    const r = new UrlRotation(urls, () => 0);
    r.cool("ws://a/ws", 1000);
    assert.equal(r.next(0), "ws://b/ws");
    r.cool("ws://b/ws", 1000);
    assert.equal(r.next(0), "ws://c/ws");
    assert.equal(r.next(10), "ws://c/ws"); // c failed, but a and b are going away: c again
    assert.equal(r.next(1000), "ws://a/ws"); // cooled down: back in the rotation
  });

  test("when every other URL cools, the next one is still preferred over the one just left", () => {
    const r = new UrlRotation(["ws://a/ws", "ws://b/ws"], () => 0);
    r.cool("ws://a/ws", 5000);
    r.cool("ws://b/ws", 5000);
    assert.equal(r.next(0), "ws://b/ws");
  });

  test("one URL (a front door) is always the one", () => {
    const r = new UrlRotation(["ws://front/ws"], () => 0.7);
    r.cool("ws://front/ws", 5000);
    assert.deepEqual([r.current, r.next(0), r.next(0)], ["ws://front/ws", "ws://front/ws", "ws://front/ws"]);
  });

  test("duplicates are merged and an empty list is refused", () => {
    assert.deepEqual(new UrlRotation(["ws://a", "ws://a"]).urls, ["ws://a"]);
    assert.throws(() => new UrlRotation([]), TypeError);
  });
});

describe("parseFrame", () => {
  test("a tick becomes an update with its position and parsed payload", () => {
    const f = parseFrame('{"type":"tick","token":"BTC-USD","partition":2,"offset":81723,"ts":1764427200123,"data":{"p":1.5}}');
    assert.deepEqual(f, { type: "update", update: { token: "BTC-USD", kind: "tick", data: { p: 1.5 }, partition: 2, offset: 81723, ts: 1764427200123 } });
  });

  test("a snapshot is kind snapshot, and with resync:true kind resync", () => {
    const base = '"token":"X","partition":0,"offset":1,"ts":2,"data":3}';
    assert.equal(parseFrame(`{"type":"snapshot",${base}`).update.kind, "snapshot");
    assert.equal(parseFrame(`{"type":"snapshot","resync":true,${base}`).update.kind, "resync");
  });

  test("data_b64 becomes the payload's bytes", () => {
    const f = parseFrame('{"type":"tick","token":"X","partition":0,"offset":1,"ts":2,"data_b64":"AP+A"}');
    assert.deepEqual(f.update.data, new Uint8Array([0, 255, 128]));
  });

  test("control replies keep their id, tokens, reason and expiry", () => {
    assert.deepEqual(parseFrame('{"type":"subscribed","tokens":["A"],"id":3}'), { type: "subscribed", id: 3, tokens: ["A"], reason: undefined });
    assert.deepEqual(parseFrame('{"type":"unsubscribed","tokens":["A"],"reason":"grant"}'), { type: "unsubscribed", id: undefined, tokens: ["A"], reason: "grant" });
    assert.deepEqual(parseFrame('{"type":"authenticated","expires":1800000000,"id":"x"}'), { type: "authenticated", id: "x", expires: 1800000000 });
    assert.deepEqual(parseFrame('{"type":"error","code":"forbidden","message":"m","tokens":["B"],"id":4}'), { type: "error", id: 4, code: "forbidden", message: "m", tokens: ["B"] });
    assert.deepEqual(parseFrame('{"type":"pong"}'), { type: "pong", id: undefined, tokens: undefined, reason: undefined });
  });

  test("hostile or malformed frames are reported as invalid, never thrown", () => {
    const bad = [
      "not json", "[1]", "null", "42", '{"no":"type"}',
      '{"type":"tick","token":"bad token!","partition":0,"offset":1,"ts":2,"data":1}',
      '{"type":"tick","token":"X","partition":-1,"offset":1,"ts":2,"data":1}',
      '{"type":"tick","token":"X","partition":0,"offset":1.5,"ts":2,"data":1}',
      '{"type":"tick","token":"X","partition":0,"offset":"1","ts":2,"data":1}',
      '{"type":"tick","token":"X","partition":0,"offset":1,"ts":2}',
      '{"type":"tick","token":"X","partition":0,"offset":1,"ts":2,"data_b64":"***"}',
      '{"type":"subscribed","tokens":[1]}', '{"type":"authenticated","expires":"soon"}',
      '{"type":"error","code":5}',
    ];
    for (const text of bad) assert.equal(parseFrame(text).type, "invalid", text);
  });

  test("a frame type this client does not know is passed over as unknown", () => {
    assert.deepEqual(parseFrame('{"type":"notice","x":1}'), { type: "unknown", name: "notice" });
  });
});

describe("helpers", () => {
  test("chunks splits into requests of at most the cap, in order", () => {
    const items = Array.from({ length: 250 }, (_, i) => `T${i}`);
    const parts = chunks(items, 100);
    assert.deepEqual(parts.map((p) => p.length), [100, 100, 50]);
    assert.deepEqual(parts.flat(), items);
    assert.deepEqual(chunks([], 100), []);
  });

  test("checkTokens accepts valid names (deduplicated) and refuses anything else", () => {
    assert.deepEqual(checkTokens(["A", "b.c:d/e_f-1", "A"]), ["A", "b.c:d/e_f-1"]);
    assert.deepEqual(checkTokens("ONE"), ["ONE"]);
    for (const bad of [[""], ["x".repeat(65)], ["sp ace"], [1], "a b", null, { 0: "A" }]) {
      assert.throws(() => checkTokens(bad), TypeError, JSON.stringify(bad));
    }
  });

  test("decodeBase64 gives bytes, or null for malformed input", () => {
    assert.deepEqual(decodeBase64("aGk="), new Uint8Array([104, 105]));
    assert.equal(decodeBase64("@@"), null);
  });

  test("refresh comes refreshBeforeS before expiry, half-way for short tokens, at once when expired", () => {
    const now = 1_000_000;
    assert.equal(refreshDelayMs(now / 1000 + 600, now, 30), 570_000);
    assert.equal(refreshDelayMs(now / 1000 + 8, now, 30), 4000);
    assert.equal(refreshDelayMs(now / 1000 + 60, now, 30), 30_000);
    assert.equal(refreshDelayMs(now / 1000 - 1, now, 30), 0);
    assert.equal(refreshDelayMs(now / 1000, now, 30), 0);
  });
});

describe("Keepalive", () => {
  test("waits while frames arrive, pings after the interval of quiet, dead after the pong timeout", () => {
    const k = new Keepalive(15_000, 10_000, 0);
    assert.deepEqual(k.check(5_000), { action: "wait", inMs: 10_000 });
    k.received(6_000);
    assert.deepEqual(k.check(15_000), { action: "wait", inMs: 6_000 });
    assert.deepEqual(k.check(21_000), { action: "ping", inMs: 10_000 });
    assert.deepEqual(k.check(25_000), { action: "wait", inMs: 6_000 });
    assert.deepEqual(k.check(31_000), { action: "dead", inMs: 0 });
  });

  test("any frame after the ping (the pong or a tick) keeps the connection alive", () => {
    const k = new Keepalive(15_000, 10_000, 0);
    assert.equal(k.check(15_000).action, "ping");
    k.received(20_000);
    assert.deepEqual(k.check(25_000), { action: "wait", inMs: 10_000 });
  });

  test("a pong timeout longer than the interval never delays the next ping", () => {
    const k = new Keepalive(300, 60_000, 0);
    assert.deepEqual(k.check(300), { action: "ping", inMs: 300 });
    k.received(310);
    assert.deepEqual(k.check(600), { action: "wait", inMs: 10 });
    assert.deepEqual(k.check(610), { action: "ping", inMs: 300 });
  });
});

describe("Pending", () => {
  test("replies take their request by id; rate_limited takes the oldest unanswered", () => {
    const p = new Pending();
    p.add(1, { op: "subscribe", tokens: ["A"] });
    p.add(2, { op: "subscribe", tokens: ["B"] });
    p.add(3, { op: "ping", tokens: [] });
    assert.deepEqual(p.take(2), { id: 2, op: "subscribe", tokens: ["B"] });
    assert.equal(p.take(2), undefined);
    assert.equal(p.take("1"), undefined);
    assert.deepEqual(p.takeOldest(), { id: 1, op: "subscribe", tokens: ["A"] });
    assert.deepEqual(p.takeOldest(), { id: 3, op: "ping", tokens: [] });
    assert.equal(p.takeOldest(), undefined);
  });

  test("it is bounded: beyond max the oldest entries are dropped", () => {
    const p = new Pending(2);
    p.add(1, { op: "ping", tokens: [] });
    p.add(2, { op: "ping", tokens: [] });
    p.add(3, { op: "ping", tokens: [] });
    assert.equal(p.size, 2);
    assert.equal(p.take(1), undefined);
  });
});
