"""Python floor 2: a bare gevent-websocket server, each tick's frame built once.

pywsgi + geventwebsocket's handler per connection (as shardcast's shards use),
a reader loop per connection for subscribe requests, and one greenlet that
polls Kafka (kafka-python, gevent-patched) and writes each record's
ready-made WebSocket frame to every subscriber's socket with `sendall`. See
bench/peers_floors.py for what a floor leaves out.

    python -m bench.peers_floor_gevent --port P --kafka-bootstrap B --topic T
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

from bench.peers_floors import consumer, parse_subscribe, subscribed_ack, tick_message  # noqa: E402
from shard.protocol import ws_frame  # noqa: E402

subs: dict[str, set] = {}  # token → the sockets' sendall of its subscribers


def app(environ, start_response):
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    write = ws.raw_write
    mine: list[str] = []
    try:
        while True:
            msg = ws.receive()
            if msg is None:
                break
            tokens = parse_subscribe(msg)
            if tokens is None:
                continue
            for t in tokens:
                subs.setdefault(t, set()).add(write)
            mine += tokens
            write(ws_frame(subscribed_ack(tokens)))
    except OSError:
        pass
    finally:
        for t in mine:
            subs.get(t, set()).discard(write)
    return []


def consume(bootstrap: str, topic: str) -> None:
    c = consumer(bootstrap, topic)
    while True:
        for recs in c.poll(timeout_ms=1000).values():
            for r in recs:
                if r.key is None:
                    continue
                writers = subs.get(r.key.decode())
                if not writers:
                    continue
                frame = ws_frame(tick_message(r.key, r.partition, r.offset, r.timestamp, r.value))
                for write in list(writers):
                    try:
                        write(frame)
                    except OSError:
                        writers.discard(write)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--kafka-bootstrap", required=True)
    p.add_argument("--topic", required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    server = WSGIServer(("127.0.0.1", a.port), app, handler_class=WebSocketHandler, log=None,
                        error_log=None, backlog=4096)
    gevent.spawn(consume, a.kafka_bootstrap, a.topic)
    server.serve_forever()


if __name__ == "__main__":
    main()
