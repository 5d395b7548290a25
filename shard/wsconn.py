"""One WebSocket client connection: on-demand reader and writer greenlets (gevent adapter).

Every byte to the socket goes through the client's `Outbox`: written through
when the socket takes it at once, else by the writer greenlet; the reader only
parses requests and queues replies. So a stuck socket blocks only its own
writer, and frames never interleave.

An idle connection has no greenlet at all. After the upgrade, pywsgi's
handler greenlet hands the socket over and ends; from then on a libev watcher
notices input and a short-lived greenlet reads what arrived (without ever
waiting for more: shard.wsread cuts frames incrementally), handles it and
exits. A greenlet parked in a read for every client cost 9–13 KiB each: its
saved C stack and its own chunk of Python frames (docs/benchmarks.md).

A slow client is judged by time (see shard.outbox), and what sits unacknowledged
in its socket's send buffer counts (SIOCOUTQ), so the kernel cannot hide a
client that stopped reading; `--client-sndbuf-bytes` can also bound that buffer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import socket
import struct
import termios
import time
from typing import TYPE_CHECKING

import gevent
from geventwebsocket.handler import WebSocketHandler

from shard.auth import AuthError, Grant
from shard.codes import Close, ErrorCode
from shard.outbox import Outbox, frame_end
from shard.protocol import (
    Auth,
    Ping,
    ProtocolError,
    Subscribe,
    ack_frame,
    close_frame,
    error_frame,
    parse_request,
    ws_frame,
)
from shard.ratelimit import TokenBucket
from shard.wsread import FrameReader, Inbound, PeerClose, Reject, Text
from shard.wsread import Ping as WsPing

if TYPE_CHECKING:
    from shard.server import ShardServer

log = logging.getLogger(__name__)
OP_PING = 0x9
OP_PONG = 0xA
MAX_RATE_STRIKES = 20
PING_FRAME = ws_frame(b"", OP_PING)
SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # Linux: bytes sent but not acknowledged by the peer
_INT = struct.Struct("i")
_INT_ZERO = _INT.pack(0)
CLOSE_TIMEOUT_S = 1.0  # longest wait to put a close frame (and a frame's rest) on the socket
ROOM_SLACK_BYTES = 4096  # kernel bookkeeping per buffer, beyond the payload, when making room
ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and frees the send buffer


def _wmem_max() -> int:
    """The largest SO_SNDBUF an unprivileged process may set (Linux's default where unknown)."""
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 212992


WMEM_MAX = _wmem_max()


READ_BUFFER_BYTES = 2048  # the upgrade request's buffer: pywsgi's default is 8 KiB
RECV_BYTES = 4096  # one read of a client's socket (clients send little)
YIELD_EVERY_MESSAGES = 64  # a reader lets other greenlets run after this many messages in a row


SUBPROTOCOL_ENV = "shardcast.subprotocol"  # environ key: the subprotocol the upgrade negotiated


class ShardHandler(WebSocketHandler):
    """gevent-websocket's handler with a smaller read buffer and our subprotocol negotiation.

    The stock handler echoes a subprotocol only through an ``app_protocol``
    hook, matched as a substring of the raw header; ours is chosen by
    `shard.protocol.negotiate_subprotocol` before the upgrade (ShardServer._refusal)
    and added here to the 101 response.
    """

    def __init__(self, sock, address, server, rfile=None) -> None:
        super().__init__(sock, address, server,
                         rfile if rfile is not None else sock.makefile("rb", READ_BUFFER_BYTES))

    def start_response(self, status, headers, exc_info=None):
        subprotocol = (self.environ or {}).get(SUBPROTOCOL_ENV)
        if subprotocol and status.startswith("101"):
            headers = [*headers, ("Sec-WebSocket-Protocol", subprotocol)]
        return super().start_response(status, headers, exc_info)

    def detach(self) -> tuple[socket.socket, bytes]:
        """Give up the upgraded socket: (the socket, what the request's reader took past the request).

        pywsgi's `handle()` closes only a socket it still holds, and gevent-websocket
        sends a close frame only on an open WebSocket; the server's `do_close` must
        skip the socket too (shard.server._WSGIServer). The bytes are those a client
        sent right after its upgrade request, in the same read: with the socket's
        timeout at 0, `read1` returns the reader's buffer, or what one non-blocking
        read gets (b"" when nothing came yet).
        """
        sock, rfile = self.socket, self.rfile
        self.socket = None
        self.websocket.closed = True
        sock.settimeout(0.0)
        try:
            return sock, rfile.read1(1 << 16)
        except OSError:
            return sock, b""  # reset already: the connection's first read finds out
        finally:
            sock.settimeout(None)


class Connection:
    """On-demand reader and writer greenlets, and the per-client limits, of one WebSocket."""

    __slots__ = (
        "auth_timer",
        "box",
        "bucket",
        "close_code",
        "close_reason",
        "conn_id",
        "frames",
        "grant",
        "ip",
        "last_ping",
        "last_rx",
        "peer_gone",
        "rate_strikes",
        "raw",
        "server",
        "sock",
        "wait_slice",
        "writer",
    )

    def __init__(self, server: ShardServer, sock: socket.socket, conn_id: int, ip: str = "") -> None:
        cfg = server.cfg
        self.server = server
        self.conn_id = conn_id
        self.ip = ip
        self.sock = sock
        # We coalesce frames ourselves (Outbox.drain); Nagle would instead hold a
        # tick until the client's delayed ACK of the previous frame, up to 40 ms.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if cfg.client_sndbuf_bytes:
            # Autotuned, the kernel may buffer up to 4 MiB for a client that stopped reading:
            # memory, stale ticks it would replay, and no room left for a close frame.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.client_sndbuf_bytes)
        self.raw = self.sock._sock  # the non-blocking OS socket under gevent's wrapper
        self.frames = FrameReader(cfg.max_frame_bytes)
        self.writer: gevent.Greenlet | None = None
        self.box = Outbox(cfg.outbox_frames, self._wake, conn_id, cfg.max_behind_s,
                          direct=self._write_now, max_bytes=cfg.outbox_bytes, unacked=self._unacked)
        self.bucket = TokenBucket(cfg.requests_per_s, cfg.request_burst)
        self.rate_strikes = 0
        self.last_rx = self.last_ping = time.monotonic()
        self.close_code: int | None = None
        self.close_reason = ""
        self.peer_gone = False
        self.wait_slice: gevent.Timeout | None = None  # made on the first wait for a full socket
        self.grant: Grant | None = None  # with --auth jwt: what the client may subscribe to
        self.auth_timer = None  # libev timer: auth deadline, then the token's expiry

    # -- lifecycle -------------------------------------------------------
    def start(self, received: bytes) -> None:
        """Handle `received` (what the upgrade's reads took past the request), then wait for more.

        Runs in pywsgi's handler greenlet, which ends when this returns: the
        connection owns the socket from here (see ShardServer._serve_ws).
        """
        self.frames.feed(received)
        self._read_burst()

    def _readable(self) -> None:
        """libev: the client sent something (or hung up). In the hub: no blocking here."""
        self.sock._read_event.stop()
        gevent.spawn_raw(self._read_burst)

    def _read_burst(self) -> None:
        """Handle everything received, then re-arm the watcher and return, or finish the connection."""
        counters = self.server.counters
        counters["readers_active"] += 1
        try:
            try:
                if self._read_available():
                    self.sock._read_event.start(self._readable)
                    return
            except Exception:  # a bug must not leak the connection: close it, and say so in the log
                log.exception("conn %d: reading failed", self.conn_id)
                self.close(Close.INTERNAL_ERROR, "internal error")
            self._finish()
        finally:
            counters["readers_active"] -= 1

    def _finish(self) -> None:
        """Reading is over: let the writer send the close frame, then release everything."""
        self.sock._read_event.stop()
        if self.auth_timer is not None:
            self.auth_timer.close()
        self.server.hub.remove(self.box)
        if self.peer_gone:
            if self.writer is not None:
                self.writer.kill(block=False)  # nothing can be written to a dead socket
        else:
            if self.close_code is None:
                self.close(Close.GOING_AWAY, "")
            writer = self.writer
            if writer is not None:
                writer.join(timeout=2)  # let it flush and send the close frame
                writer.kill(block=False)
        with contextlib.suppress(OSError):
            # Unread input would make close() send a reset, which may discard the
            # close frame before the client reads it (pywsgi reads it out too).
            self.raw.recv(16384)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.finished(self)

    def ping(self, now: float) -> None:
        """Queue a WebSocket ping; the client's pong (any frame) proves it is alive."""
        self.last_ping = now
        self.push(PING_FRAME)

    def push(self, frame: bytes, token: str | None = None) -> None:
        """Queue a reply, ping or snapshot (ticks come through the hub, which counts its overflows)."""
        box = self.box
        was_open = not (box.overflowed or box.closed)
        if not box.push(frame, token) and was_open and box.overflowed:
            self._overflowed()

    def check_behind(self) -> None:
        """Measure how far behind the client is when no frame comes to do it (see Outbox.check).

        Its data may sit unread in the socket while its tokens are quiet, or the
        writer may wait on a full socket: either way no push measures it.
        """
        box = self.box
        if not (box.overflowed or box.closed) and not box.check():
            self._overflowed()

    def _overflowed(self) -> None:
        """Count an overflow found outside the hub's fan-out, and drop the client's subscriptions."""
        hub = self.server.hub
        hub.counters.clients_overflowed += 1
        hub.remove(self.box)

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to flush (unless overflowed), send a close frame and hang up."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._wake()

    # -- authentication (--auth jwt) --------------------------------------
    def begin_auth(self, grant: Grant | None) -> None:
        """Adopt the grant verified at the upgrade, or give the client --auth-timeout-s to send one."""
        if self.server.cfg.auth != "jwt":
            return
        if grant is not None:
            self._adopt(grant)
        else:
            self._arm(self.server.cfg.auth_timeout_s, Close.AUTH_TIMEOUT, "no valid token in time")

    def _auth(self, req: Auth) -> None:
        """Authenticate, or refresh: a new grant and expiry; subscriptions it does not cover are dropped.

        A bad token closes the connection (4003, or 4011 when expired), also on a
        refresh: keeping an old grant alive on a failed refresh would let a
        client outlive a revoked one.
        """
        verifier = self.server.cfg.verifier
        if verifier is None:
            self._error(ProtocolError(ErrorCode.BAD_REQUEST, "authentication is off on this shard",
                                      req.req_id))
            return
        try:
            grant = verifier.verify(req.token, time.time())
        except AuthError as exc:
            self.server.counters["auth_failures"] += 1
            reason = exc.reason.encode("ascii", "replace").decode()[:100]  # whole characters only
            self.close(Close.TOKEN_EXPIRED if exc.expired else Close.AUTH_FAILED, reason)
            return
        dropped = self._adopt(grant)
        if dropped:
            self.push(_json_frame({"type": "unsubscribed", "tokens": list(dropped), "reason": "grant"}))
        self.push(_json_frame({"type": "authenticated", "expires": int(grant.expires_at)}, req.req_id))

    def _adopt(self, grant: Grant) -> tuple[str, ...]:
        """Make `grant` the connection's; return the subscriptions it dropped (outside the grant)."""
        self.grant = grant
        self._arm(grant.expires_at - time.time(), Close.TOKEN_EXPIRED, "token expired")
        dropped = grant.forbidden(sorted(self.box.tokens))
        if dropped:
            self.server.hub.unsubscribe(self.box, dropped)
        return dropped

    def _arm(self, delay_s: float, code: Close, reason: str) -> None:
        """Close with `code` after `delay_s` unless re-armed (a libev timer: no greenlet per client)."""
        if self.auth_timer is not None:
            self.auth_timer.close()
        self.auth_timer = gevent.get_hub().loop.timer(max(0.0, delay_s))
        self.auth_timer.start(self._auth_deadline, code, reason)

    def _auth_deadline(self, code: Close, reason: str) -> None:
        if self.close_code is None:
            self.server.counters["auth_closed"] += 1
            self.close(code, reason)

    # -- reading ---------------------------------------------------------
    def _read_available(self) -> bool:
        """Handle every whole message received so far: True to wait for more, False when done.

        Never waits: a frame not yet whole stays in the reader's buffer for the
        next time the socket is readable.
        """
        frames = self.frames
        handled = 0
        while self.close_code is None:
            msg = frames.next()
            if msg is not None:
                self._on_message(msg)
                handled += 1
                if handled % YIELD_EVERY_MESSAGES == 0:
                    gevent.sleep(0)  # a client that never stops sending must not hold the loop
                continue
            try:
                data = self.raw.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:  # reset: nothing can be written either
                self.peer_gone = True
                return False
            if not data:  # the client hung up without a close frame
                return False
            self.last_rx = time.monotonic()
            frames.feed(data)
        return False

    def _on_message(self, msg: Inbound) -> None:
        if isinstance(msg, Text):
            self._handle_text(msg.text)
        elif isinstance(msg, WsPing):
            self.push(ws_frame(msg.payload, OP_PONG))
        elif isinstance(msg, PeerClose):
            self.close(msg.code if _echoable(msg.code) else Close.NORMAL, "")
        elif isinstance(msg, Reject):
            self.close(msg.code, msg.reason)
        # a pong: its arrival (last_rx) is all the keepalive needs

    def _handle_text(self, text: str) -> None:
        if not self.bucket.take():
            self.rate_strikes += 1
            if self.rate_strikes > MAX_RATE_STRIKES:
                self.close(Close.RATE_LIMITED, "request rate limit exceeded")
            else:
                self._error(ProtocolError(ErrorCode.RATE_LIMITED, "too many requests, slow down"))
            return
        req = parse_request(text, self.server.cfg.max_tokens_per_request)
        if isinstance(req, ProtocolError):
            self._error(req)
        elif isinstance(req, Ping):
            self.push(ack_frame("pong", None, req.req_id))
        elif isinstance(req, Auth):
            self._auth(req)
        elif self.grant is None and self.server.cfg.auth == "jwt":
            self._error(ProtocolError(ErrorCode.UNAUTHENTICATED,
                                      'send {"op":"auth","token":...} first', req.req_id))
        elif isinstance(req, Subscribe):
            self._subscribe(req)
        else:
            self.server.hub.unsubscribe(self.box, req.tokens)
            self.push(ack_frame("unsubscribed", req.tokens, req.req_id))

    def _subscribe(self, req: Subscribe) -> None:
        """Subscribe to all of the request's tokens, or (on any refusal) to none of them."""
        if self.grant is not None:
            denied = self.grant.forbidden(req.tokens)
            if denied:
                self._forbidden(denied, req.req_id)
                return
        limit = self.server.cfg.max_subscriptions_per_client
        new = [t for t in req.tokens if t not in self.box.tokens]
        if len(self.box.tokens) + len(new) > limit:
            msg = f"at most {limit} subscriptions per connection"
            self._error(ProtocolError(ErrorCode.TOO_MANY_TOKENS, msg, req.req_id))
            return
        hub = self.server.hub
        fresh = sum(1 for t in new if t not in hub.subs)
        if fresh and len(hub.subs) + fresh > self.server.cfg.max_shard_tokens:
            msg = f"this shard carries its maximum of {self.server.cfg.max_shard_tokens} tokens"
            self._error(ProtocolError(ErrorCode.CAPACITY, msg, req.req_id))
            return
        hub.subscribe(self.box, new)
        for token in new:  # tokens the shard already carries: their last value at once
            frame = hub.snapshot(token)
            if frame is not None:
                self.push(frame, token)
        if new:
            # Ack once the registry knows, so ticks flow from the moment the client sees it.
            self.server.writer.wait_synced(self.server.cfg.ack_timeout_s)
        self.push(ack_frame("subscribed", req.tokens, req.req_id))

    def _error(self, err: ProtocolError) -> None:
        self.server.counters["errors_sent"] += 1
        self.push(error_frame(err))

    def _forbidden(self, denied: tuple[str, ...], req_id: int | str | None) -> None:
        """The `forbidden` error, listing the tokens outside the grant (nothing was subscribed)."""
        self.server.counters["errors_sent"] += 1
        shown = ", ".join(denied[:10]) + (", ..." if len(denied) > 10 else "")
        self.push(_json_frame({"type": "error", "code": str(ErrorCode.FORBIDDEN),
                               "message": f"not granted: {shown}", "tokens": list(denied)}, req_id))

    # -- writing ---------------------------------------------------------
    def _write_now(self, frame: bytes, ts_ms: int) -> int:
        """Outbox write-through: one non-blocking send; the bytes the socket took."""
        if self.close_code is not None:
            return 0  # the writer orders what is left before the close frame
        try:
            sent = self.raw.send(frame)
        except OSError:  # full (EAGAIN) or broken: the writer waits or finds out and hangs up
            return 0
        if sent == len(frame):
            server = self.server
            server.counters["frames_written"] += 1
            if ts_ms:
                server.latency.observe(time.time() - ts_ms / 1000)
        return sent

    def _unacked(self) -> int:
        """Bytes on the socket the client's TCP has not acknowledged (0 where unknown)."""
        if SIOCOUTQ is None:
            return 0
        try:
            return _INT.unpack(fcntl.ioctl(self.raw.fileno(), SIOCOUTQ, _INT_ZERO))[0]
        except OSError:  # closed meanwhile
            return 0

    def _wake(self) -> None:
        """Something is queued or the connection is closing: make sure a writer runs."""
        if self.writer is None:
            self.writer = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        """Flush the outbox, then exit; when closing, send the close frame and hang up.

        On overflow the frame being written is finished (a close frame in the
        middle of one would be garbage to the client), the rest dropped, and the
        close frame sent within CLOSE_TIMEOUT_S; a client that takes none of it
        is reset.
        """
        box, counters = self.box, self.server.counters
        latency = self.server.latency
        hang_up = True
        graceful = False
        try:
            box.busy = True
            rest = b""
            while box.pending and not box.overflowed:
                frames, continues = box.take()
                data = frames[0] if len(frames) == 1 else b"".join(frames)
                sent = self._send(data)
                if sent < len(data):  # overflowed meanwhile
                    rest = data[sent:frame_end(frames, sent, continues)]
                    break
                counters["frames_written"] += len(frames)
                if box.oldest_ts_ms:
                    # Upper bound: every frame of this write counted at the oldest one's age.
                    latency.observe(time.time() - box.oldest_ts_ms / 1000, len(frames))
                    if not box.pending:  # else the rest is newer: the old age stays an upper bound
                        box.oldest_ts_ms = 0
            if box.overflowed:
                rest += box.discard()
                if self.close_code is None:
                    self.close_code = Close.SLOW_CONSUMER
                    self.close_reason = "client too slow: outbox overflowed"
            if self.close_code is None:
                box.busy = False
                hang_up = False  # idle again: the next push writes through or wakes a new writer
            else:
                end = rest + close_frame(self.close_code, self.close_reason)
                self._make_room(len(end))
                graceful = self._send(end, closing=True) == len(end)
        except TimeoutError:  # nothing taken for write_timeout_s: reset, no close frame can fit
            counters["clients_write_timeout"] += 1
        except OSError:  # broken
            pass
        finally:
            self.writer = None
            if hang_up:
                self._hang_up(graceful)

    def _send(self, data: bytes, closing: bool = False) -> int:
        """Write `data`, waiting while the socket is full; return the bytes written.

        Stops early once the outbox has overflowed (the caller closes), unless
        `closing`. While the socket stays full, how far behind the client is
        gets measured every wait slice: no new tick may come to do it. OSError
        when the socket breaks or takes nothing for write_timeout_s; when
        `closing`, gives up after CLOSE_TIMEOUT_S instead.
        """
        box = self.box
        view = memoryview(data)
        limit_s = CLOSE_TIMEOUT_S if closing else self.server.cfg.write_timeout_s
        sent = 0
        stuck_since = 0.0
        while sent < len(data) and (closing or not box.overflowed):
            try:
                n = self.raw.send(view[sent:])
            except (BlockingIOError, InterruptedError):
                n = 0
            if n:
                sent += n
                box.wrote(n)
                stuck_since = 0.0
                continue
            now = time.monotonic()
            if not stuck_since:
                stuck_since = now
            elif now - stuck_since >= limit_s:
                if closing:
                    break
                raise TimeoutError(f"client took nothing for {limit_s} s")
            if not self._wait_writable() and not closing:
                self.check_behind()
        return sent

    def _wait_writable(self) -> bool:
        """Wait until the socket takes data (True) or one wait slice has passed (False)."""
        timer = self.wait_slice
        if timer is None:
            slice_s = min(0.5, max(0.05, self.server.cfg.max_behind_s / 4))
            timer = self.wait_slice = gevent.Timeout(slice_s)
        timer.start()
        try:
            self.sock._wait(self.sock._write_event)
        except gevent.Timeout as t:
            if t is not timer:
                raise
            return False
        finally:
            timer.cancel()
        return True

    def _make_room(self, nbytes: int) -> None:
        """Grow the socket's send buffer so `nbytes` more fit now.

        A client is usually closed as too slow while it is not reading, so a
        close frame would wait for it and be dropped at CLOSE_TIMEOUT_S: the
        client would see a bare disconnect instead of 4008. Queued in the
        kernel, it reaches a client that reads later: the kernel keeps
        delivering after close. Costs at most a frame beyond the buffer. Not
        possible past net.core.wmem_max, which an autotuned buffer may exceed:
        setting it would shrink the buffer instead.
        """
        with contextlib.suppress(OSError):
            cur = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)  # twice what was set
            want = cur // 2 + nbytes + ROOM_SLACK_BYTES
            if want <= WMEM_MAX:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want)

    def _hang_up(self, graceful: bool) -> None:
        """Shut the socket; unless the close frame went out, make close() reset it.

        A reset frees at once what a client that reads nothing would otherwise
        pin in the kernel for minutes.
        """
        self.box.closed = True
        with contextlib.suppress(OSError):
            if not graceful:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
            self.sock.shutdown(socket.SHUT_RDWR)


def _json_frame(doc: dict[str, object], req_id: int | str | None = None) -> bytes:
    """A reply frame with fields beyond what shard.protocol's acks carry."""
    if req_id is not None:
        doc["id"] = req_id
    return ws_frame(json.dumps(doc, separators=(",", ":")).encode())


def _echoable(code: int) -> bool:
    """Close codes a server may send back (1005/1006/1015 are reserved for local use)."""
    return code in (1000, 1001) or 1007 <= code <= 1014 or 3000 <= code <= 4999
