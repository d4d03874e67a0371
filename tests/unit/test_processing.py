"""The worker's per-request pipeline on a real tiny checkpoint (no Kafka)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbones import build_backbone
from models.checkpoint import save_checkpoint
from models.ensemble import Ensemble
from models.pipeline import Detector
from producer.contracts import ErrorCode, VideoRequest
from producer.digests import sha256_file
from tests.checkpoints import make_checkpoint, tiny_spec
from tests.videos import make_video
from worker.cache import (
    CacheCorrupt,
    CacheUnavailable,
    FeatureStore,
    LruFeatureCache,
    ResilientCache,
    prediction_key,
)
from worker.metrics import Metrics
from worker.processing import ProcessingSettings, VideoProcessor
from worker.sources import SourcePolicy

torch.set_num_threads(1)


def random_clip(path: Path, seed: int, frames: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    shifted = (np.roll(base, step, axis=1) for step in range(frames))
    return make_video(path, shifted, fps=8)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    return Detector.load(path)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory, detector: Detector) -> Detector:
    """`detector` with other member weights: same spec and features, another model."""
    spec = tiny_spec()
    backbone = build_backbone(spec.backbone, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        ensemble = Ensemble(spec.ensemble, spec.feature_dim, temperature=spec.temperature)
    path = tmp_path_factory.mktemp("ckpt") / "retrained.pt"
    save_checkpoint(path, spec, backbone, ensemble)
    return Detector.load(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for seed in range(4):
        random_clip(root / f"clip{seed}.mp4", seed)
    (root / "notes.txt").write_text("not a video at all\n" * 20)
    return root


class FailingStore:
    """A cache backend with a bug: every call raises an unexpected error."""

    def get(self, key: str) -> bytes | None:
        raise RuntimeError("cache backend bug")

    def put(self, key: str, blob: bytes) -> None:
        raise RuntimeError("cache backend bug")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


class DownStore:
    """A cache backend that cannot be reached."""

    def get(self, key: str) -> bytes | None:
        raise CacheUnavailable("connection refused")

    def put(self, key: str, blob: bytes) -> None:
        raise CacheUnavailable("connection refused")


def build(
    detector: Detector,
    videos: Path,
    metrics: Metrics,
    store: FeatureStore | None = None,
    errors: list[Exception] | None = None,
) -> VideoProcessor:
    on_error = errors.append if errors is not None else None
    cache = ResilientCache(LruFeatureCache(16) if store is None else store, on_error=on_error)
    settings = ProcessingSettings(worker_id="test-worker", max_batch_frames=16, max_wait_ms=5)
    return VideoProcessor(detector, cache, SourcePolicy((videos,)), metrics, settings)


@pytest.fixture
def processor(detector: Detector, videos: Path, metrics: Metrics) -> Iterator[VideoProcessor]:
    built = build(detector, videos, metrics)
    yield built
    built.close()


def request(path: Path | str, request_id: str = "r1") -> VideoRequest:
    uri = path if isinstance(path, str) else path.as_uri()
    return VideoRequest(request_id=request_id, video_uri=uri, metadata={"tenant": "t"})


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_ok_verdict_matches_predict_file_then_hits_the_cache(
    processor: VideoProcessor, detector: Detector, videos: Path, metrics: Metrics
) -> None:
    clip = videos / "clip0.mp4"
    expected = detector.predict_file(clip)
    first = processor.process(request(clip))
    assert first.status == "ok"
    assert first.cache == "miss"
    assert first.fake_probability == pytest.approx(expected.fake_probability, abs=1e-4)
    assert first.members == pytest.approx(expected.members, abs=1e-4)
    assert first.frames is not None
    assert first.frames.timestamps_s == pytest.approx(expected.timestamps_s)
    assert first.label == expected.label
    assert first.model is not None
    assert first.model.spec_hash == detector.spec.spec_hash
    assert first.metadata == {"tenant": "t"}
    assert {
        "fetch",
        "digest",
        "cache_get",
        "decode",
        "faces",
        "embed",
        "classify",
        "cache_put",
        "total",
    } <= set(first.timings_ms)
    second = processor.process(request(clip, "r2"))
    assert second.cache == "hit"
    fields = ("fake_probability", "label", "threshold", "members", "frames", "model")
    assert [getattr(second, f) for f in fields] == [getattr(first, f) for f in fields]
    assert set(second.timings_ms) == {"fetch", "digest", "cache_get", "total"}
    assert sample(metrics, "dfd_cache_hits_total") == 1
    assert sample(metrics, "dfd_cache_misses_total") == 1
    assert sample(metrics, "dfd_requests_total", {"status": "ok", "code": ""}) == 2
    assert sample(metrics, "dfd_frames_sampled_total") == expected.sampled


def test_model_digest_names_the_whole_model(
    detector: Detector, retrained: Detector, tmp_path: Path
) -> None:
    assert retrained.spec.spec_hash == detector.spec.spec_hash  # same features...
    assert retrained.model_digest != detector.model_digest  # ...another model
    again = Detector.load(make_checkpoint(tmp_path / "again.pt"))
    assert again.model_digest == detector.model_digest
    stricter = Detector.load(make_checkpoint(tmp_path / "stricter.pt", threshold=0.9))
    assert stricter.spec.spec_hash == detector.spec.spec_hash
    assert stricter.model_digest != detector.model_digest


def test_prediction_then_feature_lookup_and_no_sharing_between_models(
    detector: Detector, retrained: Detector, videos: Path, metrics: Metrics
) -> None:
    clip = videos / "clip3.mp4"
    store = LruFeatureCache(16)
    original, other = (
        build(detector, videos, metrics, store),
        build(retrained, videos, metrics, store),
    )
    try:
        first = original.process(request(clip, "a1"))
        reused = other.process(request(clip, "b1"))  # the features hit, the prediction does not
        reused_again = other.process(request(clip, "b2"))
        first_again = original.process(request(clip, "a2"))
    finally:
        original.close()
        other.close()
    assert [v.cache for v in (first, reused, reused_again, first_again)] == ["miss"] + ["hit"] * 3
    assert "classify" in reused.timings_ms and "decode" not in reused.timings_ms
    assert "classify" not in reused_again.timings_ms and "classify" not in first_again.timings_ms
    expected = retrained.predict_file(clip)
    assert reused.fake_probability == pytest.approx(expected.fake_probability, abs=1e-4)
    assert reused.members != first.members
    assert reused_again.members == reused.members
    assert first_again.members == first.members
    assert first_again.fake_probability == first.fake_probability
    assert len(store) == 3  # one feature entry, one prediction per model


def test_corrupt_cached_prediction_is_a_counted_miss_served_from_features(
    detector: Detector, videos: Path, metrics: Metrics
) -> None:
    clip = videos / "clip1.mp4"
    store, errors = LruFeatureCache(16), []
    processor = build(detector, videos, metrics, store, errors)
    try:
        first = processor.process(request(clip, "c1"))
        store.put(prediction_key(detector.model_digest, sha256_file(clip)), b'{"format": 1}')
        second = processor.process(request(clip, "c2"))
        third = processor.process(request(clip, "c3"))
    finally:
        processor.close()
    assert [v.cache for v in (first, second, third)] == ["miss", "hit", "hit"]
    assert "classify" in second.timings_ms and "decode" not in second.timings_ms
    assert "classify" not in third.timings_ms  # the prediction was stored again
    assert [type(e) for e in errors] == [CacheCorrupt]
    assert second.fake_probability == pytest.approx(first.fake_probability, abs=1e-6)


def test_unreachable_cache_is_bypassed(detector: Detector, videos: Path, metrics: Metrics) -> None:
    processor = build(detector, videos, metrics, DownStore())
    try:
        verdicts = [processor.process(request(videos / "clip2.mp4", f"d{n}")) for n in range(2)]
    finally:
        processor.close()
    assert [(v.status, v.cache) for v in verdicts] == [("ok", "bypass")] * 2
    assert all("decode" in v.timings_ms for v in verdicts)
    assert sample(metrics, "dfd_cache_bypass_total") == 2


def test_concurrent_videos_share_batches_and_keep_their_numbers(
    processor: VideoProcessor, detector: Detector, videos: Path, metrics: Metrics
) -> None:
    clips = sorted(videos.glob("clip*.mp4"))
    with ThreadPoolExecutor(len(clips)) as pool:
        verdicts = list(
            pool.map(lambda c: processor.process(request(c, c.stem)), clips)  # type: ignore[misc]
        )
    for clip, verdict in zip(clips, verdicts, strict=True):
        assert verdict.request_id == clip.stem
        expected = detector.predict_file(clip).fake_probability
        assert verdict.fake_probability == pytest.approx(expected, abs=1e-4)
    batches = sample(metrics, "dfd_batch_size_count", {"stage": "embed"})
    assert 1 <= batches <= len(clips)


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("missing.mp4", ErrorCode.NOT_FOUND),
        ("notes.txt", ErrorCode.NOT_A_VIDEO),
        ("file:///etc/hostname", ErrorCode.URI_NOT_ALLOWED),
        ("https://example.com/a.mp4", ErrorCode.URI_NOT_ALLOWED),
    ],
)
def test_failures_become_error_verdicts(
    processor: VideoProcessor, videos: Path, metrics: Metrics, target: str, code: ErrorCode
) -> None:
    uri = target if "://" in target else (videos / target).as_uri()
    verdict = processor.process(request(uri))
    assert verdict.status == "error"
    assert verdict.error is not None
    assert verdict.error.code is code
    assert verdict.metadata == {"tenant": "t"}
    assert sample(metrics, "dfd_requests_total", {"status": "error", "code": code.value}) == 1


def test_unexpected_exceptions_become_internal_errors(
    detector: Detector, videos: Path, metrics: Metrics
) -> None:
    broken = build(detector, videos, metrics, FailingStore())
    try:
        verdict = broken.process(request(videos / "clip1.mp4"))
    finally:
        broken.close()
    assert verdict.error is not None
    assert verdict.error.code is ErrorCode.INTERNAL
    assert "cache backend bug" in verdict.error.message
