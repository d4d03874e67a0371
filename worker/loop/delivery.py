"""Produce step: a handled request's records to Kafka, with bounded, visible failure handling.

Policy (README "Reliability"):
- every record sent to the dead-letter topic is first cut to fit its size limit (`fit`): the
  value is truncated and `dfd-original-size` / `dfd-original-sha256` describe what was cut;
- a failed delivery is counted in `dfd_delivery_failures_total{topic,reason}` and classified: a
  record the broker rejects (too large, invalid) or a topic it cannot write (missing, not
  authorised) fails at once; other errors are retried with exponential backoff up to a limit;
- a verdict that still cannot be delivered is replaced by its dead-letter copy (the verdict's
  bytes, code INTERNAL, `dfd-intended-topic` and `dfd-delivery-error` headers);
- when the dead-letter topic itself cannot take a record, or the producer fails fatally, the step
  records a `DeliveryFatal`: the loop stops without storing that offset (the message is
  redelivered) and the process exits with its own status (`worker.app.EXIT_DELIVERY`).
`Producer.produce` raising `KafkaException`, or `BufferError` beyond a bound, is a failed delivery.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from producer.contracts import ErrorCode
from worker.loop.task import Task
from worker.messages import Headers, Inbound, Outbound
from worker.metrics import Metrics
from worker.verdicts import dlq_headers

log = logging.getLogger(__name__)

DLQ_ORIGINAL_SIZE = "dfd-original-size"
DLQ_ORIGINAL_SHA256 = "dfd-original-sha256"
DLQ_INTENDED_TOPIC = "dfd-intended-topic"
DLQ_DELIVERY_ERROR = "dfd-delivery-error"

RECORD_OVERHEAD = 512
"""Bytes kept free for the record and batch framing when a record is cut to a size limit."""
_HEADER_OVERHEAD = 10
_QUEUE_FULL_WAIT_S = 0.05
_QUEUE_FULL_POLLS = 200
"""How long `produce` may wait for room in a full local queue (polls of `_QUEUE_FULL_WAIT_S`)."""

REJECTED_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
    }
)
"""The broker (or the client) refuses this record: retrying it cannot help."""
UNWRITABLE_CODES = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
    }
)
"""The topic cannot be written (missing, not authorised, invalid): retrying cannot help."""


class Failure(Enum):
    """What a delivery error means for the record."""

    RETRY = "retry"
    REJECTED = "rejected"
    UNWRITABLE = "unwritable"
    FATAL = "fatal"


def classify(error: KafkaError) -> Failure:
    """Fatal producer errors stop; rejected records and unwritable topics fail at once; every
    other error (timeouts, transport, leader changes, unknown codes) is retried, boundedly."""
    if error.fatal():
        return Failure.FATAL
    if error.retriable():
        return Failure.RETRY
    if error.code() in REJECTED_CODES:
        return Failure.REJECTED
    if error.code() in UNWRITABLE_CODES:
        return Failure.UNWRITABLE
    return Failure.RETRY


def fit(record: Outbound, limit: int) -> Outbound:
    """`record` cut to fit a topic whose largest record is `limit` bytes: the key to an eighth of
    it, the headers kept from the end (the worker's own come last) within a quarter of it, the
    value truncated; the original value's size and SHA-256 go into headers."""
    if _size(record.key, record.headers, record.value) + RECORD_OVERHEAD <= limit:
        return record
    marks = [
        (DLQ_ORIGINAL_SIZE, str(len(record.value)).encode()),
        (DLQ_ORIGINAL_SHA256, hashlib.sha256(record.value).hexdigest().encode()),
    ]
    key = None if record.key is None else record.key[: limit // 8]
    headers = _tail_within([*record.headers, *marks], limit // 4)
    budget = max(0, limit - RECORD_OVERHEAD - _size(key, headers, b""))
    return Outbound(record.topic, key, record.value[:budget], headers)


def undeliverable_copy(
    inbound: Inbound, record: Outbound, error: KafkaError, dlq_topic: str
) -> Outbound:
    """The dead-letter copy of a record that could not be delivered to its topic."""
    reason = f"could not deliver a record to {record.topic}: {error.name()}"
    return Outbound(
        topic=dlq_topic,
        key=record.key,
        value=record.value,
        headers=[
            *dlq_headers(inbound, ErrorCode.INTERNAL, reason),
            (DLQ_INTENDED_TOPIC, record.topic.encode()),
            (DLQ_DELIVERY_ERROR, error.name().encode()),
        ],
    )


class DeliveryFatal(Exception):
    """A record cannot be delivered even to the dead-letter topic: the worker must stop."""


@dataclass(frozen=True)
class DeliverySettings:
    """Where undeliverable records go and how hard delivery is retried."""

    dlq_topic: str
    dlq_max_bytes: int
    retries: int
    backoff_s: float
    max_backoff_s: float = 30.0


@dataclass(eq=False)
class _Attempt:
    task: Task
    record: Outbound
    failures: int = 0
    due: float = 0.0


class Delivery:
    """Produces each task's records; calls `on_delivered(task)` once all of them are delivered
    and `on_progress()` for every delivered record. Runs on the loop's thread (`pump` serves the
    delivery callbacks and due retries)."""

    def __init__(
        self,
        producer: Producer,
        settings: DeliverySettings,
        metrics: Metrics,
        on_delivered: Callable[[Task], None],
        on_progress: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._settings = settings
        self._metrics = metrics
        self._on_delivered = on_delivered
        self._on_progress = on_progress
        self._clock = clock
        self._retries: list[_Attempt] = []
        self.failure: DeliveryFatal | None = None

    def send(self, task: Task) -> None:
        """Produce `task`'s records (a task without records is delivered at once)."""
        task.undelivered = len(task.records)
        if not task.records:
            self._on_delivered(task)
        for record in task.records:
            self._produce(_Attempt(task, record))

    def pump(self, timeout_s: float) -> None:
        """Produce the retries that are due, then serve delivery callbacks for `timeout_s`."""
        now = self._clock()
        due = [attempt for attempt in self._retries if attempt.due <= now]
        self._retries = [attempt for attempt in self._retries if attempt.due > now]
        for attempt in due:
            self._produce(attempt)
        self._producer.poll(timeout_s)

    def waiting(self) -> int:
        """Records waiting for a retry."""
        return len(self._retries)

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        return int(self._producer.flush(timeout_s))

    def _produce(self, attempt: _Attempt) -> None:
        if self.failure is not None:
            return
        record = attempt.record
        if record.topic == self._settings.dlq_topic:
            record = fit(record, self._settings.dlq_max_bytes)
        for _ in range(_QUEUE_FULL_POLLS):
            try:
                self._producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=partial(self._delivered, attempt),
                )
                return
            except BufferError:
                self._producer.poll(_QUEUE_FULL_WAIT_S)
            except KafkaException as exc:
                self._failed(attempt, _kafka_error(exc))
                return
        self._failed(attempt, KafkaError(KafkaError._QUEUE_FULL, "local queue full"))

    def _delivered(self, attempt: _Attempt, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._failed(attempt, error)
            return
        self._on_progress()
        attempt.task.undelivered -= 1
        if attempt.task.undelivered == 0:
            self._on_delivered(attempt.task)

    def _failed(self, attempt: _Attempt, error: KafkaError) -> None:
        record, inbound = attempt.record, attempt.task.inbound
        failure = classify(error)
        self._metrics.delivery_failures.labels(topic=record.topic, reason=error.name()).inc()
        context = {
            "topic": record.topic,
            "error": error.name(),
            "detail": error.str(),
            "failures": attempt.failures + 1,
            "partition": inbound.partition,
            "offset": inbound.offset,
        }
        dlq = self._settings.dlq_topic
        if failure is Failure.FATAL:
            self._fatal(f"the producer failed fatally: {error.str()}", context)
        elif failure is Failure.RETRY and attempt.failures < self._settings.retries:
            delay = min(
                self._settings.max_backoff_s, self._settings.backoff_s * 2**attempt.failures
            )
            attempt.failures += 1
            attempt.due = self._clock() + delay
            self._retries.append(attempt)
            log.warning("delivery failed; retrying", extra={**context, "retry_in_s": delay})
        elif record.topic != dlq:
            log.error("record undeliverable; its dead-letter copy replaces it", extra=context)
            self._metrics.dlq_messages.labels(code=ErrorCode.INTERNAL.value).inc()
            self._produce(_Attempt(attempt.task, undeliverable_copy(inbound, record, error, dlq)))
        else:
            self._fatal(
                f"the dead-letter topic {dlq!r} cannot take a record: {error.str()}", context
            )

    def _fatal(self, reason: str, context: dict[str, object]) -> None:
        log.critical("delivery failed fatally; stopping", extra={**context, "reason": reason})
        if self.failure is None:
            self.failure = DeliveryFatal(reason)


def _kafka_error(exc: KafkaException) -> KafkaError:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))


def _size(key: bytes | None, headers: Headers, value: bytes) -> int:
    header_bytes = sum(len(name.encode()) + len(item) + _HEADER_OVERHEAD for name, item in headers)
    return len(key or b"") + header_bytes + len(value)


def _tail_within(headers: Headers, budget: int) -> Headers:
    """The longest tail of `headers` whose encoded size stays within `budget`."""
    kept: Headers = []
    used = 0
    for name, item in reversed(headers):
        used += len(name.encode()) + len(item) + _HEADER_OVERHEAD
        if used > budget:
            break
        kept.append((name, item))
    return kept[::-1]
