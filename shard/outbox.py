"""One client's outbound queue: bounded FIFO, then conflation, then disconnect. No I/O.

Per-client FIFO holds while the client keeps up. Once it has fallen behind —
`max_frames` frames or `max_bytes` bytes waiting, or stalled for half of
`max_behind_s` — further ticks are *conflated*: only the newest frame of each
token is kept until the writer has flushed everything, so the client skips
stale prices instead of queueing them. Per-token order still holds (every
conflated frame is newer than any queued frame of its token). A client
stalled for longer than `max_behind_s`, or conflated for that long without
ever flushing, is marked `overflowed` and the adapter closes it with
`Close.SLOW_CONSUMER`. Nothing here ever makes the fan-out wait.

"Stalled" is time, not volume, so it means the same at any tick rate: how
long the client has had data it did not acknowledge while acknowledging none
of it — data waiting here, in the writer's hands, or in the kernel's send
buffer (the adapter's `unacked()` reports those bytes, SIOCOUTQ). Counting
only this queue let the kernel's buffers (up to 4 MiB) hide a client that had
stopped reading. A client that acknowledges data is not stalled however much
it has left to read (a burst of large payloads; the shard itself pausing):
the bounds above keep what it may queue finite.

Every byte gets a stream position. The stall starts at the later of two
times: when the client's TCP last acknowledged more (seen at a measure), and
when its oldest unacknowledged byte was put in the stream. To date bytes
without a timestamp per frame, a checkpoint (position, time) is kept at most
every `max_behind_s / CHECKPOINTS` seconds; a byte's time is that of the last
checkpoint at or before it. The kernel is asked only once the oldest
checkpoint is `gate_s` old — about once a second per busy client — since
nothing younger can be stalled longer; a stall is thus seen at most `gate_s`
late.

Write-through: while nothing is queued and the writer is idle, `push` hands
the frame to the adapter's non-blocking `direct(frame, ts_ms)` (one send
syscall, no greenlet switch); whatever the socket does not take is queued,
tail first, and the writer woken. A live client thus costs one syscall per
frame; only a client that is behind costs a writer greenlet.

Memory per client: at most `max_frames` + CONTROL_HEADROOM frames and
`max_bytes` + CONTROL_HEADROOM_BYTES bytes in the FIFO, plus one conflated
frame per subscribed token (frames are shared with the other subscribers).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

CONTROL_HEADROOM = 256  # acks/errors may exceed max_frames by this much, then overflow
CONTROL_HEADROOM_BYTES = 64 << 10  # ...and max_bytes by this much
CHECKPOINTS = 64  # stream checkpoints per max_behind_s: the precision of a stall's start
MAX_GATE_S = 1.0  # longest wait before asking the kernel about data that may be stalled


def frame_end(frames: list[bytes], sent: int, continues: bool) -> int:
    """How far a write of `frames` (joined) must go so the stream stops between two frames.

    `sent`: bytes of the joined write already on the socket; `continues`: the
    first element is the rest of a frame whose head was written before. Used
    to finish the frame a client is in the middle of before a close frame.
    """
    if sent == 0 and not continues:
        return 0
    end = 0
    for f in frames:
        end += len(f)
        if end >= sent:
            break
    return end


class Outbox:
    """Frames waiting for one client's writer, and how long the client has been behind."""

    __slots__ = ("acked_seen", "busy", "check_every_s", "clock", "closed", "conflated",
                 "conflated_since", "conflations", "conn_id", "direct", "frames", "gate_s", "lag_s",
                 "lagging", "marks", "max_behind_s", "max_bytes", "max_frames", "next_check",
                 "oldest_ts_ms", "overflowed", "pos_in", "progress_at", "queued_bytes", "tail",
                 "tokens", "unacked", "wake", "written")

    def __init__(self, max_frames: int, wake: Callable[[], None], conn_id: int = 0,
                 max_behind_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 direct: Callable[[bytes, int], int] | None = None, max_bytes: int = 16 << 20,
                 unacked: Callable[[], int] = lambda: 0) -> None:
        self.frames: deque[bytes] = deque()
        self.conflated: dict[str, bytes] = {}
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.max_behind_s = max_behind_s
        self.lag_s = max_behind_s / 2  # stalled this long, its ticks are conflated
        self.check_every_s = max_behind_s / CHECKPOINTS
        self.gate_s = min(MAX_GATE_S, max_behind_s / 4)
        self.wake = wake
        self.clock = clock
        self.unacked = unacked  # bytes written to the socket and not yet acknowledged by the client
        self.queued_bytes = 0  # in `frames` and `conflated`
        self.conflated_since = 0.0
        self.conflations = 0
        self.lagging = False  # the last measure found the client stalled for more than lag_s
        self.overflowed = False
        self.closed = False
        self.tokens: set[str] = set()
        self.conn_id = conn_id
        # Stream positions: bytes put in the stream (written through or queued) and bytes written.
        self.pos_in = 0
        self.written = 0
        self.marks: deque[tuple[int, float]] = deque()  # (position, time it was put in the stream)
        self.acked_seen = 0  # stream position the client had acknowledged at the last measure
        self.progress_at = clock()  # when a measure last saw it acknowledge more
        self.next_check = 0.0
        self.tail: bytes | None = None  # the queued rest of a frame partly written through
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
        now = self.clock()
        if now >= self.next_check and not self._check(now):
            return False
        size = len(frame)
        if self.direct is not None and not self.busy and not self.frames and not self.conflated:
            self._mark(now)
            sent = self.direct(frame, ts_ms)
            self.pos_in += size
            self.written += sent
            if sent == size:
                return True
            if sent > 0:  # a frame's tail must follow at once, whole: queue it, never conflate it
                frame = self.tail = frame[sent:]
            if ts_ms and not self.oldest_ts_ms:
                self.oldest_ts_ms = ts_ms
            self.frames.append(frame)  # already in the stream: no conflation, no bound
            self.queued_bytes += len(frame)
            self.wake()
            return True
        if ts_ms and not self.oldest_ts_ms:
            self.oldest_ts_ms = ts_ms
        if token is not None and (self.conflated or self.lagging or len(self.frames) >= self.max_frames
                                  or self.queued_bytes >= self.max_bytes):
            return self._conflate(frame, token, now)
        if (len(self.frames) >= self.max_frames + CONTROL_HEADROOM
                or self.queued_bytes >= self.max_bytes + CONTROL_HEADROOM_BYTES):
            return self._overflow()
        was_idle = not self.frames and not self.conflated
        self._mark(now)
        self.frames.append(frame)
        self.queued_bytes += size
        self.pos_in += size
        if was_idle:
            self.wake()
        return True

    def check(self) -> bool:
        """Measure whether the client is behind, also when no frame comes to do it.

        False, with `overflowed` set, when it has been stalled, or conflated,
        for longer than max_behind_s.
        """
        if self.closed or self.overflowed:
            return False
        return self._check(self.clock())

    def stalled_s(self, now: float) -> float:
        """How long the client has had data unacknowledged and acknowledged none (one `unacked()`)."""
        acked = self.written - self.unacked()
        if acked != self.acked_seen:
            self.acked_seen = acked
            self.progress_at = now  # sometime since the last measure: count it as now
        marks = self.marks
        if acked >= self.pos_in or not marks:
            marks.clear()  # all acknowledged: the next byte put in the stream starts afresh
            return 0.0
        while len(marks) > 1 and marks[1][0] <= acked:
            marks.popleft()
        return now - max(self.progress_at, marks[0][1])

    def _check(self, now: float) -> bool:
        self.next_check = now + self.check_every_s
        if self.conflated and now - self.conflated_since > self.max_behind_s:
            return self._overflow()  # it cannot even flush its bounded queue in time
        if not self.marks or now - self.marks[0][1] <= self.gate_s:
            self.lagging = False  # nothing unacknowledged is older than that: no need to ask
            return True
        stalled = self.stalled_s(now)
        if stalled > self.max_behind_s:
            return self._overflow()
        self.lagging = stalled > self.lag_s
        return True

    def _mark(self, now: float) -> None:
        """Checkpoint the stream position before bytes are put in at time `now`."""
        marks = self.marks
        if not marks or now - marks[-1][1] >= self.check_every_s:
            marks.append((self.pos_in, now))

    def _conflate(self, frame: bytes, token: str, now: float) -> bool:
        was_idle = not self.frames and not self.conflated
        if not self.conflated:
            self.conflated_since = now
        old = self.conflated.get(token)
        if old is not None:
            self.conflations += 1
            self.queued_bytes -= len(old)
        self.conflated[token] = frame
        self.queued_bytes += len(frame)
        if was_idle:
            self.wake()
        return True

    def _overflow(self) -> bool:
        self.overflowed = True
        self.wake()
        return False

    def forget(self, token: str) -> None:
        """Drop a conflated tick of a token the client just unsubscribed from."""
        old = self.conflated.pop(token, None)
        if old is not None:
            self.queued_bytes -= len(old)

    def wrote(self, nbytes: int) -> None:
        """The writer put `nbytes` more of the stream on the socket."""
        self.written += nbytes

    def discard(self) -> bytes:
        """Drop everything queued (the client is being closed); return what must still be sent.

        That is the queued rest of a frame partly written through, if any: the
        stream has to reach the end of that frame before a close frame.
        """
        rest = self.tail or b""
        self.tail = None
        self.frames.clear()
        self.conflated.clear()
        self.queued_bytes = 0
        return rest

    @property
    def pending(self) -> bool:
        return bool(self.frames or self.conflated)

    def take(self, max_bytes: int = 1 << 16) -> tuple[list[bytes], bool]:
        """Pop frames to write, up to about `max_bytes`: (frames, first one continues a frame).

        The FIFO goes first; the conflated frames follow once it is empty, which
        ends the client's time behind. The second value tells the writer that
        the first frame is the rest of one partly written through (see
        `frame_end`).
        """
        frames = self.frames
        if not frames:
            if not self.conflated:
                return [], False
            out = list(self.conflated.values())
            self.conflated.clear()
            size = sum(map(len, out))
            self.queued_bytes -= size
            self._mark(self.clock())
            self.pos_in += size
            return out, False
        first = frames.popleft()
        continues = first is self.tail
        self.tail = None
        out = [first]
        size = len(first)
        while frames and size < max_bytes:
            f = frames.popleft()
            out.append(f)
            size += len(f)
        self.queued_bytes -= size
        return out, continues

    def drain(self, max_bytes: int = 1 << 16) -> tuple[bytes, int]:
        """Pop frames to write, up to about `max_bytes`: (joined bytes, frame count)."""
        out, _ = self.take(max_bytes)
        if not out:
            return b"", 0
        return (b"".join(out) if len(out) > 1 else out[0]), len(out)
