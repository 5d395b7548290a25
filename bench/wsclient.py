"""A minimal, cheap WebSocket client for the fleet: handshake, masked sends, bulk frame parsing.

websocket-client costs tens of microseconds per frame in Python; the fleet
must receive tens of thousands of frames per second on the same two cores as
the system under test, so it parses the server's (unmasked) frames itself,
many per recv().
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Iterator

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"upgrade refused with HTTP {status}")
        self.status = status


class RawWs:
    __slots__ = ("buf", "closed", "sock")

    def __init__(self, host: str, port: int, path: str = "/ws", timeout_s: float = 30) -> None:
        sock = socket.create_connection((host, port), timeout=timeout_s)
        try:
            self._upgrade(sock, host, port, path)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def over(cls, sock: socket.socket, host: str, port: int, path: str = "/ws") -> RawWs:
        """Upgrade an already connected socket (one made with socket options of its own)."""
        ws = cls.__new__(cls)
        ws._upgrade(sock, host, port, path)
        return ws

    def _upgrade(self, sock: socket.socket, host: str, port: int, path: str) -> None:
        key = base64.b64encode(os.urandom(16))
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     % (path.encode(), host.encode(), port, key))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise HandshakeError(0)
            head += chunk
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            raise HandshakeError(status)
        sock.settimeout(None)
        self.sock = sock
        self.buf = bytearray(head.split(b"\r\n\r\n", 1)[1])
        self.closed = False

    def send(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        """Clients must mask; a zero mask keeps the payload as is (still a valid masked frame)."""
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(header + b"\x00\x00\x00\x00" + payload)

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(opcode, payload) of every frame, as they arrive; ends when the peer closes."""
        sock = self.sock
        while True:
            chunk = sock.recv(262144)
            if not chunk:
                return
            buf = self.buf
            buf += chunk
            pos, end = 0, len(buf)
            while end - pos >= 2:
                b1 = buf[pos + 1] & 0x7F
                hdr = 2
                if b1 == 126:
                    if end - pos < 4:
                        break
                    b1 = (buf[pos + 2] << 8) | buf[pos + 3]
                    hdr = 4
                elif b1 == 127:
                    if end - pos < 10:
                        break
                    b1 = struct.unpack_from("!Q", buf, pos + 2)[0]
                    hdr = 10
                if end - pos < hdr + b1:
                    break
                op = buf[pos] & 0x0F
                payload = bytes(buf[pos + hdr:pos + hdr + b1])
                pos += hdr + b1
                yield op, payload
            if pos:
                del buf[:pos]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
