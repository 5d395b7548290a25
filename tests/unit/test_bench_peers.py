"""The pure parts of `make bench-peers`: protocol adapters, floors' messages, rate ladder, verdicts,
medians, the targets' ratios, CSV and markdown."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import pytest

from bench import peers_report as rep
from bench.peers import QUICK, PeersConfig, caveats, parse
from bench.peers_adapters import CentrifugoAdapter, Control, ShardcastAdapter
from bench.peers_floors import parse_subscribe, subscribed_ack, tick_message
from bench.peers_systems import centrifugo_config
from bench.workload import tick_payload

PAYLOAD = tick_payload(7, 1_700_000_000_123_456, "0" * 8)


def test_shardcast_adapter_reads_a_shardcast_tick():
    """A shard's tick frame is one tick: token, sequence and producer µs from the embedded payload."""
    frame = (b'{"type":"tick","token":"T00003","partition":2,"offset":41,"ts":1700000000123,"data":'
             + PAYLOAD + b"}")
    assert ShardcastAdapter().parse(frame) == ([("T00003", 7, 1_700_000_000_123_456)], [])


def test_shardcast_adapter_subscribes_once_and_counts_one_ack():
    """One subscribe request carries every token; one `subscribed` ack completes it."""
    a = ShardcastAdapter()
    assert [json.loads(m) for m in a.hello(["T1", "T2"])] == [{"op": "subscribe", "tokens": ["T1", "T2"]}]
    assert a.acks_needed(["T1", "T2"]) == 1
    ack = b'{"type":"subscribed","tokens":["T1"]}'
    assert a.parse(ack) == ([], [ack])
    assert a.control(b'{"type":"subscribed","tokens":["T1"]}') == Control(acks=1)
    assert a.control(b'{"type":"error","code":"rate_limited","message":"x"}') == Control(
        error="server_error_rate_limited")
    assert a.control(b'{"type":"snapshot","token":"T1"}') == Control(other=True)


def test_floors_tick_message_is_read_by_the_shardcast_adapter():
    """The floors' tick has shardcast's layout, so one adapter reads both."""
    msg = tick_message(b"T00009", 5, 1234, 1_700_000_000_000, PAYLOAD)
    assert json.loads(msg)["data"] == json.loads(PAYLOAD)
    assert ShardcastAdapter().parse(msg) == ([("T00009", 7, 1_700_000_000_123_456)], [])


def test_floors_parse_subscribe_and_ack():
    """Floors take shardcast's subscribe request (string tokens only) and ack with the tokens."""
    assert parse_subscribe('{"op":"subscribe","tokens":["A","B"]}') == ["A", "B"]
    assert parse_subscribe(b'{"op":"subscribe","tokens":["A",3]}') == ["A"]
    for bad in (b"not json", b"[]", b'{"op":"unsubscribe","tokens":["A"]}',
                b'{"op":"subscribe","tokens":[1]}', b'{"op":"subscribe","tokens":"A"}'):
        assert parse_subscribe(bad) is None
    assert json.loads(subscribed_ack(["A", "B"])) == {"type": "subscribed", "tokens": ["A", "B"]}


def test_centrifugo_adapter_hello_is_connect_then_one_subscribe_per_channel():
    """Connect and one subscribe command per token, newline-separated in one message, ids 1..k+1."""
    a = CentrifugoAdapter()
    (msg,) = a.hello(["T1", "T2"])
    assert [json.loads(line) for line in msg.split(b"\n")] == [
        {"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "T1"}},
        {"id": 3, "subscribe": {"channel": "T2"}}]
    assert a.acks_needed(["T1", "T2"]) == 2


def test_centrifugo_adapter_reads_several_pushes_in_one_frame():
    """Centrifugo packs pushes newline-separated: every one is a tick, nothing is left over."""
    push = b'{"push":{"channel":"T%d","pub":{"data":' + PAYLOAD + b"}}}"
    frame = b"\n".join([push % 1, push % 2, b'{"push":{"channel":"T3","pub":{"offset":4,"data":'
                        + tick_payload(9, 5, "x") + b"}}}"])
    assert CentrifugoAdapter().parse(frame) == (
        [("T1", 7, 1_700_000_000_123_456), ("T2", 7, 1_700_000_000_123_456), ("T3", 9, 5)], [])


def test_centrifugo_adapter_separates_replies_and_pings_from_pushes():
    """A frame mixing a push, a subscribe reply and a ping yields the tick and both controls."""
    a = CentrifugoAdapter()
    frame = b'{"id":2,"subscribe":{}}\n{"push":{"channel":"T1","pub":{"data":' + PAYLOAD + b"}}}\n{}"
    ticks, controls = a.parse(frame)
    assert ticks == [("T1", 7, 1_700_000_000_123_456)]
    assert controls == [b'{"id":2,"subscribe":{}}', b"{}"]
    assert a.control(b"{}") == Control(reply=b"{}")
    assert a.control(b'{"id":2,"subscribe":{}}') == Control(acks=1)
    assert a.control(b'{"id":1,"connect":{"client":"x","version":"6"}}') == Control(other=True)
    assert a.control(b'{"id":3,"error":{"code":103,"message":"permission denied"}}') == Control(
        error="server_error_103")


def test_centrifugo_config_is_loopback_anonymous_and_reads_the_channel_header():
    """Centrifugo listens on loopback only, sends no usage stats, takes anonymous clients, and its
    Kafka consumer publishes record values into the channel named by the producer's header."""
    c = centrifugo_config(8000, 8001, "127.0.0.1:9092", "topic", "group")
    assert c["http_server"]["address"] == c["http_server"]["internal_address"] == "127.0.0.1"
    assert c["usage_stats"] == {"disabled": True} and c["client"] == {"insecure": True}
    (consumer,) = c["consumers"]
    assert consumer["type"] == "kafka" and consumer["kafka"]["topics"] == ["topic"]
    assert consumer["kafka"]["publication_data_mode"] == {"enabled": True,
                                                          "channels_header": "centrifugo-channels"}


def test_rate_ladder_doubles_then_steps():
    """10k, 20k, 40k, 80k, then +40k up to the maximum; a start off the doubling path lands on 80k."""
    assert rep.rate_ladder() == [10_000, 20_000, 40_000, 80_000, 120_000, 160_000, 200_000, 240_000]
    assert rep.rate_ladder(30_000, 80_000, 40_000, 160_000) == [30_000, 60_000, 80_000, 120_000, 160_000]
    assert rep.rate_ladder(10_000, maximum=5_000) == []


def test_busy_fraction_of_a_cpu():
    """Busy share between two (busy, total) samples; None when no time passed."""
    assert rep.busy_fraction((100, 1000), (190, 1100)) == 0.9
    assert rep.busy_fraction((5, 5), (5, 5)) is None


def _step(rate, **kw):
    base = {"rate_target": rate, "missing": 0, "dups": 0, "reorders": 0, "gaps": 0, "p99_ms": 50.0}
    return {**base, **kw}


@pytest.mark.parametrize(("kw", "clean"), [
    ({}, True), ({"missing": 1}, False), ({"dups": 1}, False), ({"reorders": 1}, False),
    ({"gaps": 2}, False), ({"p99_ms": 1000.0}, True), ({"p99_ms": 1000.01}, False),
    ({"p99_ms": None}, False)])
def test_step_clean_needs_everything_once_in_order_and_p99_within_a_second(kw, clean):
    """A step keeps up only with nothing missing, duplicated or reordered and p99 ≤ 1 s."""
    assert rep.step_clean(_step(10_000, **kw)) is clean


def test_highest_clean_is_the_top_clean_rate():
    """The ladder's highest clean rate; 0 when even the first step fell behind."""
    assert rep.highest_clean([{"rate_target": 10_000, "clean": True}, {"rate_target": 20_000, "clean": True},
                              {"rate_target": 40_000, "clean": False}]) == 20_000
    assert rep.highest_clean([{"rate_target": 10_000, "clean": False}]) == 0


def _run(system, rss, steps, error=None):
    full = [{"delivered_per_s": r * 0.99, "cpu_us_by_proc": {"server": cpu}, "p50_ms": p99 / 10,
             "loadgen_core_busy": 0.5, "fleet_cores": 0.4, "loadgen_saturated": r >= 40_000,
             "server_core_other": 0.01, "producer_rate_ratio": 1.0,
             **_step(r, p99_ms=p99, missing=0 if ok else 5), "cpu_us_per_frame": cpu, "clean": ok}
            for r, cpu, p99, ok in steps]
    return {"system": system, "rss_per_conn_kib": rss, "idle_cores": 0.01, "connections": {"failed": 0},
            "steps": full, "highest_clean": rep.highest_clean(full), "error": error}


RATES = [10_000, 20_000, 40_000]
RUNS = [
    _run("shardcast", 23.0, [
        (10_000, 40.0, 60.0, True), (20_000, 30.0, 80.0, True), (40_000, 28.0, 9, False)]),
    _run("shardcast", 22.0, [
        (10_000, 44.0, 62.0, True), (20_000, 33.0, 90.0, True), (40_000, 27.0, 9, True)]),
    _run("shardcast", 24.0, [
        (10_000, 38.0, 64.0, True), (20_000, 31.0, 70.0, True), (40_000, 29.0, 9, False)]),
    _run("centrifugo", 48.0, [
        (10_000, 30.0, 70.0, True), (20_000, 25.0, 60.0, True), (40_000, 20.0, 9, True)]),
    _run("centrifugo", 49.0, [
        (10_000, 29.0, 68.0, True), (20_000, 26.0, 65.0, True), (40_000, 21.0, 9, True)]),
    _run("centrifugo", 47.0, [
        (10_000, 31.0, 66.0, True), (20_000, 24.0, 50.0, True), (40_000, 22.0, 9, True)]),
    _run("websockets", 17.0, [(10_000, 31.0, 69.0, True)]),
    _run("websockets", 0, [], error="RuntimeError: boom"),
]


def test_summarize_takes_medians_over_the_repetitions():
    """Per system and rate: medians, the runs behind them, clean counts; failed runs only listed."""
    s = rep.summarize(RUNS, RATES)
    sc = s["shardcast"]
    assert sc["rss_per_conn_kib"] == 23.0 and sc["rss_per_conn_kib_runs"] == [23.0, 22.0, 24.0]
    assert sc["highest_clean"] == 20_000 and sc["highest_clean_runs"] == [20_000, 40_000, 20_000]
    assert sc["capped"] is False
    r = sc["rates"][10_000]
    assert (r["cpu_us_per_frame"], r["cpu_us_per_frame_runs"]) == (40.0, [40.0, 44.0, 38.0])
    assert r["cpu_us_by_proc"] == {"server": 40.0} and r["p99_ms"] == 62.0
    assert sc["rates"][40_000]["clean_reps"] == 1 and sc["rates"][40_000]["missing_max"] == 5
    assert sc["rates"][40_000]["loadgen_saturated_reps"] == 3
    assert s["centrifugo"]["capped"] is True and s["centrifugo"]["highest_clean"] == 40_000
    ws = s["websockets"]
    assert ws["reps"] == 1 and ws["errors"] == ["RuntimeError: boom"] and list(ws["rates"]) == [10_000]


def test_targets_are_ratios_against_the_peers_of_the_same_run():
    """Each target: shardcast ÷ peer, its limit, MET/MISSED, and the figures behind it."""
    t = {row["target"].split(" ≤ ")[0].split(" ≥ ")[0]: row for row in rep.targets(rep.summarize(RUNS, RATES),
                                                                                     RATES)}
    first = t["CPU per frame at 10k/s"]
    assert (first["ratio"], first["verdict"]) == (round(40 / 30, 3), "MISSED") and first["limit"] == 0.8
    higher = t["CPU per frame"]
    assert higher["ratio"] == round(28 / 21, 3) and higher["verdict"] == "MISSED"  # the worst: 40k
    assert higher["detail"] == "20k: 1.24, 40k: 1.333"
    top = t["highest clean rate"]
    assert (top["ratio"], top["verdict"]) == (0.5, "MISSED") and "its limit is higher" in top["detail"]
    p99 = t["p99 latency"]  # 40k is sustained by Centrifugo only: not compared
    assert p99["ratio"] == round(80 / 60, 3) and "40k" not in p99["detail"]
    rss = t["RSS per connection"]
    assert (rss["ratio"], rss["verdict"]) == (round(23 / 17, 3), "MISSED")


def test_targets_met_and_not_applicable():
    """A better shardcast meets every target; without Centrifugo its ratios are n/a."""
    better = [_run("shardcast", 10.0, [(10_000, 20.0, 30.0, True), (20_000, 15.0, 40.0, True)]),
              _run("centrifugo", 40.0, [(10_000, 30.0, 60.0, True), (20_000, 20.0, 60.0, False)]),
              _run("websockets", 17.0, [(10_000, 31.0, 69.0, True)])]
    rows = rep.targets(rep.summarize(better, RATES[:2]), RATES[:2])
    assert [r["verdict"] for r in rows] == ["MET"] * 5
    alone = rep.targets(rep.summarize(better[:1], RATES[:2]), RATES[:2])
    assert [r["verdict"] for r in alone] == ["n/a"] * 5
    both_top = [better[0], _run("centrifugo", 40.0, [(10_000, 30.0, 60.0, True), (20_000, 20.0, 60.0, True)])]
    (top,) = [r for r in rep.targets(rep.summarize(both_top, RATES[:2]), RATES[:2])
              if r["target"].startswith("highest")]
    assert top["verdict"] == "n/a" and "a longer ladder decides" in top["detail"]


def test_csv_has_an_idle_row_and_a_row_per_rate():
    """The CSV: per system one `idle` row (memory, idle CPU, top rate), then one row per rate reached."""
    rows = list(csv.DictReader(io.StringIO(rep.csv_text(rep.summarize(RUNS, RATES)))))
    assert [(r["system"], r["rate_target"]) for r in rows][:4] == [
        ("shardcast", "idle"), ("shardcast", "10000"), ("shardcast", "20000"), ("shardcast", "40000")]
    assert rows[0]["rss_per_conn_kib"] == "23.0" and rows[0]["highest_clean"] == "20000"
    assert rows[1]["cpu_us_per_frame_runs"] == "40.0 44.0 38.0" and rows[1]["cpu_us_by_proc"] == "server=40.0"
    assert set(rows[0]) == set(rep.CSV_FIELDS)


def test_markdown_shows_the_table_every_rate_targets_and_caveats():
    """The page: header lines, one row per system, per-rate rows with saturation marked, targets, notes."""
    summary = rep.summarize(RUNS, RATES)
    meta = {"profile": "reduced, noisy", "header": ["HEADER LINE"]}
    md = rep.markdown(summary, rep.targets(summary, RATES), RATES, meta, {"shardcast": "shardcast (x)"},
                      ["a caveat"])
    assert md.startswith("# Peers side by side (reduced, noisy)\n\nHEADER LINE\n")
    assert "| shardcast (x) | 23.0 | 40.0 (40.0, 44.0, 38.0) | 6.20 / 62.0 | 20k (20k, 40k, 20k) |" in md
    assert "| centrifugo | 48.0 |" in md and "≥ 40k (40k, 40k, 40k)" in md
    assert "| shardcast | 40k | 39,600.0 | 1/3 | 28.0 |" in md and "**saturated**" in md
    assert "The load generator's core was saturated" in md
    assert md.count("| MISSED |") == 5 and "* websockets: RuntimeError: boom" in md and "* a caveat" in md


def test_plot_writes_a_png_when_matplotlib_is_there(tmp_path):
    """The plot is a PNG file (or reports False where matplotlib is not installed)."""
    path = tmp_path / "p.png"
    made = rep.plot(rep.summarize(RUNS, RATES), path, {})
    assert made is False or path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_profiles_and_overrides(monkeypatch):
    """Defaults are the issue's scenario; PEERS_QUICK=1 the reduced one; flags and PEERS_REPS override."""
    monkeypatch.delenv("PEERS_QUICK", raising=False)
    monkeypatch.delenv("PEERS_SYSTEMS", raising=False)
    monkeypatch.delenv("PEERS_REPS", raising=False)
    full = parse([])
    assert (full.connections, full.tokens, full.subs, full.reps, full.pin) == (10_000, 1_000, 5, 3, True)
    assert full.rates[:4] == (10_000, 20_000, 40_000, 80_000) and full.systems[0] == "shardcast"
    monkeypatch.setenv("PEERS_QUICK", "1")
    monkeypatch.setenv("PEERS_REPS", "2")
    q = parse(["--systems", "shardcast,gevent", "--no-pin"])
    assert (q.connections, q.rates, q.reps, q.systems, q.pin, q.profile) == (
        2_000, (10_000, 20_000), 2, ("shardcast", "gevent"), False, "reduced")
    assert isinstance(q, PeersConfig)
    with pytest.raises(SystemExit):
        parse(["--systems", "nginx"])


def test_caveats_label_a_reduced_or_noisy_run():
    """A reduced profile, a busy machine and no pinning are each said on the page; the full
    scenario on a quiet machine needs no caveat."""
    assert caveats(PeersConfig(), "0.40 0.30 0.20") == ()
    notes = caveats(replace(QUICK, pin=False), "2.44 2.17 3.54")
    assert len(notes) == 3
    assert notes[0].startswith("**Not the full scenario**: 2,000 clients, rates 10k, 20k, 1 repetition(s)")
    assert notes[1].startswith("**Noisy**: the load average was 2.44 2.17 3.54")
    assert notes[2].startswith("No CPU pinning")
