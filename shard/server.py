"""The shard process: WebSocket/HTTP server, gRPC ingest server and registry writer.

HTTP routes besides the WebSocket endpoint ``/ws``: ``/healthz`` (200 once
registered, 503 while draining), ``/metrics`` (Prometheus), ``/stats`` (JSON
counters), ``/`` (a demo page) and ``/client/*.js`` (the JS client it imports).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import socket
import time
from collections import Counter
from concurrent import futures

import gevent
import grpc
import redis
from gevent import pywsgi

from common.cli import host_port
from common.metrics import CONTENT_TYPE, FastHistogram, exposition, make_registry
from common.ports_file import write_ports_file
from common.registry import Registry, now_ms
from shard import metrics
from shard.auth import AuthError, Grant, bearer_token, origin_allowed
from shard.codes import Close
from shard.config import ShardConfig, advisories
from shard.drain import Drain
from shard.grpc_control import ControlServicer
from shard.grpc_control import add_to_server as add_control
from shard.grpc_ingest import IngestSecretAuth, IngestServicer, add_to_server, bind
from shard.hub import Hub
from shard.ingest import IngestCore
from shard.keepalive import Action, keepalive_action
from shard.loopwatch import LoopWatch
from shard.outbox import Outbox
from shard.protocol import SUBPROTOCOL, negotiate_subprotocol
from shard.registry_writer import RegistryWriter, make_info
from shard.static_files import StaticFiles
from shard.static_files import headers as static_headers
from shard.wsconn import SUBPROTOCOL_ENV, Connection, ShardHandler

log = logging.getLogger(__name__)
WS_PATH = "/ws"
SWEEP_SLICE_S = 0.1  # the keepalive sweep visits a slice of the clients this often


class ShardServer:
    """Wires the hub, the ingest core and the adapters of one shard together."""

    def __init__(self, cfg: ShardConfig) -> None:
        self.counters: Counter[str] = Counter()
        self._make_servers(cfg)  # binds both ports: the registry record needs the ones bound
        cfg = self.cfg
        self.started_ms = now_ms()
        self.latency = FastHistogram()  # Kafka timestamp → frame written, seconds
        self.metrics = make_registry(lambda: metrics.collect(self))
        self.conns: dict[int, Connection] = {}
        self.ip_conns: Counter[str] = Counter()  # open WebSocket connections per peer address
        self._ids = itertools.count(1)
        self.hub = Hub(pause=gevent.idle)
        self.core = IngestCore(self.hub, self._on_overflow, pause=gevent.idle, on_gap=self._on_gap)
        client = redis.Redis.from_url(cfg.redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.registry = Registry(client, cfg.namespace)
        info = make_info(cfg.shard_id, cfg.grpc_addr, cfg.ws_url, self.started_ms, self._load,
                         cfg.heartbeat_s, cfg.heartbeat_ttl_s)
        self.writer = RegistryWriter(
            self.registry, info, lambda: list(self.hub.subs), cfg.heartbeat_s, cfg.heartbeat_ttl_s
        )
        self.hub.on_first = lambda token: self.writer.mark(token, True)
        self.hub.on_last = lambda token: self.writer.mark(token, False)
        self.accepting = True
        self.static = StaticFiles()  # demo page and JS client, read once
        self.watch = LoopWatch(lambda: len(self.conns), cfg.gc_freeze_check_s)
        self.drain: Drain | None = None
        self._sweeper: gevent.Greenlet | None = None

    def _make_servers(self, cfg: ShardConfig) -> None:
        """Create both servers and bind their ports; `self.cfg` gets the ports actually bound.

        Port 0 lets the kernel pick a free port as the socket binds, so no other process can
        take it first; `--ports-file` then tells the starter which ports they are. The
        WebSocket port is bound here but listens only in `start()`, once registered, as before.
        """
        # One worker per live ingest stream (one per dispatcher) for its whole life, plus headroom.
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64),
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                # Permit the dispatchers' keepalive pings (gRPC's default allows one per
                # 5 min and answers faster ones with GOAWAY too_many_pings, which reset
                # every stream every few minutes).
                ("grpc.http2.min_ping_interval_without_data_ms",
                 int(cfg.grpc_min_ping_interval_s * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
                # A port in use fails the bind instead of being shared with its owner (gRPC's
                # default SO_REUSEPORT would split the other server's connections with us).
                ("grpc.so_reuseport", 0),
            ],
            # Ingest can push ticks to clients and control can drain them: every call shows the secret.
            interceptors=[IngestSecretAuth(cfg.ingest_secret, self._grpc_rejected)]
            if cfg.ingest_secret else [],
        )
        grpc_port = bind(self.grpc_server, host_port(cfg.grpc_host, cfg.grpc_port), cfg.grpc_tls_cert,
                         cfg.grpc_tls_key, cfg.grpc_tls_client_ca)
        self.ws_socket = _bound_socket(cfg.host, cfg.ws_port)
        self.cfg = dataclasses.replace(cfg, ws_port=self.ws_socket.getsockname()[1], grpc_port=grpc_port)
        self.ws_server = _WSGIServer(
            self.ws_socket, self.wsgi_app, handler_class=ShardHandler, log=None,
        )
        self.ws_server.pre_start_hook = self._plain_http
        write_ports_file(cfg.ports_file, {"ws_port": self.cfg.ws_port, "grpc_port": grpc_port})

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        """Listen on gRPC, register in Redis, then accept WebSocket clients."""
        servicer = IngestServicer(
            self.cfg.shard_id, self.core, self.cfg.ingest_window_batches, self.counters
        )
        add_to_server(servicer, self.grpc_server)
        add_control(ControlServicer(self.cfg.shard_id, self.start_drain, lambda: len(self.conns),
                                    self.undrain), self.grpc_server)
        cfg = self.cfg
        self.grpc_server.start()
        log.info("gRPC port on %s tls=%s mtls=%s secret=%s", host_port(cfg.grpc_host, cfg.grpc_port),
                 bool(cfg.grpc_tls_cert), bool(cfg.grpc_tls_client_ca), bool(cfg.ingest_secret))
        for advice in advisories(cfg):
            log.warning("config: %s", advice)
        if not cfg.ingest_secret and not cfg.grpc_tls_client_ca:  # allowed on loopback only
            log.warning("gRPC port unauthenticated: any local process can push ticks or drain this "
                        "shard; set SHARDCAST_INGEST_SECRET")
        self.writer.start()
        self.ws_socket.listen(cfg.listen_backlog)
        self.ws_server.start()
        self._sweeper = gevent.spawn(self._keepalive_loop)
        self.watch.start()
        log.info("shard up ws=%s grpc=%s", self.cfg.ws_url, self.cfg.grpc_addr)

    def _grpc_rejected(self) -> None:
        self.counters["grpc_unauthenticated"] += 1

    def start_drain(self, window_s: float) -> Drain:
        """Refuse new clients, close current ones with 1012 over `window_s`, leave routing.

        Idempotent: a second call returns the drain already running (or done).
        The shard stays registered (state draining, then drained) so that
        `undrain` can bring it back; its routes go as its clients leave.
        """
        if self.drain is None:
            self.accepting = False
            self.writer.beat_now()  # publish state=draining now, not at the next heartbeat
            self.drain = Drain(window_s, lambda: list(self.conns.values()), self.writer.wait_synced,
                               self.writer.beat_now)
        return self.drain

    def undrain(self) -> bool:
        """End the drain, running or done: accept clients again, state live at once.

        Returns False when there was no drain. Clients the drain already closed
        are not called back; they reconnect wherever their load balancer sends them.
        """
        drain, self.drain = self.drain, None
        if drain is None:
            return False
        drain.cancel()
        self.accepting = True
        self.writer.beat_now()  # publish state=live now, not at the next heartbeat
        log.info("undrained closed_by_drain=%d", drain.status.closed)
        return True

    def stop(self) -> None:
        """Refuse new clients, close the current ones (1001), deregister, stop servers."""
        self.accepting = False
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        self.watch.stop()
        for conn in list(self.conns.values()):
            conn.close(Close.GOING_AWAY, "shard shutting down")
        deadline = gevent.get_hub().loop.now() + 3
        while self.conns and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.05)
        self.writer.stop()
        self.ws_server.stop(timeout=1)
        self.grpc_server.stop(grace=1).wait(2)
        log.info("shard stopped")

    # -- adapters --------------------------------------------------------
    def _plain_http(self, handler: ShardHandler) -> bool:
        """Before the upgrade: True sends the request to `wsgi_app` as plain HTTP."""
        env = handler.environ
        if env.get("PATH_INFO") != WS_PATH:
            return True
        refusal = self._refusal(env)
        if refusal is not None:
            self.counters["upgrades_refused"] += 1
            env["shardcast.refused"] = refusal
            return True
        return False

    def _refusal(self, env: dict) -> tuple[str, str] | None:
        """Why an upgrade is refused — (HTTP status, error) — or None; cheapest checks first.

        Refusing before the upgrade costs a client one HTTP answer instead of
        a connection slot; the chosen subprotocol and a verified token's grant
        are left in `env`.
        """
        cfg = self.cfg
        if not self.accepting or len(self.conns) >= cfg.max_connections:
            return "503 Service Unavailable", "at capacity" if self.drain is None else "draining"
        if self.ip_conns[env.get("REMOTE_ADDR", "")] >= cfg.max_connections_per_ip:
            return "429 Too Many Requests", "too many connections from this address"
        if not origin_allowed(env.get("HTTP_ORIGIN"), env.get("HTTP_HOST"), cfg.allowed_origins):
            return "403 Forbidden", "origin not allowed"
        ok, subprotocol = negotiate_subprotocol(env.get("HTTP_SEC_WEBSOCKET_PROTOCOL"))
        if not ok:
            return "400 Bad Request", f"unsupported subprotocol: this shard speaks {SUBPROTOCOL} (or none)"
        env[SUBPROTOCOL_ENV] = subprotocol  # ShardHandler echoes it in the 101 response
        token = bearer_token(env.get("HTTP_AUTHORIZATION"), env.get("QUERY_STRING"))
        if cfg.verifier is not None and token is not None:
            try:
                env["shardcast.grant"] = cfg.verifier.verify(token, time.time())
            except AuthError as exc:
                self.counters["auth_failures"] += 1
                return "401 Unauthorized", "token expired" if exc.expired else "invalid token"
        return None

    def wsgi_app(self, environ, start_response):
        ws = environ.get("wsgi.websocket")
        if ws is not None:
            self._serve_ws(ws)
            return []
        path = environ.get("PATH_INFO")
        refused = environ.get("shardcast.refused")
        if refused is not None:
            status, why = refused
            return _json(start_response, status, {"error": why})
        if path == "/healthz":  # a draining shard fails it, so load balancers move on
            ok = self.writer.synced and self.drain is None
            return _json(start_response, "200 OK" if ok else "503 Service Unavailable",
                         {"ok": ok, "shard_id": self.cfg.shard_id, "state": self._state()})
        if path == "/stats":
            return _json(start_response, "200 OK", self.stats())
        if path == "/metrics":
            body = exposition(self.metrics)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
            return [body]
        if path == WS_PATH:
            return _json(start_response, "426 Upgrade Required", {"error": "WebSocket only"})
        asset = self.static.get(path)  # "/" and the allow-listed /client/*.js
        if asset is not None:
            start_response("200 OK", static_headers(asset))
            return [asset.body]
        return _json(start_response, "404 Not Found", {"error": "not found"})

    def _serve_ws(self, ws) -> None:
        """Take over an upgraded socket from pywsgi, whose handler greenlet then ends.

        pywsgi and gevent-websocket would close the socket (and send a close
        frame) once the application returns; here the Connection owns it and
        closes it when it is done (Connection._finish calls `finished`).
        """
        handler: ShardHandler = ws.handler
        conn_id = next(self._ids)
        ip = ws.environ.get("REMOTE_ADDR", "")
        conn = Connection(self, handler.socket, conn_id, ip)  # should this raise, pywsgi closes it
        grant: Grant | None = ws.environ.get("shardcast.grant")
        conn.begin_auth(grant)
        sock, received = handler.detach()
        self.ws_server.detached.add(sock)
        self.conns[conn_id] = conn
        self.ip_conns[ip] += 1
        self.counters["connections_total"] += 1
        conn.start(received)

    def finished(self, conn: Connection) -> None:
        """A connection is closed and released: forget it."""
        if self.conns.pop(conn.conn_id, None) is None:
            return
        ip = conn.ip
        self.ip_conns[ip] -= 1
        if self.ip_conns[ip] <= 0:
            del self.ip_conns[ip]
        self.watch.policy.closed()
        self.counters["frames_conflated"] += conn.box.conflations

    def _keepalive_loop(self) -> None:
        """Ping quiet clients and close silent ones (see shard.keepalive).

        Each pass is spread over the whole period in small slices: pinging
        thousands of clients at once (each ping a send, each pong a reader
        wake-up) stalled the event loop for up to 100 ms at 12,500 clients.
        """
        cfg = self.cfg
        period = min(cfg.ping_interval_s / 2, 5.0)
        slices = max(1, round(period / SWEEP_SLICE_S))
        while True:
            conns = list(self.conns.values())
            per = -(-len(conns) // slices)
            for k in range(slices):
                gevent.sleep(period / slices)
                now = time.monotonic()
                for conn in conns[k * per:(k + 1) * per]:
                    self._keep_alive(conn, now)

    def _keep_alive(self, conn: Connection, now: float) -> None:
        if conn.close_code is not None:
            return  # already closing (the pass works from a snapshot of the clients)
        conn.check_behind()  # its data may sit unread in the socket with no new tick to notice
        cfg = self.cfg
        action = keepalive_action(now, conn.last_rx, conn.last_ping, cfg.ping_interval_s, cfg.idle_timeout_s)
        if action is Action.PING:
            conn.ping(now)
        elif action is Action.CLOSE:
            self.counters["clients_idle_closed"] += 1
            conn.close(Close.IDLE_TIMEOUT, "no traffic from client")

    def _on_overflow(self, boxes: list[Outbox]) -> None:
        """A subscriber fell behind: its writer closes it with SLOW_CONSUMER; drop its subs now."""
        for box in boxes:
            self.hub.remove(box)

    def _on_gap(self, boxes: list[Outbox]) -> None:
        """Ticks these subscribers needed were lost with no value to resync: tell them (4010)."""
        for box in boxes:
            self.hub.remove(box)
            conn = self.conns.get(box.conn_id)
            if conn is not None:
                conn.close(Close.DATA_LOST, "ticks lost upstream: resubscribe")

    def _load(self) -> tuple[int, int, str]:
        return len(self.conns), len(self.hub.subs), self._state()

    def _state(self) -> str:
        if self.drain is None:
            return "live"
        return "drained" if self.drain.status.done else "draining"

    def stats(self) -> dict[str, object]:
        """Every counter of the shard, for /stats and the tests."""
        hc = self.hub.counters
        return {
            "shard_id": self.cfg.shard_id,
            "connections": len(self.conns),
            "tokens": len(self.hub.subs),
            "subscriptions": self.hub.subscription_count,
            "records_received": hc.records_received,
            "records_no_subscriber": hc.records_no_subscriber,
            "frames_queued": hc.frames_queued,
            "clients_overflowed": hc.clients_overflowed,
            "frames_conflated": self.counters["frames_conflated"]
            + sum(c.box.conflations for c in self.conns.values()),
            "clients_behind": sum(1 for c in self.conns.values() if c.box.conflated),
            # Greenlets serving clients right now: an idle client has none (shard/wsconn.py).
            "readers_active": self.counters["readers_active"],
            "writers_active": sum(1 for c in self.conns.values() if c.writer is not None),
            "snapshots_received": hc.snapshots_received,
            "snapshots_stale": hc.snapshots_stale,
            "duplicates_dropped": hc.duplicates_dropped,
            "resyncs_delivered": hc.resyncs_delivered,
            "gaps_closed": hc.gaps_closed,
            "batches_received": self.counters["batches_received"],
            "stream_pings": self.counters["stream_pings"],
            "ingest_streams": self.counters["ingest_streams"],
            "frames_written": self.counters["frames_written"],
            "errors_sent": self.counters["errors_sent"],
            "upgrades_refused": self.counters["upgrades_refused"],
            "auth_failures": self.counters["auth_failures"],  # bad tokens, at the upgrade or in a message
            "auth_closed": self.counters["auth_closed"],  # closed at token expiry or the auth deadline
            "grpc_unauthenticated": self.counters["grpc_unauthenticated"],  # refused internal calls
            "clients_idle_closed": self.counters["clients_idle_closed"],
            "clients_write_timeout": self.counters["clients_write_timeout"],  # reset: nothing taken in time
            "connections_total": self.counters["connections_total"],
            "registry_synced": self.writer.synced,
            "registered_tokens": len(self.writer.registered),
            "state": self._state(),
            "delivery_latency_counts": list(self.latency.counts),
            "latency_bounds_s": list(self.latency.bounds),
            **self.watch.stats(),
        }


def _bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (0: a free port the kernel picks), not listening yet."""
    family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    if port:  # a fixed port: rebind at once after a restart (TIME_WAIT); port 0 needs no reuse
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def _json(start_response, status: str, doc: dict[str, object]) -> list[bytes]:
    body = json.dumps(doc).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _WSGIServer(pywsgi.WSGIServer):
    """pywsgi's server, except that it does not close the sockets upgraded to WebSockets.

    Their `Connection` owns and closes them; the handler greenlet that did the
    upgrade ends at once, so an idle client costs no greenlet.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.detached: set = set()  # upgraded sockets whose handler has not returned yet

    def do_close(self, sock, *args) -> None:
        if sock in self.detached:
            self.detached.discard(sock)
            return
        super().do_close(sock, *args)
