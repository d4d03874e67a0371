"""The poll loop: at-least-once Kafka consumption with threaded handlers and in-order commits.

Why confluent-kafka directly rather than sentry-arroyo's StreamProcessor: one request may produce
two records (the dead-letter copy with our `dfd-*` headers *and* an error verdict) that must both be
delivered before its offset is stored, while arroyo's Produce/DLQ steps emit one record per message
and fixed DLQ headers; arroyo closes and joins the whole strategy on every rebalance, where we wait
only for the revoked partitions' work (bounded); and the lag, paused-partition and readiness signals
need the raw consumer (positions, watermarks, broker errors), which arroyo hides. The remaining
logic is small: librdkafka's own offset store (`enable.auto.offset.store=false` + `store_offsets`)
does the committing, and `OffsetTracker` keeps stores in order.

Threading: the handler runs in a pool; everything that touches Kafka (poll, produce, delivery
callbacks, offset stores, pause/resume, commits) runs on the loop's own thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from worker.messages import Inbound, Outbound
from worker.metrics import Metrics
from worker.offsets import OffsetTracker

log = logging.getLogger(__name__)

Handler = Callable[[Inbound], list[Outbound]]
PartitionKey = tuple[str, int]

_POLL_S = 0.05
# While requests are in flight the loop polls briefly, so that a finished verdict is produced
# (and its delivery confirmed) within milliseconds rather than after a full idle poll.
_BUSY_POLL_S = 0.005


class StartupError(Exception):
    """The worker cannot start (broker unreachable, bad configuration)."""


@dataclass(frozen=True)
class LoopSettings:
    """Limits of the poll loop."""

    topic: str
    max_inflight: int
    revoke_timeout_s: float
    drain_deadline_s: float
    lag_interval_s: float
    startup_timeout_s: float


@dataclass(eq=False)
class _Task:
    inbound: Inbound
    accepted_at: float = field(default_factory=time.perf_counter)
    handled_at: float = 0.0
    undelivered: int = 0
    records: list[Outbound] = field(default_factory=list)

    @property
    def partition(self) -> PartitionKey:
        return (self.inbound.topic, self.inbound.partition)


class StreamWorker:
    """Consumes `settings.topic`, runs `handler` per message in a thread pool, produces its
    records and stores each offset once its records are delivered and all earlier offsets of the
    partition are done. Pauses every assigned partition while `max_inflight` messages are open."""

    def __init__(
        self,
        consumer_config: dict[str, Any],
        producer_config: dict[str, Any],
        handler: Handler,
        settings: LoopSettings,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._metrics = metrics
        client_log = logging.getLogger("worker.kafka")
        self._consumer = Consumer(
            {**consumer_config, "error_cb": self._on_error, "logger": client_log}
        )
        self._producer = Producer(
            {**producer_config, "error_cb": self._on_error, "logger": client_log}
        )
        self._pool = ThreadPoolExecutor(settings.max_inflight, thread_name_prefix="request")
        self._finished: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._tracker = OffsetTracker()
        self._open: set[_Task] = set()
        self._assigned: set[PartitionKey] = set()
        self._paused = False
        self._repause = False
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._broker_ok = False
        self._next_lag_at = 0.0
        self._subscribed = False

    # lifecycle -------------------------------------------------------------------------------

    def check_broker(self) -> None:
        """Fail fast (`StartupError`) when the broker does not answer within the startup timeout."""
        try:
            metadata = self._consumer.list_topics(timeout=self._settings.startup_timeout_s)
        except KafkaException as exc:
            raise StartupError(
                f"Kafka broker unreachable within {self._settings.startup_timeout_s} s: {exc}"
            ) from None
        self._broker_ok = True
        if self._settings.topic not in metadata.topics:
            log.warning("requests topic does not exist yet", extra={"topic": self._settings.topic})

    def stop(self) -> None:
        """Ask the loop to stop polling and drain (safe from signal handlers and other threads)."""
        self._stop.set()

    def ready(self) -> tuple[bool, str]:
        """Ready when partitions are assigned, or none are but the broker connection is alive."""
        if self._stop.is_set():
            return False, "shutting down"
        if self._assigned:
            return True, f"{len(self._assigned)} partitions assigned"
        if self._subscribed and self._broker_ok:
            return True, "waiting for partition assignment"
        return False, "not connected to the broker"

    def run(self) -> None:
        """Poll until `stop()`, then drain, flush, commit and close. Re-raises a handler crash."""
        self._consumer.subscribe(
            [self._settings.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._subscribed = True
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(_BUSY_POLL_S if self._open else _POLL_S)
                if message is not None:
                    self._accept(message)
                self._pump(0)
                self._apply_backpressure()
                self._maybe_update_lag()
        finally:
            self._shutdown()
        if self._failure is not None:
            raise self._failure

    # consuming ---------------------------------------------------------------------------------

    def _accept(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", extra={"error": str(error)})
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        inbound = Inbound(
            topic=topic,
            partition=partition,
            offset=offset,
            key=message.key(),
            value=message.value(),
            headers=[(k, v or b"") for k, v in message.headers() or []],
        )
        task = _Task(inbound)
        self._tracker.add((topic, partition), offset)
        self._open.add(task)
        self._pool.submit(self._run_handler, task)
        self._metrics.inflight_requests.set(len(self._open))

    def _run_handler(self, task: _Task) -> None:
        try:
            task.records = self._handler(task.inbound)
            task.handled_at = time.perf_counter()
        except BaseException as exc:
            log.critical(
                "handler crashed; stopping so the message is redelivered",
                exc_info=True,
                extra={"partition": task.inbound.partition, "offset": task.inbound.offset},
            )
            self._failure = exc
            self._stop.set()
            return
        self._finished.put(task)

    def _pump(self, timeout: float) -> None:
        """Produce finished tasks' records and serve delivery callbacks."""
        while True:
            try:
                task = self._finished.get_nowait()
            except queue.Empty:
                break
            task.undelivered = len(task.records)
            if not task.records:
                self._complete(task)
            for record in task.records:
                self._produce(task, record)
        self._producer.poll(timeout)

    def _produce(self, task: _Task, record: Outbound) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                log.error(
                    "delivery failed; producing again",
                    extra={"topic": record.topic, "error": str(error)},
                )
                self._produce(task, record)
                return
            task.undelivered -= 1
            if task.undelivered == 0:
                self._complete(task)

        while True:
            try:
                self._producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                self._producer.poll(_POLL_S)

    def _complete(self, task: _Task) -> None:
        self._open.discard(task)
        self._metrics.inflight_requests.set(len(self._open))
        now = time.perf_counter()
        self._metrics.stage_seconds.labels(stage="produce").observe(now - task.handled_at)
        self._metrics.request_seconds.observe(now - task.accepted_at)
        position = self._tracker.done(task.partition, task.inbound.offset)
        if position is not None:
            self._store(task.partition, position)

    def _store(self, partition: PartitionKey, position: int) -> None:
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(*partition, position)])
        except KafkaException as exc:
            log.info("offset not stored", extra={"partition": partition[1], "error": str(exc)})

    # backpressure and gauges -------------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        full = len(self._open) >= self._settings.max_inflight
        if full and (not self._paused or self._repause):
            self._consumer.pause(_topic_partitions(self._assigned))
            self._paused, self._repause = True, False
            log.debug("partitions paused", extra={"inflight": len(self._open)})
        elif not full and self._paused:
            self._consumer.resume(_topic_partitions(self._assigned))
            self._paused = False
            log.debug("partitions resumed", extra={"inflight": len(self._open)})
        self._metrics.paused_partitions.set(len(self._assigned) if self._paused else 0)

    def _maybe_update_lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag_at:
            return
        self._next_lag_at = now + self._settings.lag_interval_s
        try:
            if not self._assigned:
                self._consumer.list_topics(self._settings.topic, timeout=1.0)
            for topic, partition in sorted(self._assigned):
                # The high watermark cached from fetch responses: a broker query per partition
                # would block the poll loop (about 0.5 s each, behind the consumer's fetch).
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
                if high < 0:
                    continue
                position = self._tracker.committable((topic, partition))
                if position is None:
                    [current] = self._consumer.position([TopicPartition(topic, partition)])
                    position = current.offset if current.offset >= 0 else high
                lag = max(0, high - position)
                self._metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
            self._broker_ok = True
        except KafkaException as exc:
            self._broker_ok = False
            log.warning("broker metadata unavailable", extra={"error": str(exc)})

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._broker_ok = False
        log.warning("kafka client error", extra={"error": str(error)})

    # rebalance ---------------------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._repause = self._paused
        self._broker_ok = True
        self._metrics.assigned_partitions.set(len(self._assigned))
        log.info("partitions assigned", extra={"partitions": _names(partitions)})

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        deadline = time.monotonic() + self._settings.revoke_timeout_s
        while self._tracker.pending(revoked) and time.monotonic() < deadline:
            self._pump(_POLL_S)
        abandoned = self._tracker.pending(revoked)
        self._commit(revoked)
        self._drop(revoked)
        log.info(
            "partitions revoked",
            extra={"partitions": _names(partitions), "abandoned": abandoned},
        )

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        log.warning(
            "partitions lost; their in-flight work will be redelivered elsewhere",
            extra={"partitions": _names(partitions), "abandoned": self._tracker.pending(lost)},
        )
        self._drop(lost)

    def _drop(self, partitions: set[PartitionKey]) -> None:
        self._tracker.forget(partitions)
        self._assigned -= partitions
        for topic, partition in partitions:
            self._metrics.consumer_lag.remove(topic, str(partition))
        self._metrics.assigned_partitions.set(len(self._assigned))

    def _commit(self, partitions: Iterable[PartitionKey]) -> None:
        offsets = [
            TopicPartition(topic, partition, position)
            for topic, partition in partitions
            if (position := self._tracker.committable((topic, partition))) is not None
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed", extra={"error": str(exc)})

    # shutdown ----------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self._settings.drain_deadline_s
        log.info("draining", extra={"inflight": len(self._open)})
        while self._open and time.monotonic() < deadline and self._failure is None:
            self._pump(_POLL_S)
        left = len(self._open)
        remaining = self._producer.flush(max(1.0, deadline - time.monotonic()))
        self._commit(self._assigned)
        self._consumer.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._metrics.inflight_requests.set(0)
        log.info("stopped", extra={"abandoned": left, "undelivered": remaining})


def _topic_partitions(partitions: Iterable[PartitionKey]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in sorted(partitions)]


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]
