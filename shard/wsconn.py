"""One WebSocket client connection: a reader loop and a writer greenlet (gevent adapter).

Every byte to the socket goes through the writer greenlet, which drains the
client's `Outbox`; the reader only parses requests and queues replies. So a
stuck socket blocks only its own writer, and frames never interleave.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING

import gevent
from geventwebsocket.exceptions import ProtocolError as WsProtocolError
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Header, WebSocket

from shard.codes import Close, ErrorCode
from shard.outbox import Outbox
from shard.protocol import (
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

if TYPE_CHECKING:
    from shard.server import ShardServer

log = logging.getLogger(__name__)
OP_PING = 0x9
OP_PONG = 0xA
MAX_RATE_STRIKES = 20
PING_FRAME = ws_frame(b"", OP_PING)


class PeerClosedError(Exception):
    """The client sent a close frame."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class InboundRejectedError(Exception):
    """An inbound frame we refuse; carries the close code to answer with."""

    def __init__(self, code: Close, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


READ_BUFFER_BYTES = 2048  # clients send little; pywsgi's default 8 KiB buffer per connection adds up


class ShardHandler(WebSocketHandler):
    """gevent-websocket's handler with a smaller read buffer (memory per idle connection)."""

    def __init__(self, sock, address, server, rfile=None) -> None:
        super().__init__(sock, address, server,
                         rfile if rfile is not None else sock.makefile("rb", READ_BUFFER_BYTES))


class LimitedWebSocket(WebSocket):
    """gevent-websocket's reader with our limits and without its own writes.

    The stock class reads a frame of any announced length into memory and
    answers pings and closes by writing to the socket from the reader, racing
    our writer. Here oversized and fragmented frames are refused before their
    payload is read, and control replies go through the connection's outbox.
    Layout-compatible (no new slots), so it is swapped in on the upgraded socket.
    """

    __slots__ = ()

    def read_frame(self):  # type: ignore[override]
        conn: Connection = self.handler.sc_conn
        header = Header.decode_header(self.stream)
        conn.last_rx = time.monotonic()
        if header.flags:
            raise WsProtocolError("reserved bits set")
        if header.opcode == self.OPCODE_CONTINUATION or (header.opcode < 8 and not header.fin):
            raise InboundRejectedError(Close.UNSUPPORTED_DATA, "fragmented messages not supported")
        if header.length > conn.max_frame_bytes:
            raise InboundRejectedError(Close.MESSAGE_TOO_BIG, f"frame over {conn.max_frame_bytes} bytes")
        payload = self.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise OSError("unexpected EOF in frame payload")
        if header.mask:
            payload = header.unmask_payload(payload)
        return header, payload

    def handle_ping(self, header, payload):  # type: ignore[override]
        self.handler.sc_conn.box.push(ws_frame(payload, OP_PONG))

    def handle_close(self, header, payload):  # type: ignore[override]
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else Close.NORMAL
        raise PeerClosedError(code)

    def receive(self):  # type: ignore[override]
        """Read one message; errors propagate to the connection loop (no writes here)."""
        return self.read_message()


class Connection:
    """Reader loop, on-demand writer greenlet and per-client limits of one WebSocket."""

    __slots__ = (
        "box",
        "bucket",
        "close_code",
        "close_reason",
        "last_ping",
        "last_rx",
        "max_frame_bytes",
        "peer_gone",
        "rate_strikes",
        "raw",
        "server",
        "sock",
        "write_timeout",
        "writer",
        "ws",
    )

    def __init__(self, server: ShardServer, ws: WebSocket, conn_id: int) -> None:
        cfg = server.cfg
        self.server = server
        self.ws = ws
        self.sock: socket.socket = ws.handler.socket
        # We coalesce frames ourselves (Outbox.drain); Nagle would instead hold a
        # tick until the client's delayed ACK of the previous frame, up to 40 ms.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.raw = self.sock._sock  # the non-blocking OS socket under gevent's wrapper
        self.max_frame_bytes = cfg.max_frame_bytes
        self.writer: gevent.Greenlet | None = None
        self.box = Outbox(cfg.outbox_frames, self._wake, conn_id, cfg.max_behind_s,
                          direct=self._write_now)
        self.bucket = TokenBucket(cfg.requests_per_s, cfg.request_burst)
        self.rate_strikes = 0
        self.last_rx = self.last_ping = time.monotonic()
        self.close_code: int | None = None
        self.close_reason = ""
        self.peer_gone = False
        self.write_timeout: gevent.Timeout | None = None  # made on the first blocking write

    # -- lifecycle -------------------------------------------------------
    def run(self) -> None:
        """Serve the connection until either side closes it."""
        try:
            self._read_loop()
        finally:
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
            self.ws.closed = True  # the stock handler must not write a close frame of its own

    def ping(self, now: float) -> None:
        """Queue a WebSocket ping; the client's pong (any frame) proves it is alive."""
        self.last_ping = now
        self.box.push(PING_FRAME)

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to flush (unless overflowed), send a close frame and hang up."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._wake()

    # -- reading ---------------------------------------------------------
    def _read_loop(self) -> None:
        while self.close_code is None:
            try:
                msg = self.ws.receive()
            except PeerClosedError as pc:
                self.close(pc.code if _echoable(pc.code) else Close.NORMAL, "")
                return
            except InboundRejectedError as rej:
                self.close(rej.code, rej.reason)
                return
            except UnicodeError:
                self.close(Close.INVALID_PAYLOAD, "text frame is not UTF-8")
                return
            except WsProtocolError as exc:
                self.close(Close.PROTOCOL_ERROR, str(exc)[:100])
                return
            except OSError:
                self.peer_gone = True
                return
            if msg is None:
                return
            if not isinstance(msg, str):
                self.close(Close.UNSUPPORTED_DATA, "binary frames not supported")
                return
            self._handle_text(msg)

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
            self.box.push(ack_frame("pong", None, req.req_id))
        elif isinstance(req, Subscribe):
            self._subscribe(req)
        else:
            self.server.hub.unsubscribe(self.box, req.tokens)
            self.box.push(ack_frame("unsubscribed", req.tokens, req.req_id))

    def _subscribe(self, req: Subscribe) -> None:
        limit = self.server.cfg.max_subscriptions_per_client
        new = [t for t in req.tokens if t not in self.box.tokens]
        if len(self.box.tokens) + len(new) > limit:
            msg = f"at most {limit} subscriptions per connection"
            self._error(ProtocolError(ErrorCode.TOO_MANY_TOKENS, msg, req.req_id))
            return
        hub = self.server.hub
        hub.subscribe(self.box, new)
        for token in new:  # tokens the shard already carries: their last value at once
            frame = hub.snapshot(token)
            if frame is not None:
                self.box.push(frame, token)
        if new:
            # Ack once the registry knows, so ticks flow from the moment the client sees it.
            self.server.writer.wait_synced(self.server.cfg.ack_timeout_s)
        self.box.push(ack_frame("subscribed", req.tokens, req.req_id))

    def _error(self, err: ProtocolError) -> None:
        self.server.counters["errors_sent"] += 1
        self.box.push(error_frame(err))

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

    def _wake(self) -> None:
        """Something is queued or the connection is closing: make sure a writer runs."""
        if self.writer is None:
            self.writer = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        """Flush the outbox, then exit (or send the close frame and hang up)."""
        box, counters = self.box, self.server.counters
        latency = self.server.latency
        hang_up = True
        try:
            box.busy = True
            while True:
                if box.overflowed:  # checked before every write: it can happen while we send
                    box.frames.clear()
                    box.conflated.clear()
                    if self.close_code is None:
                        self.close_code = Close.SLOW_CONSUMER
                        self.close_reason = "client too slow: outbox overflowed"
                if not box.pending:
                    break
                data, n = box.drain()
                self._send(data)
                counters["frames_written"] += n
                if box.oldest_ts_ms:
                    # Upper bound: every frame of this write counted at the oldest one's age.
                    latency.observe(time.time() - box.oldest_ts_ms / 1000, n)
                    if not box.pending:  # else the rest is newer: the old age stays an upper bound
                        box.oldest_ts_ms = 0
            box.busy = False
            if self.close_code is not None:
                self._send(close_frame(self.close_code, self.close_reason))
            else:
                hang_up = False  # idle again: the next push writes through or wakes a new writer
        except (OSError, gevent.Timeout):
            pass
        finally:
            self.writer = None
            if hang_up:
                self._hang_up()

    def _send(self, data: bytes) -> None:
        if self.write_timeout is None:
            self.write_timeout = gevent.Timeout(self.server.cfg.write_timeout_s)
        self.write_timeout.start()
        try:
            self.sock.sendall(data)
        finally:
            self.write_timeout.cancel()

    def _hang_up(self) -> None:
        self.box.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def _echoable(code: int) -> bool:
    """Close codes a server may send back (1005/1006/1015 are reserved for local use)."""
    return code in (1000, 1001) or 1007 <= code <= 1014 or 3000 <= code <= 4999
