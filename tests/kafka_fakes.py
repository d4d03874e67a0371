"""Small in-memory fakes of confluent-kafka's `Message`, `Producer` and `Consumer` for the unit
tests of the loop's steps (integration tests use the real broker)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition


@dataclass
class FakeMessage:
    """A consumed message; a part given as an exception raises when read."""

    topic_: str = "requests"
    partition_: int = 0
    offset_: int = 0
    key_: Any = None
    value_: Any = b"{}"
    headers_: Any = None
    error_: KafkaError | None = None

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> Any:
        return _read(self.key_)

    def value(self) -> Any:
        return _read(self.value_)

    def headers(self) -> Any:
        return _read(self.headers_)

    def error(self) -> KafkaError | None:
        return self.error_


def _read(part: Any) -> Any:
    if isinstance(part, BaseException):
        raise part
    return part


@dataclass
class Produced:
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    on_delivery: Callable[[KafkaError | None, Any], None]


@dataclass
class FakeProducer:
    """Records every `produce`; `poll` delivers pending records with `outcome(record)` (None =
    delivered). `produce_errors` are raised by the next `produce` calls, in order."""

    outcome: Callable[[Produced], KafkaError | None] = lambda _record: None
    produce_errors: list[BaseException] = field(default_factory=list)
    produced: list[Produced] = field(default_factory=list)
    pending: list[Produced] = field(default_factory=list)
    polls: int = 0

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: Callable[[KafkaError | None, Any], None] | None = None,
    ) -> None:
        if self.produce_errors:
            raise self.produce_errors.pop(0)
        assert on_delivery is not None
        record = Produced(topic, value, key, list(headers or []), on_delivery)
        self.produced.append(record)
        self.pending.append(record)

    def poll(self, _timeout: float = 0) -> int:
        self.polls += 1
        ready, self.pending = self.pending, []
        for record in ready:
            record.on_delivery(self.outcome(record), None)
        return len(ready)

    def flush(self, _timeout: float = 0) -> int:
        self.poll()
        return len(self.pending)

    def topics(self) -> list[str]:
        return [record.topic for record in self.produced]


@dataclass
class FakeConsumer:
    """Hands out `messages` from `poll`; records pauses, resumes, offset stores and commits."""

    messages: list[Any] = field(default_factory=list)
    paused: list[list[tuple[str, int]]] = field(default_factory=list)
    resumed: list[list[tuple[str, int]]] = field(default_factory=list)
    stored: list[tuple[str, int, int]] = field(default_factory=list)
    committed: list[tuple[str, int, int]] = field(default_factory=list)
    store_error: KafkaException | None = None
    closed: bool = False
    callbacks: dict[str, Any] = field(default_factory=dict)
    on_poll: Callable[[], None] | None = None
    paused_now: set[tuple[str, int]] = field(default_factory=set)

    def subscribe(self, _topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def poll(self, _timeout: float = 0) -> Any:
        if self.on_poll is not None:
            self.on_poll()
        if not self.messages:
            return None
        head = self.messages[0]
        if (head.topic(), head.partition()) in self.paused_now:
            return None
        return self.messages.pop(0)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.append([(p.topic, p.partition) for p in partitions])
        self.paused_now |= {(p.topic, p.partition) for p in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed.append([(p.topic, p.partition) for p in partitions])
        self.paused_now -= {(p.topic, p.partition) for p in partitions}

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        if self.store_error is not None:
            raise self.store_error
        self.stored += [(p.topic, p.partition, p.offset) for p in offsets]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        assert asynchronous is False
        self.committed += [(p.topic, p.partition, p.offset) for p in offsets]

    def list_topics(self, _topic: str | None = None, timeout: float = 0) -> Any:
        return None

    def get_watermark_offsets(self, _partition: TopicPartition, cached: bool = False) -> Any:
        return (0, -1)

    def close(self) -> None:
        self.closed = True

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Drive the subscription's assign callback, as a rebalance would."""
        self.callbacks["on_assign"](self, partitions)
