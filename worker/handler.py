"""The Kafka-facing side of a request: one consumed message -> the records to produce.

A valid request gets its verdict from the processor; a message that breaks the contract (or that
the intake could not read whole: `Inbound.defect`) gets its dead-letter copy plus, when a request
id is recoverable, an error verdict. `MessageHandler` never raises: an unexpected failure while
answering a request is an `INTERNAL` error verdict, and when not even that can be built, a
dead-letter copy with code `INTERNAL`.
"""

from __future__ import annotations

import logging
from typing import Protocol

from producer.contracts import (
    ContractError,
    ErrorCode,
    Verdict,
    VideoRequest,
    parse_request,
    utcnow,
)
from worker.messages import Inbound, Outbound
from worker.metrics import Metrics
from worker.verdicts import dlq_headers, error_verdict

log = logging.getLogger(__name__)


class Processor(Protocol):
    """Request -> verdict (`worker.processing.VideoProcessor`)."""

    def process(self, request: VideoRequest) -> Verdict: ...


class MessageHandler:
    """One consumed message -> the records to produce (see the module docstring)."""

    def __init__(
        self,
        processor: Processor,
        verdicts_topic: str,
        dlq_topic: str,
        worker_id: str,
        metrics: Metrics,
    ) -> None:
        self._processor = processor
        self._verdicts_topic = verdicts_topic
        self._dlq_topic = dlq_topic
        self._worker_id = worker_id
        self._metrics = metrics

    def __call__(self, inbound: Inbound) -> list[Outbound]:
        """The records answering `inbound`: never empty, never raises."""
        try:
            return self._answer(inbound)
        except Exception:
            log.exception("answering a message failed; dead-lettering it", extra=_where(inbound))
            return [self._dead_letter(inbound, ErrorCode.INTERNAL, "internal error")]

    def _answer(self, inbound: Inbound) -> list[Outbound]:
        try:
            request = _read(inbound)
        except ContractError as exc:
            return self._rejected(inbound, exc)
        return self._answered(request)

    def _answered(self, request: VideoRequest) -> list[Outbound]:
        """The processor's verdict, or an INTERNAL error verdict when it fails."""
        try:
            return [self._verdict_record(self._processor.process(request))]
        except Exception as exc:
            log.exception("request failed unexpectedly", extra={"request_id": request.request_id})
            self._metrics.requests.labels(status="error", code=ErrorCode.INTERNAL.value).inc()
            verdict = error_verdict(
                request.request_id,
                request.video_uri,
                ErrorCode.INTERNAL,
                f"internal error: {type(exc).__name__}",
                worker_id=self._worker_id,
                completed_at=utcnow(),
                metadata=request.metadata,
            )
            return [self._verdict_record(verdict)]

    def _rejected(self, inbound: Inbound, error: ContractError) -> list[Outbound]:
        code = ErrorCode(error.code)
        log.warning(
            "request rejected to the dead-letter topic",
            extra={"request_id": error.request_id, "code": code.value, "reason": error.message}
            | _where(inbound),
        )
        answer = []
        if error.request_id is not None:
            verdict = error_verdict(
                error.request_id,
                error.video_uri,
                code,
                error.message,
                worker_id=self._worker_id,
                completed_at=utcnow(),
            )
            answer.append(self._verdict_record(verdict))
            self._metrics.requests.labels(status="error", code=code.value).inc()
        return [self._dead_letter(inbound, code, error.message), *answer]

    def _dead_letter(self, inbound: Inbound, code: ErrorCode, message: str) -> Outbound:
        self._metrics.dlq_messages.labels(code=code.value).inc()
        return Outbound(
            topic=self._dlq_topic,
            key=inbound.key,
            value=inbound.value or b"",
            headers=dlq_headers(inbound, code, message),
        )

    def _verdict_record(self, verdict: Verdict) -> Outbound:
        return Outbound(
            topic=self._verdicts_topic, key=verdict.request_id.encode(), value=verdict.to_bytes()
        )


def _read(inbound: Inbound) -> VideoRequest:
    """The request `inbound` carries; `ContractError` when it is invalid or not read whole."""
    if inbound.defect is None:
        return parse_request(inbound.value)
    try:
        request = parse_request(inbound.value)
    except ContractError as exc:
        request_id, video_uri = exc.request_id, exc.video_uri
    else:
        request_id, video_uri = request.request_id, request.video_uri
    raise ContractError(
        ErrorCode.INVALID_REQUEST,
        f"message could not be read: {inbound.defect}",
        request_id,
        video_uri,
    )


def _where(inbound: Inbound) -> dict[str, object]:
    return {"topic": inbound.topic, "partition": inbound.partition, "offset": inbound.offset}
