"""The dashboard as code: the committed JSON is what `deploy/grafana/dashboard.py` generates, and
every series a panel reads is one the worker exports."""

from __future__ import annotations

import json

import pytest

from deploy.check import dashboard_exprs
from deploy.grafana import dashboard
from deploy.grafana.dashboard import Graph, Query, UnknownMetricError

TRITON_STYLE = {
    "dfd_batch_queue_seconds_sum",
    "dfd_batch_queue_seconds_bucket",
    "dfd_batch_pending_items",
    "dfd_batch_max_size",
}


def test_committed_json_is_the_generated_one() -> None:
    committed = dashboard.OUTPUT.read_text(encoding="utf-8")
    assert committed == dashboard.render(), "run python -m deploy.grafana --write"
    assert dashboard.main(["--check"]) == 0


def test_a_panel_reading_an_unexported_metric_stops_generation() -> None:
    with pytest.raises(UnknownMetricError, match="dfd_renamed_total"):
        dashboard.rate("dfd_renamed_total")
    assert dashboard.rate("dfd_requests_total", ["code"], 'status="error"') == (
        'sum by (code) (rate(dfd_requests_total{job=~"$job", status="error"}[$__rate_interval]))'
    )


def test_panels_are_laid_out_two_per_row_with_unique_ids() -> None:
    built = json.loads(dashboard.render())
    panels = built["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    cells = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels}
    assert len(cells) == len(panels)
    assert panels[-1]["type"] == "table" and panels[-1]["gridPos"]["w"] == 24


def test_the_triton_style_batcher_panels_use_the_new_metrics() -> None:
    exprs = " ".join(dashboard_exprs(json.loads(dashboard.render())))
    for name in TRITON_STYLE:
        assert name in exprs


def test_adding_a_panel_is_one_entry() -> None:
    query = Query(dashboard.rate("dfd_frames_decoded_total"), "decoded")
    extra = Graph("Decoded frames/s", "short", (query,))
    before = json.loads(dashboard.render())["panels"]
    after = json.loads(dashboard.render((*dashboard.PANELS, extra)))["panels"]
    assert after[:-1] == before
    added = after[-1]
    assert (added["id"], added["title"], added["type"]) == (
        len(after),
        "Decoded frames/s",
        "timeseries",
    )
    table = before[-1]["gridPos"]
    assert added["gridPos"] == {"x": 0, "y": table["y"] + table["h"], "w": 12, "h": 8}
