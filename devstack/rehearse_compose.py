"""Rehearse compose/ without Docker: the same commands, nginx and Prometheus configs, on loopback.

Every service of `compose/docker-compose.yml` that runs our image is started
from its own `command` and `environment`, with container host names and ports
rewritten to free loopback ports; `compose/nginx/nginx.conf` and
`compose/prometheus/prometheus.yml` are rewritten the same way and run with the
local `nginx` and `prometheus` binaries (Debian packages). Then it checks what
the container stack promises: WebSocket clients through nginx get ticks on
every shard, a drained shard's clients get 1012 and come back through nginx on
the other shards, Prometheus scrapes every target, and every Grafana panel's
query returns data. `make compose-rehearse`; not part of `make test` (it needs
nginx and Prometheus installed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import redis as redis_py
import websocket
import yaml

from devstack.kafka_server import KafkaServer
from devstack.procs import ROOT, free_port, http_json, python_cmd, read_ports_file, spawn, stop, wait_until
from devstack.redis_server import RedisServer
from shard.token import issue

log = logging.getLogger("rehearse")
COMPOSE = ROOT / "compose"
CLIENTS = 30


class Rehearsal:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.servers: list = []
        self.ports: dict[str, dict[str, int]] = {}
        self.spec = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
        self.secrets: dict[str, str] = {}  # what the operator must set (${VAR:?...}), made up here

    # -- start -------------------------------------------------------------
    def start(self) -> None:
        redis = RedisServer(self.work / "redis").start()  # port 0: a free one, retried if taken
        kafka = KafkaServer(self.work / "kafka").start()
        self.servers += [redis, kafka]
        init = self.spec["services"]["kafka-init"]["command"]
        kafka.create_topic(init[init.index("--topic") + 1], int(init[init.index("--partitions") + 1]))
        self.hosts = {"kafka:9092": kafka.bootstrap,
                      "redis:6379": redis.url.removeprefix("redis://").rsplit("/", 1)[0]}
        self._add_redis_user(redis.url)
        ours = {n: s for n, s in self.spec["services"].items() if s.get("image") == "shardcast:dev"}
        order = sorted(ours, key=lambda n: (not n.startswith("shard"), n == "producer", n))
        for name in order:
            self._start_service(name, ours[name])
        self._start_nginx()
        self._start_prometheus()

    def _start_service(self, name: str, service: dict) -> None:
        env = {k: self._local(self._interpolate(str(v)))
               for k, v in (service.get("environment") or {}).items()}
        module = service["command"][2]
        ports = {"shard": ["ws", "grpc"], "dispatcher": ["http", "admin"], "demo.producer": ["metrics"]}
        ports_file = self.work / "ports" / f"{name}.json"
        if module == "demo.producer":  # its --metrics-port 0 means "off": see docs/testing.md
            self.ports[name] = {"metrics": free_port()}
            extra = ["--metrics-port", str(self.ports[name]["metrics"])]
        else:  # port 0: bound by the process itself and reported in its ports file
            extra = [a for p in ports[module] for a in (f"--{p}-port", "0")]
            extra += ["--ports-file", str(ports_file)]
            ports_file.parent.mkdir(parents=True, exist_ok=True)
        if module == "shard":
            extra += ["--advertise-host", "127.0.0.1"]
        cmd = python_cmd(*service["command"][1:], *extra)
        proc = spawn(cmd, self.work / "logs" / f"{name}.log", env)
        self.procs.append(proc)
        if module != "demo.producer":
            bound = read_ports_file(ports_file, 60, name, proc)
            self.ports[name] = {p: bound[f"{p}_port"] for p in ports[module]}
            port = self.ports[name]["ws" if module == "shard" else "http"]
            wait_until(lambda: http_json(f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, name, proc=proc)
        log.info("%s up %s", name, self.ports[name])
        self.env = env if module == "dispatcher" else getattr(self, "env", {})

    def _interpolate(self, value: str) -> str:
        """Compose's ${VAR:-default} (VAR unset) and ${VAR:?msg} (a secret the operator sets)."""
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
        return re.sub(r"\$\{(\w+):\?[^}]*\}",
                      lambda m: self.secrets.setdefault(m[1], secrets.token_urlsafe(32)), value)

    def _add_redis_user(self, url: str) -> None:
        """The compose Redis's ACL user (`compose/docker-compose.yml`, service redis), on our server."""
        script = " ".join(self.spec["services"]["redis"]["command"])
        rules = re.search(r"user shardcast on >%s ([^\n\\']*)", script)[1].split()
        password = self._interpolate("${SHARDCAST_REDIS_PASSWORD:?}")
        redis_py.Redis.from_url(url).execute_command("ACL", "SETUSER", "shardcast", "on",
                                                     f">{password}", *rules)

    def _local(self, value: str) -> str:
        for k, v in self.hosts.items():
            value = value.replace(k, v)
        return value

    def _start_nginx(self) -> None:
        conf = (COMPOSE / "nginx" / "nginx.conf").read_text()
        for name, p in self.ports.items():
            conf = conf.replace(f"server {name}:8701", f"server 127.0.0.1:{p.get('ws', 0)}")
        self.lb_port = free_port()
        conf = conf.replace("listen 80;", f"listen 127.0.0.1:{self.lb_port};")
        path = self.work / "nginx.conf"
        path.write_text(conf)
        (self.work / "nginx").mkdir(exist_ok=True)
        cmd = ["nginx", "-p", str(self.work / "nginx"), "-c", str(path), "-g",
               f"daemon off; pid {self.work}/nginx.pid; error_log {self.work}/logs/nginx.log;"]
        self.procs.append(spawn(cmd, self.work / "logs" / "nginx.out"))
        wait_until(lambda: _status(f"http://127.0.0.1:{self.lb_port}/lb-health") == 200, 15, "nginx")

    def _start_prometheus(self) -> None:
        prom = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
        local = {"dispatcher": "http", "shard": "ws", "producer": "metrics"}
        for job in prom["scrape_configs"]:
            for sc in job["static_configs"]:
                sc["targets"] = [f"127.0.0.1:{self.ports[t.split(':')[0]][local[job['job_name']]]}"
                                 for t in sc["targets"]]
        path = self.work / "prometheus.yml"
        path.write_text(yaml.safe_dump(prom))
        self.prom_port = free_port()
        cmd = ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={self.work}/tsdb",
               f"--web.listen-address=127.0.0.1:{self.prom_port}"]
        self.procs.append(spawn(cmd, self.work / "logs" / "prometheus.log"))
        wait_until(lambda: _status(f"http://127.0.0.1:{self.prom_port}/-/ready") == 200, 30, "prometheus")

    # -- checks ------------------------------------------------------------
    def check_lb_and_drain(self) -> dict:
        # compose's shards run with --auth jwt: clients carry a token signed with the made-up secret.
        token = issue(self.secrets["SHARDCAST_JWT_SECRET"], ["*"], 3600)
        url = f"ws://127.0.0.1:{self.lb_port}/ws?token={token}"
        closes: list = []
        got = [0] * CLIENTS
        threads = [threading.Thread(target=_client, args=(url, i, got, closes), daemon=True)
                   for i in range(CLIENTS)]
        for t in threads:
            t.start()
        wait_until(lambda: all(got), 60, "ticks through nginx on every client")
        per_shard = {n: http_json(f"http://127.0.0.1:{p['ws']}/stats")[1]["connections"]
                     for n, p in self.ports.items() if "ws" in p}
        admin = f"127.0.0.1:{self.ports['dispatcher-1']['admin']}"
        env = {**os.environ, "SHARDCAST_ADMIN_TOKEN": self.env["SHARDCAST_ADMIN_TOKEN"]}
        out = subprocess.run(python_cmd("-m", "dispatcher.admin", "--target", admin, "drain", "shard-1",
                                        "--window-s", "2"), capture_output=True, text=True, timeout=60,
                             env=env)
        assert out.returncode == 0, out.stderr
        wait_until(lambda: len(closes) >= per_shard["shard-1"], 30, "1012 on shard-1's clients")
        before = list(got)
        wait_until(lambda: sum(g > b for g, b in zip(got, before, strict=True)) == CLIENTS, 60,
                   "every client back with ticks through nginx")
        after = {n: http_json(f"http://127.0.0.1:{p['ws']}/stats")[1]["connections"]
                 for n, p in self.ports.items() if "ws" in p}
        assert after["shard-1"] == 0 and sum(after.values()) == CLIENTS, after
        return {"connections_before_drain": per_shard, "connections_after_drain": after,
                "close_codes": sorted(set(closes)), "drain_output": out.stdout.strip().splitlines()[-1]}

    def check_prometheus(self) -> dict:
        q = lambda expr: _query(self.prom_port, expr)  # noqa: E731
        wait_until(lambda: q("count(up == 1)") == [len(self.ports)], 60, "every target up")
        time.sleep(12)  # a few scrapes, so rate() has two points
        dash = json.loads((COMPOSE / "grafana" / "dashboards" / "shardcast.json").read_text())
        results = {}
        for panel in dash["panels"]:
            for t in panel["targets"]:
                results[f"{panel['title']} [{t['legendFormat']}]"] = q(t["expr"])
        empty = [k for k, v in results.items() if not v]
        return {"targets_up": len(self.ports), "panels": results, "empty": empty}

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop(p, 10)
        for s in reversed(self.servers):
            s.stop()


def _client(url: str, i: int, got: list, closes: list) -> None:
    """Subscribe through the load balancer; on 1012 reconnect after a jittered pause, as clients should."""
    while True:
        try:
            ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
            ws.send(json.dumps({"op": "subscribe", "tokens": ["BTC-USD", "ETH-USD"]}))
            while True:
                op, frame = ws.recv_data_frame(True)
                if op == websocket.ABNF.OPCODE_CLOSE:
                    closes.append(int.from_bytes(frame.data[:2], "big"))
                    break
                if b'"tick"' in frame.data:
                    got[i] += 1
        except (OSError, websocket.WebSocketException):
            pass
        time.sleep(0.2 + (i % 10) / 10)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except OSError:
        return 0


def _query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.loads(r.read())
    return [round(float(x["value"][1]), 6) for x in doc["data"]["result"]]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    for tool in ("nginx", "prometheus"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install nginx-light prometheus", file=sys.stderr)
            return 2
    r = Rehearsal(Path(tempfile.mkdtemp(prefix="shardcast-rehearse-")))
    try:
        r.start()
        report = {"lb_and_drain": r.check_lb_and_drain(), "prometheus": r.check_prometheus()}
    finally:
        r.stop()
    print(json.dumps(report, indent=2))
    return 1 if report["prometheus"]["empty"] else 0


if __name__ == "__main__":
    sys.exit(main())
