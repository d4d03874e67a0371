"""Kafka + Redis for the end-to-end benchmarks: given ones, or a private local stack."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from deploy.local import LocalStack
from producer.contracts import DLQ_TOPIC, REQUESTS_TOPIC, VERDICTS_TOPIC
from producer.topics import create_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """A live broker and Redis; `stack` is set when this run started them (drills need it)."""

    kafka_bootstrap: str
    redis_url: str
    stack: LocalStack | None = None


@dataclass(frozen=True)
class Topics:
    """Request, verdict and dead-letter topics private to one benchmark run."""

    requests: str
    verdicts: str
    dlq: str

    @property
    def names(self) -> list[str]:
        return [self.requests, self.verdicts, self.dlq]


@contextmanager
def open_services(
    workdir: Path, kafka: str | None, redis_url: str | None, *, own: bool = False
) -> Iterator[Services]:
    """The given services, or (when none are given or `own` is set) a private local stack on
    free ports under `workdir`, stopped at the end."""
    if kafka and redis_url and not own:
        yield Services(kafka, redis_url)
        return
    stack = LocalStack(workdir / "stack", kafka_port=0, controller_port=0, redis_port=0)
    log.info("starting a private local stack in %s", stack.state_dir)
    try:
        stack.up()
        yield Services(stack.kafka_bootstrap, stack.redis_url, stack)
    finally:
        stack.down()


@contextmanager
def private_topics(bootstrap: str, partitions: int = 4) -> Iterator[Topics]:
    """Fresh topics with a unique suffix, deleted afterwards."""
    suffix = f"bench-{uuid.uuid4().hex[:10]}"
    topics = Topics(*(f"{name}-{suffix}" for name in (REQUESTS_TOPIC, VERDICTS_TOPIC, DLQ_TOPIC)))
    create_topics(bootstrap, partitions=partitions, topics=topics.names)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    _wait_visible(admin, topics.names)
    try:
        yield topics
    finally:
        futures = admin.delete_topics(topics.names, operation_timeout=30)
        for name, future in futures.items():
            try:
                future.result(timeout=30)
            except KafkaException as exc:
                log.warning("could not delete topic %s: %s", name, exc)


def _wait_visible(admin: AdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Until the broker's metadata lists every topic with its partitions."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = admin.list_topics(timeout=timeout_s).topics
        if all(name in found and found[name].partitions for name in names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible after {timeout_s:g}s: {names}")
        time.sleep(0.2)
