// Drives real ShardcastClients for tests/integration/test_js_client.py (real shards, Kafka, Redis).
//
// Run: SHARDCAST_JS_DRIVER='<json>' node --experimental-websocket driver.mjs   (Node 20; 22+ needs no flag)
// Config (JSON, in the environment: it may carry JWTs, which must stay out of argv):
//   {"clients": [{"name": "c1", "urls": [...], "tokens": [...], "token": "jwt" | omitted,
//                 "tokenSeq": ["jwt1", "jwt2"] (getToken hands these out in order, the last one repeated),
//                 "options": {pingIntervalS, pongTimeoutS, refreshBeforeS, backoff: {...}},
//                 "random": 0.5 (every draw of the client's random, so URLs and delays are exact),
//                 "wire": true (also report the client's protocol frames: {"ev":"wire","dir":"out"|"in",
//                 "frame": {...}} for every text it sends and every non-data frame it receives)}]}
// Stdout: one JSON object per line, {"client", "ev", "t", ...the event's payload}; every event of
//   every client, plus {"ev":"token_hook"} per getToken call, {"ev":"stats"} when asked, {"ev":"ready"}.
// Stdin: one JSON command per line: {"cmd":"subscribe"|"unsubscribe","client","tokens"},
//   {"cmd":"stats","client"}, {"cmd":"close","client"}, {"cmd":"exit"}. End of stdin exits too.
// Without SHARDCAST_JS_DRIVER (as when `npm test` runs every file under test/) it only registers a
// skipped test: it is not a unit test.

import { createInterface } from "node:readline";

const raw = process.env.SHARDCAST_JS_DRIVER;
if (raw === undefined) {
  const { test } = await import("node:test");
  test.skip("integration driver: run by tests/integration/test_js_client.py against real shards");
} else {
  await main(JSON.parse(raw));
}

async function main(config) {
  if (typeof globalThis.WebSocket !== "function") {
    throw new Error("no global WebSocket: run Node 20 with --experimental-websocket");
  }
  const { ShardcastClient, EVENTS } = await import("../../src/index.js");
  const out = (doc) => process.stdout.write(`${JSON.stringify({ ...doc, t: Date.now() })}\n`);
  const clients = new Map();
  for (const spec of config.clients) {
    const name = spec.name;
    let calls = 0;
    const seq = spec.tokenSeq;
    const getToken = seq === undefined ? undefined : async () => {
      const token = seq[Math.min(calls, seq.length - 1)] ?? null;
      calls += 1;
      out({ client: name, ev: "token_hook", n: calls });
      return token;
    };
    const random = spec.random === undefined ? undefined : () => spec.random;
    const WebSocket = spec.wire ? wireTap(globalThis.WebSocket, (doc) => out({ client: name, ...doc }))
      : undefined;
    const client = new ShardcastClient({
      urls: spec.urls, tokens: spec.tokens, token: spec.token, getToken, random, WebSocket, ...spec.options,
    });
    for (const ev of EVENTS) {
      client.on(ev, (p) => out({ client: name, ev, ...(ev === "update" ? plain(p) : p) }));
    }
    clients.set(name, client);
  }
  for (const client of clients.values()) client.connect();
  out({ ev: "ready" });

  const exit = () => {
    for (const c of clients.values()) c.close();
    out({ ev: "exit" });
    process.exit(0);
  };
  const rl = createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    if (!line.trim()) return;
    const cmd = JSON.parse(line);
    const client = clients.get(cmd.client);
    try {
      if (cmd.cmd === "exit") exit();
      else if (cmd.cmd === "subscribe") client.subscribe(cmd.tokens);
      else if (cmd.cmd === "unsubscribe") client.unsubscribe(cmd.tokens);
      else if (cmd.cmd === "stats") out({ client: cmd.client, ev: "stats", ...client.stats });
      else if (cmd.cmd === "close") client.close();
      else out({ ev: "bad_command", cmd });
    } catch (err) {
      out({ ev: "command_failed", cmd, message: String(err) });
    }
  });
  rl.on("close", exit);
}

/** An update as JSON: bytes (a payload that is not JSON) become {"b64": …}. */
function plain(u) {
  const data = u.data instanceof Uint8Array ? { b64: btoa(String.fromCharCode(...u.data)) } : u.data;
  return { ...u, data };
}

/** The real WebSocket class, reporting what goes over the wire (the frames are not touched). */
function wireTap(Base, report) {
  return class TappedWebSocket extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        if (typeof e.data !== "string") return;
        const frame = JSON.parse(e.data);
        if (frame.type !== "tick" && frame.type !== "snapshot" && frame.type !== "resync") {
          report({ ev: "wire", dir: "in", frame });
        }
      });
    }

    send(data) {
      if (typeof data === "string") report({ ev: "wire", dir: "out", frame: JSON.parse(data) });
      super.send(data);
    }
  };
}
