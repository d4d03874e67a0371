"""The per-request pipeline of the worker and the per-message handler around it.

`VideoProcessor.process` runs one request: source policy -> content digest -> prediction cache
[hit: the verdict straight away] -> feature cache [miss: decode (bounded thread concurrency) ->
face detection through a dynamic batcher shared by every in-flight video -> the video's face
track and crops -> backbone embeddings through another shared batcher -> feature store] ->
ensemble (batched across videos) -> prediction store.
It never raises: every failure becomes an error verdict with a precise code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from models.errors import PipelineError
from models.faces import FaceDetection
from models.pipeline import Detector, Prediction, VideoFeatures
from producer.contracts import ErrorCode, Verdict, VideoRequest, utcnow
from producer.digests import sha256_file
from worker.batcher import DynamicBatcher
from worker.cache import CacheStatus, ResilientCache, cache_key, prediction_key
from worker.metrics import Metrics
from worker.sources import SourceError, SourcePolicy, open_source
from worker.verdicts import error_verdict, model_info, ok_verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessingSettings:
    """Batching and concurrency of the pipeline."""

    worker_id: str
    max_batch_frames: int = 256
    max_wait_ms: float = 10.0
    classify_batch: int = 32
    decode_workers: int = 2
    decode_threads: int = 0
    tmp_dir: Path | None = None


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
    ) -> None:
        self._detector = detector
        self._cache = cache
        self._policy = policy
        self._metrics = metrics
        self._settings = settings
        self._spec_hash = detector.spec.spec_hash
        self._feature_dim = detector.spec.feature_dim
        self._model_digest = detector.model_digest
        self._model = model_info(detector.spec)
        self._decode_slots = threading.Semaphore(settings.decode_workers)
        self._faces: DynamicBatcher[np.ndarray, FaceDetection] = DynamicBatcher(
            detector.detect_faces,
            settings.max_batch_frames,
            settings.max_wait_ms,
            name="faces",
            on_batch=partial(metrics.observe_batch, "faces"),
        )
        self._embeddings: DynamicBatcher[torch.Tensor, torch.Tensor] = DynamicBatcher(
            self._embed_batch,
            settings.max_batch_frames,
            settings.max_wait_ms,
            name="embed",
            on_batch=partial(metrics.observe_batch, "embed"),
        )
        self._classifier: DynamicBatcher[VideoFeatures, Prediction] = DynamicBatcher(
            detector.classify,
            settings.classify_batch,
            settings.max_wait_ms,
            name="classify",
            on_batch=partial(metrics.observe_batch, "classify"),
        )

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
                digest = request.sha256 or sha256_file(video.path)
            cached = self._lookup(digest, attempt)
            if cached is None:
                cached = self._extract(video.path, attempt)
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

    def _extract(self, path: Path, attempt: _Attempt) -> VideoFeatures:
        with attempt.stage("decode"), self._decode_slots:
            decoded = self._detector.decode(path, threads=self._settings.decode_threads)
        self._metrics.frames_decoded.inc(decoded.frames_decoded)
        self._metrics.frames_sampled.inc(len(decoded.frames))
        with attempt.stage("faces"):
            detections = self._faces.submit(decoded.frames).result()
            faces = self._detector.cut_faces(detections, decoded.timestamps_s)
        self._metrics.faces_found.inc(sum(faces.has_face))
        kept = self._detector.keep(faces.has_face)
        with attempt.stage("embed"):
            rows = self._embeddings.submit(list(faces.crops[kept])).result()
        return self._detector.assemble(decoded, faces.has_face, torch.stack(rows))

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
