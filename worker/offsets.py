"""The commit step: in-order offset bookkeeping and every commit decision of the loop.

An offset is committable once every earlier one of its partition is done. `CommitStep` is the
interface the loop calls; `OffsetCommitter` is the at-least-once implementation (librdkafka's
offset store, auto-committed, plus synchronous commits on revocation and shutdown). A
transactional (exactly-once) step can replace it behind the same interface.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Protocol

from confluent_kafka import Consumer, KafkaException, TopicPartition

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]


class OffsetTracker:
    """Tracks pending offsets per partition while work on them finishes out of order.

    `committable(p)` is the Kafka commit position of partition `p`: the lowest pending offset, or
    one past the highest finished offset when nothing is pending.
    """

    def __init__(self) -> None:
        self._pending: dict[Hashable, OrderedDict[int, None]] = {}
        self._next: dict[Hashable, int] = {}

    def add(self, partition: Hashable, offset: int) -> None:
        """Record that work on `offset` started (offsets of a partition arrive in order)."""
        self._pending.setdefault(partition, OrderedDict())[offset] = None

    def done(self, partition: Hashable, offset: int) -> int | None:
        """Mark `offset` finished; return the new commit position if it moved, else None.

        Offsets of partitions that are no longer tracked (revoked) are ignored.
        """
        pending = self._pending.get(partition)
        if pending is None or offset not in pending:
            return None
        before = self.committable(partition)
        del pending[offset]
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)
        after = self.committable(partition)
        return after if after != before else None

    def committable(self, partition: Hashable) -> int | None:
        """The commit position of `partition`, or None before anything finished there."""
        pending = self._pending.get(partition)
        if pending:
            return next(iter(pending))
        return self._next.get(partition)

    def pending(self, partitions: Iterable[Hashable] | None = None) -> int:
        """How many offsets are pending in `partitions` (all partitions when None)."""
        chosen = self._pending.keys() if partitions is None else partitions
        return sum(len(self._pending.get(p, ())) for p in chosen)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Stop tracking `partitions` (revoked or lost); late completions there are ignored."""
        for partition in partitions:
            self._pending.pop(partition, None)
            self._next.pop(partition, None)


class CommitStep(Protocol):
    """What the loop tells the commit step; all calls come from the loop's thread."""

    def track(self, partition: PartitionKey, offset: int) -> None:
        """A message was accepted."""

    def on_done(self, partition: PartitionKey, offset: int) -> None:
        """The message's records are delivered."""

    def pending(self, partitions: Iterable[PartitionKey] | None = None) -> int:
        """Accepted, unfinished messages in `partitions` (all when None)."""

    def position(self, partition: PartitionKey) -> int | None:
        """Where consumption of `partition` would resume, when known."""

    def tick(self) -> None:
        """Once per loop iteration (a cadence for batched commits)."""

    def on_revoke(self, partitions: set[PartitionKey]) -> None:
        """Commit what is finished in `partitions` and stop tracking them."""

    def on_lost(self, partitions: set[PartitionKey]) -> None:
        """Stop tracking `partitions` without committing (another member owns them)."""

    def close(self, partitions: set[PartitionKey]) -> None:
        """Final commit of `partitions` before the consumer closes."""


class OffsetCommitter:
    """At-least-once commits: each finished prefix is stored in librdkafka's offset store (which
    auto-commits it), and committed synchronously on revocation and at shutdown."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._tracker = OffsetTracker()

    def track(self, partition: PartitionKey, offset: int) -> None:
        self._tracker.add(partition, offset)

    def on_done(self, partition: PartitionKey, offset: int) -> None:
        position = self._tracker.done(partition, offset)
        if position is None:
            return
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(*partition, position)])
        except KafkaException as exc:
            log.info("offset not stored", extra={"partition": partition[1], "error": str(exc)})

    def pending(self, partitions: Iterable[PartitionKey] | None = None) -> int:
        return self._tracker.pending(partitions)

    def position(self, partition: PartitionKey) -> int | None:
        return self._tracker.committable(partition)

    def tick(self) -> None:
        """Nothing to do: librdkafka commits the stored offsets on its own cadence."""

    def on_revoke(self, partitions: set[PartitionKey]) -> None:
        self._commit(partitions)
        self._tracker.forget(partitions)

    def on_lost(self, partitions: set[PartitionKey]) -> None:
        self._tracker.forget(partitions)

    def close(self, partitions: set[PartitionKey]) -> None:
        self._commit(partitions)

    def _commit(self, partitions: Iterable[PartitionKey]) -> None:
        offsets = [
            TopicPartition(topic, partition, position)
            for topic, partition in sorted(partitions)
            if (position := self._tracker.committable((topic, partition))) is not None
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed", extra={"error": str(exc)})
