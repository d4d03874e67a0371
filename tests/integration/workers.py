"""Helpers for the worker integration tests: clips, worker settings, topic readers.

Workers run as real `python -m worker` processes (`deploy.local.worker_process`), configured
through `DFD_*` environment variables only.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from skimage import data
from skimage.transform import resize

from deploy.local import worker_process
from deploy.local.worker_process import wait_until
from producer.client import RequestPublisher, VerdictReader
from producer.contracts import Verdict, VideoRequest
from tests.videos import make_video

WAIT_S = 180.0  # upper bound for anything to happen on a loaded 2-core machine


def _face_tile(size: int = 48) -> np.ndarray:
    face = data.astronaut()[30:250, 140:330]  # the astronaut's head and shoulders
    return (resize(face, (size, size), anti_aliasing=True) * 255).astype(np.uint8)


def clip_frames(seed: int, fake: bool, count: int = 10) -> Iterator[np.ndarray]:
    """A face drifting over a noisy background; "fake" clips blend a flickering, recoloured
    patch over the face with a hard seam, like a poor face swap. `seed` makes the bytes unique."""
    rng = np.random.default_rng(seed)
    tile = _face_tile()
    background = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    for index in range(count):
        frame = background.copy()
        x, y = 4 + index % 8, 4 + (index // 2) % 8
        face = tile.copy()
        if fake:
            patch = face[12:36, 12:36].astype(np.int16)
            shift = rng.integers(-60, 60, size=3)
            face[12:36, 12:36] = np.clip(patch[:, ::-1] + shift, 0, 255).astype(np.uint8)
        frame[y : y + 48, x : x + 48] = face
        yield frame


def write_clips(root: Path, count: int, salt: int) -> list[Path]:
    """`count` clips (alternating real-ish / fake-ish) with content unique to `salt`."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        fake = index % 2 == 1
        path = root / f"{'fake' if fake else 'real'}-{index}.mp4"
        make_video(path, clip_frames(salt * 1000 + index, fake), fps=10)
        paths.append(path)
    return paths


def requests_for(paths: Iterable[Path], prefix: str) -> list[VideoRequest]:
    return [
        VideoRequest(request_id=f"{prefix}-{i}", video_uri=p.as_uri(), metadata={"n": str(i)})
        for i, p in enumerate(paths)
    ]


worker_env = partial(
    worker_process.worker_env, max_wait_ms="5", max_batch_frames="32", lag_interval_s="1"
)
"""`deploy.local.worker_process.worker_env` with small batches, short waits, quick lag updates."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def publish(bootstrap: str, topic: str, requests: Iterable[VideoRequest]) -> None:
    with RequestPublisher(bootstrap, topic=topic) as publisher:
        publisher.submit(requests)


def publish_raw(bootstrap: str, topic: str, values: Iterable[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value=value, headers=[("source", b"test")])
    assert producer.flush(30) == 0


class VerdictLog:
    """Every verdict on a topic since the start, duplicates included."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._reader = VerdictReader(bootstrap, topic=topic, start="beginning")
        self.by_id: dict[str, list[Verdict]] = defaultdict(list)

    def wait_for(self, ids: Iterable[str], timeout_s: float = WAIT_S) -> dict[str, Verdict]:
        """Read until every id has a verdict; returns the first verdict of each."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout_s
        while not wanted <= self.by_id.keys():
            missing = sorted(wanted - self.by_id.keys())
            if time.monotonic() > deadline:
                raise AssertionError(f"no verdict for {len(missing)} requests: {missing[:10]}")
            self.read(1.0)
        return {request_id: self.by_id[request_id][0] for request_id in wanted}

    def wait_count(self, count: int, timeout_s: float = WAIT_S) -> None:
        """Read until verdicts for at least `count` distinct requests have arrived."""

        def enough() -> bool:
            self.read(0.2)
            return len(self.by_id) >= count

        wait_until(enough, timeout_s, f"{count} verdicts")

    def read(self, seconds: float) -> None:
        for verdict in self._reader.poll(seconds):
            self.by_id[verdict.request_id].append(verdict)

    def close(self) -> None:
        self._reader.close()


def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = WAIT_S) -> list[Message]:
    """The first `count` messages of `topic` (all partitions)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset of each partition (-1001 when none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=30
        )
    finally:
        consumer.close()
    return [tp.offset for tp in found]
