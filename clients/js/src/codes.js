// @ts-check
/**
 * Every close code and error code the client reacts to, in one place.
 *
 * They mirror the shard's `shard/codes.py` (the protocol's source of truth):
 * clients key their behaviour on them, so they only ever grow.
 */

/** WebSocket close codes: RFC 6455 §7.4 plus the shard's 4000-4999 private range. */
export const Close = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // shard shutting down: reconnect elsewhere at once
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003, // binary or fragmented frames
  NO_STATUS: 1005, // local only: the close frame carried no code
  ABNORMAL: 1006, // local only: the connection dropped without a close frame
  INVALID_PAYLOAD: 1007, // text frame that is not UTF-8
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009, // our frame was over the shard's frame limit
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012, // drained: reconnect to another shard
  TRY_AGAIN_LATER: 1013,
  PONG_TIMEOUT: 4000, // client side only: nothing heard, not even a pong, so the client hung up
  IDLE_TIMEOUT: 4001, // the shard heard nothing from us for its idle timeout
  AUTH_FAILED: 4003, // the token of an auth message is invalid
  SLOW_CONSUMER: 4008, // we fell behind for longer than the shard allows
  DATA_LOST: 4010, // ticks meant for us were lost upstream with no value to resync with
  TOKEN_EXPIRED: 4011, // the connection's token expired
  AUTH_TIMEOUT: 4012, // no valid token within the shard's auth timeout
  RATE_LIMITED: 4029, // kept sending after repeated rate-limit errors
});

/** `code` of a shard's error frame; the connection stays open after each of these. */
export const ErrorCode = Object.freeze({
  INVALID_JSON: "invalid_json",
  NOT_AN_OBJECT: "not_an_object",
  UNKNOWN_OP: "unknown_op",
  BAD_REQUEST: "bad_request",
  INVALID_TOKEN: "invalid_token",
  TOO_MANY_TOKENS: "too_many_tokens",
  RATE_LIMITED: "rate_limited",
  UNAUTHENTICATED: "unauthenticated",
  FORBIDDEN: "forbidden",
  CAPACITY: "capacity",
});

/** `code` of `error` events the client raises itself (never sent by a shard). */
export const ClientError = Object.freeze({
  BAD_FRAME: "bad_frame", // a frame from the server that is not a valid protocol frame
  CLOSED: "closed", // the server closed the connection with a code that stops the client
  CONNECT_FAILED: "connect_failed", // the WebSocket constructor threw (bad URL, blocked port)
  TOKEN_HOOK_FAILED: "token_hook_failed", // getToken threw or rejected
  LISTENER_ERROR: "listener_error", // one of our event listeners threw
});

/** The subprotocol clients offer; a shard that does not echo it is taken as speaking it. */
export const SUBPROTOCOL = "shardcast.v1";
