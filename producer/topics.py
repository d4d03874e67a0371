"""Create the request, verdict and dead-letter topics (idempotent)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from producer.contracts import DLQ_TOPIC, REQUESTS_TOPIC, VERDICTS_TOPIC

DEFAULT_TOPICS = (REQUESTS_TOPIC, VERDICTS_TOPIC, DLQ_TOPIC)


def create_topics(
    bootstrap_servers: str,
    partitions: int = 4,
    replication_factor: int = 1,
    topics: Sequence[str] | None = None,
    timeout_s: float = 30.0,
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the missing topics; returns the names that were created (existing ones are kept)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **(config or {})})
    wanted = list(topics or DEFAULT_TOPICS)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
            for name in missing
        ],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
