"""The cache stays correct under aborted transactions (issue 15, point 4).

A worker may cache a video's features and prediction and then lose the transaction holding its
verdict (a crash, or fenced as a zombie). The cache is content-addressed (`dfd:pred:<model
digest>:<sha256>`, `dfd:feat:<spec hash>:<sha256>`) and written before any transaction, so the
partition's next owner redoes the request as a cache hit with the same content, and exactly one
verdict is committed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from confluent_kafka import KafkaError

from models.pipeline import Detector
from producer.contracts import VideoRequest, parse_verdict
from tests.checkpoints import make_checkpoint
from tests.kafka_txn_fakes import FakeGroupConsumer, FakeTxnProducer, kafka_error
from tests.videos import make_video
from worker.cache import LruFeatureCache, ResilientCache
from worker.handler import MessageHandler
from worker.loop.delivery import DeliverySettings
from worker.loop.task import Task
from worker.loop.transactions import ProducerFenced, Transactions, TransactionSettings
from worker.messages import Inbound
from worker.metrics import Metrics
from worker.processing import ProcessingSettings, VideoProcessor
from worker.sources import SourcePolicy

torch.set_num_threads(1)
CONTENT = ("status", "label", "fake_probability", "threshold", "members", "frames", "model")


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    return Detector.load(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


def clip(root: Path) -> Path:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    return make_video(root / "clip.mp4", (np.roll(base, s, axis=1) for s in range(8)), fps=8)


def worker(
    name: str, detector: Detector, cache: ResilientCache, root: Path
) -> tuple[MessageHandler, Transactions, FakeTxnProducer, list[Task]]:
    """One worker's handler and transaction step (over a fake transactional producer)."""
    metrics = Metrics()
    settings = ProcessingSettings(worker_id=name, max_batch_frames=16, max_wait_ms=5)
    processor = VideoProcessor(detector, cache, SourcePolicy((root,)), metrics, settings)
    handler = MessageHandler(processor, "verdicts", "dlq", name, metrics)
    producer = FakeTxnProducer()
    step = Transactions(
        producer,  # type: ignore[arg-type]
        FakeGroupConsumer(),  # type: ignore[arg-type]
        TransactionSettings(interval_s=0.1, max_records=64, timeout_s=1.0),
        DeliverySettings("dlq", 1 << 20, retries=0, backoff_s=0.1),
        metrics,
    )
    closed: list[Task] = []
    step.bind(on_delivered=closed.append, on_progress=lambda: None)
    return handler, step, producer, closed


def handle(handler: MessageHandler, step: Transactions, inbound: Inbound) -> None:
    step.track((inbound.topic, inbound.partition), inbound.offset)
    step.send(Task(inbound, handled_at=time.monotonic(), records=handler(inbound)))


def test_a_redo_after_an_aborted_transaction_is_a_cache_hit_with_the_same_content(
    detector: Detector, tmp_path: Path
) -> None:
    video = clip(tmp_path)
    shared = LruFeatureCache(16)  # one backend, as Redis is for every worker
    message = VideoRequest(request_id="r1", video_uri=video.as_uri()).to_bytes()
    inbound = Inbound("requests", 0, 41, b"r1", message, [])

    zombie, zombie_step, zombie_producer, _ = worker(
        "zombie", detector, ResilientCache(shared), tmp_path
    )
    zombie_producer.errors["commit_transaction"] = [kafka_error(KafkaError._FENCED, fatal=True)]
    handle(zombie, zombie_step, inbound)
    zombie_step.flush(1.0)
    [computed] = [parse_verdict(r.value) for r in zombie_producer.produced]
    assert isinstance(zombie_step.failure, ProducerFenced)
    assert zombie_producer.visible == []  # its transaction never committed
    assert computed.cache == "miss"  # ... but its features and prediction are cached

    owner, owner_step, owner_producer, _ = worker(
        "owner", detector, ResilientCache(shared), tmp_path
    )
    handle(owner, owner_step, inbound)  # the redelivered message
    owner_step.flush(1.0)
    [committed] = [parse_verdict(value) for value in owner_producer.visible_values()]
    assert committed.cache == "hit"
    assert [getattr(committed, f) for f in CONTENT] == [getattr(computed, f) for f in CONTENT]
    assert owner_producer.committed_offsets == [("requests", 0, 42)]
