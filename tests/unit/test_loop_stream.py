"""The composed poll loop (`StreamWorker`) over fakes of the consumer and producer."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError, TopicPartition

from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer, Produced
from worker.consumer import DeliveryFatal, LoopSettings, StreamWorker
from worker.messages import Inbound, Outbound
from worker.metrics import Metrics

SETTINGS = LoopSettings(
    topic="requests",
    verdicts_topic="verdicts",
    dlq_topic="dlq",
    max_inflight=4,
    revoke_timeout_s=1.0,
    drain_deadline_s=5.0,
    lag_interval_s=60.0,
    startup_timeout_s=1.0,
    delivery_retries=0,
    delivery_backoff_s=0.01,
    stall_timeout_s=60.0,
)


def handler(inbound: Inbound) -> list[Outbound]:
    if inbound.value == b"crash":
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
    return [Outbound("verdicts", inbound.key, b"verdict:" + (inbound.value or b""))]


def messages(*values: bytes) -> list[FakeMessage]:
    return [
        FakeMessage("requests", 0, offset, f"k{offset}".encode(), value)
        for offset, value in enumerate(values)
    ]


def run_until(worker: StreamWorker, condition: object, timeout_s: float = 10.0) -> None:
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()


def make(consumer: FakeConsumer, producer: FakeProducer, handle: object = handler) -> StreamWorker:
    def assign_once() -> None:
        if "on_assign" in consumer.callbacks and not getattr(consumer, "_assigned", False):
            consumer._assigned = True  # type: ignore[attr-defined]
            consumer.assign([TopicPartition("requests", 0)])

    consumer.on_poll = assign_once
    return StreamWorker(consumer, producer, handle, SETTINGS, Metrics())  # type: ignore[arg-type]


def test_every_message_is_answered_and_committed_even_when_a_handler_raises() -> None:
    consumer = FakeConsumer(messages=messages(b"a", b"crash", b"c"))
    producer = FakeProducer()
    worker = make(consumer, producer)
    run_until(worker, lambda: ("requests", 0, 3) in consumer.stored)
    assert sorted(r.topic for r in producer.produced) == ["dlq", "verdicts", "verdicts"]
    assert consumer.stored[-1] == ("requests", 0, 3)
    assert consumer.committed[-1] == ("requests", 0, 3)
    assert consumer.closed
    assert worker.alive() == (True, "alive")


def test_an_unwritable_dlq_stops_the_loop_without_committing_the_message() -> None:
    def outcome(record: Produced) -> KafkaError | None:
        return KafkaError(KafkaError._UNKNOWN_TOPIC) if record.topic == "dlq" else None

    consumer = FakeConsumer(messages=messages(b"a", b"crash", b"c"))
    worker = make(consumer, FakeProducer(outcome=outcome))
    with pytest.raises(DeliveryFatal, match="dead-letter topic 'dlq'"):
        worker.run()
    assert all(offset <= 1 for _topic, _partition, offset in consumer.stored)
    assert consumer.closed


def test_the_loop_pauses_at_max_inflight() -> None:
    release = threading.Event()

    def blocked(inbound: Inbound) -> list[Outbound]:
        release.wait(10)
        return []

    consumer = FakeConsumer(messages=messages(*[b"x"] * 6))
    worker = make(consumer, FakeProducer(), blocked)
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 10
    while not consumer.paused and time.monotonic() < deadline:
        time.sleep(0.01)
    assert consumer.paused == [[("requests", 0)]]
    assert len(consumer.messages) == 2
    release.set()
    deadline = time.monotonic() + 10
    while ("requests", 0, 6) not in consumer.stored and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join(10)
    assert consumer.resumed and not consumer.paused_now  # resumed once there was room
    assert consumer.stored[-1] == ("requests", 0, 6)
