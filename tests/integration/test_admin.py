"""The gRPC admin API on a real stack: every RPC, errors, drain, mode switch, auth, reflection."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import grpc
import pytest
import websocket
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devstack.procs import http_json, python_cmd
from tests.integration.admin_client import Admin, pb
from tests.integration.helpers import (
    WsClient,
    close_code,
    partition_of,
    produce,
    producer,
    same_partition_token,
    tick_payload,
    upgrade_status,
    wait_for,
)

pytestmark = pytest.mark.integration


def _ticks(n: int, token: str) -> list[tuple[str, bytes]]:
    return [(token, json.dumps({"i": i}).encode()) for i in range(n)]


def _code(call, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(*args)
    return err.value.code()


def test_list_shards_get_stats_and_lookup_report_the_live_stack(stack):
    """ListShards, GetStats and LookupToken agree with what the stack is doing."""
    a, b = stack.shard("A"), stack.shard("B")
    d = stack.dispatcher()
    admin = Admin(d.admin_target)
    clients = [WsClient(a.ws_url) for _ in range(3)]
    for c in clients:
        c.subscribe("ADM-1")
    produce(producer(stack.kafka.bootstrap), stack.c.topic, _ticks(50, "ADM-1") + _ticks(7, "NOBODY"))
    clients[0].ticks(50)
    wait_for(lambda: admin.stats().records_consumed == 57, what="all consumed")
    shards = wait_for(lambda: (s := admin.shards()) and s["A"].connections == 3 and s, what="heartbeat")[0]
    assert set(shards) == {"A", "B"}
    assert shards["A"].state == pb.SHARD_STATE_LIVE and shards["A"].stream_state == "ready"
    assert (shards["A"].tokens, shards["B"].connections) == (1, 0)
    assert shards["A"].ws_addr == a.ws_url and shards["B"].grpc_addr.endswith(f":{b.grpc_port}")
    assert shards["A"].records_offered == 50 and shards["B"].records_offered == 0
    # heartbeat_age_s, registry_sync_age_s: test_metrics.py::test_ages_grow_while_their_source_is_silent
    s = admin.stats()
    assert (s.dispatcher_id, s.mode) == ("d1", pb.DISPATCH_MODE_TARGETED)
    # routed (to a shard) and unrouted (no shard wanted them) are disjoint: 50 + 7 = 57 consumed
    assert (s.records_routed, s.deliveries, s.records_unrouted, s.records_dropped) == (50, 50, 7, 0)
    assert s.registry_healthy and s.routing_tokens == 1
    assert {f.shard_id: f.records_offered for f in s.fanout} == {"A": 50, "B": 0}
    lag = wait_for(lambda: (x := admin.stats().lag) and len(x) == 3 and x, what="lag")[0]
    assert sum(p.high_watermark for p in lag) == 57 and all(p.lag == 0 for p in lag)
    look = admin.lookup("ADM-1")
    assert (list(look.shard_ids), list(look.subscribed_shard_ids)) == (["A"], ["A"])
    assert list(admin.lookup("NOBODY").shard_ids) == []


def test_mode_switch_changes_what_shards_receive_without_restart(stack):
    """SetDispatchMode broadcast sends every record to every shard; targeted stops it again."""
    a, b = stack.shard("A"), stack.shard("B")
    d = stack.dispatcher()
    admin = Admin(d.admin_target)
    client = WsClient(a.ws_url)
    client.subscribe("MODE-1")
    # A token only B wants, on MODE-1's partition: its record, produced last, is routed after them.
    marker = same_partition_token("MODE-1", "MODE-B")
    on_b = WsClient(b.ws_url)
    on_b.subscribe(marker)
    prod = producer(stack.kafka.bootstrap)
    produce(prod, stack.c.topic, _ticks(20, "MODE-1"))
    client.ticks(20)
    assert b.stats()["records_received"] == 0
    change = admin.set_mode(pb.DISPATCH_MODE_BROADCAST)
    assert (change.previous, change.mode, change.cluster_wide) == (
        pb.DISPATCH_MODE_TARGETED, pb.DISPATCH_MODE_BROADCAST, True)
    assert list(admin.lookup("MODE-1").shard_ids) == ["A", "B"]
    produce(prod, stack.c.topic, _ticks(30, "MODE-1"))
    client.ticks(30)
    wait_for(lambda: b.stats()["records_received"] == 30, what="B gets every record")
    # Stored cluster-wide: a dispatcher started now (configured targeted) broadcasts too.
    d2 = stack.dispatcher(dispatcher_id="d2")
    assert wait_for(lambda: Admin(d2.admin_target).stats().mode == pb.DISPATCH_MODE_BROADCAST)[0]
    admin.set_mode(pb.DISPATCH_MODE_TARGETED)
    wait_for(lambda: Admin(d2.admin_target).stats().mode == pb.DISPATCH_MODE_TARGETED, what="d2 follows")
    produce(prod, stack.c.topic, _ticks(40, "MODE-1"))
    client.ticks(40)
    wait_for(lambda: d.route(marker) == d2.route(marker) == ["B"], what="marker routed to B")
    produce(prod, stack.c.topic, [(marker, b'{"m":1}')])
    on_b.ticks(1)  # every MODE-1 record before it has been routed by now: B's counters are final
    # Nothing more for B once targeted again: offered the 30 broadcast records and the marker only.
    assert _offered([d, d2], "B") == (31, 31)
    assert _offered([d, d2], "A") == (90, 90)
    assert (a.stats()["records_received"], b.stats()["records_received"]) == (90, 31)


def _offered(dispatchers: list, shard_id: str) -> tuple[int, int]:
    """(records offered to, records sent to) `shard_id`, summed over `dispatchers`."""
    per = [dp.stats()["shards"].get(shard_id, {}) for dp in dispatchers]
    return sum(s.get("records_offered", 0) for s in per), sum(s.get("records_sent", 0) for s in per)


def _watch_close(url: str, ready: threading.Barrier, out: list, i: int) -> None:
    ws = websocket.create_connection(url, timeout=60)
    ws.send(json.dumps({"op": "subscribe", "tokens": ["DRAIN-1"], "id": 1}))
    ws.recv()
    ready.wait()
    while True:
        op, frame = ws.recv_data_frame(True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            out[i] = int.from_bytes(frame.data[:2], "big")
            ws.close()
            return


def test_drain_closes_clients_with_1012_spread_over_the_window_and_leaves_routing(stack):
    """DrainShard: 1012 to every client, spread over the window; the shard leaves routing but stays
    listed as drained, refusing upgrades."""
    a, b = stack.shard("A"), stack.shard("B")
    d = stack.dispatcher()
    admin = Admin(d.admin_target)
    n, window_s = 20, 2.0  # one close every 0.1 s; progress is reported every 0.2 s
    closes: list = [None] * n
    ready = threading.Barrier(n + 1)
    threads = [threading.Thread(target=_watch_close, args=(a.ws_url, ready, closes, i)) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait(timeout=30)
    WsClient(b.ws_url).subscribe("DRAIN-1")
    wait_for(lambda: list(admin.lookup("DRAIN-1").shard_ids) == ["A", "B"], what="both routed")
    started = time.monotonic()
    progress = admin.drain("A", window_s)
    took_s = time.monotonic() - started
    for t in threads:
        t.join(30)
    assert progress[-1].done and progress[-1].closed == n and progress[-1].connections == 0
    assert progress[-1].state == pb.SHARD_STATE_DRAINED
    assert all(p.state == pb.SHARD_STATE_DRAINING for p in progress[:-1])
    assert closes == [1012] * n
    # Spread, not all at once: the shard's own progress, sampled every 0.2 s, saw at least 3 states
    # with clients closed and clients still open (a load stretches a schedule of 0.1 s steps, it
    # never compresses it), and the drain took the window (its timers' granularity aside).
    closed = [p.closed for p in progress]
    assert closed == sorted(closed) and len(set(closed) - {0, n}) >= 3, closed
    assert took_s >= window_s * 0.95
    print(f"drain of {n} clients over {window_s} s took {took_s:.2f} s; progress closed={closed}")
    listed = wait_for(lambda: (s := admin.shards()["A"]).state == pb.SHARD_STATE_DRAINED and s,
                      what="A listed as drained")[0]
    assert (listed.connections, listed.tokens, listed.stream_state) == (0, 0, "ready")
    wait_for(lambda: list(admin.lookup("DRAIN-1").shard_ids) == ["B"], what="A out of the route")
    assert http_json(f"http://127.0.0.1:{a.ws_port}/healthz")[0] == 503
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(a.ws_url, timeout=5)
    assert refused.value.status_code == 503


def _drain_outcome(admin: Admin, shard_id: str, window_s: float, out: list) -> None:
    """Run a drain call to its end; record its progress messages or the status code it failed with."""
    try:
        out.append(admin.drain(shard_id, window_s))
    except grpc.RpcError as exc:
        out.append(exc.code())


def test_undrain_puts_a_draining_or_drained_shard_back_into_routing(stack):
    """Draining and drained shards stay listed; UndrainShard (API, then CLI) ends the drain: the
    shard accepts clients again, routes their tokens and they get ticks."""
    a = stack.shard("A")
    stack.shard("B")
    d = stack.dispatcher()
    admin = Admin(d.admin_target)
    first, second = WsClient(a.ws_url), WsClient(a.ws_url)
    for c in (first, second):
        c.subscribe("UND-1")
    prod = producer(stack.kafka.bootstrap)
    # A slow drain (2 clients over 60 s: one closed at once, the next 30 s later) undrained midway.
    outcome: list = []
    drain = threading.Thread(target=_drain_outcome, args=(admin, "A", 60.0, outcome))
    drain.start()
    assert close_code(first) == 1012
    wait_for(lambda: admin.shards()["A"].state == pb.SHARD_STATE_DRAINING, what="A listed as draining")
    assert upgrade_status(a.ws_url) == 503
    answer = admin.stub.UndrainShard(pb.UndrainShardRequest(shard_id="A"), timeout=10)
    assert (answer.shard_id, answer.previous, answer.state) == ("A", pb.SHARD_STATE_DRAINING,
                                                                pb.SHARD_STATE_LIVE)
    drain.join(30)
    assert outcome == [grpc.StatusCode.ABORTED]  # the drain's progress stream says it was cancelled
    wait_for(lambda: admin.shards()["A"].state == pb.SHARD_STATE_LIVE, what="A listed as live")
    produce(prod, stack.c.topic, _ticks(5, "UND-1"))
    second.ticks(5)  # the client the drain had not reached yet was never disturbed
    # A full drain: listed as drained (no clients, no tokens), out of the route; then undrain by CLI.
    progress = admin.drain("A", 0.0)
    assert progress[-1].done and progress[-1].state == pb.SHARD_STATE_DRAINED
    assert close_code(second) == 1012
    wait_for(lambda: list(admin.lookup("UND-1").shard_ids) == [], what="UND-1 routed nowhere")

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = python_cmd("-m", "dispatcher.admin", "--target", d.admin_target, *args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    listed = wait_for(lambda: (doc := json.loads(cli("shards", "--json").stdout))
                      and {s["shard_id"]: s for s in doc["shards"]}["A"]["state"] == "SHARD_STATE_DRAINED"
                      and doc, what="CLI lists A as drained")[0]
    assert {s["shard_id"]: (s["connections"], s["tokens"]) for s in listed["shards"]} == {
        "A": (0, 0), "B": (0, 0)}
    undone = cli("undrain", "A")
    assert (undone.returncode, undone.stdout.strip()) == (0, "A: drained -> live, accepting clients")
    assert http_json(f"http://127.0.0.1:{a.ws_port}/healthz")[0] == 200
    again = WsClient(a.ws_url)
    again.subscribe("UND-1")
    wait_for(lambda: list(admin.lookup("UND-1").shard_ids) == ["A"], what="A routed again")
    produce(prod, stack.c.topic, _ticks(7, "UND-1"))
    assert [json.loads(f)["data"]["i"] for f in again.ticks(7)] == list(range(7))
    # Live at once in the shard; in the registry by the next heartbeat at the latest.
    wait_for(lambda: admin.shards()["A"].state == pb.SHARD_STATE_LIVE, what="A listed as live again")
    assert cli("undrain", "A").stdout.strip() == "A: live -> live, accepting clients"  # idempotent
    assert cli("undrain", "NO-SUCH").returncode == 1


def test_bad_arguments_get_clear_errors_and_the_api_keeps_serving(stack):
    """Unknown shard, empty token, oversized payload, bad window or mode: the right status code."""
    stack.shard("A")
    d = stack.dispatcher("targeted", "--max-publish-bytes", "1000")
    admin = Admin(d.admin_target)
    assert _code(admin.drain, "NO-SUCH", 1.0) == grpc.StatusCode.NOT_FOUND
    assert _code(admin.drain, "", 1.0) == grpc.StatusCode.INVALID_ARGUMENT
    for window in (-1.0, float("nan"), 1e9):
        assert _code(admin.drain, "A", window) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(admin.lookup, "") == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(admin.lookup, "has space") == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(admin.publish, "", b"x") == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as big:
        admin.publish("OK-1", b"x" * 1001)
    assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "1001 bytes" in big.value.details()
    assert _code(admin.set_mode, pb.DISPATCH_MODE_UNSPECIFIED) == grpc.StatusCode.INVALID_ARGUMENT
    assert admin.shards()["A"].state == pb.SHARD_STATE_LIVE  # nothing was drained or broken
    assert d.proc.poll() is None


def test_publish_goes_through_kafka_to_subscribers(stack):
    """Publish produces a record that reaches a subscribed client byte for byte."""
    a = stack.shard("A")
    d = stack.dispatcher()
    client = WsClient(a.ws_url)
    client.subscribe("PUB-3")
    answer = Admin(d.admin_target).publish("PUB-3", b'{"px":1.5}')
    # The key's partition (per-token order depends on it), the first offset of the fresh topic.
    assert (answer.partition, answer.offset) == (partition_of("PUB-3"), 0) == (2, 0)
    [frame] = client.ticks(1)
    assert tick_payload(frame, "PUB-3") == ((2, 0), b'{"px":1.5}')
    wait_for(lambda: Admin(d.admin_target).stats().records_consumed == 1, what="consumed")


def test_bearer_token_is_required_when_configured(stack):
    """With an admin token every call needs it (health checks excepted), else UNAUTHENTICATED."""
    stack.shard("A")
    stack.c.env["SHARDCAST_ADMIN_TOKEN"] = "s3cret"  # from the environment, never argv
    d = stack.dispatcher("targeted")
    assert _code(Admin(d.admin_target).stats) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(Admin(d.admin_target, token="wrong").shards) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(Admin(d.admin_target, token="wrong").drain, "A", 1.0) == grpc.StatusCode.UNAUTHENTICATED
    assert "A" in Admin(d.admin_target, token="s3cret").shards()
    channel = grpc.insecure_channel(d.admin_target)
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    check = health_pb2_grpc.HealthStub(channel).Check
    serving = health_pb2.HealthCheckResponse.SERVING
    wait_for(lambda: check(health_pb2.HealthCheckRequest(), timeout=5).status == serving, what="SERVING")


def test_reflection_lists_the_admin_service_and_health_reports_serving(stack):
    """A reflection client lists DispatcherAdmin with its methods; grpc.health.v1 says SERVING."""
    stack.shard("A")
    d = stack.dispatcher()
    channel = grpc.insecure_channel(d.admin_target)
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="shardcast.v1.DispatcherAdmin")]
    answers = list(reflect.ServerReflectionInfo(iter(reqs), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"shardcast.v1.DispatcherAdmin", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    from google.protobuf import descriptor_pb2
    fd = descriptor_pb2.FileDescriptorProto.FromString(
        answers[1].file_descriptor_response.file_descriptor_proto[0])
    methods = {m.name for s in fd.service for m in s.method}
    assert methods == {"ListShards", "GetStats", "LookupToken", "SetDispatchMode", "DrainShard",
                       "UndrainShard", "Publish"}
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "shardcast.v1.DispatcherAdmin"):
        req = health_pb2.HealthCheckRequest(service=service)
        wait_for(lambda r=req: health.Check(r, timeout=5).status == health_pb2.HealthCheckResponse.SERVING,
                 what=f"{service!r} SERVING")


def test_tls_admin_api_and_cli(stack, tmp_path):
    """With a cert and key the admin API speaks TLS; the CLI connects with --tls-ca and a token."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    stack.shard("A")
    token_file = tmp_path / "admin-token"
    token_file.write_text("tok\n")
    d = stack.dispatcher("targeted", "--admin-tls-cert", str(cert), "--admin-tls-key", str(key),
                         "--admin-token-file", str(token_file))
    creds = grpc.ssl_channel_credentials(cert.read_bytes())
    assert "A" in Admin(d.admin_target, token="tok", credentials=creds).shards()
    assert _code(Admin(d.admin_target, token="tok").stats) == grpc.StatusCode.UNAVAILABLE  # plaintext

    def cli(*args: str, token: str = "tok") -> subprocess.CompletedProcess:
        cmd = python_cmd("-m", "dispatcher.admin", "--target", d.admin_target, "--tls-ca", str(cert),
                         *args)
        env = {k: v for k, v in os.environ.items() if k != "SHARDCAST_ADMIN_TOKEN"}
        env.update({"SHARDCAST_ADMIN_TOKEN": token} if token else {})
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)

    out = cli("shards")
    assert out.returncode == 0 and out.stdout.splitlines()[1].split()[:2] == ["A", "live"], out
    assert "records consumed" in cli("stats").stdout
    looked = cli("--json", "lookup", "X-1")
    assert json.loads(looked.stdout)["shard_ids"] == [], looked
    assert cli("--token-file", str(token_file), "mode", token="").stdout.strip() == "targeted"
    denied = cli("shards", token="")
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
