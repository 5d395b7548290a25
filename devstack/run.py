"""`make run`: the whole stack on this machine, no Docker, until Ctrl-C.

Starts (unless their addresses are given) a Kafka broker and a redis-server,
creates the ticks topic, then three shards, the dispatcher, a demo producer
and the front door (nginx spreading one WebSocket URL over the live shards,
`devstack.frontdoor`); waits until each is healthy, prints where to connect,
and on Ctrl-C or SIGTERM stops everything it started — shards first
deregister themselves, then any entry they could not remove is cleaned up here.

Environment: SHARDCAST_KAFKA_BOOTSTRAP / SHARDCAST_REDIS_URL (use existing
servers), RUN_SHARDS (3), RUN_PARTITIONS (6), RUN_RATE (ticks/s, 200),
RUN_TOKENS (300), RUN_MODE (targeted), RUN_WS_PORT (first shard's WebSocket
port, 8701), RUN_DISPATCHER_PORT (8700), RUN_ADMIN_PORT (8790), RUN_FRONT_PORT
(the front door, 8780), SHARDCAST_TOPIC (ticks), RUN_DIR (.run: data and logs).
A port that is taken is replaced by a free one (the banner shows the ports in use);
a port of 0 means any free port. Our own servers bind port 0 themselves and report
what they got, so no other process can take a port between its choice and its bind.
Without nginx (`make nginx` installs it) everything but the front door starts.

Shards and the dispatcher share a random ingest secret per run (made by
`devstack.stack.Common`, handed over in their environment).

Shards run with --auth jwt: a random HS256 secret is made per run and handed to
them in the environment (never on a command line); the banner prints a demo
token granting every token for 24 h, and the demo page URL carrying it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

from common.cli import redact_url, setup_logging
from common.registry import Registry
from devstack.frontdoor import FrontDoorProc, find_nginx, start_frontdoor
from devstack.kafka_server import KafkaServer, create_topic
from devstack.procs import ROOT, port_bindable
from devstack.redis_server import RedisServer
from devstack.stack import (
    Common,
    DispatcherProc,
    PortInUseError,
    start_dispatcher,
    start_producer,
    start_shard,
    stop_all,
)
from shard.token import issue

DEMO_TOKEN_TTL_S = 24 * 3600
T = TypeVar("T")

log = logging.getLogger("run")


def _port(preferred: int) -> int:
    """The preferred port if free now, else 0: any free port, picked as the process binds it.

    Only a shortcut around a doomed start: a preferred port taken after this check fails the
    process's bind (PortInUseError), and `_preferring` starts it again on port 0.
    """
    return preferred if preferred and port_bindable(preferred) else 0


def _preferring(start: Callable[..., T], **ports: int) -> T:
    """`start(**ports)` on the preferred ports still free, else on ports the kernel picks."""
    try:
        return start(**{name: _port(p) for name, p in ports.items()})
    except PortInUseError as exc:
        log.warning("%s; starting it on free ports instead", exc)
        return start(**dict.fromkeys(ports, 0))


def main() -> None:
    setup_logging("run", "local")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    env = os.environ
    workdir = Path(env.get("RUN_DIR", ROOT / ".run"))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    servers: list = []
    procs = []
    shard_ids: list[str] = []
    urls: list[str] = []
    redis_url = ""
    try:
        # The preferred ports, or free ones where taken (retried if taken before the server binds).
        redis_url = env.get("SHARDCAST_REDIS_URL") or _start(
            servers, RedisServer(workdir / "redis", 16379, fallback=True)).url
        bootstrap = env.get("SHARDCAST_KAFKA_BOOTSTRAP") or _start(
            servers, KafkaServer(workdir / "kafka", 19092, 19093, fallback=True)).bootstrap
        c = Common(redis_url=redis_url, namespace="shardcast", logdir=workdir / "logs",
                   kafka_bootstrap=bootstrap, topic=env.get("SHARDCAST_TOPIC", "ticks"))
        create_topic(bootstrap, c.topic, int(env.get("RUN_PARTITIONS", "6")))
        log.info("kafka=%s redis=%s topic=%s", bootstrap, redact_url(redis_url), c.topic)
        ws_base = int(env.get("RUN_WS_PORT", "8701"))
        jwt_secret = secrets.token_urlsafe(32)
        # Only the shards get the signing secret, through their environment.
        shard_c = dataclasses.replace(c, env={**c.env, "SHARDCAST_JWT_SECRET": jwt_secret})
        for i in range(int(env.get("RUN_SHARDS", "3"))):
            sid = f"shard-{i + 1}"
            sp = _preferring(functools.partial(start_shard, shard_c, sid, extra=["--auth", "jwt"]),
                             ws_port=ws_base and ws_base + i, grpc_port=ws_base and ws_base + 1000 + i)
            procs.append(sp.proc)
            shard_ids.append(sid)
            urls.append(sp.ws_url)
            log.info("%s healthy at %s pid=%d", sid, sp.ws_url, sp.proc.pid)
        dp = _preferring(functools.partial(start_dispatcher, c, "d1", mode=env.get("RUN_MODE", "targeted")),
                         http_port=int(env.get("RUN_DISPATCHER_PORT", "8700")),
                         admin_port=int(env.get("RUN_ADMIN_PORT", "8790")))
        procs.append(dp.proc)
        procs.append(start_producer(c, float(env.get("RUN_RATE", "200")),
                                    int(env.get("RUN_TOKENS", "300"))))
        log.info("dispatcher pid=%d producer pid=%d", dp.proc.pid, procs[-1].pid)
        front = _front_door(c, workdir, int(env.get("RUN_FRONT_PORT", "8780")))
        if front is not None:
            procs.append(front.proc)
        _banner(c, dp, urls, issue(jwt_secret.encode(), ["*"], DEMO_TOKEN_TTL_S), front)
        while not stop.wait(1.0):
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                log.error("a process exited (%s); stopping the stack; logs in %s",
                          [p.args[2:4] for p in dead], c.logdir)
                break
    finally:
        log.info("stopping")
        stop_all(list(reversed(procs)))
        if shard_ids and redis_url:
            _scrub(redis_url, shard_ids)
        for s in reversed(servers):
            s.stop()
        log.info("stopped; nothing left running")


def _front_door(c: Common, workdir: Path, port: int) -> FrontDoorProc | None:
    """nginx in front of the shards, its upstream following the registry; None without nginx.

    On `port` if nginx can bind it, else on a free one (the front door retries on "Address
    already in use" and reports the port it bound): no check of the port beforehand."""
    if find_nginx(os.environ.get("SHARDCAST_NGINX", "")) is None:
        log.warning("nginx not found: no front door (`make nginx` installs nginx-light)")
        return None
    front = start_frontdoor(c.redis_url, c.namespace, port, workdir / "frontdoor", c.logdir, fallback=True)
    log.info("front door healthy at %s pid=%d shards=%s", front.url, front.proc.pid, front.shards())
    return front


def _start(servers: list, server):
    servers.append(server)
    server.start()
    log.info("%s pid=%d", type(server).__name__, server.proc.pid)
    return server


def _scrub(redis_url: str, shard_ids: list[str]) -> None:
    """Remove registry entries of shards that could not deregister themselves."""
    try:
        reg = Registry(redis.Redis.from_url(redis_url, socket_timeout=2))
        for sid in shard_ids:
            reg.deregister(sid)
    except redis.RedisError as exc:
        log.warning("could not scrub registry: %s", exc)


def _banner(c: Common, dp: DispatcherProc, urls: list[str], token: str,
            front: FrontDoorProc | None) -> None:
    """Where to connect: the front door first, then what it stands on, then each shard directly."""
    exe = Path(sys.executable)
    py = exe.relative_to(ROOT) if exe.is_relative_to(ROOT) else exe
    ws = front.url if front is not None else urls[0]
    page = ws.replace("ws://", "http://").removesuffix("/ws")
    door = (f"  front door (one URL, nginx over the live shards): {front.url}" if front is not None
            else "  front door: none (nginx not found; `make nginx`), connect to a shard below")
    lines = [
        "",
        "shardcast is up. Ctrl-C stops everything.",
        door,
        f"  demo page: {page}/?token={token}",
        f"  demo token (every token, 24 h): {token}",
        f"  Kafka bootstrap: {c.kafka_bootstrap}  (topic {c.topic})",
        f"  Redis URL: {redact_url(c.redis_url)}  (namespace {c.namespace})",
        *(f"  shard WebSocket: {u}  (shard-{i + 1}, direct)" for i, u in enumerate(urls)),
        f"  dispatcher status: http://127.0.0.1:{dp.http_port}/stats  (Prometheus: /metrics)",
        f"  admin API (gRPC): {dp.admin_target}   e.g. {py} -m dispatcher.admin --target "
        f"{dp.admin_target} shards",
        f"  logs: {c.logdir}",
        "",
        "Watch live ticks:",
        f"  {py} -m devstack.watch --url '{ws}?token={token}' BTC-USD ETH-USD",
        "or with wscat:",
        f"  wscat -c '{ws}?token={token}'   then send "
        f"{{\"op\":\"subscribe\",\"tokens\":[\"BTC-USD\"]}}",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
