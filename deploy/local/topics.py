"""Request, verdict and dead-letter topics private to one test or benchmark run."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from producer.contracts import DLQ_TOPIC, REQUESTS_TOPIC, VERDICTS_TOPIC
from producer.topics import create_topics

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopicSet:
    """The request, verdict and dead-letter topic names one set of workers uses."""

    requests: str
    verdicts: str
    dlq: str

    @classmethod
    def unique(cls) -> TopicSet:
        """The standard names with the same random suffix appended."""
        suffix = uuid.uuid4().hex[:12]
        return cls(*(f"{name}-{suffix}" for name in (REQUESTS_TOPIC, VERDICTS_TOPIC, DLQ_TOPIC)))

    @property
    def names(self) -> list[str]:
        return [self.requests, self.verdicts, self.dlq]


@contextmanager
def private_topics(bootstrap: str, partitions: int = 4) -> Iterator[TopicSet]:
    """A fresh `TopicSet.unique()`, created with `partitions` each and visible in the
    broker's metadata on entry, deleted on exit."""
    topics = TopicSet.unique()
    create_topics(bootstrap, partitions=partitions, topics=topics.names)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        _wait_visible(admin, topics.names)
        yield topics
    finally:
        _delete(admin, topics.names)


def _wait_visible(admin: AdminClient, names: list[str]) -> None:
    """Until the broker's metadata lists every topic with its partitions."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        found = admin.list_topics(timeout=TIMEOUT_S).topics
        if all(name in found and found[name].partitions for name in names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible after {TIMEOUT_S:g}s: {names}")
        time.sleep(0.2)


def _delete(admin: AdminClient, names: list[str]) -> None:
    """Delete the topics, logging (not raising) the ones that could not be deleted."""
    futures = admin.delete_topics(names, operation_timeout=TIMEOUT_S)
    for name, future in futures.items():
        try:
            future.result(timeout=TIMEOUT_S)
        except KafkaException as exc:
            log.warning("could not delete topic %s: %s", name, exc)
