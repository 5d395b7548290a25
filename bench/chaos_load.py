"""The chaos suite's load: a fixed-rate tick producer and the client fleet processes it is checked by."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from kafka import KafkaProducer

from bench.workload import tick_payload
from devstack.procs import ROOT


class TickProducer:
    """Writes ticks round-robin over the tokens at a fixed rate, from a thread.

    Idempotent (a retry after a broker crash writes no second copy), with
    delivery timeouts far above a broker outage, so every sequence number
    reaches Kafka exactly once and a gap at a client is never the producer's.
    `snapshot()` is the newest sequence number *written* of each token: what a
    client can be expected to hold a moment later (a write still in the
    producer's buffer while Kafka is down counts: it is delivered once Kafka
    is back, and until then clients are not up to date).
    """

    def __init__(self, bootstrap: str, topic: str, tokens: list[str], rate: float,
                 pad_bytes: int = 60) -> None:
        self.kp = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=2, delivery_timeout_ms=300_000, request_timeout_ms=10_000,
                                max_block_ms=120_000, reconnect_backoff_max_ms=500)
        self.topic, self.tokens, self.rate = topic, tokens, rate
        self.seq = dict.fromkeys(tokens, 0)
        self.sent = self.errors = 0
        self._go = threading.Event()
        self._idle = threading.Event()
        self._quit = False
        self._pad = "0" * pad_bytes
        self._thread = threading.Thread(target=self._loop, name="producer", daemon=True)

    def start(self) -> TickProducer:
        self._go.set()
        self._thread.start()
        return self

    def _loop(self) -> None:
        i, n, start = 0, 0, time.monotonic()
        while not self._quit:
            if not self._go.is_set():
                self._idle.set()
                self._go.wait(0.2)
                continue
            due = int((time.monotonic() - start) * self.rate)
            while n < due and self._go.is_set():
                self._send(self.tokens[i])
                i, n = (i + 1) % len(self.tokens), n + 1
            time.sleep(0.005)

    def _send(self, token: str) -> None:
        seq = self.seq[token] = self.seq[token] + 1
        fut = self.kp.send(self.topic, key=token.encode(), value=tick_payload(seq, int(time.time() * 1e6),
                                                                               self._pad))
        fut.add_errback(self._failed)
        self.sent += 1

    def _failed(self, _exc: Exception) -> None:
        self.errors += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self.seq)

    def write_final(self) -> tuple[dict[str, int], float]:
        """Stop the steady stream; write one more value of every token; return them, and when Kafka
        had acknowledged them all."""
        self._go.clear()
        self._idle.wait(30)
        for token in self.tokens:
            self._send(token)
        self.kp.flush(120)
        return dict(self.seq), time.time()

    def close(self) -> None:
        self._quit = True
        self._go.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.kp.close(5)


class FleetGroup:
    """The chaos fleet processes: commands out on stdin, status and check answers in on stdout."""

    def __init__(self, urls: list[str], clients: int, procs: int, tokens: int, subs: int,
                 workdir: Path, slow: bool = False) -> None:
        self.procs: list[subprocess.Popen] = []
        self.outs: list[Path] = []
        self.status: list[dict] = []
        self.replies: dict[int, list[dict]] = {}
        self._cv = threading.Condition()
        self._next_check = 0
        per = -(-clients // procs)
        for p in range(procs):
            first, count = p * per, min(per, clients - p * per)
            out = workdir / f"chaos-fleet-{p}.json"
            cmd = [sys.executable, "-m", "bench.chaos_fleet", "--urls", ",".join(urls), "--first", str(first),
                   "--count", str(count), "--tokens", str(tokens), "--subs", str(subs), "--out", str(out)]
            if slow and p == 0:
                cmd.append("--slow")
            proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    stderr=open(workdir / f"chaos-fleet-{p}.log", "ab"),  # noqa: SIM115
                                    start_new_session=True)
            self.procs.append(proc)
            self.outs.append(out)
            self.status.append({})
            threading.Thread(target=self._read, args=(p,), daemon=True).start()

    def _read(self, i: int) -> None:
        for line in self.procs[i].stdout:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if "check" in doc:
                    with self._cv:
                        self.replies.setdefault(doc["check"], []).append(doc)
                        self._cv.notify_all()
                else:
                    self.status[i] = doc

    def total(self, key: str) -> int:
        return sum(s.get(key, 0) for s in self.status)

    def tell(self, line: str) -> None:
        for p in self.procs:
            with contextlib.suppress(BrokenPipeError, OSError):
                p.stdin.write(line + "\n")
                p.stdin.flush()

    def check(self, target: dict[str, int], since: float = 0.0, timeout_s: float = 10) -> dict[str, int]:
        """Summed over the processes: clients lagging behind `target`, not ready, frames received."""
        with self._cv:
            cid = self._next_check = self._next_check + 1
        self.tell(f"check {cid} {since} {json.dumps(target, separators=(',', ':'))}")
        with self._cv:
            self._cv.wait_for(lambda: len(self.replies.get(cid, [])) >= len(self.procs), timeout_s)
            got = self.replies.pop(cid, [])
        if len(got) < len(self.procs):
            raise TimeoutError(f"fleet check {cid}: {len(got)}/{len(self.procs)} answers")
        return {k: sum(r[k] for r in got) for k in ("lagging", "lagging_closed", "not_ready", "frames")}

    def wait_ready(self, clients: int, timeout_s: float) -> float:
        start = time.monotonic()
        while self.total("ready") < clients:
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"fleet ramp: {self.total('ready')}/{clients} subscribed")
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a fleet process exited during the ramp")
            time.sleep(0.2)
        return time.monotonic() - start

    def finish(self, timeout_s: float = 30) -> dict:
        """Stop the processes; their result documents summed (the slow client's result kept)."""
        self.tell("stop")
        docs = []
        for p, out in zip(self.procs, self.outs, strict=True):
            p.wait(timeout_s)
            docs.append(json.loads(out.read_text()))
        return merge_results(docs)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def merge_results(docs: list[dict]) -> dict:
    """Sum the fleet processes' counters; dicts of counters are summed key by key."""
    out: dict = {"slow": next((d["slow"] for d in docs if d.get("slow")), None)}
    for d in docs:
        for k, v in d.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            elif isinstance(v, list):
                out[k] = out.get(k, []) + v
            elif isinstance(v, dict) and k != "slow":
                acc = out.setdefault(k, {})
                for kk, vv in v.items():
                    acc[kk] = acc.get(kk, 0) + vv
    return out
