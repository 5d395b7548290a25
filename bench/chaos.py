"""`make chaos`: break each component of the real stack and count what clients lost, got twice, or never got.

For every fault (and every repetition) a fresh system under test — 3 shards and
2 dispatchers in one consumer group, on the shared real Kafka broker and
redis-server — serves an independent client fleet (`bench.chaos_fleet`, with
reconnects) while a producer writes a per-token sequence number at a fixed
rate. After a warm-up the fault is injected (`bench.chaos_faults`); then:

* time to recover: from the fault's end (SIGCONT, Redis back, broker accepting
  connections, …) until every client is connected, subscribed and holds every
  value the producer had written when the fault ended, and keeps up (within
  `CATCH_UP_S`) for `HOLD_S` more; polled;
* silently stale: the producer then writes a final value of every token and
  stops; 1 s later, clients connected and subscribed that do not hold every
  final value and were not closed meanwhile;
* lost / duplicates: counted by the clients themselves (see chaos_fleet), for
  clients of components that never failed apart from those of the failed one.

Prints one table (medians over repetitions) and writes JSON (next to `--out`'s
markdown, whose results block it also fills, or under .run/chaos/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kafka import KafkaProducer

from bench import chaos_faults as faults
from bench.run import machine, raise_fd_limit
from bench.workload import tick_payload, token_name
from common.tables import table
from devstack.kafka_server import KafkaServer
from devstack.procs import ROOT, free_port
from devstack.redis_server import RedisServer
from devstack.stack import Common, DispatcherProc, ShardProc, start_dispatcher, start_shard, stop_all

CATCH_UP_S = 0.5  # "latest value" during recovery: what the producer had written this long ago
HOLD_S = 2.0  # recovered only if it stays caught up this long
POLL_S = 0.1
FINAL_WAIT_S = 1.0
RESULTS_BEGIN, RESULTS_END = "<!-- chaos-results:begin -->", "<!-- chaos-results:end -->"
FAULTS = ["stream_reset", "redis_restart", "shard_pause", "dispatcher_kill", "kafka_restart",
          "slow_client", "shard_kill", "storm"]
QUICK_FAULTS = ["stream_reset", "redis_restart", "shard_pause"]


@dataclass(frozen=True)
class Profile:
    clients: int = 1_200
    fleet_procs: int = 2
    tokens: int = 300
    subs: int = 4  # tokens per client
    rate: float = 300.0  # records/s, round-robin over the tokens
    storm_clients: int = 12_000
    storm_fleet_procs: int = 4
    storm_tokens: int = 1_000
    storm_subs: int = 2
    storm_rate: float = 200.0
    partitions: int = 6
    warmup_s: float = 3.0
    recover_cap_s: float = 60.0
    stream_resets: int = 5
    slow_pad_bytes: int = 2_000  # bigger ticks, so the kernel's socket buffers fill in seconds
    slow_wait_s: float = 45.0  # how long the shard may take to give up on the slow client
    redis_down_s: float = 10.0
    pause_s: float = 10.0  # > the shards' 5 s registry TTL
    kafka_down_s: float = 15.0
    heartbeat_ttl_s: float = 5.0


QUICK = replace(Profile(), clients=240, fleet_procs=1, tokens=100, rate=100.0, storm_clients=1_200,
                storm_fleet_procs=2, storm_tokens=300, warmup_s=2.0, recover_cap_s=30.0,
                stream_resets=3, redis_down_s=6.0)


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


class Infra:
    """The shared Kafka broker and redis-server; faults replace or restart them in place."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir / "redis-0", free_port()).start()
        self.redis_generation = 0
        try:
            self.kafka = KafkaServer(workdir / "kafka", free_port(), free_port()).start()
        except BaseException:
            self.redis.stop()
            raise

    def fresh_redis_dir(self) -> Path:
        self.redis_generation += 1
        return self.workdir / f"redis-{self.redis_generation}"

    def stop(self) -> None:
        self.kafka.stop()
        self.redis.stop()


@dataclass
class Sut:
    """3 shards and 2 dispatchers (one consumer group) on their own namespace and topic."""

    c: Common
    shards: list[ShardProc] = field(default_factory=list)
    dispatchers: list[DispatcherProc] = field(default_factory=list)

    @classmethod
    def start(cls, infra: Infra, logdir: Path, pf: Profile) -> Sut:
        ns = f"c{uuid.uuid4().hex[:8]}"
        c = Common(redis_url=infra.redis.url, namespace=ns, logdir=logdir / ns,
                   kafka_bootstrap=infra.kafka.bootstrap, topic=f"chaos-{ns}")
        infra.kafka.create_topic(c.topic, pf.partitions)
        sut = cls(c)
        try:
            for i in range(3):
                sut.shards.append(start_shard(c, f"s{i + 1}", extra=[
                    "--max-connections", "19000", "--max-connections-per-ip", "19000",
                    "--heartbeat-ttl-s", str(pf.heartbeat_ttl_s)]))
            for d in ("d1", "d2"):
                sut.dispatchers.append(start_dispatcher(c, d, extra=[
                    "--group", f"g-{ns}", "--offset-reset", "earliest"]))
        except BaseException:
            sut.stop()
            raise
        return sut

    @property
    def urls(self) -> list[str]:
        return [s.ws_url for s in self.shards]

    def stop(self) -> None:
        for p in [*self.shards, *self.dispatchers]:
            faults.resume(p.proc)  # a stopped process cannot act on SIGTERM
        stop_all([p.proc for p in [*self.shards, *self.dispatchers]])


@dataclass
class Run:
    """One fault, one repetition: everything a fault injector may act on."""

    name: str
    pf: Profile
    infra: Infra
    sut: Sut
    fleet: FleetGroup
    producer: TickProducer


@dataclass
class Injected:
    end: float  # wall clock at which the fault ended
    info: dict = field(default_factory=dict)
    note: str = ""


def inject_stream_reset(r: Run) -> Injected:
    """Abort every dispatcher→shard gRPC connection, several times, with ticks flowing."""
    killed = []
    for i in range(r.pf.stream_resets):
        if i:
            time.sleep(0.6)
        killed.append(faults.abort_tcp([s.grpc_port for s in r.sut.shards]))
    end = time.time()
    if min(killed) == 0:
        raise RuntimeError(f"ss -K aborted no gRPC connection ({killed}): fault not injected")
    return Injected(end, {"resets": len(killed), "sockets_killed": killed},
                    f"{len(killed)} resets, {sum(killed)} conns aborted")


def inject_redis_restart(r: Run) -> Injected:
    """SIGKILL redis-server; after the outage, a new one on the same port with no data at all."""
    faults.kill_redis(r.infra.redis)
    time.sleep(r.pf.redis_down_s)
    r.infra.redis = faults.restart_redis_empty(r.infra.redis, r.infra.fresh_redis_dir())
    return Injected(time.time(), {"down_s": r.pf.redis_down_s},
                    f"down {r.pf.redis_down_s:g} s, back empty")


def inject_shard_pause(r: Run) -> Injected:
    """SIGSTOP shard s1 for longer than its registry TTL, then SIGCONT."""
    shard = r.sut.shards[0]
    r.fleet.tell("fault 0")
    faults.pause(shard.proc)
    dead_seen = _watch(lambda: shard.shard_id not in r.sut.dispatchers[1].get("/shards")[1], r.pf.pause_s)
    faults.resume(shard.proc)
    return Injected(time.time(), {"paused_s": r.pf.pause_s, "counted_dead": dead_seen},
                    f"{r.pf.pause_s:g} s; {'counted dead' if dead_seen else 'never counted dead'}")


def inject_dispatcher_kill(r: Run) -> Injected:
    """SIGKILL one of the two dispatchers of the consumer group."""
    faults.sigkill(r.sut.dispatchers[0].proc)
    return Injected(time.time(), {"killed": "d1"}, "d1 of 2")


def inject_kafka_restart(r: Run) -> Injected:
    """SIGKILL the broker; restart it on the same data dir and ports after the outage."""
    faults.kill_kafka(r.infra.kafka)
    time.sleep(r.pf.kafka_down_s)
    started = time.time()
    accepting = faults.restart_kafka(r.infra.kafka)
    return Injected(accepting, {"down_s": r.pf.kafka_down_s,
                                "restart_to_accepting_s": round(accepting - started, 2)},
                    f"down {r.pf.kafka_down_s:g} s + {accepting - started:.1f} s restart")


def inject_slow_client(r: Run) -> Injected:
    """The fleet's slow client (on s1) stops reading; wait for s1 to drop it, then let it read its
    close frame. The fault ends when s1 gives up on it."""
    shard = r.sut.shards[0]
    start = time.time()
    conns = shard.stats()["connections"]
    gone = _watch(lambda: (st := shard.stats())["clients_overflowed"] > 0 or st["connections"] < conns,
                  r.pf.slow_wait_s, stop_when_true=True)
    end = time.time()
    r.fleet.tell("slow_read")
    overflowed = _watch(lambda: shard.stats()["clients_overflowed"] > 0, 0.1)
    return Injected(end, {"dropped_by_shard": gone, "overflowed": overflowed, "waited_s": r.pf.slow_wait_s,
                          "dropped_after_s": round(end - start, 1) if gone else None})


def inject_shard_kill(r: Run) -> Injected:
    """SIGKILL shard s1: its clients reconnect to the other two."""
    r.fleet.tell("fault 0")
    faults.sigkill(r.sut.shards[0].proc)
    return Injected(time.time(), {"killed": "s1"}, "s1 of 3")


def inject_storm(r: Run) -> Injected:
    """Abort every client connection at once: all clients reconnect (to another shard) together."""
    killed = faults.abort_tcp([s.ws_port for s in r.sut.shards])
    if killed == 0:
        raise RuntimeError("ss -K aborted no client connection: fault not injected")
    return Injected(time.time(), {"sockets_killed": killed})


INJECT: dict[str, Callable[[Run], Injected]] = {
    "stream_reset": inject_stream_reset, "redis_restart": inject_redis_restart,
    "shard_pause": inject_shard_pause, "dispatcher_kill": inject_dispatcher_kill,
    "kafka_restart": inject_kafka_restart, "slow_client": inject_slow_client,
    "shard_kill": inject_shard_kill, "storm": inject_storm,
}


def _watch(check: Callable[[], bool], duration_s: float, stop_when_true: bool = False) -> bool:
    """Poll `check` for `duration_s`; whether it was ever true (errors count as false)."""
    seen = False
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline and not (seen and stop_when_true):
        with contextlib.suppress(Exception):
            seen = seen or bool(check())
        time.sleep(0.2)
    return seen


def await_recovery(r: Run, end: float) -> dict:
    """Poll until every client is subscribed and holds what the producer had written at the fault's
    end (later: what it had written CATCH_UP_S ago), and goes on doing so for HOLD_S: a system that
    catches up and then falls behind again has not recovered. Returns the seconds from `end` to the
    start of that streak, to the first frame, and to every client subscribed again (None: not
    within the cap), and how often it fell behind again after catching up."""
    frames0 = r.fleet.check({})["frames"]
    history: deque[tuple[float, dict[str, int]]] = deque()
    out: dict = {"recover_s": None, "first_frame_s": None, "all_subscribed_s": None, "relapses": 0}
    streak_from: float | None = None
    while True:
        now = time.time()
        history.append((now, r.producer.snapshot()))
        while history[0][0] < max(end, now - CATCH_UP_S):  # the newest one always stays
            history.popleft()
        res = r.fleet.check(history[0][1])
        checked = time.time()  # the clients' state as of their answers: an upper bound
        if out["first_frame_s"] is None and res["frames"] > frames0:
            out["first_frame_s"] = round(checked - end, 2)
        if out["all_subscribed_s"] is None and res["not_ready"] == 0:
            out["all_subscribed_s"] = round(checked - end, 2)
        caught_up = not (res["lagging"] + res["lagging_closed"] + res["not_ready"])
        if caught_up and streak_from is None:
            streak_from = checked
        elif not caught_up and streak_from is not None:
            streak_from = None
            out["relapses"] += 1
        if streak_from is not None and checked - streak_from >= HOLD_S:
            out["recover_s"] = round(streak_from - end, 2)
            return out
        if streak_from is None and now - end > r.pf.recover_cap_s:
            return out
        time.sleep(POLL_S)


def final_check(r: Run) -> dict:
    """The producer writes a last value of every token and stops; 1 s later, who does not hold it?"""
    finals, produced = r.producer.write_final()
    time.sleep(max(0.0, produced + FINAL_WAIT_S - time.time()))
    res = r.fleet.check(finals, since=produced)
    return {"stale": res["lagging"], "lagging_but_closed": res["lagging_closed"],
            "not_subscribed_at_final": res["not_ready"]}


@dataclass(frozen=True)
class Load:
    """Clients and ticks of one run."""

    clients: int
    procs: int
    tokens: int
    subs: int
    rate: float
    pad_bytes: int = 60


def load_for(name: str, pf: Profile) -> Load:
    if name == "storm":
        return Load(pf.storm_clients, pf.storm_fleet_procs, pf.storm_tokens, pf.storm_subs, pf.storm_rate)
    pad = pf.slow_pad_bytes if name == "slow_client" else 60
    return Load(pf.clients, pf.fleet_procs, pf.tokens, pf.subs, pf.rate, pad)


def run_fault(name: str, pf: Profile, infra: Infra, rep: int) -> dict:
    """One fault end to end on a fresh system under test; returns its row of figures."""
    ld = load_for(name, pf)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-{rep}-", dir=infra.workdir))
    started = time.time()
    sut = Sut.start(infra, work / "logs", pf)
    producer = fleet = None
    try:
        producer = TickProducer(infra.kafka.bootstrap, sut.c.topic,
                                [token_name(i) for i in range(ld.tokens)], ld.rate, ld.pad_bytes).start()
        fleet = FleetGroup(sut.urls, ld.clients, ld.procs, ld.tokens, ld.subs, work,
                           slow=name == "slow_client")
        ramp_s = fleet.wait_ready(ld.clients, 60 + ld.clients / 100)
        time.sleep(pf.warmup_s)
        pre = {"lost": fleet.total("lost_ok"), "dups": fleet.total("dups")}
        fleet.tell("reset")  # warm-up over: count from here
        r = Run(name, pf, infra, sut, fleet, producer)
        injected = INJECT[name](r)
        rec = await_recovery(r, injected.end)
        fin = final_check(r)
        res = fleet.finish()
    finally:
        if fleet is not None:
            fleet.kill()
        if producer is not None:
            producer.close()
        sut.stop()
    return row(name, rep, ld.clients, ramp_s, pre, injected, rec, fin, res, producer, time.time() - started)


def row(name, rep, clients, ramp_s, pre, injected, rec, fin, res, producer, wall_s) -> dict:
    """Everything one run measured, flat enough to take medians of."""
    slow = res.get("slow") or {}
    note = injected.note
    if name == "slow_client":
        info = injected.info
        note = (f"slow client closed with {slow.get('close_code') or 'no close frame'}"
                + (f" after {info['dropped_after_s']} s" if info["dropped_by_shard"]
                   else f", not dropped in {info['waited_s']:g} s"))
    elif name == "kafka_restart":
        note += f"; first tick {rec['first_frame_s']} s after accepting"
    elif name == "storm":
        note = f"{clients} clients; all resubscribed in {rec['all_subscribed_s']} s"
    return {
        "fault": name, "rep": rep, "clients": clients, "ramp_s": round(ramp_s, 2),
        "lost_ok": res.get("lost_ok", 0), "lost_failed": res.get("lost_failed", 0),
        "duplicates": res.get("dups_ok", 0) + res.get("dups_failed", 0),
        "dup_snapshots": res.get("dup_snapshots", 0),
        "stale": fin["stale"], **{k: v for k, v in fin.items() if k != "stale"},
        **rec, "resyncs": res.get("resyncs", 0), "closes": res.get("closes", {}),
        "drops": res.get("drops", 0), "reconnects": res.get("reconnects", 0),
        "handshake_failures": res.get("handshake_failures", {}), "frames": res.get("frames", 0),
        "unparsed": res.get("unparsed", 0), "errors": res.get("errors", {}), "pre_fault": pre,
        "slow": res.get("slow"),
        "samples": res.get("samples", []),
        "producer": {"records": producer.sent, "errors": producer.errors},
        "fault_info": injected.info, "note": note, "wall_s": round(wall_s, 1),
    }


def _run_logged(name: str, pf: Profile, infra: Infra, rep: int, reps: int) -> dict:
    """One run, its one-line summary printed; a run that breaks is reported, the others still run."""
    try:
        r = run_fault(name, pf, infra, rep)
    except Exception as exc:
        print(f"[{rep + 1}/{reps}] {name}: ERROR {type(exc).__name__}: {exc}", flush=True)
        return {"fault": name, "rep": rep, "error": f"{type(exc).__name__}: {exc}"}
    print(f"[{rep + 1}/{reps}] {name}: lost {r['lost_ok']} (+{r['lost_failed']} on the failed component), "
          f"dups {r['duplicates']}, stale {r['stale']}, recovered in {r['recover_s']} s; {r['note']} "
          f"({r['wall_s']} s)", flush=True)
    return r


def _median(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _cell(values: list[int | float]) -> str:
    """Median, and the worst repetition when it differs (one bad run is a bug, not noise)."""
    med, worst = _median(values), max(values)
    text = f"{med:g}"
    return text if worst == med else f"{text} (max {worst:g})"


def render(results: dict[str, list[dict]], cap_s: float) -> str:
    headers = ["fault", "lost: never-failed (must be 0)", "lost: failed component", "duplicates (must be 0)",
               "silently stale (must be 0)", "time to recover", "told: resync / close frame / dropped",
               "notes"]
    rows = []
    for name, all_runs in results.items():
        runs = [r for r in all_runs if "error" not in r]
        if not runs:
            rows.append([name, "-", "-", "-", "-", "-", "-", f"ERROR {all_runs[-1]['error'][:80]}"])
            continue
        rec = [r["recover_s"] for r in runs]
        rec_cell = (f"{_median(rec):.1f} s" if None not in rec else
                    f"> {cap_s:g} s" if all(v is None for v in rec) else
                    f"{_median(rec):.1f} s ({rec.count(None)} not recovered)")
        relapses = sum(r["relapses"] for r in runs)
        if relapses:
            rec_cell += f", fell behind again ×{relapses}"
        told = " / ".join(f"{_median(v):g}" for v in ([r["resyncs"] for r in runs],
                                                     [sum(r["closes"].values()) for r in runs],
                                                     [r["drops"] for r in runs]))
        rows.append([name, _cell([r["lost_ok"] for r in runs]), _cell([r["lost_failed"] for r in runs]),
                     _cell([r["duplicates"] for r in runs]), _cell([r["stale"] for r in runs]), rec_cell,
                     told, runs[-1]["note"] + (f"; {len(all_runs) - len(runs)} runs failed"
                                               if len(runs) < len(all_runs) else "")])
    return table(headers, rows)


def write_outputs(doc: dict, text: str, out_md: Path | None) -> Path:
    """JSON next to the markdown (or under .run/chaos/); the markdown's results block filled."""
    if out_md is None:
        path = ROOT / ".run" / "chaos" / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    else:
        path = out_md.with_suffix(".json")
        block = f"{RESULTS_BEGIN}\n```\n{text}\n```\n{RESULTS_END}"
        if out_md.exists() and RESULTS_BEGIN in (md := out_md.read_text()) and RESULTS_END in md:
            head, rest = md.split(RESULTS_BEGIN, 1)
            out_md.write_text(head + block + rest.split(RESULTS_END, 1)[1])
        elif not out_md.exists():
            out_md.parent.mkdir(parents=True, exist_ok=True)
            out_md.write_text(f"# chaos results\n\n{block}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small fleets, shorter outages (CI: "
                   "tests/integration/test_chaos_quick.py)")
    p.add_argument("--reps", type=int, default=1, help="run each fault this many times; medians reported")
    p.add_argument("--faults", default="", help=f"comma-separated subset of {','.join(FAULTS)} "
                   f"(default: all; with --quick: {','.join(QUICK_FAULTS)})")
    p.add_argument("--out", type=Path, default=None, help="markdown whose results block to fill; "
                   "the JSON goes next to it")
    a = p.parse_args(argv)
    a.faults = [f for f in a.faults.split(",") if f] or (QUICK_FAULTS if a.quick else FAULTS)
    unknown = set(a.faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults: {', '.join(sorted(unknown))}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    pf = QUICK if a.quick else Profile()
    # Stopped by a signal, still stop every process (finally blocks); a background job ignores SIGINT.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise_fd_limit()  # the storm's shards hold thousands of sockets each; children inherit this
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="shardcast-chaos-"))
    infra = Infra(workdir)
    results: dict[str, list[dict]] = {name: [] for name in a.faults}
    try:
        for rep in range(a.reps):
            for name in a.faults:
                r = _run_logged(name, pf, infra, rep, a.reps)
                results[name].append(r)
    finally:
        infra.stop()
        shutil.rmtree(workdir / "kafka" / "data", ignore_errors=True)  # the bulk; logs stay
    text = render(results, pf.recover_cap_s)
    doc = {"profile": asdict(pf), "quick": a.quick, "reps": a.reps, "machine": machine(),
           "wall_s": round(time.time() - started, 1), "faults": results, "table": text}
    path = write_outputs(doc, text, a.out)
    print("\n" + text)
    print(f"\nwall {doc['wall_s']} s; logs under {workdir}\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
