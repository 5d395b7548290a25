"""The system under test for one benchmark scenario, started from `make run`'s code (devstack)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from devstack.procs import ROOT
from devstack.stack import Common, DispatcherProc, ShardProc, start_dispatcher, start_shard, stop_all

SHARD_MAX_CONNECTIONS = 19_000  # below the 20,000 open-file cap: refuse with 503, never hang


@dataclass
class Sut:
    """Shards and a dispatcher on their own namespace and topic."""

    c: Common
    shards: list[ShardProc] = field(default_factory=list)
    dispatcher: DispatcherProc | None = None

    @classmethod
    def start(cls, kafka, redis_url: str, logdir: Path, shards: int, mode: str, partitions: int,
              dispatcher_extra: list[str] | None = None, shard_extra: list[str] | None = None,
              with_dispatcher: bool = True) -> Sut:
        ns = f"b{uuid.uuid4().hex[:8]}"
        c = Common(redis_url=redis_url, namespace=ns, logdir=logdir / ns,
                   kafka_bootstrap=kafka.bootstrap, topic=f"bench-{ns}")
        kafka.create_topic(c.topic, partitions)
        sut = cls(c)
        try:
            for i in range(shards):
                sut.shards.append(start_shard(c, f"s{i + 1}", extra=[
                    "--max-connections", str(SHARD_MAX_CONNECTIONS),
                    "--max-connections-per-ip", str(SHARD_MAX_CONNECTIONS), *(shard_extra or [])]))
            if with_dispatcher:
                sut.start_dispatcher(mode, dispatcher_extra)
        except BaseException:
            sut.stop()
            raise
        return sut

    def start_dispatcher(self, mode: str, extra: list[str] | None = None, group: str = "",
                         dispatcher_id: str = "d1") -> DispatcherProc:
        self.dispatcher = start_dispatcher(self.c, dispatcher_id, mode, extra=[
            "--group", group or f"g-{self.c.namespace}", "--offset-reset", "earliest", *(extra or [])])
        return self.dispatcher

    @property
    def urls(self) -> list[str]:
        return [s.ws_url for s in self.shards]

    def pids(self) -> dict[str, int]:
        out = {s.shard_id: s.proc.pid for s in self.shards}
        if self.dispatcher is not None:
            out["dispatcher"] = self.dispatcher.proc.pid
        return out

    def snapshot(self) -> dict[str, dict]:
        """CPU, memory and counters of every process, now."""
        snap: dict[str, dict] = {}
        for s in self.shards:
            snap[s.shard_id] = {"cpu_s": procstat.cpu_s(s.proc.pid), **procstat.mem_kib(s.proc.pid),
                                "stats": s.stats()}
        d = self.dispatcher
        if d is not None:
            snap["dispatcher"] = {"cpu_s": procstat.cpu_s(d.proc.pid), **procstat.mem_kib(d.proc.pid),
                                  "stats": d.stats()}
        return snap

    def stop(self) -> None:
        procs = [s.proc for s in self.shards]
        if self.dispatcher is not None:
            procs.append(self.dispatcher.proc)
        stop_all(procs)


class Fleet:
    """Client fleet processes; their status lines are summed for progress bars."""

    def __init__(self, urls: list[str], connections: int, procs: int, tokens: int, subs: int,
                 zipf: float, seed: int, workdir: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        self.status: list[dict] = []
        self.outs: list[Path] = []
        per = -(-connections // procs)
        for p in range(procs):
            first, count = p * per, min(per, connections - p * per)
            if count <= 0:
                break
            out = workdir / f"fleet-{p}.json"
            cmd = [sys.executable, "-m", "bench.fleet", "--urls", ",".join(urls), "--first", str(first),
                   "--count", str(count), "--total-shards", str(len(urls)), "--tokens", str(tokens),
                   "--subs", str(subs), "--zipf", str(zipf), "--seed", str(seed), "--out", str(out)]
            proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=open(workdir / f"fleet-{p}.log", "ab"),  # noqa: SIM115
                                    text=True, start_new_session=True)
            self.procs.append(proc)
            self.outs.append(out)
            self.status.append({})
            threading.Thread(target=self._read, args=(len(self.procs) - 1,), daemon=True).start()

    def _read(self, i: int) -> None:
        for line in self.procs[i].stdout:
            with contextlib.suppress(ValueError):
                self.status[i] = json.loads(line)

    def total(self, key: str) -> int:
        return sum(s.get(key, 0) for s in self.status)

    def tell(self, word: str) -> None:
        for p in self.procs:
            p.stdin.write(word + "\n")
            p.stdin.flush()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def finish(self, timeout_s: float = 60) -> list[dict]:
        """Stop every fleet process and return their result documents."""
        self.tell("stop")
        results = []
        for p, out in zip(self.procs, self.outs, strict=True):
            p.wait(timeout_s)
            results.append(json.loads(out.read_text()))
        return results

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()


def wait(check, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s}s")
        time.sleep(interval_s)

