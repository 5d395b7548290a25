"""A small HTTP endpoint for health checks, Prometheus and quick inspection.

``/healthz`` 200 once the consumer has partitions and the routing table has
loaded; ``/metrics`` Prometheus text; ``/stats`` all counters as JSON;
``/route?token=X`` the shards a record of token X would go to now; ``/shards``
the live shards. Operations (mode, drain, publish) are on the gRPC admin API.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from common.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE


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
            if isinstance(doc, bytes):  # Prometheus exposition
                body, ctype = doc, METRICS_CONTENT_TYPE
            else:
                body, ctype = json.dumps(doc).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status-http", daemon=True).start()
    return server
