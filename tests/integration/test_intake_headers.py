"""Intake of real consumed messages whose header keys are not UTF-8 (confluent-kafka would crash
converting them): every one becomes an Inbound with a defect, and ordinary headers still read."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer

from benchmarks.raw_produce import produce
from worker.loop.intake import intake

COUNT = 30


def test_non_utf8_header_keys_are_defects_not_crashes(
    kafka_bootstrap: str, topic_factory: Callable[..., Any]
) -> None:
    topic = topic_factory(partitions=1).requests
    for n in range(COUNT):
        headers = [(b"\xff\xfe-key", b"v"), (b"trace", b"t")] if n % 2 else [(b"trace", b"t")]
        produce(kafka_bootstrap, topic, 0, [(None, f'{{"n": {n}}}'.encode(), headers)])
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"intake-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen = []
    try:
        while len(seen) < COUNT:
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            inbound = intake(message)
            assert inbound is not None
            seen.append(inbound)
    finally:
        consumer.close()
    for inbound in seen:
        if inbound.offset % 2:
            assert inbound.defect is not None and "unreadable headers" in inbound.defect
            assert inbound.headers == [] and inbound.value.startswith(b'{"n"')
        else:
            assert inbound.defect is None and inbound.headers == [("trace", b"t")]
