"""Process wiring for the shard: config, logging, signals. Imported after gevent patching."""

from __future__ import annotations

import logging
import signal
import sys

import gevent
import gevent.event

from common.cli import setup_logging
from shard.config import parse_args
from shard.server import ShardServer

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Run a shard until SIGTERM/SIGINT, then shut down cleanly."""
    cfg = parse_args(argv)
    setup_logging("shard", cfg.shard_id, cfg.log_level)
    logging.getLogger("geventwebsocket").setLevel(logging.WARNING)
    server = ShardServer(cfg)
    done = gevent.event.Event()

    def on_signal() -> None:
        log.info("signal received, stopping")
        done.set()

    gevent.signal_handler(signal.SIGTERM, on_signal)
    gevent.signal_handler(signal.SIGINT, on_signal)
    try:
        server.start()
    except Exception:
        log.exception("shard failed to start")
        sys.exit(1)
    done.wait()
    server.stop()
