"""Helpers for the worker integration tests: clips, worker subprocesses, topic readers.

Workers run as real `python -m worker` processes (so SIGTERM and SIGKILL are real), configured
through `DFD_*` environment variables only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from skimage import data
from skimage.transform import resize

from deploy.local.ports import free_port
from producer.client import RequestPublisher, VerdictReader
from producer.contracts import Verdict, VideoRequest
from tests.videos import make_video

REPO = Path(__file__).resolve().parents[2]
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


class WorkerProcess:
    """One `python -m worker` subprocess with its own metrics port and log file."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "DFD_WORKER_ID": name,
            "DFD_METRICS_HOST": "127.0.0.1",
            "DFD_METRICS_PORT": str(self.port),
            **env,
        }
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str) -> tuple[int, str]:
        """Status and body of GET http://127.0.0.1:<port><path>."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout_s: float = WAIT_S) -> None:
        wait_until(lambda: self._ready(), timeout_s, f"{self.name} ready")

    def _ready(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics (parsed by prometheus_client), keyed `name{k="v",...}`."""
        status, body = self.get("/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples

    def metric(self, sample: str, /, **labels: str) -> float:
        key = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return self.metrics().get(f"{sample}{{{key}}}", 0.0)

    def terminate(self, timeout_s: float = WAIT_S) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout_s)

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(WAIT_S)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20_000:]

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records


def worker_env(
    bootstrap: str,
    topics: object,
    group: str,
    checkpoint: Path,
    roots: Iterable[Path],
    **extra: str,
) -> dict[str, str]:
    """The `DFD_*` environment of a test worker (fast group membership, small batches)."""
    return {
        "DFD_BOOTSTRAP_SERVERS": bootstrap,
        "DFD_REQUESTS_TOPIC": topics.requests,  # type: ignore[attr-defined]
        "DFD_VERDICTS_TOPIC": topics.verdicts,  # type: ignore[attr-defined]
        "DFD_DLQ_TOPIC": topics.dlq,  # type: ignore[attr-defined]
        "DFD_GROUP_ID": group,
        "DFD_CHECKPOINT": str(checkpoint),
        "DFD_ALLOWED_ROOTS": ",".join(str(root) for root in roots),
        "DFD_MAX_WAIT_MS": "5",
        "DFD_MAX_BATCH_FRAMES": "32",
        "DFD_LAG_INTERVAL_S": "1",
        "DFD_LOG_FORMAT": "json",
        "DFD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "DFD_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        **{f"DFD_{key.upper()}": value for key, value in extra.items()},
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s` (a bound, not a
    measurement)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.2)


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
