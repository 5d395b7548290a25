"""WebSocket frames for tests: a client's (masked unless told otherwise) and the server's, parsed."""

from __future__ import annotations

KEY = b"\x1f\x2e\x3d\x4c"


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = True,
                 key: bytes = KEY) -> bytes:
    """A client frame as a browser would send it; `fin`, `rsv` and `masked` make it break the rules."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def server_frames(raw: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked server frame in `raw` (a cut-off tail is left out)."""
    out = []
    while len(raw) >= 2:
        n = raw[1] & 0x7F
        start = 2 if n < 126 else 4 if n == 126 else 10
        if len(raw) < start:
            break
        if n >= 126:
            n = int.from_bytes(raw[2:start], "big")
        if len(raw) < start + n:
            break
        out.append((raw[0] & 0x0F, raw[start:start + n]))
        raw = raw[start + n:]
    return out
