// @ts-check
/**
 * shardcast client (protocol shardcast.v1) for browsers and Node ≥ 20.
 *
 * An ES module with relative imports only and no Node modules, so a browser
 * loads it as it is (e.g. `import { ShardcastClient } from "/client/index.js"`).
 * Types: index.d.ts.
 */

export { ShardcastClient, EVENTS } from "./client.js";
export { Close, ErrorCode, ClientError, SUBPROTOCOL } from "./codes.js";
export {
  Backoff, Keepalive, Pending, Policy, Positions, TOKEN_RE, UrlRotation, checkTokens, chunks,
  closePolicy, decodeBase64, parseFrame, refreshDelayMs,
} from "./core.js";
