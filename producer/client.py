"""Client library for upload services: publish video requests and await their verdicts."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from pydantic import ValidationError

from producer.contracts import REQUESTS_TOPIC, VERDICTS_TOPIC, Verdict, VideoRequest, parse_verdict
from producer.digests import sha256_file

log = logging.getLogger(__name__)

Start = Literal["beginning", "end"] | datetime


class BrokerUnavailable(Exception):
    """The Kafka cluster did not answer within the timeout."""


class DeliveryFailed(Exception):
    """At least one request was not acknowledged by the broker."""


class VerdictTimeout(Exception):
    """Some requests had no verdict before the deadline; `missing` names them."""

    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__(f"no verdict within the timeout for: {', '.join(missing)}")
        self.missing = list(missing)


@dataclass(frozen=True)
class Delivery:
    """Where the broker stored one request."""

    request_id: str
    video_uri: str
    topic: str
    partition: int
    offset: int


def to_uri(target: str) -> str:
    """A URI stays as it is; a local path becomes an absolute `file://` URI."""
    if "://" in target:
        return target
    return Path(target).expanduser().resolve().as_uri()


def make_request(
    target: str,
    *,
    request_id: str | None = None,
    with_sha256: bool = False,
    metadata: Mapping[str, str] | None = None,
    submitted_at: datetime | None = None,
) -> VideoRequest:
    """Build a validated request for a URI or a local path.

    `with_sha256` hashes a local file so that a worker's cache can hit without hashing it again.
    """
    uri = to_uri(target)
    digest = None
    if with_sha256:
        if not uri.startswith("file://"):
            raise ValueError(f"--sha256 needs a local file, got {uri}")
        digest = sha256_file(Path(target).expanduser())
    return VideoRequest(
        request_id=request_id or uuid.uuid4().hex,
        video_uri=uri,
        sha256=digest,
        submitted_at=submitted_at,
        metadata=dict(metadata or {}),
    )


def check_broker(config: Mapping[str, Any], timeout_s: float) -> None:
    """Raise `BrokerUnavailable` unless the cluster answers a metadata request in time."""
    probe = Producer({**config, "logger": log})
    try:
        probe.list_topics(timeout=timeout_s)
    except Exception as exc:  # KafkaException from librdkafka, with its own message
        servers = config.get("bootstrap.servers")
        raise BrokerUnavailable(
            f"Kafka at {servers} did not answer within {timeout_s:g}s: {exc}"
        ) from None


class RequestPublisher:
    """Idempotent producer of `VideoRequest`s keyed by `request_id`."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = REQUESTS_TOPIC,
        timeout_s: float = 30.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self._config = {"bootstrap.servers": bootstrap_servers, **(config or {})}
        check_broker(self._config, timeout_s)
        self._producer = Producer(
            {
                **self._config,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": int(timeout_s * 1000),
                "logger": log,
            }
        )

    def submit(self, requests: Iterable[VideoRequest]) -> list[Delivery]:
        """Publish every request and wait for each acknowledgement, in order."""
        results: dict[int, Delivery | KafkaError] = {}
        batch = list(requests)

        def on_delivery(index: int) -> Any:
            def callback(error: KafkaError | None, message: Message) -> None:
                if error is not None:
                    results[index] = error
                    return
                request = batch[index]
                results[index] = Delivery(
                    request.request_id,
                    request.video_uri,
                    message.topic(),
                    message.partition(),
                    message.offset(),
                )

            return callback

        for index, request in enumerate(batch):
            self._producer.produce(
                self.topic,
                key=request.request_id.encode(),
                value=request.to_bytes(),
                on_delivery=on_delivery(index),
            )
            self._producer.poll(0)
        deadline = time.monotonic() + self.timeout_s + 5
        while len(results) < len(batch) and time.monotonic() < deadline:
            self._producer.flush(0.5)
        failures = [
            f"{batch[i].request_id}: {outcome}"
            for i, outcome in sorted(results.items())
            if isinstance(outcome, KafkaError)
        ]
        if failures or len(results) < len(batch):
            unanswered = len(batch) - len(results)
            detail = "; ".join(failures) or f"{unanswered} requests were never acknowledged"
            raise DeliveryFailed(f"delivery to {self.topic} failed: {detail}")
        return [results[i] for i in range(len(batch))]  # type: ignore[misc]

    def close(self) -> None:
        self._producer.flush(self.timeout_s)

    def __enter__(self) -> RequestPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class VerdictReader:
    """Reads verdicts from every partition of the verdict topic without joining a group.

    Only verdicts of committed transactions are read (`isolation.level=read_committed`, what a
    worker in exactly-once mode needs); `read_uncommitted=True` also shows open and aborted ones.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = VERDICTS_TOPIC,
        start: Start = "end",
        timeout_s: float = 30.0,
        config: Mapping[str, Any] | None = None,
        read_uncommitted: bool = False,
    ) -> None:
        base = {"bootstrap.servers": bootstrap_servers, **(config or {})}
        isolation = "read_uncommitted" if read_uncommitted else "read_committed"
        check_broker(base, timeout_s)
        self._consumer = Consumer(
            {
                **base,
                "group.id": f"dfd-verdict-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "isolation.level": isolation,
                "logger": log,
            }
        )
        metadata = self._consumer.list_topics(topic, timeout=timeout_s)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            self._consumer.close()
            raise BrokerUnavailable(f"topic {topic!r} does not exist on {bootstrap_servers}")
        partitions = [
            KafkaTopicPartition(topic, p, self._start_offset(start))
            for p in sorted(found.partitions)
        ]
        if isinstance(start, datetime):
            partitions = self._consumer.offsets_for_times(partitions, timeout=timeout_s)
        self._consumer.assign(partitions)

    @staticmethod
    def _start_offset(start: Start) -> int:
        if isinstance(start, datetime):
            return int(start.timestamp() * 1000)
        return OFFSET_BEGINNING if start == "beginning" else OFFSET_END

    def poll(self, timeout_s: float) -> Iterator[Verdict]:
        """Yield the verdicts that arrive within `timeout_s`; undecodable records are logged."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = self._consumer.poll(min(left, 0.5))
            if message is None:
                continue
            if message.error() is not None:
                log.warning("consumer error: %s", message.error())
                continue
            try:
                yield parse_verdict(message.value())
            except ValidationError as exc:
                log.warning(
                    "skipping a record that is not a verdict",
                    extra={
                        "partition": message.partition(),
                        "offset": message.offset(),
                        "error": str(exc),
                    },
                )

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> VerdictReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def iter_verdicts(
    reader: VerdictReader, request_ids: Iterable[str], timeout_s: float
) -> Iterator[Verdict]:
    """Yield the first verdict of each id as it arrives; raise `VerdictTimeout` for the rest."""
    wanted = set(request_ids)
    seen: set[str] = set()
    for verdict in reader.poll(timeout_s):
        if verdict.request_id in wanted and verdict.request_id not in seen:
            seen.add(verdict.request_id)
            yield verdict
            if seen == wanted:
                return
    raise VerdictTimeout(sorted(wanted - seen))


def await_verdicts(
    reader: VerdictReader, request_ids: Iterable[str], timeout_s: float
) -> dict[str, Verdict]:
    """The first verdict of each id, keyed by id; raises `VerdictTimeout` naming the missing."""
    return {v.request_id: v for v in iter_verdicts(reader, request_ids, timeout_s)}
