"""Submitting requests and collecting every verdict (duplicates included) with arrival times."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer

from producer.client import VerdictReader
from producer.contracts import Verdict, VideoRequest
from producer.digests import sha256_file

log = logging.getLogger(__name__)


class SubmitFailed(RuntimeError):
    """The broker did not acknowledge some requests in time."""


def requests_for(
    paths: Sequence[Path], prefix: str, *, with_sha256: bool = False
) -> list[VideoRequest]:
    """One request per video, ids `<prefix>-<n>`."""
    return [
        VideoRequest(
            request_id=f"{prefix}-{index}",
            video_uri=path.resolve().as_uri(),
            sha256=sha256_file(path) if with_sha256 else None,
        )
        for index, path in enumerate(paths)
    ]


class Submitter:
    """Idempotent producer that spreads requests round-robin over the partitions (so that a
    scaling measure is not skewed by key hashing) and remembers when each one was sent."""

    def __init__(self, bootstrap: str, topic: str, *, timeout_s: float = 60.0) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self.sent_at: dict[str, float] = {}
        self.sent_wall: dict[str, float] = {}  # time.time(), to compare with verdict clocks
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,
                "message.timeout.ms": int(timeout_s * 1000),
                "logger": log,
            }
        )
        self._next_partition = 0

    def submit(self, requests: Iterable[VideoRequest], partitions: int) -> list[str]:
        """Publish and wait for every acknowledgement; returns the ids, raises `SubmitFailed`."""
        failed: list[str] = []
        acked: list[str] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            key = message.key().decode()
            (failed if error is not None else acked).append(key)

        batch = list(requests)
        for request in batch:
            self.sent_at[request.request_id] = time.monotonic()
            self.sent_wall[request.request_id] = time.time()
            self._producer.produce(
                self.topic,
                key=request.request_id.encode(),
                value=request.to_bytes(),
                partition=self._next_partition % partitions,
                on_delivery=delivered,
            )
            self._next_partition += 1
            self._producer.poll(0)
        deadline = time.monotonic() + self.timeout_s + 5
        while len(acked) + len(failed) < len(batch) and time.monotonic() < deadline:
            self._producer.flush(0.5)
        if failed or len(acked) < len(batch):
            raise SubmitFailed(f"{len(batch) - len(acked)} of {len(batch)} requests not acked")
        return [request.request_id for request in batch]

    def submit_raw(self, values: Iterable[bytes], partitions: int) -> int:
        """Publish raw (poison) values; returns how many the broker acknowledged."""
        results: list[bool] = []
        values = list(values)
        for value in values:
            self._producer.produce(
                self.topic,
                value=value,
                partition=self._next_partition % partitions,
                on_delivery=lambda error, _message: results.append(error is None),
            )
            self._next_partition += 1
        self._producer.flush(self.timeout_s)
        return sum(results)

    def close(self) -> None:
        self._producer.flush(self.timeout_s)


@dataclass(frozen=True)
class Arrival:
    verdict: Verdict
    received_at: float  # time.monotonic() in this process
    received_wall: float  # time.time()


class VerdictCollector:
    """Reads every verdict of a topic from its beginning in a background thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._reader = VerdictReader(bootstrap, topic=topic, start="beginning")
        self._lock = threading.Lock()
        self._arrivals: dict[str, list[Arrival]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verdicts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for verdict in self._reader.poll(0.5):
                with self._lock:
                    self._arrivals[verdict.request_id].append(
                        Arrival(verdict, time.monotonic(), time.time())
                    )

    def arrivals(self) -> dict[str, list[Arrival]]:
        with self._lock:
            return {key: list(value) for key, value in self._arrivals.items()}

    def wait_for(self, ids: Iterable[str], timeout_s: float) -> dict[str, Arrival]:
        """The first arrival of each id; raises `TimeoutError` naming the missing ones."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                missing = wanted - self._arrivals.keys()
                if not missing:
                    return {key: self._arrivals[key][0] for key in wanted}
            if time.monotonic() > deadline:
                raise TimeoutError(f"no verdict for {len(missing)} requests: {sorted(missing)[:5]}")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._reader.close()
