// The package's shape: loadable by a browser as it is, and its types declare exactly its exports.
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { test } from "node:test";

import * as api from "../src/index.js";

const SRC = new URL("../src/", import.meta.url);
const sources = readdirSync(SRC).filter((f) => f.endsWith(".js"));

test("src imports only relative ./x.js modules: no node: modules, no bare specifiers", () => {
  for (const file of sources) {
    const text = readFileSync(new URL(file, SRC), "utf8")
      .replace(/\/\*[\s\S]*?\*\//g, "") // comments may mention any path
      .replace(/^\s*\/\/.*$/gm, "");
    const specifiers = [...text.matchAll(/\bfrom\s+"([^"]+)"|\bimport\s*\(\s*"([^"]+)"/g)].map((m) => m[1] ?? m[2]);
    for (const s of specifiers) assert.match(s, /^\.\/[\w-]+\.js$/, `${file} imports ${s}`);
    assert.doesNotMatch(text, /\brequire\(|\bprocess\.|\bBuffer\b/, `${file} uses a Node-only global`);
  }
});

test("index.d.ts declares exactly the runtime exports of index.js", () => {
  const dts = readFileSync(new URL("index.d.ts", SRC), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual([...declared].sort(), Object.keys(api).sort());
});

test("the public client API is the contract's", () => {
  const proto = Object.getOwnPropertyNames(api.ShardcastClient.prototype).filter((n) => !n.startsWith("_"));
  assert.deepEqual(proto.sort(), ["close", "connect", "constructor", "last", "on", "stats", "subscribe", "unsubscribe"]);
  assert.deepEqual([...api.EVENTS].sort(),
    ["auth_failed", "duplicate", "error", "gap", "state", "unsubscribed", "update"]);
});
