"""Benchmark output: the targets of issue 4 next to the measured values, and a readable table."""

from __future__ import annotations

import statistics

from common.tables import table as common_table


def targets(r: dict) -> list[dict]:
    """Each target, its limit, the measured value and whether it is met (None: not measured here)."""
    conns, ticks, lat = r["connections"], r["ticks"], r["latency_ms"]
    st, d = r["shards_total"], r["dispatcher"]
    worst_stall = max((s["loop_stall_max_ms_run"] for s in r["shards"].values()), default=0.0)
    worst_lag = max((s["loop_lag_max_ms_run"] for s in r["shards"].values()), default=0.0)
    rows = [
        ("connections held with 0 failures", f"{conns['attempted']}", conns["held"],
         conns["held"] == conns["attempted"] and conns["failed"] == 0),
        ("shard RSS per connection (KiB)", "<= 16", st["rss_per_conn_kib_median"],
         st["rss_per_conn_kib_median"] <= 16),
        ("shard CPU per delivered frame (us)", "<= 8", st["cpu_us_per_frame"],
         st["cpu_us_per_frame"] is not None and st["cpu_us_per_frame"] <= 8),
        ("latency p50 (ms), Kafka produce -> client", "<= 5", lat["p50"],
         lat["p50"] is not None and lat["p50"] <= 5),
        ("latency p99 (ms)", "<= 25", lat["p99"], lat["p99"] is not None and lat["p99"] <= 25),
        ("expected = delivered (all clients keep up)", f"{ticks['expected']}", ticks["delivered"],
         ticks["missing"] == 0 and ticks["gaps"] == 0 and ticks["reorders"] == 0),
        ("event-loop stall in a shard under load (ms, loop busy: CPU time)", "<= 20", worst_stall,
         worst_stall <= 20),
    ]
    if r["scenario"]["mode"] == "targeted":
        rows.append(("records shards got without a subscriber", "0", st["records_received_no_subscriber"],
                     st["records_received_no_subscriber"] == 0))
    out = [{"target": t, "limit": lim, "measured": m, "met": met} for t, lim, m, met in rows]
    out.append({"target": "delivered frames/s during the run (context for the latency target: 25,000)",
                "limit": "", "measured": ticks["delivered_per_s"], "met": None})
    out.append({"target": "loop lag incl. OS scheduling (ms, wall clock; context)", "limit": "",
                "measured": worst_lag, "met": None})
    out.append({"target": "dispatcher CPU s per 1,000 records", "limit": "",
                "measured": d["cpu_s_per_1000_records"], "met": None})
    return out


def table(headers: list[str], rows: list[list]) -> str:
    return common_table(headers, rows, fmt)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def render(r: dict) -> str:
    sc = r["scenario"]
    head = (f"shardcast bench: {sc['shards']} shards, {sc['mode']}, {sc['connections']:,} connections, "
            f"{sc['tokens']:,} tokens (k={sc['subs']}, zipf {sc['zipf']}), "
            f"{r['input_rate_records_per_s']:,.0f} records/s for {sc['duration_s']:g} s")
    t, c, lat, d = r["ticks"], r["connections"], r["latency_ms"], r["dispatcher"]
    summary = table(["figure", "value"], [
        ["connections attempted / held / failed", f"{c['attempted']:,} / {c['held']:,} / {c['failed']:,}"],
        ["ramp-up s", c["ramp_s"]],
        ["ticks expected / delivered", f"{t['expected']:,} / {t['delivered']:,}"],
        ["gaps / reorders", f"{t['gaps']} / {t['reorders']}"],
        ["delivered ticks/s", t["delivered_per_s"]],
        ["latency p50 / p99 / p99.9 / max ms",
         " / ".join(fmt(lat[k]) for k in ("p50", "p99", "p99.9", "max"))],
        ["latency stages p50/p99 ms: Kafka->dispatcher, Kafka->socket write (bucket bounds)",
         "{} / {}, {} / {}".format(*(fmt(lat["breakdown"][k][p]) for k in (
             "kafka_to_dispatcher_ms", "kafka_to_socket_write_ms") for p in ("p50", "p99")))],
        ["dispatcher records consumed", d["records_consumed"]],
        ["fan-out shards per record (fraction)", f"{fmt(d['fanout_shards_per_record'])} "
                                                 f"({fmt(d['fanout_fraction'])})"],
        ["dispatcher CPU s per 1,000 records", d["cpu_s_per_1000_records"]],
        ["dispatcher peak RSS MiB", d["peak_rss_kib"] / 1024],
        ["shards CPU s per 1,000 records (all shards)", r["shards_total"]["cpu_s_per_1000_records"]],
        ["load generator CPU s", r["fleet_cpu_s"]],
    ])
    shards = table(["shard", "conns", "records in", "no sub", "frames", "CPU s", "us/frame", "RSS MiB",
                    "peak MiB", "KiB/conn", "stall ms", "lag ms", "gc max ms"],
                   [[sid, s["connections"], s["records_received"], s["records_no_subscriber"],
                     s["frames_written"], s["cpu_s"], s["cpu_us_per_frame"], s["rss_kib"] / 1024,
                     s["peak_rss_kib"] / 1024, s["rss_per_conn_kib"], s["loop_stall_max_ms_run"],
                     s["loop_lag_max_ms_run"],
                     s["gc_pause_max_ms_since_start"]] for sid, s in r["shards"].items()])
    tg = table(["target", "limit", "measured", "met"],
               [[x["target"], x["limit"], x["measured"], {True: "yes", False: "NO", None: ""}[x["met"]]]
                for x in r.get("targets", [])])
    return f"{head}\n\n{summary}\n\n{shards}\n\n{tg}"


def summarize(per_run: list[list[dict]]) -> list[dict]:
    """Each target's median over the runs, and in how many runs it was met."""
    out = []
    for rows in zip(*per_run, strict=True):
        values = [r["measured"] for r in rows if isinstance(r["measured"], int | float)]
        met = [r["met"] for r in rows]
        out.append({**rows[0], "measured": statistics.median(values) if values else rows[0]["measured"],
                    "runs": [r["measured"] for r in rows],
                    "met": None if met[0] is None else all(met),
                    "met_runs": None if met[0] is None else f"{sum(met)}/{len(met)}"})
    return out


def render_targets(rows: list[dict], reps: int) -> str:
    return f"Targets, medians of {reps} runs:\n" + table(
        ["target", "limit", "median", "runs", "met"],
        [[x["target"], x["limit"], x["measured"], ", ".join(fmt(v) for v in x["runs"]),
          x["met_runs"] or ""] for x in rows])
