"""One HTTP port for operations: `/metrics`, `/healthz` (alive) and `/readyz` (ready to serve).

A slow or idle client cannot hold the server: every connection has a socket timeout and a total
deadline (its socket is shut down when it passes), and at most `MAX_CONNECTIONS` are served at
once (more are closed at once).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]

SOCKET_TIMEOUT_S = 5.0
"""Longest wait for one read or write of a connection."""
CONNECTION_DEADLINE_S = 10.0
"""Longest a connection may last from accept to close."""
MAX_CONNECTIONS = 16


def _always_alive() -> tuple[bool, str]:
    return True, "alive"


class _BoundedServer(ThreadingHTTPServer):
    """A threading server that serves at most `MAX_CONNECTIONS` connections at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("health server busy; connection refused", extra={"peer": client_address})
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        deadline = threading.Timer(CONNECTION_DEADLINE_S, _cut, (request,))
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._slots.release()


def _cut(connection: socket.socket) -> None:
    """End a connection past its deadline (the handler's next read or write fails)."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class HealthServer:
    """Serves the worker's metrics and probes from a daemon thread."""

    def __init__(
        self, metrics: Metrics, host: str, port: int, ready: Check, alive: Check = _always_alive
    ) -> None:
        self._metrics = metrics
        self._address = (host, port)
        self._ready = ready
        self._alive = alive
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve in the background; returns the bound port (port 0 picks a free one)."""
        if self._server is not None:
            raise RuntimeError("health server already started")
        self._server = _BoundedServer(self._address, self._handler())
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
        alive = self._alive

        class Handler(BaseHTTPRequestHandler):
            timeout = SOCKET_TIMEOUT_S

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE, metrics.render())
                elif path == "/healthz":
                    self._probe(alive, "alive", "unhealthy")
                elif path == "/readyz":
                    self._probe(ready, "ready", "not_ready")
                else:
                    self._json(404, {"error": f"no such endpoint: {path}"})

            def _probe(self, check: Check, good: str, bad: str) -> None:
                try:
                    ok, reason = check()
                except Exception as exc:
                    log.exception("probe failed", extra={"path": self.path})
                    ok, reason = False, f"check failed: {exc}"
                if ok:
                    self._json(200, {"status": good, "reason": reason})
                else:
                    self._json(503, {"status": bad, "reason": reason})

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
