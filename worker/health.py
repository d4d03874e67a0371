"""One HTTP port for operations: `/metrics`, `/healthz` (alive) and `/readyz` (ready to serve)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from worker.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]


class HealthServer:
    """Serves the worker's metrics and probes from a daemon thread."""

    def __init__(self, metrics: Metrics, host: str, port: int, ready: ReadyCheck) -> None:
        self._metrics = metrics
        self._address = (host, port)
        self._ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve in the background; returns the bound port (port 0 picks a free one)."""
        if self._server is not None:
            raise RuntimeError("health server already started")
        self._server = ThreadingHTTPServer(self._address, self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="health-server",
            daemon=True,
        )
        self._thread.start()
        port = int(self._server.server_address[1])
        log.info("health server listening", extra={"host": self._address[0], "port": port})
        return port

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        metrics = self._metrics
        ready = self._ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE, metrics.render())
                elif path == "/healthz":
                    self._json(200, {"status": "alive"})
                elif path == "/readyz":
                    self._readiness()
                else:
                    self._json(404, {"error": f"no such endpoint: {path}"})

            def _readiness(self) -> None:
                try:
                    is_ready, reason = ready()
                except Exception as exc:
                    log.exception("readiness check failed")
                    is_ready, reason = False, f"readiness check failed: {exc}"
                if is_ready:
                    self._json(200, {"status": "ready", "reason": reason})
                else:
                    self._json(503, {"status": "not_ready", "reason": reason})

            def _json(self, status: int, body: dict[str, str]) -> None:
                self._reply(status, "application/json", json.dumps(body).encode())

            def _reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("health request: " + fmt, *args)

        return Handler
