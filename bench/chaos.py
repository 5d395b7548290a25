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
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench import chaos_faults as faults
from bench.chaos_load import FleetGroup, TickProducer
from bench.chaos_report import render, row, write_outputs
from bench.run import machine, raise_fd_limit
from bench.workload import token_name
from devstack.kafka_server import KafkaServer
from devstack.redis_server import RedisServer
from devstack.stack import Common, DispatcherProc, ShardProc, start_dispatcher, start_shard, stop_all

CATCH_UP_S = 0.5  # "latest value" during recovery: what the producer had written this long ago
HOLD_S = 2.0  # recovered only if it stays caught up this long
POLL_S = 0.1
FINAL_WAIT_S = 1.0
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


class Infra:
    """The shared Kafka broker and redis-server; faults replace or restart them in place."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir / "redis-0").start()
        self.redis_generation = 0
        try:
            self.kafka = KafkaServer(workdir / "kafka").start()
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
