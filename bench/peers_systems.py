"""The four systems of the peers benchmark, each started on its own fresh topic, pinned, stopped.

* `shardcast`: 1 shard + its dispatcher (bench.stack.Sut, i.e. devstack's
  start_shard/start_dispatcher), targeted mode, client auth off.
* `centrifugo`: Centrifugo 6.9.1 built by `make centrifugo` (`go install`),
  GOMAXPROCS=1, anonymous clients (insecure mode), its own Kafka consumer
  in publication data mode: each record's value is published as-is into the
  channel named by its `centrifugo-channels` header (bench/peers_producer.py).
* `websockets`, `gevent`: the Python floors (bench/peers_floor_ws.py,
  bench/peers_floor_gevent.py), each with an in-process kafka-python consumer.

Pinning sets the CPU affinity of every thread of the process (what
`taskset -a -p -c CPU PID` does); threads started later inherit it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from bench.stack import Sut
from devstack.procs import ROOT, free_port, port_open, spawn, stop, wait_until

CENTRIFUGO_VERSION = "v6.9.1"
CENTRIFUGO_BIN = ROOT / ".cache" / "go" / "bin" / "centrifugo"
SYSTEMS = ("shardcast", "centrifugo", "websockets", "gevent")
ADAPTER = {"shardcast": "shardcast", "centrifugo": "centrifugo", "websockets": "shardcast",
           "gevent": "shardcast"}
LABEL = {"shardcast": "shardcast (1 shard + its dispatcher)",
         "centrifugo": f"Centrifugo {CENTRIFUGO_VERSION[1:]} (Go, GOMAXPROCS=1)",
         "websockets": "websockets 17.4 broadcast() (asyncio)",
         "gevent": "bare gevent-websocket loop"}


def pin(pid: int, cpus: set[int] | None) -> None:
    """Every thread of `pid` onto `cpus` (no-op for None); a thread that exits meanwhile is skipped."""
    if cpus is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # ProcessLookupError included
            os.sched_setaffinity(int(tid), cpus)


def skip_reason(name: str) -> str | None:
    """Why `name` cannot run on this machine, or None."""
    if name == "centrifugo" and not CENTRIFUGO_BIN.exists():
        return (f"Centrifugo skipped: {CENTRIFUGO_BIN.relative_to(ROOT)} is missing (`make centrifugo` "
                f"builds it with `go install github.com/centrifugal/centrifugo/v6@{CENTRIFUGO_VERSION}`; "
                "it needs the Go toolchain)")
    return None


@dataclass
class Ctx:
    """Where the systems find Kafka and Redis, where they log, which CPUs they get."""

    kafka: object  # devstack.kafka_server.KafkaServer (bootstrap, create_topic)
    redis_url: str
    workdir: Path
    partitions: int = 6
    server_cpus: set[int] | None = None


@dataclass
class Running:
    """A started system: its client URL, processes and topic."""

    name: str
    url: str
    topic: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    sut: Sut | None = None

    def pids(self) -> dict[str, int]:
        return {k: p.pid for k, p in self.procs.items()}

    def cpu_s(self) -> dict[str, float]:
        return {k: procstat.cpu_s(pid) for k, pid in self.pids().items()}

    def rss_kib(self) -> dict[str, int]:
        return {k: procstat.mem_kib(pid)["rss_kib"] for k, pid in self.pids().items()}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def ready(self, tokens: int) -> bool:
        """shardcast: every subscribed token routed by the dispatcher; the others route in-process."""
        if self.sut is None:
            return True
        return self.sut.dispatcher.stats()["routing_tokens"] >= tokens

    def stop(self) -> None:
        if self.sut is not None:
            self.sut.stop()
        else:
            for p in self.procs.values():
                stop(p)


def start(name: str, ctx: Ctx) -> Running:
    """Start `name` on a fresh topic, wait until it accepts connections, pin it."""
    run = {"shardcast": _shardcast, "centrifugo": _centrifugo, "websockets": _floor,
           "gevent": _floor}[name](name, ctx)
    for pid in run.pids().values():
        pin(pid, ctx.server_cpus)
    return run


def _shardcast(name: str, ctx: Ctx) -> Running:
    sut = Sut.start(ctx.kafka, ctx.redis_url, ctx.workdir / "logs", 1, "targeted", ctx.partitions)
    procs = {"shard": sut.shards[0].proc, "dispatcher": sut.dispatcher.proc}
    return Running(name, sut.urls[0], sut.c.topic, procs, sut)


def _topic(ctx: Ctx, name: str) -> str:
    topic = f"peers-{name}-{uuid.uuid4().hex[:8]}"
    ctx.kafka.create_topic(topic, ctx.partitions)
    return topic


def _floor(name: str, ctx: Ctx) -> Running:
    topic, port = _topic(ctx, name), free_port()
    module = {"websockets": "bench.peers_floor_ws", "gevent": "bench.peers_floor_gevent"}[name]
    cmd = [sys.executable, "-m", module, "--port", str(port), "--kafka-bootstrap", ctx.kafka.bootstrap,
           "--topic", topic]
    proc = spawn(cmd, ctx.workdir / "logs" / f"{name}-{topic}.log")
    wait_until(lambda: port_open("127.0.0.1", port), 30, name, proc=proc)
    return Running(name, f"ws://127.0.0.1:{port}/ws", topic, {"server": proc})


def centrifugo_config(port: int, internal_port: int, bootstrap: str, topic: str, group: str) -> dict:
    """Loopback only, no usage statistics sent anywhere, anonymous clients, one Kafka consumer."""
    return {
        "http_server": {"address": "127.0.0.1", "port": port, "internal_address": "127.0.0.1",
                        "internal_port": str(internal_port)},
        "log": {"level": "warn"},
        "usage_stats": {"disabled": True},
        "client": {"insecure": True},
        "health": {"enabled": True},
        "consumers": [{
            "name": "ticks", "enabled": True, "type": "kafka",
            "kafka": {"brokers": bootstrap.split(","), "topics": [topic], "consumer_group": group,
                      "publication_data_mode": {"enabled": True,
                                                "channels_header": "centrifugo-channels"}},
        }],
    }


def _centrifugo(name: str, ctx: Ctx) -> Running:
    topic, port, internal = _topic(ctx, name), free_port(), free_port()
    conf = ctx.workdir / f"centrifugo-{topic}.json"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(json.dumps(centrifugo_config(port, internal, ctx.kafka.bootstrap, topic, f"g-{topic}"),
                               indent=2))
    proc = spawn([str(CENTRIFUGO_BIN), "--config", str(conf)], ctx.workdir / "logs" / f"{name}-{topic}.log",
                 env={"GOMAXPROCS": "1"})
    wait_until(lambda: port_open("127.0.0.1", port), 30, name, proc=proc)
    return Running(name, f"ws://127.0.0.1:{port}/connection/websocket", topic, {"server": proc})
