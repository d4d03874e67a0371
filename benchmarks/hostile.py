"""What the drills throw at the workers besides kills: hostile messages, a slow-drip HTTP source,
an unwritable verdicts topic, a hung Redis; and how they read the dead-letter topic and metrics."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from benchmarks import raw_produce
from deploy.local.ports import HOST
from deploy.local.worker_process import WorkerProcess
from producer.contracts import Verdict, parse_verdict

log = logging.getLogger(__name__)

OVERSIZE_BYTES = 1_040_000
"""Above the workers' producer limit (1,000,000) but within the topic's default (1,048,588): its
dead-letter copy must be cut."""


@dataclass(frozen=True)
class Hostile:
    """One hostile message; `request_id` when a worker may still answer it with a verdict."""

    kind: str
    value: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    request_id: str | None = None

    @property
    def raw(self) -> bool:
        """Needs the raw producer (header keys that are not UTF-8)."""
        return any(_not_utf8(name) for name, _ in self.headers)


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def hostile_messages(count: int, prefix: str) -> list[Hostile]:
    """`count` hostile messages cycling through the kinds the issue names."""

    def request(request_id: str, **extra: Any) -> bytes:
        document = {"schema_version": 1, "request_id": request_id, "video_uri": "file:///x.mp4"}
        return json.dumps({**document, **extra}).encode()

    kinds = [
        lambda i: Hostile("deep-object", b'{"a":' * 5000),
        lambda i: Hostile("deep-array", b"[" * 2000),
        lambda i: Hostile(
            "huge-int",
            request(f"{prefix}-int-{i}")[:-1] + b', "n": ' + b"9" * 5000 + b"}",
        ),
        lambda i: Hostile("binary", os.urandom(512) + b"\xff\xfe\x00"),
        lambda i: Hostile(
            "non-utf8-header-key",
            request(f"{prefix}-hdr-{i}"),
            ((b"\xff\xfe-key", b"v"), (b"trace", b"t")),
            f"{prefix}-hdr-{i}",
        ),
        lambda i: Hostile("oversize", b'{"pad": "' + b"x" * OVERSIZE_BYTES + b'"}'),
        lambda i: Hostile(
            "huge-headers",
            request(f"{prefix}-big-headers-{i}")[:-1] + b', "video_uri": 7}',
            tuple((f"h{n}".encode(), b"x" * 4000) for n in range(50)),
        ),
        lambda i: Hostile("not-json", b"this is not json \x00\x01"),
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


class HostileSubmitter:
    """Publishes hostile messages (raw ones through `raw_produce`) and remembers where each
    landed, so that its dead-letter copy can be found."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.placed: dict[tuple[int, int], Hostile] = {}
        self._next = 0
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.max.bytes": 2_000_000,
                "logger": log,
            }
        )

    def submit(self, message: Hostile) -> None:
        partition = self._next % self.partitions
        self._next += 1
        if message.raw:
            offset = raw_produce.produce(
                self.bootstrap, self.topic, partition, [(None, message.value, message.headers)]
            )
            self.placed[(partition, offset)] = message
            return

        def delivered(error: KafkaError | None, record: Message) -> None:
            if error is None:
                self.placed[(record.partition(), record.offset())] = message

        self._producer.produce(
            self.topic,
            value=message.value,
            headers=[(name.decode(), value) for name, value in message.headers],
            partition=partition,
            on_delivery=delivered,
        )
        self._producer.poll(0)

    def flush(self) -> None:
        self._producer.flush(60)


@dataclass(frozen=True)
class DeadLetter:
    original: tuple[int, int] | None
    intended_topic: str | None
    verdict: Verdict | None
    original_size: int | None
    value_size: int


class DeadLetterCollector:
    """Reads every partition of the dead-letter topic from its beginning in a background thread
    (assigned, not subscribed: no group to rejoin when the broker restarts)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"drills-dlq-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "logger": log,
            }
        )
        found = self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(found)])
        self._lock = threading.Lock()
        self._letters: list[DeadLetter] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dead-letters", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            letter = _dead_letter(message)
            with self._lock:
                self._letters.append(letter)

    def letters(self) -> list[DeadLetter]:
        with self._lock:
            return list(self._letters)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def _dead_letter(message: Message) -> DeadLetter:
    try:
        headers = {name: value for name, value in message.headers() or []}
    except Exception:  # a copy whose headers the client cannot read: count it all the same
        headers = {}
    value = message.value() or b""

    def text(name: str) -> str | None:
        raw = headers.get(name)
        return raw.decode(errors="replace") if raw is not None else None

    partition, offset = text("dfd-original-partition"), text("dfd-original-offset")
    original = (int(partition), int(offset)) if partition and offset else None
    intended = text("dfd-intended-topic")
    verdict = None
    if intended is not None:
        try:
            verdict = parse_verdict(value)
        except Exception:
            verdict = None
    size = text("dfd-original-size")
    return DeadLetter(original, intended, verdict, int(size) if size else None, len(value))


class DripServer:
    """A loopback HTTP server that answers every GET with a video that never ends: one byte per
    `gap_s` for as long as the client reads."""

    def __init__(self, gap_s: float = 1.0) -> None:
        stop = self._stop = threading.Event()

        class Drip(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.end_headers()
                while not stop.is_set():
                    try:
                        self.wfile.write(b"\x00")
                        self.wfile.flush()
                    except OSError:
                        return
                    stop.wait(gap_s)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("drip: " + fmt, *args)

        self._server = ThreadingHTTPServer((HOST, 0), Drip)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}/drip.mp4"

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


def set_max_message_bytes(bootstrap: str, topic: str, limit: int | None) -> None:
    """Set (or, with None, reset to the broker default) a topic's `max.message.bytes`."""
    entry = (
        ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE)
        if limit is None
        else ConfigEntry(
            "max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET
        )
    )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


@contextmanager
def process_stopped(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` (it hangs: connections stay open, nothing answers), SIGCONT on exit."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def metric_total(workers: Sequence[WorkerProcess], name: str, **labels: str) -> float:
    """The sum of `name` samples carrying `labels` over the workers that answer."""
    total = 0.0
    for worker in workers:
        try:
            samples = worker.metrics()
        except Exception:
            continue
        for key, value in samples.items():
            if key.startswith(name + "{") and all(
                f'{label}="{item}"' in key for label, item in labels.items()
            ):
                total += value
    return total


def wait_metric(
    workers: Sequence[WorkerProcess], name: str, timeout_s: float = 60.0, **labels: str
) -> float:
    """`metric_total` once it is above 0, or 0 after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric_total(workers, name, **labels)
        if value > 0 or time.monotonic() > deadline:
            return value
        time.sleep(1.0)
