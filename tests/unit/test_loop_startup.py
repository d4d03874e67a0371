"""Startup checks: the topics the worker writes exist; the dead-letter topic's size limit."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from worker.loop.startup import (
    FALLBACK_MAX_MESSAGE_BYTES,
    StartupError,
    check_topics,
    client_message_limit,
    max_message_bytes,
)


def test_a_missing_verdicts_or_dlq_topic_refuses_to_start() -> None:
    with pytest.raises(StartupError, match=r"do not exist: \['dlq'\]"):
        check_topics({"requests": 1, "verdicts": 1}, "requests", "verdicts", "dlq", 1.0)
    with pytest.raises(StartupError, match="verdicts"):
        check_topics({"dlq": 1}, "requests", "verdicts", "dlq", 1.0)
    check_topics({"verdicts": 1, "dlq": 1}, "requests", "verdicts", "dlq", 1.0)  # requests later


@dataclass
class Entry:
    value: str | None


class FakeAdmin:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Any]:
        future: Future[Any] = Future()
        if isinstance(self.answer, BaseException):
            future.set_exception(self.answer)
        else:
            future.set_result(self.answer)
        return {resources[0]: future}


def test_the_dlq_limit_is_the_topics_capped_by_the_producers() -> None:
    admin = FakeAdmin({"max.message.bytes": Entry("65536")})
    assert max_message_bytes(admin, "dlq", 1_000_000, 1.0) == 65_536  # type: ignore[arg-type]
    assert max_message_bytes(admin, "dlq", 10_000, 1.0) == 10_000  # type: ignore[arg-type]


def test_an_unreadable_limit_falls_back_to_the_default() -> None:
    denied = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    for answer in (denied, {}, {"max.message.bytes": Entry("lots")}):
        limit = max_message_bytes(FakeAdmin(answer), "dlq", 2_000_000, 1.0)  # type: ignore[arg-type]
        assert limit == FALLBACK_MAX_MESSAGE_BYTES


def test_client_limit_reads_the_producer_setting() -> None:
    assert client_message_limit({}) == FALLBACK_MAX_MESSAGE_BYTES
    assert client_message_limit({"message.max.bytes": "5000"}) == 5000
