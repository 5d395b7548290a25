"""Client WebSocket frames from a byte stream, incrementally. No I/O.

The shard reads a client's socket only when libev says it is readable and
hands whatever arrived to `FrameReader.feed`; `next` returns each whole
message as it completes. Nothing waits for the rest of a frame, so an idle
client needs no greenlet parked in a read (a greenlet's saved stack and its
frame chunk cost about 9–13 KiB per connection; see docs/benchmarks.md).

What the shard accepts of RFC 6455 is deliberately narrow, and every refusal
names its close code (`Reject`): masked frames only, no reserved bits, no
fragmented messages, no binary messages, text that is UTF-8, frames up to
`max_frame_bytes` (refused from the header alone, before their payload is
buffered), control frames whole and at most 125 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from shard.codes import Close

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_CONTROL_PAYLOAD = 125


@dataclass(frozen=True, slots=True)
class Text:
    """A text message, decoded."""

    text: str


@dataclass(frozen=True, slots=True)
class Ping:
    """A WebSocket ping: its payload goes back in the pong."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A WebSocket pong (an answer to the shard's keepalive ping)."""


@dataclass(frozen=True, slots=True)
class PeerClose:
    """The client's close frame and the code it carried (1000 when it carried none)."""

    code: int


@dataclass(frozen=True, slots=True)
class Reject:
    """A frame the shard refuses: the connection closes with `code`."""

    code: Close
    reason: str


Inbound = Text | Ping | Pong | PeerClose | Reject
PONG = Pong()


def unmask(payload: bytes | bytearray, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte masking key, as one big-integer operation (no per-byte loop)."""
    n = len(payload)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


class FrameReader:
    """Buffers one client's bytes and cuts them into messages.

    The buffer holds at most one partial frame (≤ `max_frame_bytes` plus a
    14-byte header) and what the last `feed` brought. After a `PeerClose` or
    a `Reject` the reader is done: `next` returns None from then on.
    """

    __slots__ = ("buf", "done", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self.buf = bytearray()
        self.max_frame_bytes = max_frame_bytes
        self.done = False

    def feed(self, data: bytes) -> None:
        """Append bytes received from the client."""
        if not self.done:
            self.buf += data

    def next(self) -> Inbound | None:
        """The next whole message, a refusal, or None until more bytes come."""
        if self.done:
            return None
        out = self._parse()
        if isinstance(out, PeerClose | Reject):
            self.done = True
            self.buf = bytearray()
        return out

    def _parse(self) -> Inbound | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
        if opcode >= OP_CLOSE:
            if not fin:
                return Reject(Close.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                return Reject(Close.PROTOCOL_ERROR, "control frame over 125 bytes")
        head = 2
        if length == 126:
            head = 4
        elif length == 127:
            head = 10
        if len(buf) < head:
            return None
        if head > 2:
            length = int.from_bytes(buf[2:head], "big")
        refusal = self._refusal(b0, b1, length)
        if refusal is not None:
            return refusal
        end = head + 4 + length
        if len(buf) < end:
            return None
        payload = unmask(buf[head + 4:end], bytes(buf[head:head + 4]))
        del buf[:end]
        return _message(opcode, payload)

    def _refusal(self, b0: int, b1: int, length: int) -> Reject | None:
        """What the header alone says is refused (checked before any payload is buffered)."""
        opcode = b0 & 0x0F
        if b0 & 0x70:
            return Reject(Close.PROTOCOL_ERROR, "reserved bits set")
        if not b1 & 0x80:  # RFC 6455 5.1: a server must close on an unmasked client frame
            return Reject(Close.PROTOCOL_ERROR, "unmasked client frame")
        if opcode == OP_CONTINUATION or (opcode < OP_CLOSE and not b0 & 0x80):
            return Reject(Close.UNSUPPORTED_DATA, "fragmented messages not supported")
        if length > self.max_frame_bytes:
            return Reject(Close.MESSAGE_TOO_BIG, f"frame over {self.max_frame_bytes} bytes")
        return None


def _message(opcode: int, payload: bytes) -> Inbound:
    """A whole frame's payload as the message it carries."""
    if opcode == OP_TEXT:
        try:
            return Text(payload.decode("utf-8"))
        except UnicodeDecodeError:
            return Reject(Close.INVALID_PAYLOAD, "text frame is not UTF-8")
    if opcode == OP_PING:
        return Ping(payload)
    if opcode == OP_PONG:
        return PONG
    if opcode == OP_CLOSE:
        return PeerClose(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else Close.NORMAL)
    if opcode == OP_BINARY:
        return Reject(Close.UNSUPPORTED_DATA, "binary frames not supported")
    return Reject(Close.PROTOCOL_ERROR, f"unknown opcode {opcode}")
