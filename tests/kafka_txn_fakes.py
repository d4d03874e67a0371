"""A transactional fake producer (and a consumer with group metadata) for the unit tests of the
exactly-once step: records produced in a transaction become visible (`visible`) only when it
commits, as a `read_committed` reader would see them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from tests.kafka_fakes import FakeConsumer, FakeProducer, Produced


@dataclass
class FakeGroupConsumer(FakeConsumer):
    """A fake consumer whose group metadata names its generation."""

    generation: int = 1

    def consumer_group_metadata(self) -> str:
        return f"generation-{self.generation}"


@dataclass
class FakeTxnProducer(FakeProducer):
    """`errors[call]` lists errors raised by the next calls of a transactional method, in order
    (e.g. `errors["commit_transaction"] = [KafkaException(...)]`); a call named in `hangs` blocks
    until `release` is set, as librdkafka's `send_offsets_to_transaction` can (librdkafka#5456)."""

    errors: dict[str, list[BaseException]] = field(default_factory=dict)
    in_transaction: bool = False
    open_records: list[Produced] = field(default_factory=list)
    open_offsets: list[tuple[str, int, int]] = field(default_factory=list)
    visible: list[Produced] = field(default_factory=list)
    committed_offsets: list[tuple[str, int, int]] = field(default_factory=list)
    group_metadata: list[Any] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    hangs: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    initialised: bool = False

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.hangs:
            self.release.wait()
        queued = self.errors.get(name)
        if queued:
            raise queued.pop(0)

    def init_transactions(self, _timeout: float = 0) -> None:
        self._call("init_transactions")
        self.initialised = True

    def begin_transaction(self) -> None:
        self._call("begin_transaction")
        assert not self.in_transaction
        self.in_transaction = True

    def produce(self, topic: str, value: bytes, **kwargs: Any) -> None:
        assert self.in_transaction, "a transactional producer produced outside a transaction"
        before = len(self.produced)
        super().produce(topic, value, **kwargs)
        self.open_records += self.produced[before:]

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], group_metadata: Any, _timeout: float = 0
    ) -> None:
        self._call("send_offsets_to_transaction")
        assert self.in_transaction
        self.group_metadata.append(group_metadata)
        self.open_offsets += [(p.topic, p.partition, p.offset) for p in offsets]

    def commit_transaction(self, _timeout: float = 0) -> None:
        self._call("commit_transaction")
        assert self.in_transaction
        self.visible += self.open_records
        self.committed_offsets += self.open_offsets
        self._close()

    def abort_transaction(self, _timeout: float = 0) -> None:
        self._call("abort_transaction")
        self._close()

    def _close(self) -> None:
        self.in_transaction = False
        self.open_records, self.open_offsets = [], []

    def visible_values(self, topic: str = "verdicts") -> list[bytes]:
        return [record.value for record in self.visible if record.topic == topic]


def kafka_error(
    code: int, *, fatal: bool = False, retriable: bool = False, abort: bool = False
) -> KafkaException:
    """A `KafkaException` carrying a `KafkaError` with the given flags."""
    return KafkaException(
        KafkaError(code, "injected", fatal=fatal, retriable=retriable, txn_requires_abort=abort)
    )
