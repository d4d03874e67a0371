"""Startup checks of the loop: the broker answers, the topics the worker writes exist, and the
size limit of the dead-letter topic (dead-letter copies are cut to fit it)."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

log = logging.getLogger(__name__)

FALLBACK_MAX_MESSAGE_BYTES = 1_000_000
"""Assumed when a topic's `max.message.bytes` cannot be read: librdkafka's and the broker's
default record limit, just under Kafka's 1,048,588-byte topic default."""


class StartupError(Exception):
    """The worker cannot start (broker unreachable, a topic missing, bad configuration)."""


def check_topics(
    topics: dict[str, object], requests: str, verdicts: str, dlq: str, timeout_s: float
) -> None:
    """Raise `StartupError` when the verdicts or dead-letter topic is missing from `topics` (the
    broker's metadata); a missing requests topic is only a warning (it may be created later)."""
    missing = [name for name in (verdicts, dlq) if name not in topics]
    if missing:
        raise StartupError(
            f"topics the worker writes do not exist: {missing} (create them, e.g. "
            f"python -m producer topics; checked within {timeout_s} s)"
        )
    if requests not in topics:
        log.warning("requests topic does not exist yet", extra={"topic": requests})


def max_message_bytes(admin: AdminClient, topic: str, client_limit: int, timeout_s: float) -> int:
    """The largest record `topic` takes: its `max.message.bytes`, capped by the producer's own
    `message.max.bytes`; `FALLBACK_MAX_MESSAGE_BYTES` when the broker does not say."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    try:
        [future] = admin.describe_configs([resource], request_timeout=timeout_s).values()
        entry = future.result(timeout=timeout_s).get("max.message.bytes")
        topic_limit = int(entry.value) if entry is not None and entry.value else None
    except (KafkaException, TimeoutError, ValueError, TypeError) as exc:
        log.warning(
            "cannot read the topic's max.message.bytes; assuming the default",
            extra={"topic": topic, "error": str(exc), "assumed": FALLBACK_MAX_MESSAGE_BYTES},
        )
        topic_limit = None
    return min(topic_limit or FALLBACK_MAX_MESSAGE_BYTES, client_limit)


def client_message_limit(producer_config: dict[str, Any]) -> int:
    """The producer's `message.max.bytes` (librdkafka's default when unset)."""
    return int(producer_config.get("message.max.bytes", FALLBACK_MAX_MESSAGE_BYTES))
