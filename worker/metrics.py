"""Prometheus metrics of one worker (prefix `dfd_`), on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGES = ("fetch", "decode", "faces", "embed", "classify", "cache_get", "cache_put", "produce")
BATCH_STAGES = ("faces", "embed", "classify")
"""Stages that run through a dynamic batcher (`worker.batcher.DynamicBatcher`)."""
BATCH_SIZE_BUCKETS = tuple(float(1 << power) for power in range(9))  # 1, 2, 4, ..., 256
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Every metric family the worker exports; each instance owns a fresh `CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry

        self.requests = Counter(
            "dfd_requests",
            "Requests finished, by status and error code",
            ["status", "code"],
            registry=registry,
        )
        self.dlq_messages = Counter(
            "dfd_dlq_messages",
            "Messages sent to the dead-letter topic",
            ["code"],
            registry=registry,
        )
        self.frames_decoded = Counter(
            "dfd_frames_decoded", "Video frames decoded", registry=registry
        )
        self.decode_fallbacks = Counter(
            "dfd_decode_fallbacks",
            "Videos decoded on the CPU because NVDEC did not take them, by reason",
            ["reason"],
            registry=registry,
        )
        self.frames_sampled = Counter(
            "dfd_frames_sampled", "Frames kept by the sampler", registry=registry
        )
        self.faces_found = Counter(
            "dfd_faces_found", "Sampled frames with a detected face", registry=registry
        )
        self.cache_hits = Counter(
            "dfd_cache_hits", "Cache hits (prediction or features)", registry=registry
        )
        self.cache_misses = Counter(
            "dfd_cache_misses", "Cache misses (neither prediction nor features)", registry=registry
        )
        self.cache_errors = Counter(
            "dfd_cache_errors",
            "Cache failures (unavailable or corrupt)",
            registry=registry,
        )
        self.cache_bypass = Counter(
            "dfd_cache_bypass", "Lookups served without the cache", registry=registry
        )
        self.delivery_failures = Counter(
            "dfd_delivery_failures",
            "Failed deliveries of produced records, by topic and Kafka error name",
            ["topic", "reason"],
            registry=registry,
        )

        self.stage_seconds = Histogram(
            "dfd_stage_seconds",
            "Time per pipeline stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_seconds = Histogram(
            "dfd_request_seconds",
            "End-to-end time per request, from poll to verdict delivery",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "dfd_batch_size",
            "Items per dynamic batch",
            ["stage"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "dfd_batch_seconds",
            "Compute time of one dynamic batch (Triton: nv_inference_compute_infer_duration_us)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_queue_seconds = Histogram(
            "dfd_batch_queue_seconds",
            "Time a submission waits in a batcher queue before its items are dispatched, "
            "per dispatched part (Triton: nv_inference_queue_duration_us)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_pending_items = Gauge(
            "dfd_batch_pending_items",
            "Items waiting in a batcher queue (Triton: nv_inference_pending_request_count)",
            ["stage"],
            registry=registry,
        )
        self.batch_max_size = Gauge(
            "dfd_batch_max_size",
            "Most items per dynamic batch (batch fill = dfd_batch_size / this)",
            ["stage"],
            registry=registry,
        )

        self.decode_busy = Gauge(
            "dfd_decode_busy", "Videos being decoded now (decode processes busy)", registry=registry
        )
        self.decode_queued = Gauge(
            "dfd_decode_queued", "Decodes waiting for a free decode process", registry=registry
        )
        self.decode_restarts = Counter(
            "dfd_decode_restarts",
            "Decode processes replaced, by reason (timeout: killed at the deadline; crash)",
            ["reason"],
            registry=registry,
        )
        self.decode_memory_bytes = Gauge(
            "dfd_decode_memory_bytes",
            "Bytes of decoded frames reserved now (against dfd_decode_memory_limit_bytes)",
            registry=registry,
        )
        self.decode_memory_limit_bytes = Gauge(
            "dfd_decode_memory_limit_bytes",
            "The decoded-frame memory budget",
            registry=registry,
        )

        self.inflight_requests = Gauge(
            "dfd_inflight_requests",
            "Requests taken from Kafka and not yet finished",
            registry=registry,
        )
        self.paused_partitions = Gauge(
            "dfd_paused_partitions",
            "Assigned partitions paused for backpressure",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "dfd_consumer_lag",
            "Messages between the high watermark and the committed offset",
            ["topic", "partition"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "dfd_assigned_partitions", "Partitions assigned to this worker", registry=registry
        )
        self.oldest_inflight_seconds = Gauge(
            "dfd_oldest_inflight_seconds",
            "Age of the oldest request taken from Kafka and not yet finished (0 when none)",
            registry=registry,
        )
        self.last_progress_timestamp = Gauge(
            "dfd_last_progress_timestamp_seconds",
            "Unix time of the latest delivered record or finished request",
            registry=registry,
        )
        self.ready = Gauge("dfd_ready", "1 while the worker is ready", registry=registry)
        self.gpu_memory_bytes = Gauge(
            "dfd_gpu_memory_bytes",
            "Accelerator memory held by the worker's tensors (0 on CPU)",
            registry=registry,
        )
        self.model_info = Gauge(
            "dfd_model_info",
            "The loaded model (value is always 1)",
            ["name", "version", "spec_hash"],
            registry=registry,
        )

        # Exactly-once delivery (worker/loop/transactions.py); silent in at-least-once mode.
        self.transactions = Counter(
            "dfd_transactions",
            "Kafka transactions of verdicts and offsets, by outcome (committed, aborted, or "
            "abandoned: a call hung and the producer was replaced)",
            ["outcome"],
            registry=registry,
        )
        self.transaction_seconds = Histogram(
            "dfd_transaction_seconds",
            "Time from beginning to committing (or aborting) one Kafka transaction",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.transaction_records = Histogram(
            "dfd_transaction_records",
            "Records (verdicts and dead-letter copies) per committed Kafka transaction",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )

        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for stage in BATCH_STAGES:
            self.batch_size.labels(stage=stage)
            self.batch_seconds.labels(stage=stage)
            self.batch_queue_seconds.labels(stage=stage)
        for reason in ("timeout", "crash"):
            self.decode_restarts.labels(reason=reason)
        for outcome in ("committed", "aborted", "abandoned"):
            self.transactions.labels(outcome=outcome)

    def set_model(self, name: str, version: str, spec_hash: str) -> None:
        """Publish the loaded model's identity (replaces any earlier one)."""
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, spec_hash=spec_hash).set(1)

    def observe_batch(self, stage: str, size: int, seconds: float) -> None:
        """Record one dynamic batch (fits `DynamicBatcher`'s `on_batch` via a partial)."""
        self.batch_size.labels(stage=stage).observe(size)
        self.batch_seconds.labels(stage=stage).observe(seconds)

    def observe_queue_wait(self, stage: str, seconds: float) -> None:
        """Record one submission's wait in a batcher queue (fits `DynamicBatcher`'s `on_wait`)."""
        self.batch_queue_seconds.labels(stage=stage).observe(seconds)

    def watch_batcher(self, stage: str, pending: Callable[[], int], max_batch: int) -> None:
        """Publish a batcher's queued items (read at each scrape) and its largest batch."""
        self.batch_pending_items.labels(stage=stage).set_function(pending)
        self.batch_max_size.labels(stage=stage).set(max_batch)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
