"""One load-generator process of the peers benchmark: N clients of one system, under gevent.

bench/fleet.py's client, with a protocol adapter (bench/peers_adapters.py) in
place of shardcast's fixed protocol, and *steps*: the same connections live
through a ladder of rates, each rate a producer run whose sequence numbers
start again at 1, so counters and the per-token last sequence number are
reset between steps. Commands on stdin, one per line:

* `step` — a new rate: zero the step's counters, forget last sequence numbers;
* `mark` — warm-up over: clear the latency histogram;
* `snap N` — print a status line at once, tagged `"snap": N`;
* `report PATH` — write the step's counters and histogram to PATH, then print `{"reported": PATH}`;
* `freeze` — gc.freeze() after the ramp; `stop` — exit.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import gevent  # noqa: E402
import gevent.lock  # noqa: E402
from gevent.fileobject import FileObject  # noqa: E402

from bench.fleet import Totals, data_payloads, open_ws  # noqa: E402
from bench.peers_adapters import ADAPTERS  # noqa: E402
from bench.workload import latency_bucket, subscriptions, zipf_cdf  # noqa: E402
from bench.wsclient import RawWs  # noqa: E402


class StepTotals(Totals):
    """bench.fleet's totals plus duplicates and a step generation (clients reset on a new one)."""

    def __init__(self) -> None:
        super().__init__()
        self.dups = 0
        self.gen = 0
        self.sub_failed = 0  # connected, but the server refused a subscribe

    def new_step(self) -> None:
        self.gen += 1
        self.ticks = self.gaps = self.reorders = self.dups = self.other_frames = 0
        self.ticks_at_mark = 0
        self.latency = Counter()

    def status(self) -> dict:
        return {"connected": self.connected, "subscribed": self.subscribed, "failed": self.failed,
                "sub_failed": self.sub_failed, "ticks": self.ticks, "closed": self.closed_by_server,
                "gen": self.gen}

    def report(self) -> dict:
        return {"connected": self.connected, "subscribed": self.subscribed, "failed": self.failed,
                "closed_by_server": self.closed_by_server, "ticks": self.ticks,
                "ticks_at_mark": self.ticks_at_mark, "gaps": self.gaps, "reorders": self.reorders,
                "dups": self.dups, "sub_failed": self.sub_failed, "other_frames": self.other_frames,
                "errors": self.errors,
                "close_codes": self.close_codes, "subs": self.subs, "latency_hist_us": self.latency}


def client(i: int, url: str, tokens: list[str], adapter, t: StepTotals,
           gate: gevent.lock.BoundedSemaphore) -> None:
    ws = open_ws(url, adapter.path, t, gate)
    if ws is None:
        return
    try:
        for msg in adapter.hello(tokens):
            ws.send(msg)
        _receive(ws, tokens, adapter, t)
    except OSError as exc:
        t.errors[type(exc).__name__] += 1
    finally:
        ws.close()


def _receive(ws: RawWs, tokens: list[str], adapter, t: StepTotals) -> None:
    """Check every tick: per token, sequence numbers must come as 1, 2, 3… within a step."""
    last = dict.fromkeys(tokens, 0)
    gen, acks, need = t.gen, 0, adapter.acks_needed(tokens)
    parse, latency = adapter.parse, t.latency
    for payload in data_payloads(ws, t):
        ticks, controls = parse(payload)
        for msg in controls:
            c = adapter.control(msg)
            if c.reply is not None:
                ws.send(c.reply)
            if c.error:
                t.errors[c.error] += 1
                if acks < need:  # this client will never be subscribed: the ramp must not wait for it
                    t.sub_failed += 1
                    acks = need + 1
            if c.other:
                t.other_frames += 1
            if c.acks:
                acks += c.acks
                if acks == need:
                    t.subscribed += 1
                    for tok in tokens:
                        t.subs[tok] += 1
        if not ticks:
            continue
        if gen != t.gen:  # a new step: its producer numbers every token from 1 again
            gen, last, latency = t.gen, dict.fromkeys(tokens, 0), t.latency
        now_us = int(time.time() * 1e6)
        for token, seq, ts_us in ticks:
            t.ticks += 1
            latency[latency_bucket(now_us - ts_us)] += 1
            prev = last.get(token)
            if prev is None:
                t.other_frames += 1  # a token this client never asked for
            elif seq == prev + 1:
                last[token] = seq
            elif seq > prev:
                t.gaps += seq - prev - 1
                last[token] = seq
            elif seq == prev:
                t.dups += 1
            else:
                t.reorders += 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--system", choices=sorted(ADAPTERS), required=True, help="protocol adapter")
    p.add_argument("--url", required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--subs", type=int, required=True)
    p.add_argument("--zipf", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, a.count + 512)), hard))
    adapter = ADAPTERS[a.system]
    cdf = zipf_cdf(a.tokens, a.zipf)
    t = StepTotals()
    gate = gevent.lock.BoundedSemaphore(a.concurrency)
    for i in range(a.first, a.first + a.count):
        gevent.spawn(client, i, a.url, subscriptions(i, a.seed, cdf, a.subs), adapter, t, gate)
    gevent.spawn(_status_loop, t)
    _commands(t)
    print(json.dumps({"done": True}), flush=True)
    sys.exit(0)


def _commands(t: StepTotals) -> None:
    stdin = FileObject(sys.stdin, "r")
    while True:
        line = stdin.readline()
        word, _, arg = line.strip().partition(" ")
        if not line or word == "stop":
            return
        if word == "step":
            t.new_step()
        elif word == "mark":
            t.latency.clear()
            t.ticks_at_mark = t.ticks
        elif word == "snap":
            print(json.dumps({**t.status(), "snap": int(arg)}), flush=True)
        elif word == "report":
            with open(arg, "w") as f:
                json.dump(t.report(), f)
            print(json.dumps({**t.status(), "reported": arg}), flush=True)
        elif word == "freeze":
            gc.collect()
            gc.freeze()


def _status_loop(t: StepTotals) -> None:
    while True:
        print(json.dumps(t.status()), flush=True)
        gevent.sleep(0.5)


if __name__ == "__main__":
    main()
