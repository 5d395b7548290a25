"""One client's outbound queue: bounded FIFO, then conflation, then disconnect. No I/O.

Per-client FIFO holds while the client keeps up. Once `max_frames` are
waiting it has fallen behind: further ticks are *conflated* — only the newest
frame of each token is kept — until the writer has flushed everything, so the
client skips stale prices instead of queueing them. Per-token order still
holds (every conflated frame is newer than any queued frame of its token). A
client that stays behind for longer than `max_behind_s` is marked `overflowed`
and the adapter closes it with `Close.SLOW_CONSUMER`. Nothing here ever makes
the fan-out wait.

Write-through: while nothing is queued and the writer is idle, `push` hands
the frame to the adapter's non-blocking `direct(frame, ts_ms)` (one send
syscall, no greenlet switch); whatever the socket does not take is queued,
tail first, and the writer woken. A live client thus costs one syscall per
frame; only a client that is behind costs a writer greenlet.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

CONTROL_HEADROOM = 256  # acks/errors may exceed max_frames by this much, then overflow


class Outbox:
    """Frames waiting for one client's writer."""

    __slots__ = ("behind_since", "busy", "clock", "closed", "conflated", "conflations", "conn_id",
                 "direct", "frames", "max_behind_s", "max_frames", "oldest_ts_ms", "overflowed",
                 "tokens", "wake")

    def __init__(self, max_frames: int, wake: Callable[[], None], conn_id: int = 0,
                 max_behind_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 direct: Callable[[bytes, int], int] | None = None) -> None:
        self.frames: deque[bytes] = deque()
        self.conflated: dict[str, bytes] = {}
        self.max_frames = max_frames
        self.max_behind_s = max_behind_s
        self.wake = wake
        self.clock = clock
        self.behind_since = 0.0
        self.conflations = 0
        self.overflowed = False
        self.closed = False
        self.tokens: set[str] = set()
        self.conn_id = conn_id
        # Kafka timestamp of the oldest tick waiting (0: none): the writer's latency sample.
        self.oldest_ts_ms = 0
        self.direct = direct
        self.busy = False  # the writer is sending: no write-through (bytes would interleave)

    def push(self, frame: bytes, token: str | None = None, ts_ms: int = 0) -> bool:
        """Queue a frame (a tick of `token`, or a control frame when None).

        `ts_ms` is the tick's Kafka timestamp (0 for snapshots and control
        frames). False, with `overflowed` set, when the client has been behind
        too long.
        """
        if self.closed or self.overflowed:
            return False
        if self.direct is not None and not self.busy and not self.frames and not self.conflated:
            sent = self.direct(frame, ts_ms)
            if sent == len(frame):
                return True
            if sent > 0:  # a frame's tail must follow at once, whole: queue it, never conflate it
                frame, token = frame[sent:], None
        if ts_ms and not self.oldest_ts_ms:
            self.oldest_ts_ms = ts_ms
        if token is not None and (self.conflated or len(self.frames) >= self.max_frames):
            return self._conflate(frame, token)
        if len(self.frames) >= self.max_frames + CONTROL_HEADROOM:
            return self._overflow()
        was_idle = not self.frames and not self.conflated
        self.frames.append(frame)
        if was_idle:
            self.wake()
        return True

    def _conflate(self, frame: bytes, token: str) -> bool:
        now = self.clock()
        if not self.conflated:
            self.behind_since = now
        elif now - self.behind_since > self.max_behind_s:
            return self._overflow()
        if token in self.conflated:
            self.conflations += 1
        self.conflated[token] = frame
        return True

    def _overflow(self) -> bool:
        self.overflowed = True
        self.wake()
        return False

    def forget(self, token: str) -> None:
        """Drop a conflated tick of a token the client just unsubscribed from."""
        self.conflated.pop(token, None)

    @property
    def pending(self) -> bool:
        return bool(self.frames or self.conflated)

    def drain(self, max_bytes: int = 1 << 16) -> tuple[bytes, int]:
        """Pop frames to write, up to about `max_bytes`: (joined bytes, frame count).

        The FIFO goes first; the conflated frames follow once it is empty, which
        ends the client's time behind.
        """
        frames = self.frames
        if not frames:
            if not self.conflated:
                return b"", 0
            out = list(self.conflated.values())
            self.conflated.clear()
            return b"".join(out), len(out)
        out = [frames.popleft()]
        size = len(out[0])
        while frames and size < max_bytes:
            f = frames.popleft()
            out.append(f)
            size += len(f)
        return (b"".join(out) if len(out) > 1 else out[0]), len(out)
