"""The exactly-once step (`worker.loop.transactions`) over a fake transactional producer: only
prefixes commit, records and offsets go together, aborts retry, a fenced producer stops."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition
from pydantic import ValidationError

from tests.kafka_fakes import FakeMessage, Produced
from tests.kafka_txn_fakes import FakeGroupConsumer, FakeTxnProducer, kafka_error
from worker.app import consumer_config, loop_settings, producer_config
from worker.consumer import LoopSettings, ProducerFenced, StreamWorker
from worker.loop.delivery import DeliverySettings
from worker.loop.task import Task
from worker.loop.transactions import MAX_REPLACEMENTS, Transactions, TransactionSettings
from worker.messages import Inbound, Outbound
from worker.metrics import Metrics
from worker.settings import WorkerSettings

P0 = ("requests", 0)
P1 = ("requests", 1)
TXN = TransactionSettings(interval_s=0.1, max_records=10, timeout_s=1.0)
DELIVERY = DeliverySettings(dlq_topic="dlq", dlq_max_bytes=1 << 20, retries=3, backoff_s=1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A `Transactions` step over fakes, with the tasks it reported delivered."""

    def __init__(self, settings: TransactionSettings = TXN, *, replaceable: bool = False) -> None:
        self.clock = Clock()
        self.producer = FakeTxnProducer()
        self.replacements: list[FakeTxnProducer] = []
        self.consumer = FakeGroupConsumer()
        self.metrics = Metrics()
        self.step = Transactions(
            self.producer,  # type: ignore[arg-type]
            self.consumer,  # type: ignore[arg-type]
            settings,
            DELIVERY,
            self.metrics,
            clock=self.clock,
            new_producer=self._new_producer if replaceable else None,  # type: ignore[arg-type]
        )
        self.delivered: list[tuple[str, int, int]] = []
        self.progress = 0
        self.step.bind(self._delivered, self._moved)

    def _new_producer(self) -> FakeTxnProducer:
        self.replacements.append(FakeTxnProducer())
        return self.replacements[-1]

    def _delivered(self, task: Task) -> None:
        self.delivered.append((*task.partition, task.offset))

    def _moved(self) -> None:
        self.progress += 1

    def task(self, partition: tuple[str, int], offset: int, *topics: str) -> Task:
        """Track `offset` and return its task, handled now, with one record per topic."""
        inbound = Inbound(partition[0], partition[1], offset, b"k", b"v", [])
        self.step.track(partition, offset)
        records = [
            Outbound(topic, b"k", f"{topic}:{partition[1]}:{offset}".encode(), [])
            for topic in topics or ("verdicts",)
        ]
        return Task(inbound, handled_at=self.clock.now, records=records)

    def count(self, outcome: str) -> float:
        return self.metrics.transactions.labels(outcome=outcome)._value.get()


def test_only_the_finished_prefix_commits_with_its_offsets() -> None:
    h = Harness()
    t5, t6, t7 = (h.task(P0, offset) for offset in (5, 6, 7))
    h.step.send(t6)
    h.clock.now += 1
    h.step.tick()
    assert h.producer.calls == []  # 6 waits for 5
    h.step.send(t5)
    h.step.tick()
    assert h.producer.visible_values() == [b"verdicts:0:5", b"verdicts:0:6"]
    assert h.producer.committed_offsets == [("requests", 0, 7)]
    assert h.producer.group_metadata == ["generation-1"]
    assert h.delivered == [("requests", 0, 5), ("requests", 0, 6)]
    assert h.step.pending() == 1 and h.step.position(P0) == 7
    assert h.count("committed") == 1
    assert h.metrics.transaction_records._sum.get() == 2
    h.step.send(t7)
    h.step.flush(1.0)
    assert h.producer.committed_offsets[-1] == ("requests", 0, 8)
    assert h.step.position(P0) == 8


def test_cadence_waits_for_the_interval_the_record_limit_or_an_idle_worker() -> None:
    h = Harness(TransactionSettings(interval_s=0.1, max_records=3, timeout_s=1.0))
    busy = h.task(P1, 0)  # still being handled: a finished verdict may wait for it
    h.step.send(h.task(P0, 0))
    h.step.tick()
    assert h.producer.calls == []
    h.clock.now += 0.1
    h.step.tick()
    assert h.producer.committed_offsets == [("requests", 0, 1)]
    h.task(P1, 1)
    h.step.send(h.task(P0, 1, "verdicts", "dlq"))
    h.step.send(busy)
    h.step.tick()  # three records: the limit, before the interval
    assert h.producer.committed_offsets[1:] == [("requests", 0, 2), ("requests", 1, 1)]
    assert h.producer.visible_values("dlq") == [b"dlq:0:1"]
    h.step.tick()
    assert len(h.producer.committed_offsets) == 3
    h.step.send(h.task(P0, 2))
    h.step.tick()  # P1's offset 1 is still being handled: wait
    assert len(h.producer.committed_offsets) == 3
    h.step.on_lost({P1})
    h.step.tick()  # nothing else is being handled: no reason to wait
    assert h.producer.committed_offsets[-1] == ("requests", 0, 3)


def test_an_abortable_error_aborts_then_retries_after_backoff() -> None:
    h = Harness()
    error = kafka_error(KafkaError._TIMED_OUT, abort=True)
    h.producer.errors["commit_transaction"] = [error]
    h.step.send(h.task(P0, 0))
    h.step.flush(1.0)
    assert h.producer.visible == [] and h.producer.committed_offsets == []
    assert h.producer.calls[-1] == "abort_transaction"
    assert h.count("aborted") == 1 and h.delivered == []
    h.clock.now += 0.5
    h.step.tick()  # backing off (1 s)
    assert h.producer.calls[-1] == "abort_transaction"
    h.clock.now += 0.6
    h.step.tick()
    assert h.producer.visible_values() == [b"verdicts:0:0"]
    assert h.producer.committed_offsets == [("requests", 0, 1)]
    assert h.delivered == [("requests", 0, 0)]


def test_a_retriable_commit_is_retried_in_place() -> None:
    h = Harness()
    h.producer.errors["commit_transaction"] = [kafka_error(KafkaError._TIMED_OUT, retriable=True)]
    h.step.send(h.task(P0, 0))
    h.step.flush(1.0)
    assert h.producer.calls.count("commit_transaction") == 2
    assert h.producer.committed_offsets == [("requests", 0, 1)]
    assert h.count("aborted") == 0


def test_a_rejected_verdict_is_replaced_by_its_dead_letter_copy() -> None:
    h = Harness()

    def outcome(record: Produced) -> KafkaError | None:
        too_large = record.topic == "verdicts" and len(h.producer.visible) == 0
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if too_large else None

    h.producer.outcome = outcome
    h.step.send(h.task(P0, 0))
    h.step.flush(1.0)
    assert h.count("aborted") == 1 and h.producer.visible == []
    h.clock.now += 1.1
    h.step.tick()
    [copy] = h.producer.visible
    assert copy.topic == "dlq" and copy.value == b"verdicts:0:0"
    assert ("dfd-intended-topic", b"verdicts") in copy.headers
    assert h.producer.committed_offsets == [("requests", 0, 1)]


def test_a_rejected_dead_letter_copy_stops_the_worker() -> None:
    h = Harness()
    h.producer.outcome = lambda record: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    h.step.send(h.task(P0, 0, "dlq"))
    h.step.flush(1.0)
    assert h.step.failure is not None and not isinstance(h.step.failure, ProducerFenced)
    assert h.producer.visible == [] and h.producer.committed_offsets == []


def test_a_fenced_producer_stops_and_drops_its_uncommitted_work() -> None:
    h = Harness(replaceable=True)  # fenced: another instance owns the id, so no replacement
    h.producer.errors["send_offsets_to_transaction"] = [
        kafka_error(KafkaError.PRODUCER_FENCED, fatal=True)
    ]
    h.step.send(h.task(P0, 0))
    waiting = h.task(P1, 0)
    h.step.flush(1.0)
    assert isinstance(h.step.failure, ProducerFenced)
    assert h.producer.visible == [] and h.producer.committed_offsets == []
    assert "abort_transaction" not in h.producer.calls
    assert h.delivered == [("requests", 0, 0)]  # closed in the loop, not produced
    assert h.step.pending() == 0
    h.step.send(waiting)  # later work is dropped too
    h.step.close({P0, P1})
    assert h.producer.calls.count("begin_transaction") == 1
    assert h.delivered[-1] == ("requests", 1, 0)
    assert h.replacements == []


def test_revocation_commits_finished_work_and_drops_late_work() -> None:
    h = Harness()
    finished, unfinished = h.task(P0, 0), h.task(P0, 1)
    other = h.task(P1, 0)
    h.step.send(finished)
    h.step.on_revoke({P0})  # before the interval: committed at once
    assert h.producer.committed_offsets == [("requests", 0, 1)]
    assert h.step.pending({P0}) == 0 and h.step.pending({P1}) == 1
    h.step.send(unfinished)  # finished after the revocation: the new owner redoes it
    again, twice = h.task(P0, 1), h.task(P0, 1)  # reassigned: the message is tracked again
    h.step.send(again)
    h.step.send(twice)  # a second answer to the same offset is dropped, never produced
    h.step.flush(1.0)
    assert h.producer.visible_values() == [b"verdicts:0:0", b"verdicts:0:1"]
    assert h.delivered.count(("requests", 0, 1)) == 3
    h.step.send(other)
    h.step.on_lost({P1})  # lost: another member owns it, nothing is committed
    h.step.flush(1.0)
    assert h.producer.committed_offsets == [("requests", 0, 1), ("requests", 0, 2)]
    assert h.producer.visible_values() == [b"verdicts:0:0", b"verdicts:0:1"]


def test_the_loop_in_exactly_once_mode_commits_verdicts_with_offsets() -> None:
    consumer = FakeGroupConsumer(
        messages=[FakeMessage("requests", 0, offset, b"k", b"m") for offset in range(3)]
    )
    producer = FakeTxnProducer()
    settings = LoopSettings(
        topic="requests",
        verdicts_topic="verdicts",
        dlq_topic="dlq",
        max_inflight=4,
        revoke_timeout_s=1.0,
        drain_deadline_s=5.0,
        lag_interval_s=60.0,
        startup_timeout_s=1.0,
        delivery_retries=0,
        delivery_backoff_s=0.01,
        stall_timeout_s=60.0,
        transactions=TransactionSettings(interval_s=0.01, max_records=64, timeout_s=1.0),
    )

    def handle(inbound: Inbound) -> list[Outbound]:
        return [Outbound("verdicts", inbound.key, f"v{inbound.offset}".encode(), [])]

    def assign_once() -> None:
        if "on_assign" in consumer.callbacks and not getattr(consumer, "_assigned", False):
            consumer._assigned = True  # type: ignore[attr-defined]
            consumer.assign([TopicPartition("requests", 0)])

    consumer.on_poll = assign_once
    worker = StreamWorker(consumer, producer, handle, settings, Metrics())  # type: ignore[arg-type]
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 10
    while ("requests", 0, 3) not in producer.committed_offsets and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert sorted(producer.visible_values()) == [b"v0", b"v1", b"v2"]
    assert ("requests", 0, 3) in producer.committed_offsets
    assert consumer.stored == [] and consumer.committed == []  # only transactions commit


def test_exactly_once_settings_make_transactional_clients(tmp_path: Path) -> None:
    base = {"checkpoint": tmp_path / "m.ckpt", "worker_id": "w1", "group_id": "g"}
    plain = WorkerSettings(**base)  # type: ignore[arg-type]
    assert "transactional.id" not in producer_config(plain)
    assert consumer_config(plain)["enable.auto.commit"] is True
    assert loop_settings(plain).transactions is None
    eos = WorkerSettings(**base, delivery="exactly-once", transaction_interval_ms=50)  # type: ignore[arg-type]
    assert producer_config(eos)["transactional.id"] == "dfd-g-w1"
    assert producer_config(eos)["transaction.timeout.ms"] == 10_000
    assert consumer_config(eos)["enable.auto.commit"] is False
    assert consumer_config(eos)["isolation.level"] == "read_committed"
    assert loop_settings(eos).transactions == TransactionSettings(0.05, 64, 10.0)
    with pytest.raises(ValidationError):
        WorkerSettings(**base, kafka={"transactional.id": "x"})  # type: ignore[arg-type]


def test_a_fatal_error_raised_through_a_delivery_callback_fences() -> None:
    h = Harness()

    def flush(_timeout: float = 0) -> int:
        # what confluent-kafka does when the producer is fenced while records are queued
        try:
            raise kafka_error(KafkaError._FENCED, fatal=True)
        except Exception as exc:
            raise SystemError("append returned a result with an exception set") from exc

    h.producer.flush = flush  # type: ignore[method-assign]
    h.step.send(h.task(P0, 0))
    h.step.flush(1.0)
    assert isinstance(h.step.failure, ProducerFenced)
    assert h.producer.visible == [] and h.delivered == [("requests", 0, 0)]


def test_an_abort_that_times_out_is_resumed_later() -> None:
    h = Harness()
    h.producer.errors["commit_transaction"] = [kafka_error(KafkaError._TIMED_OUT, abort=True)]
    h.producer.errors["abort_transaction"] = [kafka_error(KafkaError._TIMED_OUT, retriable=True)]
    h.step.send(h.task(P0, 0))
    h.step.flush(1.0)
    assert h.step.failure is None and h.producer.in_transaction  # the broker is away
    h.clock.now += 1.1
    h.step.tick()  # the abort resumes, then the work commits
    assert h.producer.calls[-4:] == [
        "abort_transaction",
        "begin_transaction",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]
    assert h.producer.committed_offsets == [("requests", 0, 1)]
    assert h.count("aborted") == 1


HANGS = TransactionSettings(interval_s=0.1, max_records=10, timeout_s=0.05, hang_grace_s=0.05)


def test_a_hung_call_replaces_the_producer_and_the_work_commits_in_the_new_one() -> None:
    h = Harness(HANGS, replaceable=True)
    h.producer.hangs.add("send_offsets_to_transaction")
    h.step.send(h.task(P0, 0))
    h.step.send(h.task(P0, 1))
    h.step.flush(1.0)
    assert h.step.failure is None and h.delivered == []
    assert h.count("abandoned") == 1 and len(h.replacements) == 1
    new = h.replacements[0]
    h.clock.now += 1.1
    h.step.tick()  # the new producer's init_transactions, then the buffered work
    assert new.calls[0] == "init_transactions" and new.initialised
    assert [r.value for r in new.visible] == [b"verdicts:0:0", b"verdicts:0:1"]
    assert new.committed_offsets == [("requests", 0, 2)]
    assert h.delivered == [("requests", 0, 0), ("requests", 0, 1)]
    assert h.producer.visible == []  # the abandoned producer committed nothing
    h.producer.release.set()


def test_a_replacement_that_cannot_initialise_yet_is_retried() -> None:
    h = Harness(HANGS, replaceable=True)
    h.producer.hangs.add("commit_transaction")
    h.step.send(h.task(P0, 0))
    h.step.flush(1.0)
    new = h.replacements[0]
    new.errors["init_transactions"] = [kafka_error(KafkaError._TIMED_OUT, retriable=True)]
    h.clock.now += 1.1
    h.step.tick()
    assert not new.initialised and new.visible == []
    h.clock.now += 2.1
    h.step.tick()
    assert new.initialised and new.committed_offsets == [("requests", 0, 1)]
    h.producer.release.set()


def test_unusable_producers_stop_the_worker_without_a_factory_or_past_the_limit() -> None:
    alone = Harness(HANGS)
    alone.producer.hangs.add("send_offsets_to_transaction")
    alone.step.send(alone.task(P0, 0))
    alone.step.flush(1.0)
    assert isinstance(alone.step.failure, ProducerFenced)
    assert alone.delivered == [("requests", 0, 0)]  # dropped: the partition's next owner redoes it
    alone.producer.release.set()

    h = Harness(HANGS, replaceable=True)
    h.producer.hangs.add("commit_transaction")
    h.step.send(h.task(P0, 0))
    h.step.flush(1.0)
    for _ in range(MAX_REPLACEMENTS):
        h.replacements[-1].hangs.add("init_transactions")
        h.clock.now += 100
        h.step.tick()
    assert isinstance(h.step.failure, ProducerFenced)
    assert h.count("abandoned") == MAX_REPLACEMENTS + 1
    for producer in [h.producer, *h.replacements]:
        producer.release.set()


def test_a_fatal_error_that_is_not_fencing_replaces_the_producer() -> None:
    h = Harness(replaceable=True)
    h.producer.errors["commit_transaction"] = [
        kafka_error(KafkaError.INVALID_TXN_STATE, fatal=True)
    ]
    h.step.send(h.task(P0, 0))
    h.step.flush(1.0)
    assert h.step.failure is None and len(h.replacements) == 1
    h.clock.now += 1.1
    h.step.tick()
    assert h.replacements[0].committed_offsets == [("requests", 0, 1)]
    assert h.delivered == [("requests", 0, 0)]
