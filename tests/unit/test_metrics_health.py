"""Metrics families, the health/readiness HTTP server and the structured log format."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker import health
from worker.health import HealthServer
from worker.logs import configure_logging
from worker.metrics import STAGES, Metrics

EXPECTED_FAMILIES = {
    "dfd_requests": "counter",
    "dfd_dlq_messages": "counter",
    "dfd_frames_decoded": "counter",
    "dfd_decode_fallbacks": "counter",
    "dfd_frames_sampled": "counter",
    "dfd_faces_found": "counter",
    "dfd_cache_hits": "counter",
    "dfd_cache_misses": "counter",
    "dfd_cache_errors": "counter",
    "dfd_cache_bypass": "counter",
    "dfd_delivery_failures": "counter",
    "dfd_stage_seconds": "histogram",
    "dfd_request_seconds": "histogram",
    "dfd_batch_size": "histogram",
    "dfd_batch_seconds": "histogram",
    "dfd_batch_queue_seconds": "histogram",
    "dfd_batch_pending_items": "gauge",
    "dfd_batch_max_size": "gauge",
    "dfd_decode_busy": "gauge",
    "dfd_decode_queued": "gauge",
    "dfd_decode_restarts": "counter",
    "dfd_decode_memory_bytes": "gauge",
    "dfd_decode_memory_limit_bytes": "gauge",
    "dfd_inflight_requests": "gauge",
    "dfd_paused_partitions": "gauge",
    "dfd_consumer_lag": "gauge",
    "dfd_assigned_partitions": "gauge",
    "dfd_oldest_inflight_seconds": "gauge",
    "dfd_last_progress_timestamp_seconds": "gauge",
    "dfd_ready": "gauge",
    "dfd_gpu_memory_bytes": "gauge",
    "dfd_model_info": "gauge",
    "dfd_transactions": "counter",
    "dfd_transaction_seconds": "histogram",
    "dfd_transaction_records": "histogram",
}


def families(text: str) -> dict[str, object]:
    """Parsed families, without the `*_created` timestamps the text format lists as gauges."""
    return {
        family.name: family
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    }


def sample_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return sample.value
    raise KeyError((name, labels))


def test_every_family_is_exported_with_its_type() -> None:
    metrics = Metrics()
    metrics.requests.labels(status="error", code="NOT_FOUND").inc()
    metrics.dlq_messages.labels(code="INVALID_REQUEST").inc()
    metrics.consumer_lag.labels(topic="video-requests", partition="0").set(3)
    metrics.observe_batch("embed", 24, 0.05)
    metrics.set_model("dfd", "1.0", "abc123")
    parsed = families(metrics.render().decode())
    types = {name: family.type for name, family in parsed.items()}  # type: ignore[attr-defined]
    assert types == EXPECTED_FAMILIES


def test_values_and_labels_round_trip() -> None:
    metrics = Metrics()
    metrics.requests.labels(status="ok", code="").inc(2)
    metrics.frames_decoded.inc(300)
    metrics.cache_bypass.inc()
    metrics.inflight_requests.set(5)
    metrics.observe_batch("embed", 24, 0.05)
    metrics.set_model("dfd", "1.0", "old")
    metrics.set_model("dfd", "1.1", "new")
    text = metrics.render().decode()
    assert sample_value(text, "dfd_requests_total", {"status": "ok", "code": ""}) == 2
    assert sample_value(text, "dfd_frames_decoded_total") == 300
    assert sample_value(text, "dfd_cache_bypass_total") == 1
    assert sample_value(text, "dfd_inflight_requests") == 5
    assert sample_value(text, "dfd_batch_size_bucket", {"stage": "embed", "le": "16.0"}) == 0
    assert sample_value(text, "dfd_batch_size_bucket", {"stage": "embed", "le": "32.0"}) == 1
    assert sample_value(text, "dfd_batch_size_bucket", {"stage": "embed", "le": "256.0"}) == 1
    info = [s for s in families(text)["dfd_model_info"].samples]  # type: ignore[attr-defined]
    assert [s.labels for s in info] == [{"name": "dfd", "version": "1.1", "spec_hash": "new"}]
    for stage in STAGES:
        assert sample_value(text, "dfd_stage_seconds_count", {"stage": stage}) == 0


def test_batcher_queue_metrics_in_tritons_terms() -> None:
    metrics = Metrics()
    pending = [7]
    metrics.watch_batcher("faces", lambda: pending[0], 256)
    metrics.observe_queue_wait("faces", 0.003)
    metrics.observe_queue_wait("faces", 0.2)
    text = metrics.render().decode()
    assert sample_value(text, "dfd_batch_pending_items", {"stage": "faces"}) == 7
    assert sample_value(text, "dfd_batch_max_size", {"stage": "faces"}) == 256
    assert sample_value(text, "dfd_batch_queue_seconds_count", {"stage": "faces"}) == 2
    assert (
        sample_value(text, "dfd_batch_queue_seconds_bucket", {"stage": "faces", "le": "0.005"}) == 1
    )
    assert sample_value(text, "dfd_batch_queue_seconds_count", {"stage": "embed"}) == 0
    pending[0] = 0  # read at each scrape
    assert (
        sample_value(metrics.render().decode(), "dfd_batch_pending_items", {"stage": "faces"}) == 0
    )


def test_instances_do_not_share_registries() -> None:
    first, second = Metrics(), Metrics()
    first.cache_hits.inc()
    assert sample_value(first.render().decode(), "dfd_cache_hits_total") == 1
    assert sample_value(second.render().decode(), "dfd_cache_hits_total") == 0


class Readiness:
    def __init__(self) -> None:
        self.state = (False, "waiting for partition assignment")
        self.lock = threading.Lock()

    def __call__(self) -> tuple[bool, str]:
        with self.lock:
            return self.state


@pytest.fixture
def served() -> Iterator[tuple[str, Metrics, Readiness]]:
    metrics, readiness = Metrics(), Readiness()
    server = HealthServer(metrics, "127.0.0.1", 0, readiness)
    port = server.start()
    yield f"http://127.0.0.1:{port}", metrics, readiness
    server.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_metrics_endpoint_serves_the_registry(served: tuple[str, Metrics, Readiness]) -> None:
    base, metrics, _ = served
    metrics.faces_found.inc(7)
    status, content_type, body = get(base + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert set(families(text)) == set(EXPECTED_FAMILIES)
    assert sample_value(text, "dfd_faces_found_total") == 7


def test_readyz_flips_from_503_to_200(served: tuple[str, Metrics, Readiness]) -> None:
    base, _, readiness = served
    status, content_type, body = get(base + "/readyz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {"status": "not_ready", "reason": "waiting for partition assignment"}
    assert get(base + "/healthz")[0] == 200
    with readiness.lock:
        readiness.state = (True, "model loaded, 3 partitions assigned")
    status, _, body = get(base + "/readyz")
    assert status == 200
    assert json.loads(body)["reason"] == "model loaded, 3 partitions assigned"


def test_failing_readiness_check_is_not_ready() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("broker handle gone")

    server = HealthServer(Metrics(), "127.0.0.1", 0, broken)
    port = server.start()
    try:
        status, _, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503
        assert "broker handle gone" in json.loads(body)["reason"]
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404
    finally:
        server.stop()


def test_healthz_turns_unhealthy_when_the_worker_stalls() -> None:
    state = [(True, "alive")]
    server = HealthServer(Metrics(), "127.0.0.1", 0, lambda: (True, "ok"), lambda: state[0])
    port = server.start()
    try:
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        state[0] = (False, "no progress for 901 s with 3 requests open")
        status, _, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503
        assert json.loads(body) == {"status": "unhealthy", "reason": state[0][1]}
    finally:
        server.stop()


def closed_by_server(connection: socket.socket, drip_for_s: float) -> float | None:
    """Drip one byte every 0.2 s; the seconds until the server closed the connection, or None."""
    started = time.monotonic()
    while time.monotonic() - started < drip_for_s:
        time.sleep(0.2)
        readable, _, _ = select.select([connection], [], [], 0)
        if readable and connection.recv(1024) == b"":
            return time.monotonic() - started
        with contextlib.suppress(OSError):
            connection.sendall(b"i")
    return None


def test_a_dripping_client_is_cut_at_the_connection_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "SOCKET_TIMEOUT_S", 0.5)
    monkeypatch.setattr(health, "CONNECTION_DEADLINE_S", 1.0)
    server = HealthServer(Metrics(), "127.0.0.1", 0, lambda: (True, "ok"))
    port = server.start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as dribbler:
            dribbler.sendall(b"GET /metr")  # each byte comes within the socket timeout
            cut_after = closed_by_server(dribbler, drip_for_s=6.0)
        assert cut_after is not None and cut_after < 4.0
    finally:
        server.stop()


def test_connections_over_the_limit_are_closed_and_the_rest_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 2)
    server = HealthServer(Metrics(), "127.0.0.1", 0, lambda: (True, "ok"))
    port = server.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            extra.settimeout(5)
            assert extra.recv(1) == b""
        for connection in idle:
            connection.close()
        time.sleep(0.3)
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        server.stop()


def test_stop_releases_the_port() -> None:
    server = HealthServer(Metrics(), "127.0.0.1", 0, lambda: (True, "ok"))
    port = server.start()
    server.stop()
    again = HealthServer(Metrics(), "127.0.0.1", port, lambda: (True, "ok"))
    assert again.start() == port
    again.stop()


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_line_per_record_with_extras(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    configure_logging("json", "DEBUG", stream=stream)  # idempotent: still one handler
    log = logging.getLogger("worker.test")
    log.info(
        "verdict %s",
        "sent",
        extra={"request_id": "r-1", "topic": "t", "partition": 2, "offset": 41, "code": None},
    )
    try:
        raise ValueError("multi\nline")
    except ValueError:
        log.exception("failed", extra={"request_id": "r-2"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "verdict sent"
    assert (first["level"], first["logger"]) == ("INFO", "worker.test")
    assert {k: first[k] for k in ("request_id", "topic", "partition", "offset", "code")} == {
        "request_id": "r-1",
        "topic": "t",
        "partition": 2,
        "offset": 41,
        "code": None,
    }
    assert first["ts"].endswith("+00:00")
    assert "exc" not in first
    assert second["level"] == "ERROR"
    assert "ValueError: multi\nline" in second["exc"]


def test_text_logs_show_extras(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging("text", "INFO", stream=stream)
    logging.getLogger("worker.test").debug("hidden")
    logging.getLogger("worker.test").warning("paused", extra={"partition": 3})
    output = stream.getvalue()
    assert "hidden" not in output
    assert "WARNING" in output and "paused [partition=3]" in output
    with pytest.raises(ValueError):
        configure_logging("yaml")  # type: ignore[arg-type]
