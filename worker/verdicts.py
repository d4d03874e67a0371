"""Pure builders of verdicts and dead-letter headers (the contract lives in producer.contracts)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from models.spec import PipelineSpec
from producer.contracts import (
    ErrorCode,
    ErrorInfo,
    FrameInfo,
    ModelInfo,
    TrainedOn,
    Verdict,
    VideoRequest,
)
from worker.messages import Headers, Inbound

if TYPE_CHECKING:
    from models.pipeline import Prediction
    from worker.cache import CacheStatus

MAX_ERROR_MESSAGE = 1000

DLQ_ERROR_CODE = "dfd-error-code"
DLQ_ERROR_MESSAGE = "dfd-error-message"
DLQ_ORIGINAL_TOPIC = "dfd-original-topic"
DLQ_ORIGINAL_PARTITION = "dfd-original-partition"
DLQ_ORIGINAL_OFFSET = "dfd-original-offset"


def model_info(spec: PipelineSpec) -> ModelInfo:
    """The model identity carried by every verdict."""
    return ModelInfo(
        name=spec.name,
        version=spec.version,
        spec_hash=spec.spec_hash,
        trained_on=TrainedOn(**spec.trained_on.model_dump()),
    )


def rounded_timings(timings_s: Mapping[str, float]) -> dict[str, float]:
    """Stage durations in seconds -> milliseconds with microsecond resolution."""
    return {stage: round(max(0.0, seconds) * 1000.0, 3) for stage, seconds in timings_s.items()}


def ok_verdict(
    request: VideoRequest,
    prediction: Prediction,
    *,
    model: ModelInfo,
    cache: CacheStatus,
    timings_s: Mapping[str, float],
    worker_id: str,
    completed_at: datetime,
) -> Verdict:
    """The verdict of a classified video."""
    return Verdict(
        request_id=request.request_id,
        video_uri=request.video_uri,
        status="ok",
        label=prediction.label,
        fake_probability=prediction.fake_probability,
        threshold=prediction.threshold,
        model=model,
        members=dict(prediction.members),
        frames=FrameInfo(
            sampled=prediction.sampled,
            with_face=prediction.with_face,
            timestamps_s=list(prediction.timestamps_s),
            attention=list(prediction.attention),
        ),
        cache=cache,
        timings_ms=rounded_timings(timings_s),
        worker_id=worker_id,
        completed_at=completed_at,
        metadata=dict(request.metadata),
    )


def error_verdict(
    request_id: str,
    video_uri: str,
    code: ErrorCode,
    message: str,
    *,
    worker_id: str,
    completed_at: datetime,
    model: ModelInfo | None = None,
    threshold: float | None = None,
    cache: CacheStatus | None = None,
    timings_s: Mapping[str, float] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Verdict:
    """The verdict of a request that could not be classified (`code` says why)."""
    return Verdict(
        request_id=request_id,
        video_uri=video_uri,
        status="error",
        threshold=threshold,
        model=model,
        cache=cache,
        timings_ms=rounded_timings(timings_s or {}),
        error=ErrorInfo(code=code, message=truncate(message)),
        worker_id=worker_id,
        completed_at=completed_at,
        metadata=dict(metadata or {}),
    )


def dlq_headers(inbound: Inbound, code: ErrorCode, message: str) -> Headers:
    """The original message's headers plus why and where it came from."""
    return [
        *inbound.headers,
        (DLQ_ERROR_CODE, code.value.encode()),
        (DLQ_ERROR_MESSAGE, truncate(message).encode()),
        (DLQ_ORIGINAL_TOPIC, inbound.topic.encode()),
        (DLQ_ORIGINAL_PARTITION, str(inbound.partition).encode()),
        (DLQ_ORIGINAL_OFFSET, str(inbound.offset).encode()),
    ]


def truncate(message: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """`message` cut to `limit` characters (an ellipsis marks the cut)."""
    return message if len(message) <= limit else message[: limit - 1] + "…"
