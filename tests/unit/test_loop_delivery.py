"""Produce step: delivery, bounded retries, the dead-letter policy and the fatal stop."""

from __future__ import annotations

import hashlib

from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from tests.kafka_fakes import FakeProducer, Produced
from worker.loop.delivery import (
    DLQ_DELIVERY_ERROR,
    DLQ_INTENDED_TOPIC,
    DLQ_ORIGINAL_SHA256,
    DLQ_ORIGINAL_SIZE,
    RECORD_OVERHEAD,
    Delivery,
    DeliverySettings,
    Failure,
    classify,
    fit,
)
from worker.loop.task import Task
from worker.messages import Inbound, Outbound
from worker.metrics import Metrics
from worker.verdicts import DLQ_ERROR_CODE, DLQ_ORIGINAL_OFFSET

VERDICT = Outbound("verdicts", b"req-1", b'{"status": "ok"}')


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, producer: FakeProducer, *, retries: int = 2, dlq_max: int = 10_000) -> None:
        self.producer = producer
        self.metrics = Metrics()
        self.clock = Clock()
        self.delivered: list[Task] = []
        self.progress = 0
        self.delivery = Delivery(
            producer,  # type: ignore[arg-type]
            DeliverySettings("dlq", dlq_max, retries=retries, backoff_s=1.0, max_backoff_s=3.0),
            self.metrics,
            on_delivered=self.delivered.append,
            on_progress=self._moved,
            clock=self.clock,
        )

    def _moved(self) -> None:
        self.progress += 1

    def failures(self, topic: str, reason: str) -> float:
        return self.metrics.delivery_failures.labels(topic=topic, reason=reason)._value.get()


def task(*records: Outbound) -> Task:
    return Task(Inbound("requests", 0, 12, b"req-1", b"{}"), records=list(records))


def failing(topic: str, code: int) -> FakeProducer:
    def outcome(record: Produced) -> KafkaError | None:
        return KafkaError(code) if record.topic == topic else None

    return FakeProducer(outcome=outcome)


def test_a_task_is_delivered_once_all_its_records_are() -> None:
    harness = Harness(FakeProducer())
    work = task(VERDICT, Outbound("dlq", None, b"x"))
    harness.delivery.send(work)
    assert harness.delivered == []
    harness.delivery.pump(0)
    assert harness.delivered == [work]
    assert harness.progress == 2
    assert harness.producer.topics() == ["verdicts", "dlq"]


def test_a_task_without_records_is_delivered_at_once() -> None:
    harness = Harness(FakeProducer())
    work = task()
    harness.delivery.send(work)
    assert harness.delivered == [work]


def test_retriable_errors_back_off_then_the_verdict_goes_to_the_dlq() -> None:
    harness = Harness(failing("verdicts", KafkaError._MSG_TIMED_OUT), retries=2)
    work = task(VERDICT)
    harness.delivery.send(work)
    harness.delivery.pump(0)
    assert harness.delivery.waiting() == 1
    harness.delivery.pump(0)  # not due yet (backoff 1 s)
    assert harness.producer.topics() == ["verdicts"]
    harness.clock.now += 1.0
    harness.delivery.pump(0)  # second try fails, backoff 2 s
    harness.clock.now += 1.5
    harness.delivery.pump(0)
    assert harness.producer.topics() == ["verdicts", "verdicts"]
    harness.clock.now += 0.5
    harness.delivery.pump(0)  # third try fails: retries spent, the DLQ copy goes out
    harness.delivery.pump(0)
    assert harness.producer.topics() == ["verdicts", "verdicts", "verdicts", "dlq"]
    assert harness.delivered == [work]
    assert harness.failures("verdicts", "_MSG_TIMED_OUT") == 3
    copy = harness.producer.produced[-1]
    headers = dict(copy.headers)
    assert copy.value == VERDICT.value
    assert headers[DLQ_INTENDED_TOPIC] == b"verdicts"
    assert headers[DLQ_DELIVERY_ERROR] == b"_MSG_TIMED_OUT"
    assert headers[DLQ_ERROR_CODE] == b"INTERNAL"
    assert headers[DLQ_ORIGINAL_OFFSET] == b"12"
    assert harness.metrics.dlq_messages.labels(code="INTERNAL")._value.get() == 1


def test_a_rejected_verdict_goes_to_the_dlq_without_retries() -> None:
    harness = Harness(failing("verdicts", KafkaError.MSG_SIZE_TOO_LARGE))
    work = task(VERDICT)
    harness.delivery.send(work)
    harness.delivery.pump(0)
    harness.delivery.pump(0)
    assert harness.producer.topics() == ["verdicts", "dlq"]
    assert harness.delivered == [work]
    assert harness.failures("verdicts", "MSG_SIZE_TOO_LARGE") == 1


def test_an_unwritable_dlq_is_a_fatal_stop_and_the_task_stays_open() -> None:
    harness = Harness(failing("dlq", KafkaError.UNKNOWN_TOPIC_OR_PART))
    work = task(Outbound("dlq", None, b"poison"))
    harness.delivery.send(work)
    harness.delivery.pump(0)
    assert harness.delivered == []
    assert harness.delivery.failure is not None
    assert "dead-letter topic 'dlq'" in str(harness.delivery.failure)
    harness.delivery.send(task(VERDICT))  # nothing more is produced once stopped
    assert harness.producer.topics() == ["dlq"]


def test_a_verdict_whose_dlq_copy_fails_too_is_fatal() -> None:
    harness = Harness(
        FakeProducer(outcome=lambda _record: KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    )
    harness.delivery.send(task(VERDICT))
    harness.delivery.pump(0)
    harness.delivery.pump(0)
    assert harness.producer.topics() == ["verdicts", "dlq"]
    assert harness.delivery.failure is not None


def test_a_fatal_producer_error_stops_at_once() -> None:
    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    harness = Harness(FakeProducer(outcome=lambda _record: fatal))
    harness.delivery.send(task(VERDICT))
    harness.delivery.pump(0)
    assert harness.delivery.failure is not None
    assert harness.producer.topics() == ["verdicts"]


def test_produce_raising_is_handled_like_a_failed_delivery() -> None:
    producer = FakeProducer(
        produce_errors=[KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))]
    )
    harness = Harness(producer)
    work = task(VERDICT)
    harness.delivery.send(work)
    harness.delivery.pump(0)
    assert producer.topics() == ["dlq"]
    assert harness.delivered == [work]
    assert harness.failures("verdicts", "MSG_SIZE_TOO_LARGE") == 1


def test_a_queue_that_stays_full_is_a_bounded_failure() -> None:
    producer = FakeProducer(produce_errors=[BufferError("full")] * 1000)
    harness = Harness(producer, retries=0)
    harness.delivery.send(task(VERDICT))
    assert harness.failures("verdicts", "_QUEUE_FULL") == 1
    assert len(producer.produce_errors) < 1000 - 100


def test_dlq_records_are_cut_to_the_topics_limit() -> None:
    harness = Harness(FakeProducer(), dlq_max=2_000)
    big = Outbound("dlq", b"k", b"x" * 50_000, [("h", b"v")])
    harness.delivery.send(task(big))
    [sent] = harness.producer.produced
    assert len(sent.value) < 2_000
    assert dict(sent.headers)[DLQ_ORIGINAL_SIZE] == b"50000"


def test_classification() -> None:
    assert classify(KafkaError(KafkaError._MSG_TIMED_OUT)) is Failure.RETRY
    assert classify(KafkaError(KafkaError.NOT_ENOUGH_REPLICAS, retriable=True)) is Failure.RETRY
    assert classify(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)) is Failure.REJECTED
    assert classify(KafkaError(KafkaError._UNKNOWN_TOPIC)) is Failure.UNWRITABLE
    assert classify(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)) is Failure.UNWRITABLE
    assert classify(KafkaError(KafkaError._FATAL, fatal=True)) is Failure.FATAL


def encoded_size(record: Outbound) -> int:
    headers = sum(len(name.encode()) + len(value) + 10 for name, value in record.headers)
    return len(record.key or b"") + headers + len(record.value)


header = st.tuples(st.text(max_size=20), st.binary(max_size=3_000))


@given(
    key=st.none() | st.binary(max_size=3_000),
    value=st.binary(max_size=20_000),
    headers=st.lists(header, max_size=8),
    limit=st.integers(min_value=4_096, max_value=30_000),
)
def test_fit_always_fits_and_says_what_it_cut(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], limit: int
) -> None:
    record = Outbound("dlq", key, value, headers)
    cut = fit(record, limit)
    assert encoded_size(cut) + RECORD_OVERHEAD <= limit
    if cut is record:
        return
    marks = dict(cut.headers)
    assert marks[DLQ_ORIGINAL_SIZE] == str(len(value)).encode()
    assert marks[DLQ_ORIGINAL_SHA256] == hashlib.sha256(value).hexdigest().encode()
    assert value.startswith(cut.value)
