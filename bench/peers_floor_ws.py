"""Python floor 1: a `websockets` asyncio server that fans ticks out with `broadcast()`.

The Kafka consumer (kafka-python, blocking) runs in a thread and hands each
poll's records to the event loop in one call; the loop builds each tick's
message once and `broadcast()`s it to the token's subscribers (websockets
frames it per connection, without backpressure, as its docs say). See
bench/peers_floors.py for what a floor leaves out.

    python -m bench.peers_floor_ws --port P --kafka-bootstrap B --topic T
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading

from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.peers_floors import consumer, parse_subscribe, subscribed_ack, tick_message

subs: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    mine: list[str] = []
    try:
        async for msg in ws:
            tokens = parse_subscribe(msg)
            if tokens is None:
                continue
            for t in tokens:
                subs.setdefault(t, set()).add(ws)
            mine += tokens
            await ws.send(subscribed_ack(tokens), text=True)
    finally:
        for t in mine:
            subs.get(t, set()).discard(ws)


def fanout(records: list) -> None:
    for r in records:
        conns = subs.get(r.key.decode())
        if conns:
            broadcast(conns, tick_message(r.key, r.partition, r.offset, r.timestamp, r.value), text=True)


def consume(loop: asyncio.AbstractEventLoop, bootstrap: str, topic: str) -> None:
    c = consumer(bootstrap, topic)
    while True:
        batch = [r for recs in c.poll(timeout_ms=1000).values() for r in recs if r.key is not None]
        if batch:
            loop.call_soon_threadsafe(fanout, batch)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--kafka-bootstrap", required=True)
    p.add_argument("--topic", required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    loop = asyncio.get_running_loop()
    async with serve(handler, "127.0.0.1", a.port, compression=None, backlog=4096) as server:
        threading.Thread(target=consume, args=(loop, a.kafka_bootstrap, a.topic), daemon=True).start()
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
