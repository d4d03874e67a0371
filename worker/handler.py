"""The Kafka-facing side of a request: one consumed message -> the records to produce.

A valid request gets its verdict from `VideoProcessor`; a message that breaks the contract gets its
dead-letter copy plus (when a request id is recoverable) an error verdict.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from producer.contracts import ContractError, ErrorCode, Verdict, parse_request, utcnow
from worker.messages import Inbound, Outbound
from worker.metrics import Metrics
from worker.processing import VideoProcessor
from worker.verdicts import dlq_headers, error_verdict

log = logging.getLogger(__name__)


class MessageHandler:
    """One consumed message -> the records to produce (see the module docstring)."""

    def __init__(
        self,
        processor: VideoProcessor,
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
        try:
            request = parse_request(inbound.value)
        except ContractError as exc:
            return self._rejected(inbound, exc)
        verdict = self._processor.process(request)
        return [self._verdict_record(verdict)]

    def _rejected(self, inbound: Inbound, error: ContractError) -> list[Outbound]:
        code = ErrorCode(error.code)
        self._metrics.dlq_messages.labels(code=code.value).inc()
        log.warning(
            "request rejected to the dead-letter topic",
            extra={
                "request_id": error.request_id,
                "code": code.value,
                "reason": error.message,
                "partition": inbound.partition,
                "offset": inbound.offset,
            },
        )
        records = [
            Outbound(
                topic=self._dlq_topic,
                key=inbound.key,
                value=inbound.value or b"",
                headers=dlq_headers(inbound, code, error.message),
            )
        ]
        if error.request_id is not None:
            self._metrics.requests.labels(status="error", code=code.value).inc()
            verdict = error_verdict(
                error.request_id,
                _recover_uri(inbound.value),
                code,
                error.message,
                worker_id=self._worker_id,
                completed_at=utcnow(),
            )
            records.append(self._verdict_record(verdict))
        return records

    def _verdict_record(self, verdict: Verdict) -> Outbound:
        return Outbound(
            topic=self._verdicts_topic, key=verdict.request_id.encode(), value=verdict.to_bytes()
        )


def _recover_uri(raw: bytes | None) -> str:
    """The request's `video_uri` when the message is a JSON object holding a string one."""
    try:
        document: Any = json.loads(raw or b"")
    except ValueError:
        return ""
    uri = document.get("video_uri") if isinstance(document, dict) else None
    return uri if isinstance(uri, str) else ""
