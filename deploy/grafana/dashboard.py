"""The worker dashboard as code: `deploy/grafana/dfd-worker.json` is generated from this file.

    python -m deploy.grafana            # print the dashboard JSON
    python -m deploy.grafana --write    # write deploy/grafana/dfd-worker.json
    python -m deploy.grafana --check    # exit 1 when the committed JSON differs

Panels are built with Grafana's own typed builders (grafana-foundation-sdk). Every series a query
reads is checked against what `worker.metrics.Metrics` exports, so a renamed or removed metric
stops generation with `UnknownMetricError` (and the committed-JSON test fails until it is fixed).

To add a panel: append a `Graph` (or a full-width `Table`) to `PANELS` with queries made by the
helpers below, e.g.

    Graph("Delivery failures/s by reason", "ops",
          (Query(rate("dfd_delivery_failures_total", ["reason"]), "{{reason}}"),))

(`rate` for counters, `quantile`/`mean` for histograms, `gauge` for gauges), then run
`python -m deploy.grafana --write`. Panels are laid out in `PANELS` order, two per row.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos, VariableRefresh

from deploy.check import exposed_names
from worker.metrics import Metrics

OUTPUT = Path(__file__).resolve().parent / "dfd-worker.json"
UID = "dfd-worker"
TITLE = "Deepfake detector workers"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = 'job=~"$job"'
WIDTH, HEIGHT, COLUMNS = 12, 8, 2
TABLE_HEIGHT = 5


class UnknownMetricError(ValueError):
    """A panel reads a series the worker does not export."""

    code = "UNKNOWN_METRIC"


@cache
def exported_series() -> frozenset[str]:
    """Every series name a fresh `worker.metrics.Metrics` can expose (`_total`, `_bucket`...)."""
    return frozenset(exposed_names(Metrics().render().decode()))


def series(name: str, *matchers: str) -> str:
    """`name{job=~"$job", matchers...}`, once `name` is known to be exported by the worker."""
    if name not in exported_series() and name not in EXTERNAL_SERIES:
        raise UnknownMetricError(f"{name} is not exported by worker.metrics.Metrics")
    return f"{name}{{{', '.join((JOB, *matchers))}}}"


EXTERNAL_SERIES = frozenset({"up"})
"""Series Prometheus itself provides (see `deploy.check.EXTERNAL_METRICS`)."""


def _by(labels: Sequence[str]) -> str:
    return f"sum by ({', '.join(labels)}) " if labels else "sum"


def rate(name: str, by: Sequence[str] = (), *matchers: str) -> str:
    """Per-second rate of a counter (or a histogram's `_sum`/`_count`), summed by `by`."""
    return f"{_by(by)}(rate({series(name, *matchers)}[$__rate_interval]))"


def quantile(q: float, histogram: str, by: Sequence[str] = ()) -> str:
    """The `q` quantile of a histogram family (`dfd_x` reads `dfd_x_bucket`), by `by`."""
    buckets = rate(f"{histogram}_bucket", ("le", *by))
    return f"histogram_quantile({q:g}, {buckets})"


def mean(histogram: str, by: Sequence[str] = ()) -> str:
    """Mean observation of a histogram family over the rate interval, by `by`."""
    return f"{rate(f'{histogram}_sum', by)} / {rate(f'{histogram}_count', by)}"


def gauge(name: str, by: Sequence[str] = (), aggregate: str = "sum") -> str:
    """A gauge aggregated by `by` (or the bare series when `aggregate` is empty)."""
    if not aggregate:
        return series(name)
    grouping = f" by ({', '.join(by)}) " if by else ""
    return f"{aggregate}{grouping}({series(name)})"


@dataclass(frozen=True)
class Query:
    """One PromQL target and its legend."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Graph:
    """A time-series panel, half the dashboard wide."""

    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


@dataclass(frozen=True)
class Table:
    """A table panel across the whole dashboard."""

    title: str
    queries: tuple[Query, ...]
    description: str = ""


Panel = Graph | Table

BATCHED = "frames for faces/embed, videos for classify"
PANELS: tuple[Panel, ...] = (
    Graph(
        "Throughput (verdicts/s by status)",
        "reqps",
        (Query(rate("dfd_requests_total", ["status"]), "{{status}}"),),
        "Verdicts produced per second, ok and error.",
    ),
    Graph(
        "End-to-end latency",
        "s",
        tuple(
            Query(quantile(q, "dfd_request_seconds"), f"p{round(q * 100)}")
            for q in (0.5, 0.95, 0.99)
        ),
        "From poll to verdict delivery.",
    ),
    Graph(
        "Stage latency p50 by stage",
        "s",
        (Query(quantile(0.5, "dfd_stage_seconds", ["stage"]), "{{stage}}"),),
    ),
    Graph(
        "Stage latency p95 by stage",
        "s",
        (Query(quantile(0.95, "dfd_stage_seconds", ["stage"]), "{{stage}}"),),
    ),
    Graph(
        "Batch size (mean and p95 by stage)",
        "none",
        (
            Query(mean("dfd_batch_size", ["stage"]), "mean {{stage}}"),
            Query(quantile(0.95, "dfd_batch_size", ["stage"]), "p95 {{stage}}"),
        ),
        f"Items per dynamic batch: {BATCHED}.",
    ),
    Graph(
        "Batch run time p95 by stage",
        "s",
        (Query(quantile(0.95, "dfd_batch_seconds", ["stage"]), "{{stage}}"),),
    ),
    Graph(
        "Feature cache",
        "percentunit",
        (
            Query(
                f"{rate('dfd_cache_hits_total')} / ({rate('dfd_cache_hits_total')} + "
                f"{rate('dfd_cache_misses_total')})",
                "hit ratio",
            ),
            Query(
                f"{rate('dfd_cache_bypass_total')} / ({rate('dfd_cache_hits_total')} + "
                f"{rate('dfd_cache_misses_total')} + {rate('dfd_cache_bypass_total')})",
                "bypass ratio",
            ),
        ),
        "Hit ratio among lookups that reached the cache; bypass ratio among all lookups.",
    ),
    Graph(
        "Cache errors/s",
        "ops",
        (Query(rate("dfd_cache_errors_total"), "errors"),),
    ),
    Graph(
        "Consumer lag by partition",
        "short",
        (Query(gauge("dfd_consumer_lag", ["topic", "partition"]), "{{topic}}/{{partition}}"),),
        "Messages between the high watermark and the committed offset; KEDA scales on the group "
        "total.",
    ),
    Graph(
        "Errors by code",
        "reqps",
        (
            Query(rate("dfd_requests_total", ["code"], 'status="error"'), "verdict {{code}}"),
            Query(rate("dfd_dlq_messages_total", ["code"]), "dlq {{code}}"),
        ),
    ),
    Graph(
        "In flight and paused partitions",
        "short",
        (
            Query(gauge("dfd_inflight_requests", ["instance"]), "in flight {{instance}}"),
            Query(gauge("dfd_paused_partitions", ["instance"]), "paused {{instance}}"),
            Query(gauge("dfd_assigned_partitions", ["instance"]), "assigned {{instance}}"),
        ),
    ),
    Graph(
        "Frames per second",
        "short",
        (
            Query(rate("dfd_frames_decoded_total"), "decoded"),
            Query(rate("dfd_frames_sampled_total"), "sampled"),
            Query(rate("dfd_faces_found_total"), "with face"),
        ),
    ),
    Graph(
        "GPU memory held by workers",
        "bytes",
        (Query(gauge("dfd_gpu_memory_bytes", aggregate=""), "{{instance}}"),),
        "dfd_gpu_memory_bytes: memory held by each worker's tensors (0 on CPU workers).",
    ),
    Graph(
        "Workers ready / up",
        "short",
        (Query(gauge("dfd_ready"), "ready"), Query(gauge("up"), "up")),
    ),
    # Triton's vocabulary: queue time apart from compute time, pending items, batch fill.
    Graph(
        "Batcher queue wait vs compute (mean by stage)",
        "s",
        (
            Query(mean("dfd_batch_queue_seconds", ["stage"]), "queue {{stage}}"),
            Query(mean("dfd_batch_seconds", ["stage"]), "compute {{stage}}"),
        ),
        "Time a submission waits in the stage's batcher queue (Triton: "
        "nv_inference_queue_duration_us) against the time one batch computes "
        "(nv_inference_compute_infer_duration_us). Queue far above compute: the stage is the "
        "bottleneck (alert DfdBatcherSaturated).",
    ),
    Graph(
        "Batcher queue wait p95 by stage",
        "s",
        (Query(quantile(0.95, "dfd_batch_queue_seconds", ["stage"]), "{{stage}}"),),
    ),
    Graph(
        "Batcher pending items by stage",
        "short",
        (Query(gauge("dfd_batch_pending_items", ["stage"]), "{{stage}}"),),
        f"Items queued for a batch now (Triton: nv_inference_pending_request_count): {BATCHED}.",
    ),
    Graph(
        "Batch fill by stage (items per batch / max)",
        "percentunit",
        (
            Query(
                f"({mean('dfd_batch_size', ['stage'])}) / "
                f"{gauge('dfd_batch_max_size', ['stage'], 'max')}",
                "{{stage}}",
            ),
        ),
        "Mean items per dynamic batch against the stage's maximum. Low fill at low load is "
        "normal: a partial batch leaves after max_wait_ms.",
    ),
    # Delivery and liveness (worker/loop): failed deliveries, the oldest open request.
    Graph(
        "Delivery failures/s by topic and reason",
        "ops",
        (Query(rate("dfd_delivery_failures_total", ["topic", "reason"]), "{{topic}} {{reason}}"),),
        "Records the broker did not take (alert DfdDeliveryFailures). A verdict that cannot be "
        "delivered goes to the DLQ; a DLQ that cannot take a record stops the worker (exit 3).",
    ),
    Graph(
        "Oldest open request age / time since progress",
        "s",
        (
            Query(gauge("dfd_oldest_inflight_seconds", aggregate=""), "oldest {{instance}}"),
            Query(
                f"time() - {series('dfd_last_progress_timestamp_seconds')}",
                "since progress {{instance}}",
            ),
        ),
        "A worker with open requests and no progress past DFD_STALL_TIMEOUT_S fails /healthz "
        "and is restarted (alert DfdWorkerStalled).",
    ),
    # Exactly-once delivery (DFD_DELIVERY=exactly-once): Kafka transactions.
    Graph(
        "Transactions/s by outcome",
        "ops",
        (Query(rate("dfd_transactions_total", ["outcome"]), "{{outcome}}"),),
        "Kafka transactions of verdicts, DLQ copies and offsets (alert DfdTransactionsAborting). "
        "Empty in at-least-once mode.",
    ),
    Graph(
        "Transaction duration and records per transaction",
        "short",
        (
            Query(quantile(0.95, "dfd_transaction_seconds"), "p95 seconds"),
            Query(mean("dfd_transaction_records"), "mean records"),
        ),
        "Time from begin to commit (p95, seconds) and records (verdicts and DLQ copies) per "
        "committed transaction: the verdict latency exactly-once adds is about "
        "DFD_TRANSACTION_INTERVAL_MS plus this duration.",
    ),
    # The decode process pool (models/decode_pool.py).
    Graph(
        "Decode processes busy / decodes queued",
        "short",
        (
            Query(gauge("dfd_decode_busy", aggregate=""), "busy {{instance}}"),
            Query(gauge("dfd_decode_queued", aggregate=""), "queued {{instance}}"),
        ),
        "Videos being decoded now, and decodes waiting for a free decode process. Queued "
        "decodes while every process is busy: the worker is decode-bound.",
    ),
    Graph(
        "Decoded-frame memory vs budget",
        "bytes",
        (
            Query(gauge("dfd_decode_memory_bytes", aggregate=""), "held {{instance}}"),
            Query(gauge("dfd_decode_memory_limit_bytes", aggregate=""), "budget {{instance}}"),
        ),
        "Bytes of decoded frames reserved now against the per-worker budget (--decode-memory-mb).",
    ),
    Graph(
        "Decode processes replaced/s by reason",
        "ops",
        (Query(rate("dfd_decode_restarts_total", ["reason"]), "{{reason}}"),),
        "timeout: a child killed at its decode deadline; crash: a child that died.",
    ),
    Graph(
        "NVDEC fallbacks to the CPU/s by reason",
        "ops",
        (Query(rate("dfd_decode_fallbacks_total", ["reason"]), "{{reason}}"),),
        "Videos NVDEC did not take (codec, size, pixel format, decoder error), decoded on the CPU.",
    ),
    Table(
        "Loaded model",
        (
            Query(
                gauge("dfd_model_info", ["name", "version", "spec_hash"], "max"),
                "{{name}} {{version}} {{spec_hash}}",
            ),
        ),
    ),
)


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
    )


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .calcs(["mean", "max"])
        .show_legend(True)
    )


def _panel(panel: Panel, panel_id: int, position: GridPos) -> timeseries.Panel | table.Panel:
    built: timeseries.Panel | table.Panel
    if isinstance(panel, Graph):
        built = timeseries.Panel().unit(panel.unit).legend(_legend())
    else:
        built = table.Panel().unit("none")
    built = (
        built.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .grid_pos(position)
    )
    for index, query in enumerate(panel.queries):
        built = built.with_target(_target(query, chr(ord("A") + index)))
    return built


def _positions(panels: Sequence[Panel]) -> list[GridPos]:
    """Graphs two per row in order; a table takes a row of its own."""
    positions, x, y = [], 0, 0
    for panel in panels:
        if isinstance(panel, Table):
            if x:
                x, y = 0, y + HEIGHT
            positions.append(GridPos(h=TABLE_HEIGHT, w=WIDTH * COLUMNS, x=0, y=y))
            y += TABLE_HEIGHT
            continue
        positions.append(GridPos(h=HEIGHT, w=WIDTH, x=x, y=y))
        x += WIDTH
        if x == WIDTH * COLUMNS:
            x, y = 0, y + HEIGHT
    return positions


def build(panels: Sequence[Panel] = PANELS) -> dashboard.Dashboard:
    """The dashboard builder with `panels` in order."""
    job = (
        dashboard.QueryVariable("job")
        .label("Job")
        .query("label_values(dfd_ready, job)")
        .datasource(DATASOURCE)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .multi(True)
    )
    built = (
        dashboard.Dashboard(TITLE)
        .uid(UID)
        .tags(["dfd"])
        .timezone("browser")
        .refresh("30s")
        .readonly()
        .time("now-3h", "now")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(job)
    )
    for panel_id, (panel, position) in enumerate(zip(panels, _positions(panels), strict=True), 1):
        built = built.with_panel(_panel(panel, panel_id, position))
    return built


def render(panels: Sequence[Panel] = PANELS) -> str:
    """The dashboard JSON, as committed (sorted keys, two-space indent, final newline)."""
    return json.dumps(build(panels).build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.grafana", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {OUTPUT.name}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 when {OUTPUT.name} differs")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        OUTPUT.write_text(text, encoding="utf-8")
    elif args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} differs: run python -m deploy.grafana --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0
