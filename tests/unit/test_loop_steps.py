"""The commit, backpressure, rebalance and progress steps of the loop, with a fake consumer."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from tests.kafka_fakes import FakeConsumer
from worker.loop.backpressure import Backpressure
from worker.loop.progress import Progress
from worker.loop.rebalance import Rebalance
from worker.loop.task import Task
from worker.messages import Inbound
from worker.metrics import Metrics
from worker.offsets import OffsetCommitter

P0 = ("requests", 0)
P1 = ("requests", 1)


def test_offsets_are_stored_only_over_finished_prefixes() -> None:
    consumer = FakeConsumer()
    commit = OffsetCommitter(consumer)  # type: ignore[arg-type]
    for offset in (5, 6, 7):
        commit.track(P0, offset)
    commit.on_done(P0, 6)
    assert consumer.stored == []
    commit.on_done(P0, 5)
    assert consumer.stored == [("requests", 0, 7)]
    assert commit.pending() == 1
    assert commit.position(P0) == 7


def test_revocation_commits_and_forgets_loss_only_forgets() -> None:
    consumer = FakeConsumer()
    commit = OffsetCommitter(consumer)  # type: ignore[arg-type]
    commit.track(P0, 1)
    commit.track(P0, 2)
    commit.track(P1, 9)
    commit.on_done(P0, 1)
    commit.on_revoke({P0})
    assert consumer.committed == [("requests", 0, 2)]
    commit.on_done(P0, 2)  # a late completion of a revoked partition is ignored
    assert consumer.stored == [("requests", 0, 2)]
    commit.on_lost({P1})
    assert commit.pending() == 0
    commit.close({P0, P1})
    assert consumer.committed == [("requests", 0, 2)]


def test_a_failed_offset_store_is_not_fatal() -> None:
    consumer = FakeConsumer(store_error=KafkaException(KafkaError(KafkaError._STATE)))
    commit = OffsetCommitter(consumer)  # type: ignore[arg-type]
    commit.track(P0, 0)
    commit.on_done(P0, 0)
    assert commit.pending() == 0


def test_backpressure_pauses_when_full_and_resumes_below() -> None:
    consumer = FakeConsumer()
    metrics = Metrics()
    step = Backpressure(consumer, 2, metrics)  # type: ignore[arg-type]
    assigned = {P0, P1}
    step.apply(1, assigned)
    assert consumer.paused == []
    step.apply(2, assigned)
    step.apply(3, assigned)
    assert consumer.paused == [[P0, P1]]
    assert metrics.paused_partitions._value.get() == 2
    step.reassigned()  # a new partition while paused is paused too
    step.apply(2, assigned | {("requests", 2)})
    assert consumer.paused[-1] == [P0, P1, ("requests", 2)]
    step.apply(1, assigned)
    assert consumer.resumed == [[P0, P1]]
    assert metrics.paused_partitions._value.get() == 0


def test_revocation_waits_only_for_revoked_partitions_work() -> None:
    consumer = FakeConsumer()
    commit = OffsetCommitter(consumer)  # type: ignore[arg-type]
    commit.track(P0, 3)
    commit.track(P1, 8)
    pumped: list[float] = []

    def pump(timeout_s: float) -> None:
        pumped.append(timeout_s)
        commit.on_done(P0, 3)  # the revoked partition's work finishes; P1's never does

    metrics = Metrics()
    rebalance = Rebalance(commit, Backpressure(consumer, 4, metrics), pump, metrics, 5.0)  # type: ignore[arg-type]
    rebalance.on_assign(consumer, [TopicPartition(*P0), TopicPartition(*P1)])  # type: ignore[arg-type]
    assert rebalance.assigned == {P0, P1}
    rebalance.on_revoke(consumer, [TopicPartition(*P0)])  # type: ignore[arg-type]
    assert len(pumped) == 1
    assert consumer.committed == [("requests", 0, 4)]
    assert rebalance.assigned == {P1}
    assert metrics.assigned_partitions._value.get() == 1


def test_revocation_abandons_work_after_the_timeout() -> None:
    consumer = FakeConsumer()
    commit = OffsetCommitter(consumer)  # type: ignore[arg-type]
    commit.track(P0, 3)
    metrics = Metrics()
    rebalance = Rebalance(
        commit,
        Backpressure(consumer, 4, metrics),  # type: ignore[arg-type]
        lambda _timeout: None,
        metrics,
        0.05,
    )
    rebalance.on_assign(consumer, [TopicPartition(*P0)])  # type: ignore[arg-type]
    rebalance.on_revoke(consumer, [TopicPartition(*P0)])  # type: ignore[arg-type]
    assert consumer.committed == [("requests", 0, 3)]  # the new owner starts at the abandoned one
    assert commit.pending() == 0 and rebalance.assigned == set()


def test_lost_partitions_are_dropped_without_commit() -> None:
    consumer = FakeConsumer()
    commit = OffsetCommitter(consumer)  # type: ignore[arg-type]
    commit.track(P0, 3)
    commit.track(P0, 4)
    commit.on_done(P0, 3)
    metrics = Metrics()
    rebalance = Rebalance(commit, Backpressure(consumer, 4, metrics), lambda _t: None, metrics, 5)  # type: ignore[arg-type]
    rebalance.on_assign(consumer, [TopicPartition(*P0)])  # type: ignore[arg-type]
    rebalance.on_lost(consumer, [TopicPartition(*P0)])  # type: ignore[arg-type]
    assert consumer.committed == []
    assert rebalance.assigned == set() and commit.pending() == 0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_stalled_only_with_open_work_and_no_movement() -> None:
    clock = Clock()
    progress = Progress(clock)
    clock.now = 1_000.0
    assert progress.stalled(60) is None  # idle is not stalled
    task = Task(Inbound("requests", 0, 0, None, b""), accepted_at=1_000.0)
    progress.opened(task)
    clock.now = 1_050.0
    assert progress.oldest_age_s() == 50.0
    assert progress.stalled(60) is None
    clock.now = 1_061.0
    reason = progress.stalled(60)
    assert reason is not None and "1 requests open" in reason
    progress.moved()
    assert progress.stalled(60) is None
    progress.closed(task)
    clock.now = 9_999.0
    assert progress.stalled(60) is None
    assert progress.oldest_age_s() == 0.0
