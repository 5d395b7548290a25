"""Admin CLI over the dispatcher's gRPC admin API: `python -m dispatcher.admin --help`.

Prints readable tables; `--json` (before or after the command) prints the raw
answers instead. A gRPC client adapter, so it may import generated code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from shardcast.v1 import admin_pb2, admin_pb2_grpc

from common.cli import add_flag, add_secret, secret
from common.tables import table as common_table

DRAINED = " - drained: out of routing, refusing clients (`undrain` resumes it)"
MODES = {"targeted": admin_pb2.DISPATCH_MODE_TARGETED, "broadcast": admin_pb2.DISPATCH_MODE_BROADCAST}


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """The CLI's tables: floats with three decimals."""
    return common_table(headers, rows, _fmt)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _enum(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dispatcher.admin", description="shardcast admin CLI")
    add_flag(p, "target", "SHARDCAST_ADMIN_TARGET", "127.0.0.1:8790", "dispatcher admin address")
    add_secret(p, "token", "SHARDCAST_ADMIN_TOKEN", "admin bearer token")
    add_flag(p, "tls-ca", "SHARDCAST_ADMIN_TLS_CA", "", "PEM CA bundle: connect with TLS")
    add_flag(p, "timeout-s", "SHARDCAST_ADMIN_TIMEOUT_S", 10.0, "per-call deadline (drain: window + this)",
             float)
    p.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    # Also accepted after the command (`shards --json`); SUPPRESS keeps the top-level value when absent.
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="print the raw answer as JSON")
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[json_flag])

    command("shards", "list shards (live, draining, drained, dead) with their load and stream state")
    command("stats", "dispatcher counters, lag and fan-out")
    command("lookup", "the shards a token's records go to now").add_argument("instrument", metavar="TOKEN")
    mode = command("mode", "show or set the dispatch mode")
    mode.add_argument("mode", nargs="?", choices=sorted(MODES))
    drain = command("drain", "drain a shard: close its clients (1012) over a window, leave routing")
    drain.add_argument("shard_id")
    drain.add_argument("--window-s", type=float, default=10.0, help="spread the closes over this long")
    command("undrain", "end a shard's drain: it accepts clients again").add_argument("shard_id")
    pub = command("publish", "produce one record through Kafka")
    pub.add_argument("instrument", metavar="TOKEN")
    pub.add_argument("payload", help="payload text (UTF-8), or @FILE for a file's bytes")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    a.token = secret(p, a.token_file, "SHARDCAST_ADMIN_TOKEN")
    if a.tls_ca:
        channel = grpc.secure_channel(a.target, grpc.ssl_channel_credentials(Path(a.tls_ca).read_bytes()))
    else:
        channel = grpc.insecure_channel(a.target)
    stub = admin_pb2_grpc.DispatcherAdminStub(channel)
    md = [("authorization", f"Bearer {a.token}")] if a.token else []
    try:
        run(a, stub, md)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    return 0


def run(a: argparse.Namespace, stub: admin_pb2_grpc.DispatcherAdminStub, md: list) -> None:
    kw = {"metadata": md, "timeout": a.timeout_s}
    if a.cmd == "shards":
        show(a, stub.ListShards(admin_pb2.ListShardsRequest(), **kw), _shards)
    elif a.cmd == "stats":
        show(a, stub.GetStats(admin_pb2.GetStatsRequest(), **kw), _stats)
    elif a.cmd == "lookup":
        show(a, stub.LookupToken(admin_pb2.LookupTokenRequest(token=a.instrument), **kw),
             lambda r: f"{r.token} ({_enum(admin_pb2.DispatchMode.Name(r.mode), 'DISPATCH_MODE_')}): "
                       f"{', '.join(r.shard_ids) or 'no shard'}")
    elif a.cmd == "mode" and a.mode is None:
        r = stub.GetStats(admin_pb2.GetStatsRequest(), **kw)
        print(_enum(admin_pb2.DispatchMode.Name(r.mode), "DISPATCH_MODE_"))
    elif a.cmd == "mode":
        show(a, stub.SetDispatchMode(admin_pb2.SetDispatchModeRequest(mode=MODES[a.mode]), **kw),
             lambda r: f"mode {_enum(admin_pb2.DispatchMode.Name(r.previous), 'DISPATCH_MODE_')} -> "
                       f"{_enum(admin_pb2.DispatchMode.Name(r.mode), 'DISPATCH_MODE_')}"
                       f"{'' if r.cluster_wide else ' (this dispatcher only: registry unreachable)'}")
    elif a.cmd == "drain":
        req = admin_pb2.DrainShardRequest(shard_id=a.shard_id, window_s=a.window_s)
        for p in stub.DrainShard(req, metadata=md, timeout=a.window_s + a.timeout_s):
            show(a, p, lambda p: f"{p.shard_id}: closed {p.closed}, connections {p.connections}"
                                 f"{DRAINED if p.done else ''}")
    elif a.cmd == "undrain":
        show(a, stub.UndrainShard(admin_pb2.UndrainShardRequest(shard_id=a.shard_id), **kw),
             lambda r: f"{r.shard_id}: {_enum(admin_pb2.ShardState.Name(r.previous), 'SHARD_STATE_')} -> "
                       f"{_enum(admin_pb2.ShardState.Name(r.state), 'SHARD_STATE_')}, accepting clients")
    elif a.cmd == "publish":
        payload = Path(a.payload[1:]).read_bytes() if a.payload.startswith("@") else a.payload.encode()
        show(a, stub.Publish(admin_pb2.PublishRequest(token=a.instrument, payload=payload), **kw),
             lambda r: f"published to partition {r.partition} at offset {r.offset}")


def show(a: argparse.Namespace, msg, render) -> None:
    if a.json:
        print(json.dumps(MessageToDict(msg, preserving_proto_field_name=True,
                                       always_print_fields_with_no_presence=True)))
    else:
        print(render(msg))


def _shards(r: admin_pb2.ListShardsResponse) -> str:
    return table(
        ["SHARD", "STATE", "CONNS", "TOKENS", "HB AGE S", "STREAM", "QUEUE", "DELIVERED", "DROPPED",
         "WS"],
        [(s.shard_id, _enum(admin_pb2.ShardState.Name(s.state), "SHARD_STATE_"), s.connections, s.tokens,
          s.heartbeat_age_s, s.stream_state or "-", s.queue_depth, s.records_delivered,
          s.records_dropped, s.ws_addr or "-") for s in r.shards])


def _stats(r: admin_pb2.GetStatsResponse) -> str:
    mode = _enum(admin_pb2.DispatchMode.Name(r.mode), "DISPATCH_MODE_")
    head = table(["FIELD", "VALUE"], [
        ("dispatcher", r.dispatcher_id), ("mode", mode), ("uptime s", r.uptime_s),
        ("records consumed", r.records_consumed),
        ("records routed (to >= 1 shard)", r.records_routed),
        ("records unrouted (no shard wanted them)", r.records_unrouted),
        ("deliveries (record x shard)", r.deliveries),
        ("fan-out per routed record", r.deliveries / r.records_routed if r.records_routed else 0.0),
        ("records dropped", r.records_dropped),
        ("records invalid", r.records_invalid), ("routing tokens", r.routing_tokens),
        ("registry healthy", r.registry_healthy), ("registry sync age s", r.registry_sync_age_s),
    ])
    lag = table(["PARTITION", "POSITION", "HIGH WATERMARK", "LAG"],
                [(p.partition, p.position, p.high_watermark, p.lag) for p in r.lag])
    fan = table(["SHARD", "OFFERED", "DROPPED"],
                [(f.shard_id, f.records_offered, f.records_dropped) for f in r.fanout])
    return f"{head}\n\n{lag}\n\n{fan}"


if __name__ == "__main__":
    sys.exit(main())
