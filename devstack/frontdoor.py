"""A front door for `make run`: one WebSocket URL spread over the shards by nginx.

The same pattern as compose (`compose/nginx/nginx.conf`): nginx with a
`least_conn` upstream (connections live for hours: balance open connections,
not requests) and `proxy_next_upstream error timeout http_503`, so an upgrade
refused by a draining or full shard (503) or a dead one (connection refused)
is retried on the next shard before the client sees anything.

Unlike compose, the upstream is not a fixed list: it is generated from the
Redis registry — every shard heartbeating in state ``live`` (draining,
drained and dead ones are left out) at the WebSocket address it published —
and nginx is reloaded (SIGHUP: new workers take the new list, old ones keep
their open WebSockets) whenever that set changes. The registry is polled
every `--poll-s`; a malformed entry is skipped, and a Redis outage keeps the
last good upstream rather than emptying it.

nginx runs as a child with everything under `--dir` (config, pid, temp
paths, no /var path), in the foreground (`daemon off`), so it works for any
user; as root its workers drop to `nobody`. Routes: `/ws` (WebSocket, long
timeouts, X-Forwarded-For), `/` and `/client/` (the demo page and the JS
client the shards serve), `/healthz` (the front door's own: 200 with the
shard ids it routes to, 503 while it has none). Everything else is 404: a
shard's /metrics or /stats is not for the public side.

Ports: nginx cannot bind port 0 and report what it got (and on a reload it
would bind another), so `--port 0` (or `--port-fallback` with a port found
taken) picks a free port, and if another process takes it before nginx binds
it (nginx exits "bind() ... failed (98: Address already in use)") another,
a bounded number of times. The port nginx bound is then written to
`--ports-file` (`{"http": PORT}`), which `start_frontdoor` reads; nothing
checks a port and binds it later. Once bound, the port is kept: an nginx
restart comes back where its clients look.

`python -m devstack.frontdoor --help`; `make run` starts it (RUN_FRONT_PORT).
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import logging
import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from common.backoff import Backoff
from common.cli import add_flag, host_port, positive, redis_url, setup_logging
from common.ports_file import write_ports_file
from common.registry import Registry, ShardInfo
from devstack.procs import (
    BIND_ATTEMPTS,
    IN_USE,
    ROOT,
    file_size,
    free_port,
    http_json,
    log_since,
    python_cmd,
    read_ports_file,
    spawn,
    stop,
    wait_until,
)

log = logging.getLogger("frontdoor")
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
# What a shard publishes as its WebSocket address (shard.config: ws://HOST:PORT/ws). Only these
# characters ever reach the nginx config: no space, quote, brace or semicolon can be injected.
WS_ADDR = re.compile(r"ws://(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>[0-9]{1,5})/ws")
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
MAX_WORKER_CONNECTIONS = 65536


def find_nginx(explicit: str = "") -> str | None:
    """The nginx binary: `explicit`, else on PATH, else Debian's /usr/sbin (often off a user's PATH)."""
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)


# -- pure: registry → upstream → config -------------------------------------------------------
def upstream_addr(ws_addr: str) -> str | None:
    """`host:port` of a published WebSocket address, or None for anything malformed."""
    m = WS_ADDR.fullmatch(ws_addr)
    if m is None or not 1 <= int(m["port"]) <= 65535:
        return None
    return f"{m['host']}:{int(m['port'])}"


def backends(live: Mapping[str, ShardInfo]) -> tuple[tuple[str, str], ...]:
    """(shard id, host:port) of every shard that accepts clients, sorted by id.

    Draining and drained shards refuse upgrades anyway (503, retried by
    nginx); leaving them out spares every new client that detour.
    """
    out = []
    for sid, info in sorted(live.items()):
        addr = upstream_addr(info.ws_addr)
        if info.state == "live" and addr is not None:
            out.append((sid, addr))
    return tuple(out)


@dataclass(frozen=True)
class Layout:
    """Where this front door's nginx keeps its files (all under one directory)."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def pid(self) -> Path:
        return self.root / "nginx.pid"

    @property
    def temp(self) -> Path:
        return self.root / "temp"

    @property
    def log(self) -> Path:
        return self.root / "nginx.log"


def worker_user() -> str:
    """The `user` line: as root, workers run as nobody; otherwise nginx ignores (and warns about) it."""
    if os.geteuid() != 0:
        return ""
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return ""
    try:
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        group = str(pw.pw_gid)
    return f"user {pw.pw_name} {group};\n"


def render(listen: str, shards: tuple[tuple[str, str], ...], layout: Layout, user: str = "",
           worker_connections: int = 4096, generation: int = 1) -> str:
    """The whole nginx.conf for this set of shards (no shard: every proxied route answers 503).

    `/healthz` names the config's `generation` (1 for the first one written, +1 per rewrite):
    for a moment after a reload the previous worker still accepts and answers with its own, so
    "nginx routes to these shards" is known only once the new generation answers.
    """
    health = json.dumps({"ok": bool(shards), "shards": [sid for sid, _ in shards],
                         "generation": generation}, separators=(",", ":"))
    temp = "".join(f"  {name}_temp_path {layout.temp / name};\n" for name in TEMP_PATHS)
    if shards:
        servers = "".join(f"    server {addr} max_fails=3 fail_timeout=5s;  # {sid}\n"
                          for sid, addr in shards)
        upstream = f"  upstream shards {{\n    least_conn;\n{servers}  }}\n"
        ws = """      proxy_pass http://shards;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_next_upstream error timeout http_503;
      proxy_read_timeout 3600s;  # the shard pings quiet clients far more often than this
      proxy_send_timeout 3600s;
"""
        page = """      proxy_pass http://shards;
      proxy_set_header Host $http_host;  # shards compare a browser's Origin with this Host
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_next_upstream error timeout http_503;
"""
        health_status = 200
    else:
        upstream = ""
        ws = page = "      return 503 'no shard is accepting clients\\n';\n"
        health_status = 503
    return f"""# Generated by devstack/frontdoor.py from the registry; rewritten on every change.
daemon off;
master_process on;
worker_processes 1;  # one worker: least_conn sees every connection
pid {layout.pid};
error_log stderr warn;
{user}
events {{ worker_connections {worker_connections}; }}

http {{
{temp}  access_log off;
  client_max_body_size 16k;  # nothing here takes a body; never written to a temp file
  client_body_buffer_size 16k;
  proxy_max_temp_file_size 0;  # stream big answers instead of buffering them on disk

  map $http_upgrade $connection_upgrade {{
    default upgrade;
    ""      close;
  }}

{upstream}
  server {{
    listen {listen};

    location = /healthz {{
      default_type application/json;
      return {health_status} '{health}\\n';
    }}

    location = /ws {{
{ws}    }}

    location = / {{
{page}    }}

    location /client/ {{
{page}    }}

    location / {{
      return 404 'not found\\n';
    }}
  }}
}}
"""


def worker_connections_limit() -> int:
    """As many connections as the open-file limit allows (each proxied client holds two)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_WORKER_CONNECTIONS
    return max(256, min(MAX_WORKER_CONNECTIONS, soft - 64))


# -- adapters -----------------------------------------------------------------------------------
class Nginx:
    """One nginx master as our child: write the config, start, reload on change, stop.

    Port 0 means any free port; `fallback` allows any free one when `port` is taken
    (see the module docstring). `launch` settles the port; `start` alone reuses it.
    """

    def __init__(self, binary: str, layout: Layout, host: str, port: int = 0,
                 fallback: bool = False) -> None:
        self.binary = binary
        self.layout = layout
        self.host = host
        self.port = port
        self.fallback = fallback or port == 0
        self.user = worker_user()
        self.worker_connections = worker_connections_limit()
        self.proc: subprocess.Popen | None = None
        self.shards: tuple[tuple[str, str], ...] | None = None
        self.generation = 0  # configs written so far; /healthz names the one that answers

    @property
    def listen(self) -> str:
        return host_port(self.host, self.port)

    def _cmd(self, conf: Path, *extra: str) -> list[str]:
        # -e: errors go to stderr from the very start (a build's default log path may be unwritable).
        return [self.binary, "-e", "stderr", "-p", str(self.layout.root), "-c", str(conf), *extra]

    def _write(self, shards: tuple[tuple[str, str], ...]) -> None:
        """Write the config atomically, then have nginx check it (a bad one never replaces a good one)."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        for name in TEMP_PATHS:
            (self.layout.temp / name).mkdir(parents=True, exist_ok=True)
        text = render(self.listen, shards, self.layout, self.user, self.worker_connections,
                      self.generation + 1)
        tmp = self.layout.conf.with_suffix(".new")
        tmp.write_text(text)
        check = subprocess.run(self._cmd(tmp, "-t", "-q"), capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected the generated config: {check.stderr.strip()[-500:]}")
        os.replace(tmp, self.layout.conf)
        self.generation += 1

    def start(self, shards: tuple[tuple[str, str], ...]) -> None:
        self._write(shards)
        self.shards = shards
        with contextlib.suppress(FileNotFoundError):
            self.layout.pid.unlink()  # a previous run's: `ready` must see this master's own
        self.proc = spawn(self._cmd(self.layout.conf), self.layout.log)
        log.info("nginx pid=%d listening on %s shards=%s", self.proc.pid, self.listen,
                 [sid for sid, _ in shards])

    def launch(self, shards: tuple[tuple[str, str], ...], timeout_s: float = 30) -> int:
        """Start nginx and wait until it has bound its port (which it does before writing its pid
        file); returns that port. A port taken before nginx binds it is replaced by another free
        one when allowed, at most BIND_ATTEMPTS times; any other failure raises RuntimeError."""
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self.port = self.port or free_port()
            offset = file_size(self.layout.log)
            self.start(shards)
            try:
                wait_until(self.ready, timeout_s, "nginx", interval_s=0.05, proc=self.proc)
            except RuntimeError:
                if not (self.fallback and attempt < BIND_ATTEMPTS
                        and IN_USE in log_since(self.layout.log, offset)):
                    raise RuntimeError(f"nginx did not start on {self.listen}: "
                                       f"{log_since(self.layout.log, offset).strip()[-300:]}") from None
                log.warning("port %d was taken before nginx bound it; trying another", self.port)
                self.port = 0
                continue
            self.fallback = False  # from now on this is the address clients know
            return self.port
        raise AssertionError("unreachable")

    def ready(self) -> bool:
        """The master has written its pid file, which it does after installing its signal
        handlers: before that, a SIGHUP would kill it instead of reloading it."""
        try:
            return self.running() and int(self.layout.pid.read_text()) == self.proc.pid
        except (OSError, ValueError):
            return False

    def apply(self, shards: tuple[tuple[str, str], ...]) -> bool:
        """Reload nginx with `shards` if that differs from what it routes to now; True if reloaded.

        Not ready yet: nothing happens, and the next poll tries again.
        """
        if shards == self.shards or not self.ready():
            return False
        self._write(shards)
        self.shards = shards
        self.proc.send_signal(signal.SIGHUP)
        log.info("nginx reloaded shards=%s generation=%d", [sid for sid, _ in shards], self.generation)
        return True

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Fast shutdown (SIGTERM): a graceful one would wait for every WebSocket to end."""
        if self.proc is not None:
            stop(self.proc, timeout_s=5)


class FrontDoor:
    """Follows the registry and keeps nginx's upstream equal to the shards accepting clients."""

    def __init__(self, registry: Registry, nginx: Nginx, poll_s: float) -> None:
        self.registry = registry
        self.nginx = nginx
        self.poll_s = poll_s
        self.backoff = Backoff(base_s=poll_s, cap_s=max(5.0, poll_s))  # while Redis is unreachable
        self.restarts = Backoff(base_s=0.5, cap_s=10.0)  # while nginx keeps exiting
        self._redis_ok = True

    def current(self) -> tuple[tuple[str, str], ...] | None:
        """The shards to route to now, or None when the registry cannot be read (keep the last set)."""
        try:
            live, _dead = self.registry.load_shards(slack_ms=int(self.poll_s * 2000) + 100)
        except (redis.RedisError, OSError) as exc:
            if self._redis_ok:
                log.warning("registry unreachable, keeping the current upstream: %s", exc)
            self._redis_ok = False
            return None
        if not self._redis_ok:
            log.info("registry reachable again")
        self._redis_ok = True
        return backends(live)

    def run(self, stop_event: threading.Event, ports_file: str = "") -> None:
        """Start nginx and report its port in `ports_file`, then poll until `stop_event`; nginx is
        restarted (with backoff, on the same port) if it dies."""
        port = self.nginx.launch(self.current() or ())
        write_ports_file(ports_file, {"http": port})
        while not stop_event.wait(self._delay()):
            try:
                self.step(stop_event)
            except Exception:  # a hostile registry value or a failed reload must not end the front door
                log.exception("front door update failed; keeping the current upstream")

    def step(self, stop_event: threading.Event) -> None:
        """One poll: bring nginx's upstream up to date, or restart nginx if it exited."""
        shards = self.current()
        if self.nginx.running():
            self.restarts.reset()
            if shards is not None:
                self.nginx.apply(shards)
            return
        log.error("nginx exited with %s; restarting (log: %s)", self.nginx.proc.returncode,
                  self.nginx.layout.log)
        if not stop_event.wait(self.restarts.next_delay_s()):
            self.nginx.start(shards if shards is not None else self.nginx.shards or ())

    def _delay(self) -> float:
        if self._redis_ok:
            self.backoff.reset()
            return self.poll_s
        return self.backoff.next_delay_s()


# -- process entry and the helper for make run and the tests -----------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m devstack.frontdoor", description=__doc__.split("\n")[0])
    add_flag(p, "host", "SHARDCAST_FRONT_HOST", "127.0.0.1", "address nginx listens on")
    add_flag(p, "port", "SHARDCAST_FRONT_PORT", 8780, "port nginx listens on (0: any free port)", int)
    p.add_argument("--port-fallback", action="store_true",
                   help="if --port is taken, listen on any free port instead of failing")
    p.add_argument("--ports-file", default="",
                   help='write {"http": PORT} here once nginx has bound its port')
    add_flag(p, "dir", "SHARDCAST_FRONT_DIR", str(ROOT / ".run" / "frontdoor"),
             "nginx's config, pid, temp files and log")
    add_flag(p, "namespace", "SHARDCAST_NAMESPACE", "shardcast", "registry key prefix")
    add_flag(p, "redis-url", "SHARDCAST_REDIS_URL", "redis://127.0.0.1:6379/0",
             "registry Redis; one with a password belongs in the env or --redis-url-file")
    p.add_argument("--redis-url-file", default=os.environ.get("SHARDCAST_REDIS_URL_FILE", ""),
                   help="file holding the Redis URL [env SHARDCAST_REDIS_URL_FILE]")
    add_flag(p, "poll-s", "SHARDCAST_FRONT_POLL_S", 0.5, "registry re-read period", positive(float))
    add_flag(p, "nginx", "SHARDCAST_NGINX", "", "nginx binary (default: PATH, then /usr/sbin)")
    a = p.parse_args(argv)
    a.redis_url = redis_url(p, a.redis_url, a.redis_url_file, "SHARDCAST_REDIS_URL")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    setup_logging("frontdoor", str(a.port))
    binary = find_nginx(a.nginx)
    if binary is None:
        log.error("nginx not found: `make nginx` installs nginx-light (or set SHARDCAST_NGINX)")
        return 2
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: stop_event.set())
    client = redis.Redis.from_url(a.redis_url, socket_timeout=2, socket_connect_timeout=2)
    nginx = Nginx(binary, Layout(Path(a.dir)), a.host, a.port, a.port_fallback)
    try:
        FrontDoor(Registry(client, a.namespace), nginx, a.poll_s).run(stop_event, a.ports_file)
    except RuntimeError as exc:  # nginx could not start (its port taken, a bad build...)
        log.error("%s", exc)
        return 1
    finally:
        nginx.stop()
        log.info("front door stopped")
    return 0


@dataclass
class FrontDoorProc:
    """A running front door (our child), as `make run` and the tests see it."""

    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> tuple[int, dict]:
        status, doc = http_json(f"{self.http_url}/healthz")
        return status, doc if isinstance(doc, dict) else {}

    def shards(self) -> list[str]:
        """The shard ids in the config of the worker that answered (just after a reload that may
        still be the previous config: see `routes`)."""
        return list(self.health()[1].get("shards", []))

    def generation(self) -> int:
        """The generation of the config that answered /healthz (see `render`)."""
        return int(self.health()[1].get("generation", 0))

    def routes(self, shards: list[str], after: int) -> bool:
        """A config newer than generation `after` answers, and it routes to exactly `shards`."""
        doc = self.health()[1]
        return doc.get("shards") == shards and int(doc.get("generation", 0)) > after


def start_frontdoor(redis_url: str, namespace: str, port: int, workdir: Path, logdir: Path,
                    env: dict[str, str] | None = None, poll_s: float = 0.5,
                    wait_s: float = 30, fallback: bool = False) -> FrontDoorProc:
    """Start `python -m devstack.frontdoor` as a child and wait until its nginx answers /healthz.

    `port` 0: any free port; `fallback`: `port` if free, else any. The port nginx bound is
    read from the front door's ports file (it fails at once if a given port is taken).
    The Redis URL travels in the environment (it may carry a password), never on argv.
    """
    ports_file = workdir / "ports.json"
    ports_file.unlink(missing_ok=True)  # a previous run's: read only the one this child writes
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = python_cmd("-m", "devstack.frontdoor", "--port", str(port), "--dir", str(workdir),
                     "--namespace", namespace, "--poll-s", str(poll_s), "--ports-file", str(ports_file),
                     *(["--port-fallback"] if fallback else []))
    log_path = logdir / "frontdoor.log"
    proc = spawn(cmd, log_path, {**(env or {}), "SHARDCAST_REDIS_URL": redis_url})
    try:
        bound = read_ports_file(ports_file, wait_s, "front door", proc)["http"]
    except (RuntimeError, TimeoutError):
        stop(proc, timeout_s=5)
        raise
    fp = FrontDoorProc(bound, proc, log_path)
    wait_until(lambda: fp.health()[0] in (200, 503), wait_s, "front door", proc=fp.proc)
    return fp


if __name__ == "__main__":
    raise SystemExit(main())
