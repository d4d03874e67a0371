"""Pure verdict builders: contract-valid ok and error verdicts, dead-letter headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from models.spec import PipelineSpec
from producer.contracts import ErrorCode, VideoRequest, parse_verdict
from worker.messages import Inbound
from worker.verdicts import (
    MAX_ERROR_MESSAGE,
    dlq_headers,
    error_verdict,
    model_info,
    ok_verdict,
    rounded_timings,
    truncate,
)

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass(frozen=True)
class FakePrediction:
    """Has exactly the fields `ok_verdict` reads from `models.pipeline.Prediction`."""

    fake_probability: float = 0.8
    label: str = "fake"
    threshold: float = 0.5
    members: dict[str, float] = field(default_factory=lambda: {"lstm": 0.7, "gru": 0.9})
    timestamps_s: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    attention: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.5])
    sampled: int = 3
    with_face: int = 2


def request() -> VideoRequest:
    return VideoRequest(
        request_id="req-1", video_uri="file:///videos/a.mp4", metadata={"tenant": "t1"}
    )


def test_ok_verdict_carries_prediction_model_and_timings() -> None:
    spec = PipelineSpec(name="tiny", version="3")
    verdict = ok_verdict(
        request(),
        FakePrediction(),  # type: ignore[arg-type]
        model=model_info(spec),
        cache="miss",
        timings_s={"decode": 0.0125, "total": 0.5},
        worker_id="w-1",
        completed_at=NOW,
    )
    assert verdict == parse_verdict(verdict.to_bytes())
    assert verdict.status == "ok"
    assert verdict.label == "fake"
    assert verdict.fake_probability == 0.8
    assert verdict.members == {"lstm": 0.7, "gru": 0.9}
    assert verdict.frames is not None
    assert verdict.frames.sampled == 3
    assert verdict.frames.with_face == 2
    assert verdict.frames.attention == [0.2, 0.3, 0.5]
    assert verdict.model is not None
    assert verdict.model.spec_hash == spec.spec_hash
    assert verdict.timings_ms == {"decode": 12.5, "total": 500.0}
    assert verdict.metadata == {"tenant": "t1"}
    assert verdict.error is None


def test_error_verdict_has_code_and_no_label() -> None:
    verdict = error_verdict(
        "req-2",
        "file:///missing.mp4",
        ErrorCode.NOT_FOUND,
        "no file at /missing.mp4",
        worker_id="w-1",
        completed_at=NOW,
        cache="bypass",
        metadata={"k": "v"},
    )
    assert verdict == parse_verdict(verdict.to_bytes())
    assert verdict.status == "error"
    assert verdict.error is not None
    assert verdict.error.code is ErrorCode.NOT_FOUND
    assert verdict.label is None
    assert verdict.fake_probability is None
    assert verdict.cache == "bypass"
    assert verdict.metadata == {"k": "v"}


def test_long_error_messages_are_truncated() -> None:
    verdict = error_verdict(
        "r", "", ErrorCode.INTERNAL, "x" * 5000, worker_id="w", completed_at=NOW
    )
    assert verdict.error is not None
    assert len(verdict.error.message) == MAX_ERROR_MESSAGE
    assert truncate("short") == "short"


def test_dlq_headers_keep_originals_and_say_where_from() -> None:
    inbound = Inbound(
        topic="video-requests",
        partition=3,
        offset=42,
        key=b"k",
        value=b"garbage",
        headers=[("trace", b"abc")],
    )
    headers = dlq_headers(inbound, ErrorCode.INVALID_REQUEST, "message is not JSON")
    assert headers[0] == ("trace", b"abc")
    assert dict(headers[1:]) == {
        "dfd-error-code": b"INVALID_REQUEST",
        "dfd-error-message": b"message is not JSON",
        "dfd-original-topic": b"video-requests",
        "dfd-original-partition": b"3",
        "dfd-original-offset": b"42",
    }


@pytest.mark.parametrize(("seconds", "ms"), [(0.0, 0.0), (1.2345678, 1234.568), (-1e-9, 0.0)])
def test_timings_are_milliseconds(seconds: float, ms: float) -> None:
    assert rounded_timings({"stage": seconds}) == {"stage": ms}
