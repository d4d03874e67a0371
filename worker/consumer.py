"""The poll loop: at-least-once Kafka consumption composed of the steps in `worker.loop`.

Why confluent-kafka directly rather than sentry-arroyo's StreamProcessor: one request may produce
two records (the dead-letter copy with our `dfd-*` headers *and* an error verdict) that must both be
delivered before its offset is stored, while arroyo's Produce/DLQ steps emit one record per message
and fixed DLQ headers; arroyo closes and joins the whole strategy on every rebalance, where we wait
only for the revoked partitions' work (bounded); and the lag, paused-partition and readiness signals
need the raw consumer (positions, watermarks, broker errors), which arroyo hides. The steps follow
arroyo's spirit: intake -> run in threads -> produce and deliver -> commit, with backpressure and
rebalance beside them, each a small object tested alone (tests/unit/test_loop_*.py).

Threading: the handler runs in a pool; everything that touches Kafka (poll, produce, delivery
callbacks, offset stores, pause/resume, commits) runs on the loop's own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from worker.loop.backpressure import Backpressure
from worker.loop.delivery import Delivery, DeliveryFatal, DeliverySettings
from worker.loop.intake import intake
from worker.loop.progress import Progress
from worker.loop.rebalance import Rebalance
from worker.loop.run import Handler, RunInThreads
from worker.loop.startup import (
    FALLBACK_MAX_MESSAGE_BYTES,
    StartupError,
    check_topics,
    client_message_limit,
    max_message_bytes,
)
from worker.loop.task import Task
from worker.loop.transactions import ProducerFenced, Transactions, TransactionSettings
from worker.metrics import Metrics
from worker.offsets import CommitStep, OffsetCommitter

log = logging.getLogger(__name__)

__all__ = [
    "DeliveryFatal",
    "LoopSettings",
    "ProducerFenced",
    "StartupError",
    "StreamWorker",
    "TransactionSettings",
]

_POLL_S = 0.05
# While requests are in flight the loop polls briefly, so that a finished verdict is produced
# (and its delivery confirmed) within milliseconds rather than after a full idle poll.
_BUSY_POLL_S = 0.005


@dataclass(frozen=True)
class LoopSettings:
    """Limits of the poll loop."""

    topic: str
    verdicts_topic: str
    dlq_topic: str
    max_inflight: int
    revoke_timeout_s: float
    drain_deadline_s: float
    lag_interval_s: float
    startup_timeout_s: float
    delivery_retries: int
    delivery_backoff_s: float
    stall_timeout_s: float
    transactions: TransactionSettings | None = None
    """Exactly-once delivery (`worker.loop.transactions`) when set, else at-least-once."""


class BrokerStatus:
    """Whether the broker connection is alive, from the clients' error callbacks and metadata."""

    def __init__(self) -> None:
        self.ok = False

    def on_error(self, error: KafkaError) -> None:
        """A Kafka client's `error_cb`."""
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.ok = False
        log.warning("kafka client error", extra={"error": str(error)})


class StreamWorker:
    """Consumes `settings.topic`, runs `handler` per message in a thread pool, produces its
    records and commits each offset once its records are delivered and all earlier offsets of the
    partition are done. Pauses every assigned partition while `max_inflight` messages are open."""

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        handler: Handler,
        settings: LoopSettings,
        metrics: Metrics,
        *,
        broker: BrokerStatus | None = None,
        dlq_max_bytes: int = FALLBACK_MAX_MESSAGE_BYTES,
        commit: CommitStep | None = None,
        new_producer: Callable[[], Producer] | None = None,
    ) -> None:
        self._consumer = consumer
        self._settings = settings
        self._metrics = metrics
        self._broker = broker or BrokerStatus()
        self._commit = commit or OffsetCommitter(consumer)
        self._progress = Progress()
        self._run_step = RunInThreads(handler, settings.max_inflight, settings.dlq_topic, metrics)
        delivery_settings = DeliverySettings(
            dlq_topic=settings.dlq_topic,
            dlq_max_bytes=dlq_max_bytes,
            retries=settings.delivery_retries,
            backoff_s=settings.delivery_backoff_s,
        )
        self._delivery: Delivery | Transactions = Delivery(
            producer,
            delivery_settings,
            metrics,
            on_delivered=self._finish,
            on_progress=self._progress.moved,
        )
        if settings.transactions is not None:
            # exactly-once: one step produces and commits, in transactions
            transactions = Transactions(
                producer,
                consumer,
                settings.transactions,
                delivery_settings,
                metrics,
                new_producer=new_producer,
            )
            transactions.bind(on_delivered=self._finish, on_progress=self._progress.moved)
            self._delivery = self._commit = transactions
        self._backpressure = Backpressure(consumer, settings.max_inflight, metrics)
        self._rebalance = Rebalance(
            self._commit, self._backpressure, self._pump, metrics, settings.revoke_timeout_s
        )
        self._stop = threading.Event()
        self._subscribed = False
        self._next_lag_at = 0.0
        metrics.oldest_inflight_seconds.set_function(self._progress.oldest_age_s)
        metrics.last_progress_timestamp.set_function(self._progress.last_progress_wall)

    @classmethod
    def connect(
        cls,
        consumer_config: dict[str, Any],
        producer_config: dict[str, Any],
        handler: Handler,
        settings: LoopSettings,
        metrics: Metrics,
    ) -> StreamWorker:
        """A worker with real Kafka clients, after the startup checks (`StartupError`): the
        broker answers, the verdicts and dead-letter topics exist; reads the DLQ's size limit."""
        client_log = logging.getLogger("worker.kafka")
        broker = BrokerStatus()
        consumer = Consumer({**consumer_config, "error_cb": broker.on_error, "logger": client_log})

        def new_producer() -> Producer:
            return Producer({**producer_config, "error_cb": broker.on_error, "logger": client_log})

        producer = new_producer()
        timeout_s = settings.startup_timeout_s
        try:
            metadata = consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise StartupError(f"Kafka broker unreachable within {timeout_s} s: {exc}") from None
        broker.ok = True
        check_topics(
            metadata.topics, settings.topic, settings.verdicts_topic, settings.dlq_topic, timeout_s
        )
        admin = AdminClient({**producer_config, "logger": client_log})
        limit = max_message_bytes(
            admin, settings.dlq_topic, client_message_limit(producer_config), timeout_s
        )
        log.info("dead-letter record limit", extra={"topic": settings.dlq_topic, "bytes": limit})
        if settings.transactions is not None:
            try:
                producer.init_transactions(timeout_s)
            except KafkaException as exc:
                raise StartupError(f"cannot initialise transactions: {exc}") from None
        return cls(
            consumer,
            producer,
            handler,
            settings,
            metrics,
            broker=broker,
            dlq_max_bytes=limit,
            new_producer=new_producer,
        )

    # lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop polling and drain (safe from signal handlers and other threads)."""
        self._stop.set()

    def ready(self) -> tuple[bool, str]:
        """Ready when partitions are assigned, or none are but the broker connection is alive."""
        if self._stop.is_set():
            return False, "shutting down"
        if self._rebalance.assigned:
            return True, f"{len(self._rebalance.assigned)} partitions assigned"
        if self._subscribed and self._broker.ok:
            return True, "waiting for partition assignment"
        return False, "not connected to the broker"

    def alive(self) -> tuple[bool, str]:
        """Alive unless requests are open and nothing moved for the stall timeout."""
        stalled = self._progress.stalled(self._settings.stall_timeout_s)
        return (False, stalled) if stalled else (True, "alive")

    def run(self) -> None:
        """Poll until `stop()`, then drain, flush, commit and close. Raises `DeliveryFatal` when
        not even the dead-letter topic could take a record."""
        self._consumer.subscribe(
            [self._settings.topic],
            on_assign=self._rebalance.on_assign,
            on_revoke=self._rebalance.on_revoke,
            on_lost=self._rebalance.on_lost,
        )
        self._subscribed = True
        try:
            while not self._stop.is_set() and self._delivery.failure is None:
                busy = self._progress.open_count() > 0
                message = self._consumer.poll(_BUSY_POLL_S if busy else _POLL_S)
                if message is not None:
                    self._accept(message)
                self._pump(0)
                self._backpressure.apply(self._progress.open_count(), self._rebalance.assigned)
                self._commit.tick()
                self._maybe_update_lag()
        finally:
            self._shutdown()
        if self._delivery.failure is not None:
            raise self._delivery.failure

    # steps -----------------------------------------------------------------------------------

    def _accept(self, message: Any) -> None:
        inbound = intake(message)
        if inbound is None:
            return
        task = Task(inbound)
        self._commit.track(task.partition, task.offset)
        self._progress.opened(task)
        self._metrics.inflight_requests.set(self._progress.open_count())
        self._run_step.submit(task)

    def _pump(self, timeout_s: float) -> None:
        """Produce the handled tasks' records and serve delivery callbacks."""
        for task in self._run_step.finished():
            self._delivery.send(task)
        self._delivery.pump(timeout_s)

    def _finish(self, task: Task) -> None:
        self._progress.closed(task)
        self._metrics.inflight_requests.set(self._progress.open_count())
        now = time.monotonic()
        self._metrics.stage_seconds.labels(stage="produce").observe(now - task.handled_at)
        self._metrics.request_seconds.observe(now - task.accepted_at)
        self._commit.on_done(task.partition, task.offset)

    def _maybe_update_lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag_at:
            return
        self._next_lag_at = now + self._settings.lag_interval_s
        try:
            if not self._rebalance.assigned:
                self._consumer.list_topics(self._settings.topic, timeout=1.0)
            for topic, partition in sorted(self._rebalance.assigned):
                # The high watermark cached from fetch responses: a broker query per partition
                # would block the poll loop (about 0.5 s each, behind the consumer's fetch).
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
                if high < 0:
                    continue
                position = self._commit.position((topic, partition))
                if position is None:
                    [current] = self._consumer.position([TopicPartition(topic, partition)])
                    position = current.offset if current.offset >= 0 else high
                lag = max(0, high - position)
                self._metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
            self._broker.ok = True
        except KafkaException as exc:
            self._broker.ok = False
            log.warning("broker metadata unavailable", extra={"error": str(exc)})

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self._settings.drain_deadline_s
        log.info("draining", extra={"inflight": self._progress.open_count()})
        while (
            self._progress.open_count()
            and time.monotonic() < deadline
            and self._delivery.failure is None
        ):
            self._pump(_POLL_S)
        left = self._progress.open_count()
        remaining = self._delivery.flush(max(1.0, deadline - time.monotonic()))
        self._commit.close(self._rebalance.assigned)
        self._consumer.close()
        self._run_step.close()
        self._metrics.inflight_requests.set(0)
        log.info("stopped", extra={"abandoned": left, "undelivered": remaining})
