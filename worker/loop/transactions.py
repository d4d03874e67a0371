"""Exactly-once delivery: verdicts and consumed offsets committed together in Kafka transactions.

`Transactions` stands in for both the produce step (`Delivery`) and the commit step
(`OffsetCommitter`) when the worker runs with `delivery = "exactly-once"`:

- a handled task is buffered, not produced; each partition's finished tasks wait for their
  contiguous prefix (a task finished out of order waits for the earlier offsets);
- on a short cadence (`interval_s` after the oldest committable task finished, as soon as
  `max_records` records are committable, or at once when no accepted message is still being
  handled - waiting would batch nothing) one transaction produces the records of
  every partition's finished prefix and sends the offsets one past each prefix with the consumer's
  group metadata (KIP-447 fencing), then commits. A record is only ever produced in the
  transaction that commits its offset, so a redelivered message's earlier records are either
  committed together with its offset (no redelivery) or aborted (never visible to a
  `read_committed` reader);
- an error that requires an abort (`txn_requires_abort()`: a failed record, a stale group
  generation, a broker outage) aborts the transaction; its tasks stay buffered and are retried with
  exponential backoff. A record the broker rejects (too large, unwritable topic) is replaced by its
  dead-letter copy before the retry, as in at-least-once mode; a dead-letter copy that is rejected
  too stops the worker (`DeliveryFatal`);
- a fenced producer (a zombie: another process initialised the same `transactional.id`, or its
  epoch is stale) stops producing at once: the uncommitted work is dropped, the loop stops and the
  process exits with `worker.app.EXIT_FENCED`; the partitions' new owner redoes the work from the
  last committed offsets;
- a producer that is unusable but not fenced - another fatal error (`INVALID_TXN_STATE` after a
  broker restart), or a transactional call still running at its timeout plus `hang_grace_s`
  (`worker.loop.deadline`: librdkafka's `send_offsets_to_transaction` can hang after a broker
  restart) - is replaced: a new producer with the same `transactional.id` is made, its
  `init_transactions` fences the old one and aborts its open transaction, and the buffered tasks
  are retried in the new producer's transactions. After `MAX_REPLACEMENTS` replacements without a
  committed transaction the worker stops instead (`ProducerFenced`), for its supervisor to restart
  it;
- on revocation the finished prefix is committed inside the revoke callback; lost partitions'
  buffered work is dropped (another member owns them now).
All calls come from the loop's thread; transactions are synchronous, so none is open between calls.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from producer.contracts import ErrorCode
from worker.loop.deadline import CallHung, call_within
from worker.loop.delivery import (
    DeliveryFatal,
    DeliverySettings,
    Failure,
    classify,
    fit,
    undeliverable_copy,
)
from worker.loop.task import Task
from worker.messages import Outbound
from worker.metrics import Metrics
from worker.offsets import PartitionKey

log = logging.getLogger(__name__)

FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
"""Errors meaning another producer (or a newer epoch) owns this `transactional.id`."""
_RETRIES_PER_CALL = 3
"""Immediate retries of a transactional call that failed retriably (then the transaction aborts)."""
MAX_REPLACEMENTS = 3
"""Producers replaced in a row (no transaction committed in between) before the worker stops."""


@dataclass(frozen=True)
class TransactionSettings:
    """Cadence and limits of the transactions."""

    interval_s: float
    max_records: int
    timeout_s: float
    hang_grace_s: float = 5.0
    """A transactional call still running `timeout_s + hang_grace_s` after it began has hung."""


class ProducerFenced(DeliveryFatal):
    """The transactional producer was fenced (a zombie) or failed fatally: it must not produce."""


class _RecordsFailed(Exception):
    """Some records of the transaction were not delivered (the transaction must abort)."""


class Transactions:
    """The exactly-once produce-and-commit step (module docstring). `bind` connects it to the
    loop's callbacks: `on_delivered(task)` once a task's records and offset are committed (or its
    work was dropped), `on_progress()` after each committed transaction."""

    def __init__(
        self,
        producer: Producer,
        consumer: Consumer,
        settings: TransactionSettings,
        delivery: DeliverySettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        new_producer: Callable[[], Producer] | None = None,
    ) -> None:
        self._producer = producer
        self._new_producer = new_producer
        self._replacements = 0
        self._needs_init = False
        self._consumer = consumer
        self._settings = settings
        self._delivery = delivery
        self._metrics = metrics
        self._clock = clock
        self._open: dict[PartitionKey, OrderedDict[int, Task | None]] = {}
        self._next: dict[PartitionKey, int] = {}
        self._aborts = 0
        self._retry_at = 0.0
        self._abort_pending = False
        self._on_delivered: Callable[[Task], None] = lambda _task: None
        self._on_progress: Callable[[], None] = lambda: None
        self.failure: DeliveryFatal | None = None

    def bind(self, on_delivered: Callable[[Task], None], on_progress: Callable[[], None]) -> None:
        """Set the loop's callbacks."""
        self._on_delivered = on_delivered
        self._on_progress = on_progress

    # the produce step's interface ------------------------------------------------------------

    def send(self, task: Task) -> None:
        """Buffer a handled task until its prefix is committed. Dropped (closed unproduced) when
        its partition is gone - the new owner redoes it - or its offset is already answered (a
        task from before a revocation and its redelivery after a reassignment)."""
        pending = self._open.get(task.partition)
        waiting = pending is not None and task.offset in pending and pending[task.offset] is None
        if self.failure is not None or pending is None or not waiting:
            self._on_delivered(task)
            return
        pending[task.offset] = task

    def pump(self, timeout_s: float) -> None:
        """Serve the producer's callbacks for `timeout_s`, then commit if the cadence is due."""
        try:
            self._producer.poll(timeout_s)
        except KafkaException as exc:
            self._failed_fatally(_error(exc))
        self.tick()

    def flush(self, timeout_s: float) -> int:
        """Commit everything finished; returns how many finished tasks stay uncommitted."""
        self._commit_ready(force=True)
        return sum(len(tasks) for tasks in self._ready().values())

    # the commit step's interface -------------------------------------------------------------

    def track(self, partition: PartitionKey, offset: int) -> None:
        self._open.setdefault(partition, OrderedDict())[offset] = None

    def on_done(self, partition: PartitionKey, offset: int) -> None:
        """Nothing to do: a task is done when the transaction holding it committed."""

    def pending(self, partitions: Iterable[PartitionKey] | None = None) -> int:
        """Accepted messages not yet handled (handled ones are committed by `on_revoke`)."""
        chosen = self._open.keys() if partitions is None else partitions
        return sum(1 for p in chosen for task in self._open.get(p, {}).values() if task is None)

    def position(self, partition: PartitionKey) -> int | None:
        pending = self._open.get(partition)
        if pending:
            return next(iter(pending))
        return self._next.get(partition)

    def tick(self) -> None:
        """Commit when the oldest committable task waited `interval_s`, `max_records` records
        are committable, or nothing else is being handled."""
        self._commit_ready(force=False)

    def on_revoke(self, partitions: set[PartitionKey]) -> None:
        self._commit_ready(force=True)
        self._forget(partitions)

    def on_lost(self, partitions: set[PartitionKey]) -> None:
        self._forget(partitions)

    def close(self, partitions: set[PartitionKey]) -> None:
        self._commit_ready(force=True)

    # transactions ----------------------------------------------------------------------------

    def _ready(self) -> dict[PartitionKey, list[Task]]:
        """Each partition's contiguous prefix of finished tasks."""
        ready: dict[PartitionKey, list[Task]] = {}
        for partition, pending in self._open.items():
            prefix: list[Task] = []
            for task in pending.values():
                if task is None:
                    break
                prefix.append(task)
            if prefix:
                ready[partition] = prefix
        return ready

    def _commit_ready(self, *, force: bool) -> None:
        if self.failure is not None:
            return
        now = self._clock()
        if not force and now < self._retry_at:
            return
        if self._abort_pending and not self._finish_abort():
            self._back_off()
            return
        if self._needs_init and not self._init_producer():
            self._back_off()
            return
        ready = self._ready()
        tasks = [task for prefix in ready.values() for task in prefix]
        if not tasks:
            return
        records = sum(len(task.records) for task in tasks)
        oldest = min(task.handled_at for task in tasks)
        if (
            not force
            and records < self._settings.max_records
            and now - oldest < self._settings.interval_s
            and self.pending() > 0
        ):
            return
        if self._transact(ready, records):
            self._aborts = 0
            self._replacements = 0
            for partition, prefix in ready.items():
                pending = self._open[partition]
                for task in prefix:
                    del pending[task.offset]
                self._next[partition] = prefix[-1].offset + 1
            self._on_progress()
            for task in tasks:
                self._on_delivered(task)
        elif self.failure is None:
            self._back_off()

    def _back_off(self) -> None:
        delay = min(self._delivery.max_backoff_s, self._delivery.backoff_s * 2**self._aborts)
        self._aborts += 1
        self._retry_at = self._clock() + delay

    def _transact(self, ready: dict[PartitionKey, list[Task]], records: int) -> bool:
        """One transaction of `ready`'s records and offsets; True when committed."""
        started = self._clock()
        offsets = [
            TopicPartition(topic, partition, prefix[-1].offset + 1)
            for (topic, partition), prefix in sorted(ready.items())
        ]
        timeout = self._settings.timeout_s
        group = self._consumer.consumer_group_metadata()
        try:
            self._producer.begin_transaction()
            self._produce_all([task for prefix in ready.values() for task in prefix])
            self._retrying(
                "send_offsets_to_transaction",
                lambda: self._producer.send_offsets_to_transaction(offsets, group, timeout),
            )
            self._retrying("commit_transaction", lambda: self._producer.commit_transaction(timeout))
        except CallHung as hung:
            self._replace_producer(str(hung), "CALL_HUNG")
            self._metrics.transaction_seconds.observe(self._clock() - started)
            return False
        except (KafkaException, _RecordsFailed) as exc:
            self._abort(exc, len(offsets))
            self._metrics.transaction_seconds.observe(self._clock() - started)
            return False
        self._metrics.transactions.labels(outcome="committed").inc()
        self._metrics.transaction_seconds.observe(self._clock() - started)
        self._metrics.transaction_records.observe(records)
        return True

    def _produce_all(self, tasks: list[Task]) -> None:
        """Produce every record of `tasks` and wait for them; failed records are handled (a
        rejected one is replaced by its dead-letter copy) and raise `_RecordsFailed`."""
        failed: list[tuple[Task, int, KafkaError]] = []
        for task in tasks:
            for index, record in enumerate(task.records):
                self._produce(task, index, record, failed)
        try:
            left = self._producer.flush(self._settings.timeout_s)
        except SystemError as exc:
            # confluent-kafka raises a fatal error (a fenced producer) through the delivery
            # callback it then still calls, which Python reports as a SystemError
            if isinstance(exc.__cause__, KafkaException):
                raise exc.__cause__ from None
            raise
        if left:
            raise _RecordsFailed(f"{left} records not delivered within the timeout")
        if failed:
            for task, index, error in failed:
                self._record_failed(task, index, error)
            raise _RecordsFailed(f"{len(failed)} records failed: {failed[0][2].name()}")

    def _produce(
        self, task: Task, index: int, record: Outbound, failed: list[tuple[Task, int, KafkaError]]
    ) -> None:
        if record.topic == self._delivery.dlq_topic:
            record = fit(record, self._delivery.dlq_max_bytes)

        def delivered(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                failed.append((task, index, error))

        give_up_at = self._clock() + self._settings.timeout_s
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
                if self._clock() >= give_up_at:
                    raise _RecordsFailed("the producer's queue stayed full") from None
                self._producer.poll(0.05)

    def _record_failed(self, task: Task, index: int, error: KafkaError) -> None:
        record, inbound = task.records[index], task.inbound
        self._metrics.delivery_failures.labels(topic=record.topic, reason=error.name()).inc()
        failure = classify(error)
        if failure in (Failure.RETRY, Failure.FATAL):
            return  # the transaction's own error decides: retry, or stop
        dlq = self._delivery.dlq_topic
        context = {"topic": record.topic, "error": error.name(), "offset": inbound.offset}
        if record.topic == dlq:
            reason = f"the dead-letter topic {dlq!r} cannot take a record: {error.str()}"
            log.critical("delivery failed fatally; stopping", extra={**context, "reason": reason})
            self.failure = DeliveryFatal(reason)
            return
        log.error("record undeliverable; its dead-letter copy replaces it", extra=context)
        self._metrics.dlq_messages.labels(code=ErrorCode.INTERNAL.value).inc()
        task.records[index] = undeliverable_copy(inbound, record, error, dlq)

    def _guarded(self, name: str, call: Callable[[], None]) -> None:
        """`call` with a hard deadline (`CallHung`) of its timeout plus the grace."""
        call_within(call, self._settings.timeout_s + self._settings.hang_grace_s, name)

    def _retrying(self, name: str, call: Callable[[], None]) -> None:
        """`call`, guarded, repeated at once while it fails retriably (a commit may be retried
        as is)."""
        for attempt in range(_RETRIES_PER_CALL + 1):
            try:
                self._guarded(name, call)
                return
            except KafkaException as exc:
                error = _error(exc)
                if not error.retriable() or error.txn_requires_abort():
                    raise
                if attempt == _RETRIES_PER_CALL:
                    raise
                log.info("transactional call failed retriably", extra={"error": error.name()})

    def _abort(self, exc: Exception, partitions: int) -> None:
        error = _error(exc) if isinstance(exc, KafkaException) else None
        if error is not None and (error.fatal() or error.code() in FENCED_CODES):
            self._failed_fatally(error)
            return
        context = {"error": str(exc), "partitions": partitions, "aborts": self._aborts + 1}
        log.warning("transaction failed; aborting and retrying", extra=context)
        self._abort_pending = True
        self._finish_abort()

    def _finish_abort(self) -> bool:
        """Abort the open transaction; True when done. An abort that times out (the broker is
        away) is resumed by calling it again, on the next due tick."""
        abort = partial(self._producer.abort_transaction, self._settings.timeout_s)
        if not self._repeatable("abort_transaction", abort, "abort not finished; resumed later"):
            return False
        self._abort_pending = False
        self._metrics.transactions.labels(outcome="aborted").inc()
        return True

    def _init_producer(self) -> bool:
        """Initialise a replacement producer's transactions; True when done."""
        init = partial(self._producer.init_transactions, self._settings.timeout_s)
        if not self._repeatable("init_transactions", init, "new producer not initialised yet"):
            return False
        self._needs_init = False
        log.info("replacement producer initialised", extra={"replacements": self._replacements})
        return True

    def _repeatable(self, name: str, call: Callable[[], None], not_yet: str) -> bool:
        """`call` (one that may simply be called again later), guarded; True when it succeeded.
        A hung call or a fatal error replaces (or, fenced, stops) the producer; a retriable
        error is logged as `not_yet` and left for the next due tick."""
        try:
            self._guarded(name, call)
        except CallHung as hung:
            self._replace_producer(str(hung), "CALL_HUNG")
            return False
        except KafkaException as exc:
            error = _error(exc)
            if error.fatal() or not error.retriable():
                self._failed_fatally(error)
            else:
                log.warning(not_yet, extra={"error": error.name()})
            return False
        return True

    def _failed_fatally(self, error: KafkaError) -> None:
        """A fenced producer stops the worker (another instance owns the `transactional.id`);
        any other fatal error (e.g. `INVALID_TXN_STATE` after a broker restart) replaces it."""
        if error.code() in FENCED_CODES:
            self._metrics.transactions.labels(outcome="aborted").inc()
            self._stop("the transactional producer was fenced by a newer instance", error.name())
        else:
            reason = f"the transactional producer failed fatally: {error.str()}"
            self._replace_producer(reason, error.name())

    def _replace_producer(self, reason: str, error_name: str) -> None:
        """Drop the unusable producer for a new one with the same `transactional.id`, whose
        `init_transactions` (on the next due tick) fences the old one and aborts its open
        transaction; the buffered tasks stay and are retried. A producer whose call hung is kept
        alive by that call's blocked thread; it can produce nothing once fenced."""
        self._metrics.transactions.labels(outcome="abandoned").inc()
        if self._new_producer is None or self._replacements >= MAX_REPLACEMENTS:
            self._stop(reason, error_name)
            return
        self._replacements += 1
        log.critical(
            "transactional producer unusable; replacing it",
            extra={"reason": reason, "error": error_name, "replacements": self._replacements},
        )
        self._producer = self._new_producer()
        self._abort_pending = False
        self._needs_init = True

    def _stop(self, reason: str, error_name: str) -> None:
        """Stop producing for good; the buffered work is dropped (the new owner redoes it)."""
        log.critical(
            "transactions stopped; uncommitted work is left to the partitions' next owner",
            extra={"error": error_name, "reason": reason, "dropped": self.pending()},
        )
        if self.failure is None:
            self.failure = ProducerFenced(reason)
        self._forget(set(self._open))

    def _forget(self, partitions: set[PartitionKey]) -> None:
        """Stop tracking `partitions`; their buffered tasks are closed without being produced."""
        for partition in partitions:
            pending = self._open.pop(partition, None)
            self._next.pop(partition, None)
            for task in (pending or {}).values():
                if task is not None:
                    self._on_delivered(task)


def _error(exc: Exception) -> KafkaError:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))
