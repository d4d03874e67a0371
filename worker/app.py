"""Wiring of one worker process: settings -> health server, model, cache, pipeline, poll loop.

Startup order makes `/readyz` honest: the health port opens first (unready), then the checkpoint
loads and the broker and topics are checked (any failing exits with `EXIT_STARTUP` and a clear
message), then the poll loop starts. SIGTERM/SIGINT stop polling; the loop drains, flushes, commits
and closes. When not even the dead-letter topic can take a record the loop stops and the process
exits with `EXIT_DELIVERY` (the message's offset is not committed: it is redelivered). In
exactly-once mode a fenced (or fatally failed) transactional producer exits with `EXIT_FENCED`
after dropping its uncommitted work: the supervisor restarts it, with a fresh producer epoch.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from models.decode_pool import VideoDecoder
from models.decoders import NvdecUnavailable, build_frame_decoder
from models.errors import CheckpointError, WeightsError
from models.pipeline import Detector
from models.spec import PipelineSpec
from worker.cache import LruFeatureCache, RedisFeatureCache, ResilientCache
from worker.consumer import (
    DeliveryFatal,
    LoopSettings,
    ProducerFenced,
    StartupError,
    StreamWorker,
    TransactionSettings,
)
from worker.decoding import build_decoder
from worker.handler import MessageHandler
from worker.health import HealthServer
from worker.metrics import Metrics
from worker.processing import ProcessingSettings, VideoProcessor
from worker.settings import WorkerSettings
from worker.sources import SourcePolicy

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STARTUP = 2
EXIT_DELIVERY = 3
EXIT_FENCED = 4


def consumer_config(settings: WorkerSettings) -> dict[str, Any]:
    """librdkafka consumer settings: manual offset stores, auto-commit of stored offsets."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": settings.group_id,
        "client.id": settings.worker_id,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        "partition.assignment.strategy": "cooperative-sticky",
        **settings.kafka,
        **exactly_once_consumer_config(settings),
    }


def exactly_once_consumer_config(settings: WorkerSettings) -> dict[str, Any]:
    """Exactly-once: offsets are committed by the producer's transactions only, and only
    committed records are read."""
    if settings.delivery != "exactly-once":
        return {}
    return {"enable.auto.commit": False, "isolation.level": "read_committed"}


def transactional_id(settings: WorkerSettings) -> str:
    """The worker's `transactional.id`: unique per worker, stable for a stable `worker_id`."""
    return f"dfd-{settings.group_id}-{settings.worker_id}"


def producer_config(settings: WorkerSettings) -> dict[str, Any]:
    """librdkafka producer settings: idempotent, acknowledged by all in-sync replicas."""
    consumer_only = {"partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"}
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.worker_id,
        "enable.idempotence": True,
        "acks": "all",
        # Verdicts are few and latency-bound: send each at once rather than waiting to batch.
        "linger.ms": 0,
        **{key: value for key, value in settings.kafka.items() if key not in consumer_only},
        **(
            {
                "transactional.id": transactional_id(settings),
                "transaction.timeout.ms": settings.transaction_timeout_ms,
            }
            if settings.delivery == "exactly-once"
            else {}
        ),
    }


def source_policy(settings: WorkerSettings) -> SourcePolicy:
    """Where videos may come from, from the settings."""
    return SourcePolicy(
        allowed_roots=tuple(settings.allowed_roots),
        http_enabled=settings.http_enabled,
        allow_private_hosts=settings.http_allow_private,
        max_bytes=settings.http_max_bytes,
        connect_timeout_s=settings.http_connect_timeout_s,
        read_timeout_s=settings.http_read_timeout_s,
        max_redirects=settings.http_max_redirects,
        total_timeout_s=settings.http_total_timeout_s,
    )


def load_detector(settings: WorkerSettings, metrics: Metrics | None = None) -> Detector:
    """The checkpoint's detector with the worker's decode-limit overrides and decoder (NVDEC
    fallbacks counted in `metrics`); `StartupError` when it cannot be loaded."""
    path: Path = settings.checkpoint
    if not path.is_file():
        raise StartupError(f"checkpoint not found: {path}")
    try:
        detector = Detector.load(path, settings.device, compile_backbone=settings.compile_backbone)
        fallbacks = None if metrics is None else metrics.decode_fallbacks
        detector.frame_decoder = build_frame_decoder(
            settings.decoder,
            detector.device,
            None if fallbacks is None else lambda reason: fallbacks.labels(reason=reason).inc(),
        )
    except (CheckpointError, WeightsError, NvdecUnavailable) as exc:
        raise StartupError(f"cannot load checkpoint {path}: {exc}") from None
    detector.decode_limits = settings.decode_limits(detector.spec.decode)
    log.info("decoder chosen", extra={"decoder": detector.frame_decoder.kind})
    return detector


def warm_up(detector: Detector) -> float:
    """Run the model stages once (compiling the backbone if asked); returns the seconds taken."""
    started = time.perf_counter()
    try:
        detector.warm_up()
    except Exception as exc:  # a failed compilation or device error must stop the start, clearly
        raise StartupError(f"model warm-up failed: {type(exc).__name__}: {exc}") from None
    return time.perf_counter() - started


def log_loaded_model(spec: PipelineSpec, model_digest: str) -> None:
    """Log the model's identity and training data; warn when it only knows synthetic data."""
    trained_on = spec.trained_on.model_dump()
    log.info(
        "model loaded",
        extra={
            "model": spec.name,
            "version": spec.version,
            "spec_hash": spec.spec_hash,
            "model_digest": model_digest,
            "trained_on": trained_on,
        },
    )
    if spec.trained_on.kind == "synthetic":
        log.warning(
            "this model was trained on synthetic data: its verdicts on real videos mean nothing",
            extra={"trained_on": trained_on},
        )


def loop_settings(settings: WorkerSettings) -> LoopSettings:
    """Topics, limits and timeouts of the poll loop, from the settings."""
    return LoopSettings(
        topic=settings.requests_topic,
        verdicts_topic=settings.verdicts_topic,
        dlq_topic=settings.dlq_topic,
        max_inflight=settings.max_inflight,
        revoke_timeout_s=settings.revoke_timeout_s,
        drain_deadline_s=settings.drain_deadline_s,
        lag_interval_s=settings.lag_interval_s,
        startup_timeout_s=settings.startup_timeout_s,
        delivery_retries=settings.delivery_retries,
        delivery_backoff_s=settings.delivery_backoff_s,
        stall_timeout_s=settings.stall_timeout_s,
        transactions=TransactionSettings(
            interval_s=settings.transaction_interval_ms / 1000,
            max_records=settings.transaction_max_records,
            timeout_s=settings.transaction_timeout_ms / 1000,
        )
        if settings.delivery == "exactly-once"
        else None,
    )


def processing_settings(settings: WorkerSettings) -> ProcessingSettings:
    """Batching and concurrency of the pipeline, from the settings."""
    return ProcessingSettings(
        worker_id=settings.worker_id,
        max_batch_frames=settings.max_batch_frames,
        max_wait_ms=settings.max_wait_ms,
        classify_batch=settings.classify_batch,
        decode_workers=settings.decode_workers,
        decode_threads=settings.decode_threads,
        tmp_dir=settings.tmp_dir,
    )


def build_cache(settings: WorkerSettings, metrics: Metrics) -> ResilientCache:
    """Features and predictions in Redis when a URL is given, else in an in-process LRU;
    failures bypass and are counted."""
    backend: RedisFeatureCache | LruFeatureCache
    if settings.redis_url:
        backend = RedisFeatureCache(
            settings.redis_url, ttl_s=settings.cache_ttl_s, timeout_s=settings.cache_timeout_s
        )
    else:
        backend = LruFeatureCache(settings.lru_entries)

    def count_error(_error: Exception) -> None:
        metrics.cache_errors.inc()

    return ResilientCache(backend, retry_after_s=settings.cache_retry_after_s, on_error=count_error)


class WorkerApp:
    """One worker process; `run()` returns the exit code."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._metrics = Metrics()
        self._health = HealthServer(
            self._metrics, settings.metrics_host, settings.metrics_port, self.ready, self.alive
        )
        self._stream: StreamWorker | None = None
        self._phase = "starting"
        self._stopping = False
        self._metrics.ready.set_function(lambda: float(self.ready()[0]))

    def ready(self) -> tuple[bool, str]:
        """Readiness for `/readyz`: model loaded and the poll loop assigned or connected."""
        if self._stream is None:
            return False, self._phase
        return self._stream.ready()

    def alive(self) -> tuple[bool, str]:
        """Liveness for `/healthz`: false only when the poll loop has stalled with work open."""
        if self._stream is None:
            return True, self._phase
        return self._stream.alive()

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, drain and stop."""
        settings = self._settings
        self._install_signal_handlers()
        self._health.start()
        processor: VideoProcessor | None = None
        decoder: VideoDecoder | None = None
        try:
            self._phase = "loading the model"
            detector = load_detector(settings, self._metrics)
            spec = detector.spec
            self._metrics.set_model(spec.name, spec.version, spec.spec_hash)
            if detector.device.type == "cuda":
                device = detector.device
                self._metrics.gpu_memory_bytes.set_function(
                    lambda: float(torch.cuda.memory_allocated(device))
                )
            log_loaded_model(spec, detector.model_digest)
            self._phase = "warming up the model"
            log.info(
                "model warmed up",
                extra={
                    "seconds": round(warm_up(detector), 3),
                    "compiled_backbone": settings.compile_backbone,
                },
            )
            self._phase = "starting the decode processes"
            try:
                decoder = build_decoder(settings, spec, self._metrics, detector.frame_decoder)
            except (RuntimeError, OSError) as exc:
                raise StartupError(f"cannot start the decode pool: {exc}") from None
            processor = VideoProcessor(
                detector,
                build_cache(settings, self._metrics),
                source_policy(settings),
                self._metrics,
                processing_settings(settings),
                decoder,
            )
            handler = MessageHandler(
                processor,
                settings.verdicts_topic,
                settings.dlq_topic,
                settings.worker_id,
                self._metrics,
            )
            self._phase = "connecting to the broker"
            stream = StreamWorker.connect(
                consumer_config(settings),
                producer_config(settings),
                handler,
                loop_settings(settings),
                self._metrics,
            )
        except StartupError as exc:
            log.error("startup failed", extra={"reason": str(exc)})
            if decoder is not None:
                decoder.close()
            self._health.stop()
            return EXIT_STARTUP
        self._stream = stream
        if self._stopping:
            stream.stop()
        log.info("worker started", extra={"worker_id": settings.worker_id})
        try:
            stream.run()
        except ProducerFenced as exc:
            log.critical("worker stopped: transactions fenced", extra={"reason": str(exc)})
            return EXIT_FENCED
        except DeliveryFatal as exc:
            log.critical("worker stopped: delivery failed fatally", extra={"reason": str(exc)})
            return EXIT_DELIVERY
        finally:
            processor.close(timeout_s=1.0)
            decoder.close()
            self._health.stop()
        return EXIT_OK

    def _install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stop requested", extra={"signal": signal.Signals(signum).name})
            self._stopping = True
            if self._stream is not None:
                self._stream.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
