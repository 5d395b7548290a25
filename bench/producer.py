"""Benchmark producer: ticks at a fixed rate for a fixed time, each with its per-token sequence
number and the producer's timestamp (µs) in the payload. Writes a result JSON with the final
sequence number of every token, so the orchestrator knows exactly what each client should get.

`--backlog N` instead produces N records as fast as it can (dispatcher throughput runs).
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import random
import time

from kafka import KafkaProducer

from bench.workload import tick_payload, token_name, zipf_cdf


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--rate", type=float, default=1000.0, help="records per second")
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=0.0,
                   help="produce at the rate this long first, then print 'measure' and go on")
    p.add_argument("--backlog", type=int, default=0, help="produce this many records flat out instead")
    p.add_argument("--dist", choices=["uniform", "zipf"], default="uniform",
                   help="which token each tick is for")
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = random.Random(a.seed)
    names = [token_name(r) for r in range(a.tokens)]
    cdf = zipf_cdf(a.tokens, a.zipf) if a.dist == "zipf" else None
    pick = (lambda: names[min(bisect.bisect_left(cdf, rng.random()), a.tokens - 1)]) if cdf else \
        (lambda: names[rng.randrange(a.tokens)])
    producer = KafkaProducer(bootstrap_servers=a.bootstrap.split(","), acks=1,
                             linger_ms=20 if a.backlog else 1, batch_size=256 << 10,
                             max_in_flight_requests_per_connection=1)
    seqs: dict[str, int] = {}
    errors = [0]
    pad = "0" * 60  # ≈ 100-byte payloads, like a compact price update
    sent = 0
    start = time.monotonic()
    target = a.backlog or int(a.rate * (a.warmup_s + a.duration_s))
    warm_until = int(a.rate * a.warmup_s) if a.warmup_s and not a.backlog else -1
    measure_start = start
    while sent < target:
        if warm_until >= 0 and sent >= warm_until:
            print("measure", flush=True)  # the orchestrator snapshots everything now
            warm_until, measure_start = -1, time.monotonic()
        due = target if a.backlog else min(target, int((time.monotonic() - start) * a.rate) + 1)
        while sent < due:
            token = pick()
            seq = seqs[token] = seqs.get(token, 0) + 1
            producer.send(a.topic, key=token.encode(),
                          value=tick_payload(seq, int(time.time() * 1e6), pad)).add_errback(
                lambda exc: errors.__setitem__(0, errors[0] + 1))
            sent += 1
        if not a.backlog:
            time.sleep(0.001)
    producer.flush(60)
    elapsed = time.monotonic() - measure_start
    producer.close(10)
    with open(a.out, "w") as f:
        json.dump({"records": sent, "records_measured": sent - int(a.rate * a.warmup_s) if not a.backlog
                   else sent, "errors": errors[0], "elapsed_s": elapsed,
                   "rate_achieved": sent / elapsed if elapsed else 0.0, "final_seq": seqs}, f)


if __name__ == "__main__":
    main()
