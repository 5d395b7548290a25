"""Demo producer: realistic-looking price ticks for a few hundred tokens, keyed by token.

Prices follow a geometric random walk; how often a token ticks follows a
Zipf-like popularity (a few busy instruments, a long quiet tail), like a real
market feed. Payload: JSON with token, price, bid, ask, size, seq and ts_ms.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import random
import signal
import threading
import time

from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, start_http_server

from common.cli import add_flag, positive, setup_logging

BASES = (
    "BTC ETH SOL XRP ADA DOGE DOT AVAX LINK MATIC LTC BCH ATOM XLM ETC FIL APT ARB OP NEAR "
    "ICP HBAR VET ALGO QNT AAVE GRT EGLD SAND MANA AXS THETA XTZ EOS FLOW CHZ KAVA ZEC DASH NEO "
    "IOTA MKR SNX CRV COMP YFI SUSHI UNI ENS LDO RPL IMX GALA ENJ BAT ZIL ONE KSM RUNE"
).split()
QUOTES = ("USD", "EUR", "USDT", "BTC", "GBP")


def token_names(n: int) -> list[str]:
    """`n` instrument names like BTC-USD, most liquid first."""
    names = [f"{b}-{q}" for q in QUOTES for b in BASES]
    return names[:n] if n <= len(names) else names + [f"TKN{i:05d}" for i in range(n - len(names))]


class Market:
    """Random-walk prices and Zipf-weighted choice of the next token to tick."""

    def __init__(self, tokens: list[str], seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.tokens = tokens
        self.prices = {t: math.exp(self.rng.uniform(0, 10)) for t in tokens}
        self.seq = dict.fromkeys(tokens, 0)
        weights = [1 / (rank + 1) ** 1.1 for rank in range(len(tokens))]
        total = sum(weights)
        self.cum = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.cum.append(acc)

    def next_tick(self) -> tuple[str, bytes]:
        token = self.tokens[min(bisect.bisect(self.cum, self.rng.random()), len(self.tokens) - 1)]
        price = self.prices[token] * math.exp(self.rng.gauss(0, 0.0005))
        self.prices[token] = price
        self.seq[token] += 1
        spread = price * 0.0002
        doc = {"token": token, "price": round(price, 6), "bid": round(price - spread, 6),
               "ask": round(price + spread, 6), "size": round(self.rng.expovariate(1 / 5), 4),
               "seq": self.seq[token], "ts_ms": int(time.time() * 1000)}
        return token, json.dumps(doc, separators=(",", ":")).encode()


def parser() -> argparse.ArgumentParser:
    """The producer's flags (each with its environment variable)."""
    p = argparse.ArgumentParser(prog="python -m demo.producer", description=__doc__)
    add_flag(p, "kafka-bootstrap", "SHARDCAST_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap")
    add_flag(p, "topic", "SHARDCAST_TOPIC", "ticks", "topic to produce to")
    add_flag(p, "tokens", "DEMO_TOKENS", 300, "number of instruments", positive(int))
    add_flag(p, "rate", "DEMO_RATE", 200.0, "ticks per second in total", positive(float))
    add_flag(p, "metrics-port", "DEMO_METRICS_PORT", 0, "serve Prometheus /metrics here (0: off)", int)
    add_flag(p, "metrics-host", "DEMO_METRICS_HOST", "127.0.0.1", "bind address of /metrics")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    setup_logging("producer", "demo")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    producer = KafkaProducer(bootstrap_servers=a.kafka_bootstrap.split(","), linger_ms=5, acks=1)
    market = Market(token_names(a.tokens))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    disable_created_metrics()  # `_created` series only add noise to dashboards
    registry = CollectorRegistry(auto_describe=False)
    sent_total = Counter("shardcast_producer_records_sent", "records handed to the Kafka client",
                         registry=registry)
    errors_total = Counter("shardcast_producer_send_errors", "records Kafka did not take",
                           registry=registry)
    if a.metrics_port:
        start_http_server(a.metrics_port, a.metrics_host, registry=registry)
    interval = 1.0 / a.rate
    next_at = time.monotonic()
    sent = 0
    logging.info("producing %.0f ticks/s over %d tokens to %s", a.rate, a.tokens, a.topic)
    while not stop.is_set():
        token, payload = market.next_tick()
        producer.send(a.topic, key=token.encode(), value=payload).add_errback(
            lambda exc: errors_total.inc())
        sent += 1
        sent_total.inc()
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        elif delay < -1:
            next_at = time.monotonic()  # fell behind: don't burst to catch up
    producer.flush(5)
    producer.close(5)
    logging.info("stopped after %d ticks", sent)


if __name__ == "__main__":
    main()


METRIC_NAMES = ("shardcast_producer_records_sent", "shardcast_producer_send_errors")
