"""Every metric an alert or a dashboard panel reads is one a live worker metrics endpoint serves."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from deploy import check
from worker.health import HealthServer
from worker.metrics import Metrics


@pytest.fixture
def scrape() -> Iterator[str]:
    server = HealthServer(Metrics(), "127.0.0.1", 0, lambda: (True, "test"))
    port = server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            yield response.read().decode()
    finally:
        server.stop()


def test_alerts_and_dashboard_read_only_exported_metrics(scrape: str) -> None:
    exported = check.exposed_names(scrape)
    assert {"dfd_requests_total", "dfd_stage_seconds_bucket", "dfd_consumer_lag"} <= exported
    assert check.unknown_metrics(exported) == {}


def test_a_metric_the_worker_lacks_is_reported(scrape: str) -> None:
    exported = check.exposed_names(scrape) - {"dfd_cache_errors_total"}
    unknown = check.unknown_metrics(exported)
    assert unknown["alert DfdCacheErrors"] == ["dfd_cache_errors_total"]
