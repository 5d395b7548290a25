"""One fleet process: N WebSocket clients under gevent, each verifying every tick it receives.

Run by `bench.run` (several processes, so no process nears the 20,000 open-file
limit and the clients use more than one core). Reports progress as JSON lines
on stdout; on "stop" (a line on stdin) writes its result JSON and exits.
Per (client, token) it checks that sequence numbers arrive in order with no
gap, and measures latency from the producer's timestamp in the payload to
the moment the frame is parsed here.
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
from collections.abc import Iterator  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import gevent  # noqa: E402
import gevent.lock  # noqa: E402
from gevent.fileobject import FileObject  # noqa: E402

from bench.workload import latency_bucket, parse_tick, shard_of, subscriptions, zipf_cdf  # noqa: E402
from bench.wsclient import OP_CLOSE, OP_PING, OP_PONG, HandshakeError, RawWs  # noqa: E402


class Totals:
    """Everything this process counts; single-threaded (gevent), so plain ints."""

    def __init__(self) -> None:
        self.connected = self.subscribed = self.failed = self.closed_by_server = 0
        self.ticks = self.gaps = self.reorders = self.other_frames = 0
        self.ticks_at_mark = 0
        self.errors: Counter[str] = Counter()
        self.close_codes: Counter[int] = Counter()
        self.subs: Counter[str] = Counter()  # token → clients subscribed here
        self.latency: Counter[int] = Counter()


def open_ws(url: str, path: str, t: Totals, gate: gevent.lock.BoundedSemaphore) -> RawWs | None:
    """One client's handshake (at most `gate`'s count in flight); failures counted by cause in `t`."""
    u = urlparse(url)
    try:
        with gate:  # bound the handshakes in flight, like real clients arriving over time
            ws = RawWs(u.hostname, u.port, path)
    except HandshakeError as exc:
        t.failed += 1
        t.errors[f"http_{exc.status}"] += 1
        return None
    except OSError as exc:
        t.failed += 1
        t.errors[type(exc).__name__] += 1
        return None
    t.connected += 1
    return ws


def data_payloads(ws: RawWs, t: Totals) -> Iterator[bytes]:
    """The payloads of `ws`'s data frames; pings are answered, and a close frame is counted in `t`
    (with its code) and ends the iteration."""
    for op, payload in ws.frames():
        if op == OP_PING:
            ws.send(payload, OP_PONG)
        elif op == OP_CLOSE:
            t.closed_by_server += 1
            t.close_codes[int.from_bytes(payload[:2], "big")] += 1
            return
        else:
            yield payload


def client(i: int, url: str, tokens: list[str], t: Totals, gate: gevent.lock.BoundedSemaphore) -> None:
    ws = open_ws(url, urlparse(url).path, t, gate)
    if ws is None:
        return
    ws.send(json.dumps({"op": "subscribe", "tokens": tokens}).encode())
    last = dict.fromkeys(tokens, 0)
    latency = t.latency
    try:
        for payload in data_payloads(ws, t):
            tick = parse_tick(payload)
            if tick is None:
                if payload.startswith(b'{"type":"subscribed"'):
                    t.subscribed += 1
                    for tok in tokens:
                        t.subs[tok] += 1
                else:
                    t.other_frames += 1
                continue
            token, seq, ts_us = tick
            now_us = int(time.time() * 1e6)
            t.ticks += 1
            latency[latency_bucket(now_us - ts_us)] += 1
            prev = last[token]
            if seq == prev + 1:
                last[token] = seq
            elif seq > prev:
                t.gaps += seq - prev - 1
                last[token] = seq
            else:
                t.reorders += 1
    except OSError as exc:
        t.errors[type(exc).__name__] += 1
    finally:
        ws.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--urls", required=True, help="comma-separated shard WebSocket URLs")
    p.add_argument("--first", type=int, required=True, help="global index of this process's first client")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--total-shards", type=int, required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--subs", type=int, required=True)
    p.add_argument("--zipf", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, a.count + 512)), hard))
    urls = a.urls.split(",")
    cdf = zipf_cdf(a.tokens, a.zipf)
    t = Totals()
    gate = gevent.lock.BoundedSemaphore(a.concurrency)
    greenlets = []
    for i in range(a.first, a.first + a.count):
        url = urls[shard_of(i, a.total_shards)]
        greenlets.append(gevent.spawn(client, i, url, subscriptions(i, a.seed, cdf, a.subs), t, gate))
    gevent.spawn(_status_loop, t)
    stdin = FileObject(sys.stdin, "r")
    while True:
        line = stdin.readline()
        if not line or line.strip() == "stop":
            break
        if line.strip() == "mark":  # warm-up over: latency from here on
            t.latency.clear()
            t.ticks_at_mark = t.ticks
        if line.strip() == "freeze":  # after ramp-up: keep full GC passes off the clients' objects
            gc.collect()
            gc.freeze()
    with open(a.out, "w") as f:
        json.dump({"connected": t.connected, "subscribed": t.subscribed, "failed": t.failed,
                   "closed_by_server": t.closed_by_server, "ticks": t.ticks,
                   "ticks_at_mark": t.ticks_at_mark, "gaps": t.gaps,
                   "reorders": t.reorders, "other_frames": t.other_frames, "errors": t.errors,
                   "close_codes": t.close_codes, "subs": t.subs,
                   "latency_hist_us": t.latency}, f)
    print(json.dumps({"done": True}), flush=True)
    sys.exit(0)


def _status_loop(t: Totals) -> None:
    while True:
        print(json.dumps({"connected": t.connected, "subscribed": t.subscribed, "failed": t.failed,
                          "ticks": t.ticks, "closed": t.closed_by_server}), flush=True)
        gevent.sleep(0.5)


if __name__ == "__main__":
    main()
