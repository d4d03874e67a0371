"""Rebalance step: the consumer's assign, revoke and lost callbacks (cooperative-sticky).

On revocation only the revoked partitions' in-flight work is waited for (up to the revoke
timeout, serving deliveries meanwhile), their finished prefix is committed, and the rest is
abandoned to the new owner. Lost partitions are dropped at once: another member owns them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from worker.loop.backpressure import Backpressure
from worker.metrics import Metrics
from worker.offsets import CommitStep, PartitionKey

log = logging.getLogger(__name__)

WAIT_STEP_S = 0.05


class Rebalance:
    """Keeps the assignment; `pump(timeout_s)` serves deliveries while revocation waits."""

    def __init__(
        self,
        commit: CommitStep,
        backpressure: Backpressure,
        pump: Callable[[float], None],
        metrics: Metrics,
        revoke_timeout_s: float,
    ) -> None:
        self._commit = commit
        self._backpressure = backpressure
        self._pump = pump
        self._metrics = metrics
        self._revoke_timeout_s = revoke_timeout_s
        self.assigned: set[PartitionKey] = set()

    def on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= _keys(partitions)
        self._backpressure.reassigned()
        self._metrics.assigned_partitions.set(len(self.assigned))
        log.info("partitions assigned", extra={"partitions": _names(partitions)})

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = _keys(partitions)
        deadline = time.monotonic() + self._revoke_timeout_s
        while self._commit.pending(revoked) and time.monotonic() < deadline:
            self._pump(WAIT_STEP_S)
        abandoned = self._commit.pending(revoked)
        self._commit.on_revoke(revoked)
        self._drop(revoked)
        log.info(
            "partitions revoked", extra={"partitions": _names(partitions), "abandoned": abandoned}
        )

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = _keys(partitions)
        log.warning(
            "partitions lost; their in-flight work will be redelivered elsewhere",
            extra={"partitions": _names(partitions), "abandoned": self._commit.pending(lost)},
        )
        self._commit.on_lost(lost)
        self._drop(lost)

    def _drop(self, partitions: set[PartitionKey]) -> None:
        self.assigned -= partitions
        for topic, partition in partitions:
            self._metrics.consumer_lag.remove(topic, str(partition))
        self._metrics.assigned_partitions.set(len(self.assigned))


def _keys(partitions: list[TopicPartition]) -> set[PartitionKey]:
    return {(p.topic, p.partition) for p in partitions}


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]
