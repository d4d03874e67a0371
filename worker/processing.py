"""The per-request pipeline of the worker and the per-message handler around it.

`VideoProcessor.process` runs one request: source policy -> content digest -> prediction cache
[hit: the verdict straight away] -> feature cache [miss: decode (the worker's decode pool) ->
face detection through a dynamic batcher shared by every in-flight video -> the video's face
track and crops -> backbone embeddings through another shared batcher -> feature store] ->
ensemble (batched across videos) -> prediction store.
It never raises: every failure becomes an error verdict with a precise code.

The content digest is the download's (hashed while it streamed in), else the request's claimed
`sha256`, else the hash of the opened descriptor. A claim serves lookups as it is, but nothing is
stored under it before the descriptor's bytes are hashed and match it (else INVALID_REQUEST).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch

from models.decode_pool import ThreadDecoder, VideoDecoder
from models.errors import PipelineError
from models.faces import FaceDetection
from models.pipeline import Detector, Prediction, VideoFeatures
from models.stages import Frame
from models.video_budget import MemoryBudget
from producer.contracts import ErrorCode, Verdict, VideoRequest, utcnow
from worker.batcher import DynamicBatcher
from worker.cache import CacheStatus, ResilientCache, cache_key, prediction_key
from worker.metrics import Metrics
from worker.settings import DECODE_MIB_PER_REQUEST, WorkerSettings
from worker.sources import LocalVideo, SourceError, SourcePolicy, fd_digest, open_source
from worker.verdicts import error_verdict, model_info, ok_verdict

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


_DEFAULTS = WorkerSettings.model_fields


@dataclass(frozen=True)
class ProcessingSettings:
    """Batching and concurrency of the pipeline (defaults: `WorkerSettings`')."""

    worker_id: str
    max_batch_frames: int = _DEFAULTS["max_batch_frames"].default
    max_wait_ms: float = _DEFAULTS["max_wait_ms"].default
    classify_batch: int = _DEFAULTS["classify_batch"].default
    decode_workers: int = _DEFAULTS["decode_workers"].default
    decode_threads: int = _DEFAULTS["decode_threads"].default
    decode_memory_bytes: int = (DECODE_MIB_PER_REQUEST * _DEFAULTS["max_inflight"].default) << 20
    decode_max_side: int | None = _DEFAULTS["decode_max_side"].default
    tmp_dir: Path | None = _DEFAULTS["tmp_dir"].default


class _Attempt:
    """What one request went through so far: stage durations (seconds) and cache status."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.cache: CacheStatus | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - started)

    def record(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        self._metrics.stage_seconds.labels(stage=name).observe(seconds)

    def finish(self) -> dict[str, float]:
        return {**self.timings, "total": time.perf_counter() - self._started}


class VideoProcessor:
    """Runs requests through the detector with cross-video batching; see the module docstring."""

    def __init__(
        self,
        detector: Detector,
        cache: ResilientCache,
        policy: SourcePolicy,
        metrics: Metrics,
        settings: ProcessingSettings,
        decoder: VideoDecoder | None = None,
    ) -> None:
        """`decoder` defaults to decoding in the request threads (`ThreadDecoder`, from the
        settings); the worker passes its `DecodePool` (it starts and closes the pool)."""
        self._detector = detector
        self._cache = cache
        self._policy = policy
        self._metrics = metrics
        self._settings = settings
        self._spec_hash = detector.spec.spec_hash
        self._feature_dim = detector.spec.feature_dim
        self._model_digest = detector.model_digest
        self._model = model_info(detector.spec)
        self._decoder = decoder or ThreadDecoder(
            settings.decode_workers,
            MemoryBudget(settings.decode_memory_bytes),
            max_side=settings.decode_max_side,
            threads=settings.decode_threads,
        )
        self._faces: DynamicBatcher[Frame, FaceDetection] = self._batcher(
            "faces", detector.detect_faces, settings.max_batch_frames
        )
        self._embeddings: DynamicBatcher[torch.Tensor, torch.Tensor] = self._batcher(
            "embed", self._embed_batch, settings.max_batch_frames
        )
        self._classifier: DynamicBatcher[VideoFeatures, Prediction] = self._batcher(
            "classify", detector.classify, settings.classify_batch
        )

    def _batcher(
        self, stage: str, fn: Callable[[list[T]], list[R]], max_batch: int
    ) -> DynamicBatcher[T, R]:
        """A dynamic batcher for `stage` whose batches, waits and queue are in the metrics."""
        batcher: DynamicBatcher[T, R] = DynamicBatcher(
            fn,
            max_batch,
            self._settings.max_wait_ms,
            name=stage,
            on_batch=partial(self._metrics.observe_batch, stage),
            on_wait=partial(self._metrics.observe_queue_wait, stage),
        )
        self._metrics.watch_batcher(stage, lambda: batcher.queued, max_batch)
        return batcher

    def close(self, timeout_s: float | None = None) -> None:
        """Finish queued batches and stop the batcher threads."""
        for batcher in (self._faces, self._embeddings, self._classifier):
            batcher.close(timeout_s)

    def process(self, request: VideoRequest) -> Verdict:
        """The one terminal verdict of `request` (never raises)."""
        attempt = _Attempt(self._metrics)
        try:
            verdict = self._classify(request, attempt)
        except (SourceError, PipelineError) as exc:
            return self._failed(request, ErrorCode(exc.code), exc.message, attempt)
        except Exception as exc:
            log.exception("request failed unexpectedly", extra={"request_id": request.request_id})
            return self._failed(request, ErrorCode.INTERNAL, f"internal error: {exc!r}", attempt)
        self._metrics.requests.labels(status="ok", code="").inc()
        return verdict

    def _classify(self, request: VideoRequest, attempt: _Attempt) -> Verdict:
        fetch_started = time.perf_counter()
        with open_source(request.video_uri, self._policy, self._settings.tmp_dir) as video:
            attempt.record("fetch", time.perf_counter() - fetch_started)
            with attempt.stage("digest"):
                digest = self._digest(request, video)
            cached = self._lookup(digest, attempt)
            if cached is None:
                if video.sha256 is None and request.sha256 is not None:
                    # The key was only claimed: features are stored under computed digests only.
                    with attempt.stage("digest"):
                        _check_claim(request.sha256, fd_digest(video.fd))
                cached = self._extract(video.fd, attempt)
                with attempt.stage("cache_put"):
                    self._cache.put(cache_key(self._spec_hash, digest), cached, self._spec_hash)
        prediction = (
            cached if isinstance(cached, Prediction) else self._predict(cached, digest, attempt)
        )
        return ok_verdict(
            request,
            prediction,
            model=self._model,
            cache=attempt.cache,
            timings_s=attempt.finish(),
            worker_id=self._settings.worker_id,
            completed_at=utcnow(),
        )

    @staticmethod
    def _digest(request: VideoRequest, video: LocalVideo) -> str:
        """The cache key: the download's digest, else the request's claim, else the fd's hash."""
        if video.sha256 is not None:
            if request.sha256 is not None:
                _check_claim(request.sha256, video.sha256)
            return video.sha256
        return request.sha256 or fd_digest(video.fd)

    def _lookup(self, digest: str, attempt: _Attempt) -> Prediction | VideoFeatures | None:
        """This model's cached prediction, else the spec's cached features (a hit either way),
        else None (a miss or bypass); sets and counts the request's cache status."""
        cached: Prediction | VideoFeatures | None
        with attempt.stage("cache_get"):
            key = prediction_key(self._model_digest, digest)
            cached, attempt.cache = self._cache.get_prediction(key, self._model_digest)
            if cached is None:
                key = cache_key(self._spec_hash, digest)
                cached, attempt.cache = self._cache.get(key, self._spec_hash, self._feature_dim)
        self._count_cache(attempt.cache)
        return cached

    def _predict(self, features: VideoFeatures, digest: str, attempt: _Attempt) -> Prediction:
        """The ensemble's prediction (batched with other videos), stored for this model."""
        with attempt.stage("classify"):
            [prediction] = self._classifier.submit([features]).result()
        with attempt.stage("cache_put"):
            key = prediction_key(self._model_digest, digest)
            self._cache.put_prediction(key, prediction, self._model_digest)
        return prediction

    def _extract(self, source: Path | int, attempt: _Attempt) -> VideoFeatures:
        """The video's features; `source` is an open descriptor (or a path)."""
        with attempt.stage("decode"):
            decoded = self._decoder.decode(
                source, self._detector.spec.sampling, self._detector.decode_limits
            )
        with decoded as video:  # its frames count against the decode memory budget until done
            self._metrics.frames_decoded.inc(video.frames_decoded)
            self._metrics.frames_sampled.inc(len(video.frames))
            with attempt.stage("faces"):
                faces = self._detector.faces(video.frames, video.timestamps_s, self._detect)
            self._metrics.faces_found.inc(faces.with_face)
            with attempt.stage("embed"):
                return self._detector.features(faces, self._embed)

    def _detect(self, frames: Sequence[Frame]) -> list[FaceDetection]:
        return self._faces.submit(list(frames)).result()

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._embeddings.submit(list(crops)).result())

    def _embed_batch(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self._detector.embed(torch.stack(crops)))

    def _failed(
        self, request: VideoRequest, code: ErrorCode, message: str, attempt: _Attempt
    ) -> Verdict:
        self._metrics.requests.labels(status="error", code=code.value).inc()
        log.info(
            "request failed",
            extra={"request_id": request.request_id, "code": code.value, "reason": message},
        )
        return error_verdict(
            request.request_id,
            request.video_uri,
            code,
            message,
            worker_id=self._settings.worker_id,
            completed_at=utcnow(),
            model=self._model,
            threshold=self._detector.spec.threshold,
            cache=attempt.cache,
            timings_s=attempt.finish(),
            metadata=request.metadata,
        )

    def _count_cache(self, status: CacheStatus) -> None:
        {
            "hit": self._metrics.cache_hits,
            "miss": self._metrics.cache_misses,
            "bypass": self._metrics.cache_bypass,
        }[status].inc()


def _check_claim(claimed: str, computed: str) -> None:
    """INVALID_REQUEST when the request's `sha256` is not the digest of the video's bytes."""
    if claimed.lower() != computed:
        raise SourceError(
            ErrorCode.INVALID_REQUEST,
            f"sha256 does not match the video's bytes (the request says {claimed}, "
            f"the bytes hash to {computed})",
        )
