"""`drills`: faults injected during a stream of requests; nothing may be lost.

Two workers serve a 4-partition topic while the stream runs; between chunks of the stream the
drills SIGKILL a worker (several times), SIGTERM one, restart the broker, stop and start Redis and
inject poison messages. Afterwards every acknowledged request must have a verdict (zero lost),
every valid one an ok verdict, every poison message a dead-letter copy, and every duplicate
verdict must be explained by an at-least-once redelivery: a kill, a SIGTERM, a rebalance (a
worker joining) or a broker restart between the first verdict and the duplicate.

The drills always run their own local stack (they restart its broker and Redis) and a cheap model:
they check correctness, not speed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer

from benchmarks.assets import drill_spec, synth_videos, write_checkpoint
from benchmarks.context import Context
from benchmarks.drills_eos import exactly_once_failures, extra_drills
from benchmarks.report import Report
from benchmarks.services import Services, open_services
from benchmarks.traffic import Submitter, VerdictCollector, requests_for
from benchmarks.workers import worker_env
from deploy.local.topics import TopicSet, private_topics
from deploy.local.worker_process import WorkerProcess
from producer.contracts import Verdict

PARTITIONS = 4
WORKERS = 2
REBALANCE_GRACE_S = 15.0
"""How long after a worker joins (ready) or the broker is back a rebalance may still redeliver."""
SETTLE_TIMEOUT_S = 600.0
SIZES = {
    "smoke": {"requests": 40, "clips": 6},
    "full": {"requests": 1000, "clips": 24},
}
POISON = (
    b"this is not json",
    b'{"schema_version": 1}',
    b"\xff\xfe\x00binary",
    b'{"schema_version": 1, "request_id": "poison-has-id", "video_uri": "ftp://nowhere/x.mp4"}',
    json.dumps(
        {"schema_version": 1, "request_id": "poison-big", "video_uri": "x" * 70_000}
    ).encode(),
)
POISON_IDS = ("poison-has-id",)
"""Poison that still names its request id gets an error verdict; the others only a DLQ copy."""


@dataclass
class Event:
    """One drill action; `redelivers` when it may cause at-least-once redelivery."""

    kind: str
    target: str
    started: datetime
    ended: datetime
    redelivers: bool
    detail: str = ""


class Drill:
    """The running system under drill: the stack, two worker slots, the stream's clients."""

    def __init__(
        self, ctx: Context, services: Services, topics: TopicSet, checkpoint: Path
    ) -> None:
        self.ctx = ctx
        self.services = services
        self.stack = services.stack
        self.env = worker_env(
            services.kafka_bootstrap,
            topics,
            f"drills-{uuid.uuid4().hex[:8]}",
            checkpoint,
            [ctx.workdir / "videos"],
            services.redis_url,
            cache_retry_after_s="2",
            drain_deadline_s="20",
            revoke_timeout_s="5",
            delivery=ctx.delivery,
        )
        self.generation = 0
        self.workers: list[WorkerProcess] = [self._spawn(slot) for slot in range(WORKERS)]
        self.events: list[Event] = []
        self.exit_codes: list[tuple[str, int]] = []

    def _spawn(self, slot: int) -> WorkerProcess:
        self.generation += 1
        name = f"w{slot}-g{self.generation}"
        return WorkerProcess(name, self.ctx.workdir / "logs", self.env, torch_threads=1)

    @contextmanager
    def event(self, kind: str, target: str, *, redelivers: bool) -> Iterator[Event]:
        event = Event(kind, target, datetime.now(UTC), datetime.now(UTC), redelivers)
        yield event
        event.ended = datetime.now(UTC)
        self.events.append(event)

    def restart(self, slot: int) -> None:
        """Start a new incarnation in `slot` and wait until it serves (a rebalance)."""
        with self.event("worker-start", f"w{slot}", redelivers=True) as event:
            self.workers[slot] = self._spawn(slot)
            self.workers[slot].wait_ready()
            event.target = self.workers[slot].name
        event.ended += timedelta(seconds=REBALANCE_GRACE_S)

    def kill(self, slot: int) -> None:
        with self.event("sigkill", self.workers[slot].name, redelivers=True):
            self.workers[slot].kill()
        self.restart(slot)

    def terminate(self, slot: int) -> None:
        with self.event("sigterm", self.workers[slot].name, redelivers=True) as event:
            code = self.workers[slot].terminate()
            event.detail = f"exit status {code}"
        self.exit_codes.append((event.target, code))
        self.restart(slot)

    def restart_broker(self) -> None:
        assert self.stack is not None
        with self.event("broker-restart", "kafka", redelivers=True) as event:
            self.stack.stop_kafka()
            time.sleep(2)
            self.stack.start_kafka()
        event.ended += timedelta(seconds=REBALANCE_GRACE_S)

    def bounce_redis(self, while_down: Callable[[], None]) -> None:
        assert self.stack is not None
        with self.event("redis-down", "redis", redelivers=False):
            self.stack.stop_redis()
            while_down()
            self.stack.start_redis()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def _count_messages(bootstrap: str, topic: str, at_least: int, timeout_s: float) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"drills-dlq-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    count, deadline = 0, time.monotonic() + timeout_s
    try:
        while count < at_least and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                count += 1
    finally:
        consumer.close()
    return count


def unexplained_duplicates(
    verdicts: dict[str, list[Verdict]], events: list[Event]
) -> dict[str, list[str]]:
    """Duplicates with no redelivering event between the first verdict and the duplicate."""
    redelivering = [e for e in events if e.redelivers]
    unexplained: dict[str, list[str]] = {}
    for request_id, found in verdicts.items():
        ordered = sorted(found, key=lambda v: v.completed_at)
        first = ordered[0]
        for extra in ordered[1:]:
            explained = any(
                e.started <= extra.completed_at and first.completed_at <= e.ended
                for e in redelivering
            )
            if not explained:
                unexplained.setdefault(request_id, []).append(
                    f"{first.worker_id}@{first.completed_at.isoformat()} then "
                    f"{extra.worker_id}@{extra.completed_at.isoformat()}"
                )
    return unexplained


def run(ctx: Context) -> Report:
    size = SIZES[ctx.size]
    report = ctx.report(
        "drills", **size, workers=WORKERS, partitions=PARTITIONS, delivery=ctx.delivery
    )
    checkpoint = write_checkpoint(ctx.workdir / "drills.safetensors", drill_spec())
    clips = synth_videos(
        ctx.workdir / "videos", size["clips"], frames=24, fps=12.0, seed=uuid.uuid4().int % 2**31
    )
    run_id = uuid.uuid4().hex[:8]
    paths = [clips[i % len(clips)] for i in range(size["requests"])]
    requests = requests_for(paths, f"drill-{run_id}")
    with (
        open_services(ctx.workdir, None, None, own=True) as services,
        private_topics(services.kafka_bootstrap, PARTITIONS) as topics,
    ):
        drill = Drill(ctx, services, topics, checkpoint)
        collector: VerdictCollector | None = None
        submitter = Submitter(services.kafka_bootstrap, topics.requests, timeout_s=300.0)
        try:
            collector = VerdictCollector(services.kafka_bootstrap, topics.verdicts)
            for worker in drill.workers:
                worker.wait_ready()
            acked = _stream_with_drills(drill, submitter, requests, topics)
            poison_acked = acked.pop("poison")
            wanted = [*acked["ids"], *POISON_IDS]
            try:
                collector.wait_for(wanted, SETTLE_TIMEOUT_S)
            except TimeoutError as exc:
                report.failures.append(str(exc))
            time.sleep(5)  # late duplicates
            arrivals = collector.arrivals()
            dlq = _count_messages(services.kafka_bootstrap, topics.dlq, poison_acked, 60.0)
        finally:
            drill.stop()
            submitter.close()
            if collector is not None:
                collector.close()
    verdicts = {key: [a.verdict for a in found] for key, found in arrivals.items()}
    valid = set(acked["ids"])
    lost = sorted((valid | set(POISON_IDS)) - verdicts.keys())
    duplicates = {k: len(v) - 1 for k, v in verdicts.items() if len(v) > 1}
    unexplained = unexplained_duplicates(verdicts, drill.events)
    valid_errors = Counter(
        v.error.code.value for k in valid & verdicts.keys() for v in verdicts[k] if v.error
    )
    report.results["stream"] = {
        "requests": len(valid),
        "poison_messages": poison_acked,
        "verdicts": sum(len(v) for v in verdicts.values()),
        "unique_verdicts": len(verdicts),
        "duplicates": sum(duplicates.values()),
        "lost": len(lost),
        "unexplained_duplicates": len(unexplained),
        "dlq_messages": dlq,
        "valid_error_verdicts": dict(valid_errors),
        "cache": dict(Counter(v.cache or "none" for k in valid for v in verdicts.get(k, []))),
        "events": [
            asdict(e) | {"started": e.started.isoformat(), "ended": e.ended.isoformat()}
            for e in drill.events
        ],
        "sigterm_exit_codes": drill.exit_codes,
    }
    if lost:
        report.failures.append(f"{len(lost)} requests lost: {lost[:10]}")
    if unexplained:
        report.failures.append(f"unexplained duplicates: {dict(list(unexplained.items())[:5])}")
    report.failures += exactly_once_failures(ctx.delivery, duplicates)
    if valid_errors:
        report.failures.append(f"valid requests got error verdicts: {dict(valid_errors)}")
    if dlq < poison_acked:
        report.failures.append(f"{poison_acked} poison messages but {dlq} dead-letter copies")
    if any(code != 0 for _, code in drill.exit_codes):
        report.failures.append(f"SIGTERM exit statuses: {drill.exit_codes}")
    report.targets = [
        {"target": "drills: zero lost", "value": len(lost), "goal": 0, "met": not lost}
    ]
    return report


def _stream_with_drills(
    drill: Drill, submitter: Submitter, requests: list, topics: TopicSet
) -> dict[str, object]:
    """Submit the stream in chunks; one drill runs while each chunk is in flight."""
    poison = Submitter(drill.services.kafka_bootstrap, topics.requests, timeout_s=300.0)
    poisoned = [0]

    def inject() -> None:
        with drill.event("poison", "requests", redelivers=False) as event:
            poisoned[0] += poison.submit_raw(POISON, PARTITIONS)
            event.detail = f"{len(POISON)} messages"

    def wait_redis_down() -> None:
        time.sleep(3)

    drills: list[Callable[[], None]] = [
        lambda: drill.kill(0),
        inject,
        lambda: drill.kill(1),
        drill.restart_broker,
        lambda: drill.bounce_redis(wait_redis_down),
        lambda: drill.terminate(0),
        lambda: drill.kill(1),
        lambda: drill.kill(0),
        *extra_drills(drill),
    ]
    chunk = -(-len(requests) // (len(drills) + 1))
    acked: list[str] = []
    for index in range(len(drills) + 1):
        part = requests[index * chunk : (index + 1) * chunk]
        sender = threading.Thread(target=lambda p=part: acked.extend(_paced(submitter, p)))
        sender.start()
        if index < len(drills):
            time.sleep(1.0)
            drills[index]()
        sender.join()
    poison.close()
    return {"ids": acked, "poison": poisoned[0]}


def _paced(
    submitter: Submitter, requests: list, per_send: int = 4, gap_s: float = 0.3
) -> list[str]:
    sent: list[str] = []
    for start in range(0, len(requests), per_send):
        sent.extend(submitter.submit(requests[start : start + per_send], PARTITIONS))
        time.sleep(gap_s)
    return sent
