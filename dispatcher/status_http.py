"""A small HTTP endpoint for health checks and inspection (the gRPC admin API comes later).

``/healthz`` 200 once the consumer has partitions and the routing table has
loaded; ``/stats`` all counters as JSON; ``/route?token=X`` the shards a record
of token X would go to now; ``/shards`` the live shards.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def serve(host: str, port: int, routes: dict[str, Callable[[dict[str, list[str]]], tuple[int, object]]]
          ) -> ThreadingHTTPServer:
    """Start a daemon-thread HTTP server answering GETs from `routes` (path → handler)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            handler = routes.get(url.path)
            if handler is None:
                status, doc = 404, {"error": "not found"}
            else:
                status, doc = handler(parse_qs(url.query))
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status-http", daemon=True).start()
    return server
