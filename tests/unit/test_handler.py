"""`MessageHandler`: one consumed message -> verdict and dead-letter records; it never raises."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.pipeline import Detector
from producer.contracts import ErrorCode, Verdict, VideoRequest, parse_verdict, utcnow
from tests.checkpoints import make_checkpoint
from tests.videos import index_frames, make_video
from worker.cache import LruFeatureCache, ResilientCache
from worker.handler import MessageHandler
from worker.messages import Inbound
from worker.metrics import Metrics
from worker.processing import ProcessingSettings, VideoProcessor
from worker.sources import SourcePolicy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    return Detector.load(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "clip.mp4", index_frames(8), fps=8)
    return root


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def processor(detector: Detector, videos: Path, metrics: Metrics) -> Iterator[VideoProcessor]:
    settings = ProcessingSettings(worker_id="test-worker", max_batch_frames=16, max_wait_ms=5)
    cache = ResilientCache(LruFeatureCache(16))
    built = VideoProcessor(detector, cache, SourcePolicy((videos,)), metrics, settings)
    yield built
    built.close()


@pytest.fixture
def handler(processor: VideoProcessor, metrics: Metrics) -> MessageHandler:
    return MessageHandler(processor, "verdicts", "dlq", "test-worker", metrics)


class Failing:
    """A processor with a bug: `process` raises, or returns what is no verdict."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def process(self, request: VideoRequest) -> Verdict:
        if self.error is not None:
            raise self.error
        return None  # type: ignore[return-value]


def inbound(value: bytes | None, offset: int = 7, defect: str | None = None) -> Inbound:
    return Inbound("requests", 2, offset, b"key", value, [("trace", b"t1")], defect)


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def request_bytes(request_id: str = "abc", uri: str = "file:///nowhere/a.mp4") -> bytes:
    return VideoRequest(request_id=request_id, video_uri=uri, metadata={"tenant": "t"}).to_bytes()


def test_valid_message_yields_one_verdict_keyed_by_request_id(
    handler: MessageHandler, videos: Path
) -> None:
    [record] = handler(inbound(request_bytes(uri=(videos / "clip.mp4").as_uri())))
    assert record.topic == "verdicts"
    assert record.key == b"abc"
    assert parse_verdict(record.value).status == "ok"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b"x" * 70_000,
        None,
        b'{"a":' * 5000,
        b"[" * 2000,
        b"9" * 5000,
    ],
)
def test_poison_goes_to_the_dead_letter_topic_only(
    handler: MessageHandler, metrics: Metrics, raw: bytes | None
) -> None:
    [record] = handler(inbound(raw))
    assert record.topic == "dlq"
    assert record.key == b"key"
    assert record.value == (raw or b"")
    headers = dict(record.headers)
    assert headers["dfd-error-code"] == b"INVALID_REQUEST"
    assert headers["dfd-original-offset"] == b"7"
    assert headers["trace"] == b"t1"
    assert sample(metrics, "dfd_dlq_messages_total", {"code": "INVALID_REQUEST"}) == 1


def test_invalid_request_with_an_id_also_gets_an_error_verdict(handler: MessageHandler) -> None:
    raw = json.dumps(
        {"schema_version": 1, "request_id": "bad-1", "video_uri": "ftp://host/a.mp4"}
    ).encode()
    dlq, verdict_record = handler(inbound(raw))
    assert dict(dlq.headers)["dfd-error-code"] == b"UNSUPPORTED_SCHEME"
    verdict = parse_verdict(verdict_record.value)
    assert verdict_record.key == b"bad-1"
    assert verdict.error is not None
    assert verdict.error.code is ErrorCode.UNSUPPORTED_SCHEME
    assert verdict.video_uri == "ftp://host/a.mp4"


def test_message_read_with_a_defect_is_dead_lettered_and_answered(
    handler: MessageHandler, metrics: Metrics
) -> None:
    dlq, verdict_record = handler(inbound(request_bytes(), defect="header key is not UTF-8"))
    assert dlq.topic == "dlq"
    assert dlq.value == request_bytes()
    assert dict(dlq.headers)["dfd-error-code"] == b"INVALID_REQUEST"
    verdict = parse_verdict(verdict_record.value)
    assert verdict.error is not None
    assert verdict.error.code is ErrorCode.INVALID_REQUEST
    assert "header key is not UTF-8" in verdict.error.message
    assert verdict.video_uri == "file:///nowhere/a.mp4"
    [only_dlq] = handler(inbound(b"", defect="value could not be read"))
    assert only_dlq.topic == "dlq"
    assert sample(metrics, "dfd_dlq_messages_total", {"code": "INVALID_REQUEST"}) == 2


@pytest.mark.parametrize(
    "error", [RuntimeError("bug"), RecursionError(), MemoryError(), ValueError("x"), None]
)
def test_a_failing_processor_is_an_internal_verdict_logged_with_its_trace(
    metrics: Metrics, caplog: pytest.LogCaptureFixture, error: Exception | None
) -> None:
    handler = MessageHandler(Failing(error), "verdicts", "dlq", "w", metrics)
    with caplog.at_level(logging.ERROR, logger="worker.handler"):
        [record] = handler(inbound(request_bytes("r-9")))
    assert record.topic == "verdicts"
    assert record.key == b"r-9"
    verdict = parse_verdict(record.value)
    assert verdict.error is not None
    assert verdict.error.code is ErrorCode.INTERNAL
    assert verdict.metadata == {"tenant": "t"}
    assert [r.exc_info is not None for r in caplog.records] == [True]
    assert sample(metrics, "dfd_requests_total", {"status": "error", "code": "INTERNAL"}) == 1


def test_a_verdict_that_cannot_be_serialised_is_replaced_by_an_internal_one(
    metrics: Metrics,
) -> None:
    class Unserialisable:
        def process(self, request: VideoRequest) -> Verdict:
            return Verdict.model_construct(
                request_id=request.request_id,
                video_uri="\ud800",  # a lone surrogate: not encodable as UTF-8
                status="error",
                worker_id="w",
                completed_at=utcnow(),
            )

    handler = MessageHandler(Unserialisable(), "verdicts", "dlq", "w", metrics)
    [record] = handler(inbound(request_bytes("r-8")))
    verdict = parse_verdict(record.value)
    assert verdict.error is not None
    assert verdict.error.code is ErrorCode.INTERNAL


def test_when_not_even_an_error_verdict_can_be_built_the_message_is_dead_lettered(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> Verdict:
        raise TypeError("verdict builder bug")

    monkeypatch.setattr("worker.handler.error_verdict", broken)
    handler = MessageHandler(Failing(RuntimeError("bug")), "verdicts", "dlq", "w", metrics)
    raw = request_bytes("r-7")
    for value in (raw, b'{"schema_version": 1, "request_id": "r-6"}'):
        with caplog.at_level(logging.ERROR, logger="worker.handler"):
            [record] = handler(inbound(value))
        assert record.topic == "dlq"
        assert record.value == value
        assert dict(record.headers)["dfd-error-code"] == b"INTERNAL"
    assert sample(metrics, "dfd_dlq_messages_total", {"code": "INTERNAL"}) == 2
    assert all(r.exc_info is not None for r in caplog.records)
