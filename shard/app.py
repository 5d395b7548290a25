"""Process wiring for the shard: config, logging, signals. Imported after gevent patching."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import signal
import sys

import gevent
import gevent.event

from common.cli import setup_logging
from shard.config import ShardConfig, parse_args
from shard.server import ShardServer

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Run a shard until SIGTERM/SIGINT, then shut down cleanly."""
    cfg = parse_args(argv)
    setup_logging("shard", cfg.shard_id, cfg.log_level)
    logging.getLogger("geventwebsocket").setLevel(logging.WARNING)
    cfg = fit_fd_limit(cfg)
    server = ShardServer(cfg)
    done = gevent.event.Event()

    def on_signal() -> None:
        log.info("signal received, stopping")
        done.set()

    gevent.signal_handler(signal.SIGTERM, on_signal)
    gevent.signal_handler(signal.SIGINT, on_signal)
    failed: list[BaseException] = []

    def on_start_failure(greenlet: gevent.Greenlet) -> None:
        log.error("shard failed to start: %r", greenlet.exception)
        failed.append(greenlet.exception)
        done.set()

    starter = gevent.spawn(server.start)  # may wait for Redis; a signal must still stop us
    starter.link_exception(on_start_failure)
    done.wait()
    starter.kill()
    server.stop()
    sys.exit(1 if failed else 0)


FD_RESERVE = 256  # gRPC, Redis, logs and accept headroom besides one fd per client


def fit_fd_limit(cfg: ShardConfig) -> ShardConfig:
    """Raise the open-file limit toward what max_connections needs, else lower the cap.

    Upgrades are refused (503) at the cap; reaching the process's fd limit
    instead would make accept() fail and clients hang.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cfg.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < want:
        cap = max(1, soft - FD_RESERVE)
        log.warning("open-file limit %d: capping max_connections %d -> %d",
                    soft, cfg.max_connections, cap)
        return dataclasses.replace(cfg, max_connections=cap)
    return cfg
