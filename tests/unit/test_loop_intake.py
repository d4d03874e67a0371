"""Intake step: any consumed message becomes an Inbound; unreadable parts set `defect`."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from tests.kafka_fakes import FakeMessage
from worker.loop.intake import intake


def test_a_readable_message_keeps_every_part() -> None:
    message = FakeMessage("requests", 2, 41, b"k", b"v", [("a", b"1"), ("b", None)])
    inbound = intake(message)
    assert inbound is not None
    assert (inbound.topic, inbound.partition, inbound.offset) == ("requests", 2, 41)
    assert (inbound.key, inbound.value) == (b"k", b"v")
    assert inbound.headers == [("a", b"1"), ("b", b"")]
    assert inbound.defect is None


def test_non_utf8_header_keys_become_a_defect_with_the_value_kept() -> None:
    undecodable = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    inbound = intake(FakeMessage(value_=b"payload", headers_=undecodable))
    assert inbound is not None
    assert inbound.value == b"payload"
    assert inbound.headers == []
    assert inbound.defect is not None and "unreadable headers: UnicodeDecodeError" in inbound.defect


def test_every_unreadable_part_is_named() -> None:
    inbound = intake(
        FakeMessage(key_=SystemError("key"), value_=ValueError("value"), headers_=[(b"x", b"")])
    )
    assert inbound is not None
    assert (inbound.key, inbound.value, inbound.headers) == (None, b"", [])
    assert inbound.defect is not None
    for part in ("key", "value", "headers"):
        assert f"unreadable {part}" in inbound.defect


def test_consumer_events_are_not_messages() -> None:
    assert intake(FakeMessage(error_=KafkaError(KafkaError._PARTITION_EOF))) is None
    assert intake(FakeMessage(error_=KafkaError(KafkaError._TRANSPORT))) is None


anything = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.text(max_size=16),
    st.integers(),
    st.builds(UnicodeDecodeError, st.just("utf-8"), st.binary(), st.just(0), st.just(1), st.text()),
    st.builds(RuntimeError, st.text(max_size=8)),
)
header_lists = st.lists(st.tuples(st.one_of(st.text(), st.binary()), anything), max_size=4)


@given(key=anything, value=anything, headers=st.one_of(anything, header_lists))
def test_intake_never_raises_and_always_yields_bytes(key: Any, value: Any, headers: Any) -> None:
    inbound = intake(FakeMessage(key_=key, value_=value, headers_=headers))
    assert inbound is not None
    assert isinstance(inbound.value, bytes)
    assert inbound.key is None or isinstance(inbound.key, bytes)
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in inbound.headers)
