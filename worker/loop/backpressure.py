"""Backpressure step: pause every assigned partition while `max_inflight` requests are open."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition

from worker.metrics import Metrics
from worker.offsets import PartitionKey

log = logging.getLogger(__name__)


def topic_partitions(partitions: Iterable[PartitionKey]) -> list[TopicPartition]:
    """`TopicPartition`s of `partitions`, sorted."""
    return [TopicPartition(topic, partition) for topic, partition in sorted(partitions)]


class Backpressure:
    """Pauses the assignment when full and resumes it when not; a new assignment while paused
    is paused again (the consumer resumes newly assigned partitions)."""

    def __init__(self, consumer: Consumer, max_inflight: int, metrics: Metrics) -> None:
        self._consumer = consumer
        self._max_inflight = max_inflight
        self._metrics = metrics
        self._paused = False
        self._repause = False

    @property
    def paused(self) -> bool:
        return self._paused

    def reassigned(self) -> None:
        """Partitions were added: pause them too on the next `apply` if paused now."""
        self._repause = self._paused

    def apply(self, inflight: int, assigned: set[PartitionKey]) -> None:
        """Pause or resume `assigned` for `inflight` open requests."""
        full = inflight >= self._max_inflight
        if full and (not self._paused or self._repause):
            self._consumer.pause(topic_partitions(assigned))
            self._paused, self._repause = True, False
            log.debug("partitions paused", extra={"inflight": inflight})
        elif not full and self._paused:
            self._consumer.resume(topic_partitions(assigned))
            self._paused = False
            log.debug("partitions resumed", extra={"inflight": inflight})
        self._metrics.paused_partitions.set(len(assigned) if self._paused else 0)
