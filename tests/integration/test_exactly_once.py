"""Exactly-once delivery against the real broker: a crashed transaction stays invisible to
`read_committed` readers, a fenced zombie cannot commit, and a revocation commits finished work."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from deploy.local.topics import TopicSet
from producer.client import VerdictReader
from producer.contracts import ErrorCode, utcnow
from worker.app import consumer_config, loop_settings, producer_config
from worker.consumer import ProducerFenced, StreamWorker
from worker.loop.delivery import DeliverySettings
from worker.loop.task import Task
from worker.loop.transactions import Transactions, TransactionSettings
from worker.messages import Inbound, Outbound
from worker.metrics import Metrics
from worker.settings import WorkerSettings
from worker.verdicts import error_verdict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CRASH_MID_TRANSACTION = """
import os, signal, sys
from confluent_kafka import Producer
from worker.app import producer_config
from worker.settings import WorkerSettings
settings = WorkerSettings(
    checkpoint="unused", bootstrap_servers=sys.argv[1], group_id=sys.argv[2],
    worker_id=sys.argv[3], delivery="exactly-once",
)
producer = Producer(producer_config(settings))
producer.init_transactions(30)
producer.begin_transaction()
producer.produce(sys.argv[4], key=b"crashed", value=sys.stdin.buffer.read())
assert producer.flush(30) == 0
print("produced", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def verdict_bytes(request_id: str) -> bytes:
    verdict = error_verdict(
        request_id,
        f"file:///v/{request_id}.mp4",
        ErrorCode.INTERNAL,
        "exactly-once test",
        worker_id="test",
        completed_at=utcnow(),
    )
    return verdict.to_bytes()


def settings_for(
    bootstrap: str, topics: TopicSet, worker_id: str, **extra: object
) -> WorkerSettings:
    return WorkerSettings(  # type: ignore[call-arg]
        checkpoint=Path("unused"),
        bootstrap_servers=bootstrap,
        group_id=f"eos-{uuid.uuid4().hex[:8]}",
        requests_topic=topics.requests,
        verdicts_topic=topics.verdicts,
        dlq_topic=topics.dlq,
        worker_id=worker_id,
        delivery="exactly-once",
        **extra,
    )


def read_ids(
    bootstrap: str, topic: str, until: str, *, read_uncommitted: bool = False, timeout_s: float = 30
) -> list[str]:
    """Request ids of the verdicts in `topic` from its start, read until `until` shows up."""
    seen: list[str] = []
    with VerdictReader(
        bootstrap, topic=topic, start="beginning", read_uncommitted=read_uncommitted
    ) as reader:
        deadline = time.monotonic() + timeout_s
        while until not in seen and time.monotonic() < deadline:
            seen += [verdict.request_id for verdict in reader.poll(1.0)]
    return seen


def commit_marker(settings: WorkerSettings, request_id: str) -> None:
    """A new incarnation of `settings`' worker commits one verdict in a transaction."""
    producer = Producer(producer_config(settings))
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(settings.verdicts_topic, key=b"marker", value=verdict_bytes(request_id))
    producer.commit_transaction(30)


def test_a_transaction_aborted_by_a_crash_leaves_no_visible_verdict(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    settings = settings_for(kafka_bootstrap, fresh_topics, "crasher")
    crash_args = [settings.group_id, settings.worker_id, fresh_topics.verdicts]
    crash = subprocess.run(
        [sys.executable, "-c", CRASH_MID_TRANSACTION, kafka_bootstrap, *crash_args],
        input=verdict_bytes("crashed"),
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    assert crash.returncode == -9, crash.stderr.decode()[-2000:]
    # The record reached the broker: an uncommitted reader sees it.
    assert "crashed" in read_ids(
        kafka_bootstrap, fresh_topics.verdicts, "crashed", read_uncommitted=True
    )
    # The restarted worker (same worker id, same transactional.id) aborts the open transaction.
    commit_marker(settings, "marker")
    assert read_ids(kafka_bootstrap, fresh_topics.verdicts, "marker") == ["marker"]


def test_a_fenced_zombie_cannot_commit(kafka_bootstrap: str, fresh_topics: TopicSet) -> None:
    settings = settings_for(kafka_bootstrap, fresh_topics, "zombie")
    producer = Producer(producer_config(settings))
    producer.init_transactions(30)
    consumer = Consumer(consumer_config(settings))
    metrics = Metrics()
    step = Transactions(
        producer,
        consumer,
        TransactionSettings(interval_s=0.1, max_records=64, timeout_s=10.0),
        DeliverySettings(settings.dlq_topic, 1 << 20, retries=0, backoff_s=0.1),
        metrics,
    )
    closed: list[Task] = []
    step.bind(on_delivered=closed.append, on_progress=lambda: None)
    requests = TopicPartition(settings.requests_topic, 0)
    try:
        step.track((requests.topic, 0), 0)
        inbound = Inbound(requests.topic, 0, 0, b"zombie", b"{}", [])
        record = Outbound(settings.verdicts_topic, b"zombie", verdict_bytes("zombie"), [])
        step.send(Task(inbound, handled_at=time.monotonic(), records=[record]))
        commit_marker(settings, "successor")  # a new producer with the same transactional.id
        step.flush(30)
        assert isinstance(step.failure, ProducerFenced)
        assert len(closed) == 1 and step.pending() == 0  # the work was dropped
        assert metrics.transactions.labels(outcome="committed")._value.get() == 0
        [committed] = consumer.committed([requests], timeout=30)
        assert committed.offset < 0  # no offset committed for the group
    finally:
        consumer.close()
    assert read_ids(kafka_bootstrap, fresh_topics.verdicts, "successor") == ["successor"]


@pytest.fixture
def two_partitions(topic_factory: Callable[..., TopicSet]) -> TopicSet:
    return topic_factory(partitions=2)


def run_worker(worker: StreamWorker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield thread
    worker.stop()
    thread.join(60)


def test_revocation_commits_finished_work(kafka_bootstrap: str, two_partitions: TopicSet) -> None:
    topics = two_partitions
    # An hour's cadence: only the revocation (or the shutdown) can commit.
    settings = settings_for(
        kafka_bootstrap, topics, "reviewer", transaction_interval_ms=3_600_000, revoke_timeout_s=5
    )
    ids = {
        partition: [f"p{partition}-{n}-{uuid.uuid4().hex[:6]}" for n in range(4)]
        for partition in (0, 1)
    }
    requests = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition, names in ids.items():
        for name in names:
            requests.produce(topics.requests, key=name.encode(), value=b"{}", partition=partition)
    assert requests.flush(30) == 0
    handled: list[str] = []
    # All eight are accepted before any finishes, and the last request of partition 1 stays in
    # the handler: with work in flight, finished verdicts wait for the (hour-long) cadence, so
    # only the revocation can commit them.
    everyone, blocked, release = threading.Barrier(8), ids[1][-1], threading.Event()

    def handler(inbound: Inbound) -> list[Outbound]:
        request_id = (inbound.key or b"").decode()
        handled.append(request_id)
        everyone.wait(60)
        if request_id == blocked:
            release.wait(120)
        return [Outbound(topics.verdicts, inbound.key, verdict_bytes(request_id), [])]

    metrics = Metrics()
    worker = StreamWorker.connect(
        consumer_config(settings),
        producer_config(settings),
        handler,
        loop_settings(settings),
        metrics,
    )
    committed = metrics.transactions.labels(outcome="committed")
    joiner = Consumer({**consumer_config(settings), "client.id": "joiner"})
    running = run_worker(worker)
    next(running)
    try:
        deadline = time.monotonic() + 60
        while len(handled) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(handled) == 8
        time.sleep(1.0)
        assert committed._value.get() == 0  # finished, buffered, not committed
        joiner.subscribe([topics.requests])
        assignment: list[TopicPartition] = []
        deadline = time.monotonic() + 90
        while not assignment and time.monotonic() < deadline:
            joiner.poll(0.2)
            assignment = joiner.assignment()
        assert assignment, "the joiner got no partition"
        assert committed._value.get() >= 1  # committed inside the revoke callback
        for position in joiner.committed(assignment, timeout=30):
            assert position.offset == (3 if position.partition == 1 else 4)
        moved = [n for p in assignment for n in ids[p.partition] if n != blocked]
        seen = read_ids(kafka_bootstrap, topics.verdicts, moved[-1])
        assert set(moved) <= set(seen)
    finally:
        release.set()
        joiner.close()
        next(running, None)
