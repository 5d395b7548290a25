"""Admin API decisions (validation, views, mode switch) against plain in-memory parts."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from shardcast.v1 import admin_pb2

from common.drain import MAX_WINDOW_S, check_window, close_steps
from common.metrics import FastHistogram
from common.records import Record
from common.registry import ShardInfo
from dispatcher import admin
from dispatcher.admin import table
from dispatcher.admin_core import AdminCode, AdminCore, AdminError, DrainView
from dispatcher.config import parse_args
from dispatcher.routing import Mode, Router, RoutingTable


class FakeControl:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def drain(self, grpc_addr, shard_id, window_s):
        """The shard's progress stream: three messages, the last one done."""
        self.calls.append((grpc_addr, shard_id, window_s))
        return iter([DrainView(shard_id, 3, 0, False), DrainView(shard_id, 1, 2, False),
                     DrainView(shard_id, 0, 3, True)])

    def undrain(self, grpc_addr, shard_id):
        self.calls.append((grpc_addr, shard_id))
        return shard_id != "A"  # A is live: nothing to undrain


class FakePublisher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def publish(self, token, payload):
        self.calls.append((token, payload))
        return 2, 41 + len(self.calls)  # (partition, offset) Kafka gave the record


def _core(cluster_ok: bool = True):
    table = RoutingTable()
    table.healthy = True
    table.replace({"T-1": {"A"}, "T-2": {"A", "GONE"}})
    live = {sid: ShardInfo(sid, f"10.0.0.{i}:97{i}", f"ws://{sid}/ws", 1, 10**13, 4, 2, state=state)
            for i, (sid, state) in enumerate((("A", "live"), ("B", "live"), ("C", "drained")), 1)}
    sync = SimpleNamespace(table=table, live=live, dead=["GONE"], healthy=True, last_sync_s=0.0,
                           shards_for=table.shards_for)
    streams = SimpleNamespace(stats=lambda: {}, dropped_gone=0, routable=frozenset(live))
    loop = SimpleNamespace(records_consumed=0, records_invalid=0, lag={})
    d = SimpleNamespace(sync=sync, router=Router(sync, Mode.TARGETED), streams=streams, loop=loop,
                        started=0.0, cfg=parse_args(["--max-publish-bytes", "10", "--id", "d9"]))
    modes: list[Mode] = []
    core = AdminCore(d, FakeControl(), FakePublisher(), lambda m: modes.append(m) or cluster_ok)
    return core, d, modes


def _err(fn, *args) -> AdminError:
    with pytest.raises(AdminError) as exc:
        fn(*args)
    return exc.value


def test_lookup_returns_live_targets_and_rejects_bad_tokens():
    """Lookup intersects the route with live shards; empty or malformed tokens are INVALID_ARGUMENT."""
    core, _, _ = _core()
    assert core.lookup("T-2").shard_ids == ("A",)
    assert core.lookup("NONE").shard_ids == ()
    assert _err(core.lookup, "").code is AdminCode.INVALID_ARGUMENT
    assert _err(core.lookup, "a b").code is AdminCode.INVALID_ARGUMENT
    assert _err(core.lookup, "x" * 65).code is AdminCode.INVALID_ARGUMENT


def test_set_mode_switches_the_router_and_reports_the_previous_mode():
    """SetDispatchMode changes routing at once and says whether it reached the registry."""
    core, d, modes = _core(cluster_ok=False)
    change = core.set_mode("broadcast")
    assert (change.previous, change.mode, change.cluster_wide) == (Mode.TARGETED, Mode.BROADCAST, False)
    assert d.router.mode is Mode.BROADCAST and modes == [Mode.BROADCAST]
    # A drained shard is still streamed, so broadcast reaches it too (its hub drops unwatched records).
    assert core.lookup("NONE").shard_ids == ("A", "B", "C")
    assert _err(core.set_mode, "").code is AdminCode.INVALID_ARGUMENT


def test_drain_validates_before_calling_the_shard():
    """Unknown shards are NOT_FOUND, bad windows INVALID_ARGUMENT; a good call reaches the shard at its
    registered gRPC address (a drained one too: the shard's drain is idempotent) with the window as
    given, 0 and the maximum included, and every progress message comes back in order."""
    core, _, _ = _core()
    assert _err(core.drain, "NOPE", 1.0).code is AdminCode.NOT_FOUND
    assert _err(core.drain, "GONE", 1.0).code is AdminCode.NOT_FOUND  # dead: nothing to drain
    assert _err(core.drain, "", 1.0).code is AdminCode.INVALID_ARGUMENT
    for bad in (-0.1, math.nan, math.inf, MAX_WINDOW_S + 1, MAX_WINDOW_S + 1e-9):
        assert _err(core.drain, "A", bad).code is AdminCode.INVALID_ARGUMENT
    assert core.control.calls == []
    assert list(core.drain("B", 2.5)) == [DrainView("B", 3, 0, False), DrainView("B", 1, 2, False),
                                          DrainView("B", 0, 3, True)]
    assert core.control.calls == [("10.0.0.2:972", "B", 2.5)]
    core.drain("C", 0.0)
    core.drain("A", MAX_WINDOW_S)
    assert core.control.calls[1:] == [("10.0.0.3:973", "C", 0.0), ("10.0.0.1:971", "A", MAX_WINDOW_S)]


def test_publish_limits_payload_size():
    """A payload up to --max-publish-bytes goes to Kafka unchanged under its token and the call answers
    Kafka's (partition, offset); a bigger one or a bad token is refused before reaching Kafka."""
    core, _, _ = _core()
    assert core.publish("T-1", b"0123456789") == (2, 42)
    assert core.publish("T-2", b"") == (2, 43)
    assert core.publisher.calls == [("T-1", b"0123456789"), ("T-2", b"")]
    err = _err(core.publish, "T-1", b"x" * 11)
    assert err.code is AdminCode.INVALID_ARGUMENT and err.message == "payload is 11 bytes, the limit is 10"
    assert _err(core.publish, "a b", b"{}").code is AdminCode.INVALID_ARGUMENT
    assert _err(core.publish, "", b"{}").code is AdminCode.INVALID_ARGUMENT
    assert len(core.publisher.calls) == 2


def test_list_shards_includes_drained_and_dead_ones():
    """Live shards carry their heartbeat load; a drained shard stays listed; silent ones show as dead."""
    core, _, _ = _core()
    views = {v.shard_id: v for v in core.list_shards()}
    assert views["A"].state == "live" and views["A"].connections == 4
    assert views["C"].state == "drained"
    assert views["GONE"].state == "dead"


def test_undrain_reaches_the_shard_and_reports_the_state_it_left():
    """Undrain calls the shard's control RPC; the answer says drained -> live (or live when idle)."""
    core, _, _ = _core()
    assert _err(core.undrain, "").code is AdminCode.INVALID_ARGUMENT
    assert _err(core.undrain, "NOPE").code is AdminCode.NOT_FOUND
    assert _err(core.undrain, "GONE").code is AdminCode.NOT_FOUND  # dead: nothing to undrain
    assert core.control.calls == []
    v = core.undrain("C")
    assert (v.shard_id, v.previous, v.state) == ("C", "drained", "live")
    assert (core.undrain("A").previous, core.control.calls) == ("live", [("10.0.0.3:973", "C"),
                                                                         ("10.0.0.1:971", "A")])


def test_stats_count_routed_records_apart_from_unrouted_ones():
    """GetStats: routed counts only records queued for a shard; routed + unrouted = all routed over."""
    core, d, _ = _core()
    recs = [Record("T-1", 0, i, b"{}") for i in range(3)] + [Record("NONE", 0, 9, b"{}")]
    d.router.route(recs, frozenset({"A", "B"}))
    s = core.stats()
    assert (s.records_routed, s.records_unrouted, s.deliveries) == (3, 1, 3)
    assert s.dispatcher_id == "d9"


class FakeStub:
    """Answers the CLI's calls with fixed messages (the CLI's rendering, not the API, is tested)."""

    def ListShards(self, request, **kw):  # noqa: N802
        return admin_pb2.ListShardsResponse(shards=[
            admin_pb2.ShardStatus(shard_id="A", state=admin_pb2.SHARD_STATE_DRAINED, connections=0)])

    def GetStats(self, request, **kw):  # noqa: N802
        return admin_pb2.GetStatsResponse(dispatcher_id="d1", records_consumed=10, records_routed=6,
                                          records_unrouted=4, deliveries=12)

    def UndrainShard(self, request, **kw):  # noqa: N802
        return admin_pb2.UndrainShardResponse(
            shard_id=request.shard_id, previous=admin_pb2.SHARD_STATE_DRAINED,
            state=admin_pb2.SHARD_STATE_LIVE)


@pytest.mark.parametrize("argv", [["--json", "shards"], ["shards", "--json"]])
def test_cli_json_flag_works_before_and_after_the_command(argv, capsys):
    """`--json` is accepted on either side of the command and prints the raw answer as JSON."""
    a = admin.parser().parse_args(argv)
    admin.run(a, FakeStub(), [])
    doc = json.loads(capsys.readouterr().out)
    assert doc["shards"][0]["shard_id"] == "A" and doc["shards"][0]["state"] == "SHARD_STATE_DRAINED"


def test_cli_without_json_prints_tables_with_true_labels(capsys):
    """Without --json the tables name the states and keep routed apart from unrouted records."""
    assert admin.parser().parse_args(["shards"]).json is False
    admin.run(admin.parser().parse_args(["shards"]), FakeStub(), [])
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["A", "drained", "0"]
    admin.run(admin.parser().parse_args(["stats"]), FakeStub(), [])
    head = capsys.readouterr().out.split("\n\n")[0].splitlines()[1:]
    rows = dict(line.rsplit(None, 1) for line in head)
    assert rows["records routed (to >= 1 shard)"] == "6"
    assert rows["records unrouted (no shard wanted them)"] == "4"
    assert rows["fan-out per routed record"] == "2.000"
    admin.run(admin.parser().parse_args(["undrain", "A", "--json"]), FakeStub(), [])
    assert json.loads(capsys.readouterr().out)["previous"] == "SHARD_STATE_DRAINED"
    admin.run(admin.parser().parse_args(["undrain", "A"]), FakeStub(), [])
    assert capsys.readouterr().out.strip() == "A: drained -> live, accepting clients"


def test_close_steps_spread_every_client_over_the_window():
    """Closes are spread over the window, never an empty step, all clients covered."""
    counts, pause = close_steps(1000, 2.0)
    assert sum(counts) == 1000 and len(counts) == 40 and pause == pytest.approx(0.05)
    assert max(counts) - min(counts) <= 1
    assert close_steps(3, 10.0) == ([1, 1, 1], pytest.approx(10 / 3))
    assert close_steps(5, 0.0) == ([5], 0.0)
    assert close_steps(0, 5.0) == ([], 0.0)
    assert check_window(0) is None and check_window(-1) and check_window(math.nan)


def test_fast_histogram_counts_weighted_observations():
    """A write of n frames counts n observations in the bucket of its latency."""
    h = FastHistogram((0.001, 0.01))
    h.observe(0.0005)
    h.observe(0.005, 3)
    h.observe(5.0)
    assert h.counts == [1, 3, 1] and h.count == 5 and h.sum == pytest.approx(5.0155)
    assert (h.quantile(0.2), h.quantile(0.5), h.quantile(1.0)) == (0.001, 0.01, math.inf)
    fam = h.family("x_seconds", "doc")
    assert [s.value for s in fam.samples if s.name == "x_seconds_bucket"] == [1, 4, 5]


def test_cli_table_aligns_columns():
    """The CLI's tables pad every column to its widest cell."""
    assert table(["A", "BB"], [("xyz", 1.5), ("q", 22)]).splitlines() == [
        "A    BB", "xyz  1.500", "q    22"]
