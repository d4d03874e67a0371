"""`drills`: faults injected during a stream of requests; nothing may be lost.

Two workers serve a 4-partition topic while the stream runs; between chunks of the stream the
drills SIGKILL a worker (several times), SIGTERM one, restart the broker, stop and start Redis,
hang Redis (SIGSTOP, then SIGCONT), inject poison messages, flood the topic with hostile messages
mixed 1:1 with valid requests (deep JSON, huge integers, binary, non-UTF-8 header keys, oversize
values, huge headers), and make the verdicts topic unwritable (`max.message.bytes` shrunk, then
restored). Before the stream a worker configured with a missing dead-letter topic must refuse to
start (exit status 2); in the last chunk two requests point at a slow-drip HTTP source on
loopback. Afterwards every acknowledged request must have a verdict (zero lost; a verdict that
could not be delivered counts through its dead-letter copy), every valid one an ok verdict, the
drip requests TIMEOUT or FETCH_FAILED, every poison or hostile message a dead-letter copy (or a
verdict), every worker must still run, each fault must show in a named metric, and every duplicate
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

from benchmarks.assets import drill_spec, synth_videos, write_checkpoint
from benchmarks.context import Context
from benchmarks.drills_eos import exactly_once_failures, extra_drills
from benchmarks.hostile import (
    DeadLetter,
    DeadLetterCollector,
    DripServer,
    HostileSubmitter,
    hostile_messages,
    process_stopped,
    set_max_message_bytes,
    wait_metric,
)
from benchmarks.report import Report
from benchmarks.services import Services, open_services
from benchmarks.traffic import Arrival, Submitter, VerdictCollector, requests_for
from benchmarks.workers import worker_env
from deploy.local.topics import TopicSet, private_topics
from deploy.local.worker_process import WorkerProcess
from producer.contracts import Verdict, VideoRequest

PARTITIONS = 4
WORKERS = 2
REBALANCE_GRACE_S = 15.0
"""How long after a worker joins (ready) or the broker is back a rebalance may still redeliver."""
SETTLE_TIMEOUT_S = 600.0
SIZES = {
    "smoke": {"requests": 40, "clips": 6, "flood": 24},
    "full": {"requests": 1000, "clips": 24, "flood": 300},
}
"""`flood`: hostile messages in the flood, and as many valid requests mixed in."""
DRIP_REQUESTS = 2
EXIT_STARTUP = 2
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
            http_enabled="true",
            http_allow_private="true",
            # The hard deadline of one download (ignored by workers without the setting): the
            # slow-drip requests are answered after it.
            http_total_timeout_s="20",
            delivery=ctx.delivery,
        )
        self.generation = 0
        self.workers: list[WorkerProcess] = [self._spawn(slot) for slot in range(WORKERS)]
        self.events: list[Event] = []
        self.exit_codes: list[tuple[str, int]] = []
        self.faults: dict[str, dict[str, object]] = {}
        """Per fault: the named metric (or exit status) that made it visible, and its value."""

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

    def hang_redis(self, while_hung: Callable[[], None]) -> None:
        """SIGSTOP redis-server (connections stay open, nothing answers), then SIGCONT."""
        assert self.stack is not None
        pid = self.stack.redis.pid()
        assert pid is not None
        with self.event("redis-hung", "redis", redelivers=False), process_stopped(pid):
            while_hung()
            errors = wait_metric(self.workers, "dfd_cache_errors_total", timeout_s=30)
        self.faults["redis-hung"] = {"metric": "dfd_cache_errors_total", "value": errors}

    def verdicts_unwritable(self, topics: TopicSet, while_unwritable: Callable[[], None]) -> None:
        """Shrink the verdicts topic's `max.message.bytes` below any verdict, then restore it."""
        with self.event("verdicts-unwritable", topics.verdicts, redelivers=False):
            set_max_message_bytes(self.services.kafka_bootstrap, topics.verdicts, 64)
            try:
                while_unwritable()
                failures = wait_metric(
                    self.workers,
                    "dfd_delivery_failures_total",
                    topic=topics.verdicts,
                    reason="MSG_SIZE_TOO_LARGE",
                )
            finally:
                set_max_message_bytes(self.services.kafka_bootstrap, topics.verdicts, None)
        self.faults["verdicts-unwritable"] = {
            "metric": 'dfd_delivery_failures_total{reason="MSG_SIZE_TOO_LARGE"}',
            "value": failures,
        }

    def missing_dlq(self) -> None:
        """A worker whose dead-letter topic does not exist must refuse to start, clearly."""
        missing = f"drills-missing-dlq-{uuid.uuid4().hex[:8]}"
        with self.event("missing-dlq", missing, redelivers=False) as event:
            worker = WorkerProcess(
                "missing-dlq",
                self.ctx.workdir / "logs",
                {**self.env, "DFD_DLQ_TOPIC": missing, "DFD_GROUP_ID": missing},
                torch_threads=1,
            )
            code = worker.popen.wait(300)
            said = [
                str(record.get("reason", ""))
                for record in worker.log_records()
                if record.get("msg") == "startup failed"
            ]
            event.detail = f"exit status {code}: {said}"
        self.faults["missing-dlq"] = {
            "exit_status": code,
            "message": said[0] if said else "",
            "value": float(code == EXIT_STARTUP and any(missing in line for line in said)),
        }

    def exited(self) -> list[str]:
        """Names of the worker slots whose process has exited."""
        return [worker.name for worker in self.workers if worker.popen.poll() is not None]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


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
    count = size["requests"] + size["flood"] + 64
    paths = [clips[i % len(clips)] for i in range(count)]
    pool = requests_for(paths, f"drill-{run_id}")
    drip = DripServer()
    with (
        open_services(ctx.workdir, None, None, own=True) as services,
        private_topics(services.kafka_bootstrap, PARTITIONS) as topics,
    ):
        drill = Drill(ctx, services, topics, checkpoint)
        collector: VerdictCollector | None = None
        letters: DeadLetterCollector | None = None
        submitter = Submitter(services.kafka_bootstrap, topics.requests, timeout_s=300.0)
        hostile = HostileSubmitter(services.kafka_bootstrap, topics.requests, PARTITIONS)
        try:
            collector = VerdictCollector(services.kafka_bootstrap, topics.verdicts)
            letters = DeadLetterCollector(services.kafka_bootstrap, topics.dlq)
            drill.missing_dlq()
            for worker in drill.workers:
                worker.wait_ready()
            stream = Stream(drill, submitter, hostile, pool, size, topics)
            stream.run(drip.url, run_id)
            wanted = {*stream.acked, *stream.drip_ids, *POISON_IDS}
            try:
                _settle(collector, letters, wanted, hostile, SETTLE_TIMEOUT_S)
            except TimeoutError as exc:
                report.failures.append(str(exc))
            time.sleep(5)  # late duplicates
            arrivals = collector.arrivals()
            dead = letters.letters()
            drill.faults["slow-drip"] = {
                "metric": 'dfd_requests_total{status="error",code="TIMEOUT"|"FETCH_FAILED"}',
                "value": wait_metric(
                    drill.workers, "dfd_requests_total", code="TIMEOUT", timeout_s=5
                )
                + wait_metric(
                    drill.workers, "dfd_requests_total", code="FETCH_FAILED", timeout_s=5
                ),
            }
            exited = drill.exited()
        finally:
            drill.stop()
            submitter.close()
            drip.close()
            if collector is not None:
                collector.close()
            if letters is not None:
                letters.close()
    _judge(report, drill, stream, arrivals, dead, hostile, exited)
    return report


def _settle(
    collector: VerdictCollector,
    letters: DeadLetterCollector,
    wanted: set[str],
    hostile: HostileSubmitter,
    timeout_s: float,
) -> None:
    """Until every wanted id has a verdict (delivered, or as a dead-letter copy) and every
    hostile message an answer; `TimeoutError` naming what is missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        dead = letters.letters()
        answered = collector.arrivals().keys() | {d.verdict.request_id for d in dead if d.verdict}
        missing = wanted - answered
        unanswered = _unanswered(hostile, answered, dead)
        if not missing and not unanswered:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no verdict for {len(missing)} requests ({sorted(missing)[:5]}); "
                f"{len(unanswered)} hostile messages unanswered"
            )
        time.sleep(0.5)


def _unanswered(
    hostile: HostileSubmitter, answered: set[str], dead: list[DeadLetter]
) -> list[tuple[int, int]]:
    """Hostile messages with neither a dead-letter copy nor a verdict."""
    copied = {letter.original for letter in dead}
    return [
        place
        for place, message in hostile.placed.items()
        if place not in copied
        and (message.request_id is None or message.request_id not in answered)
    ]


def _judge(
    report: Report,
    drill: Drill,
    stream: Stream,
    arrivals: dict[str, list[Arrival]],
    dead: list[DeadLetter],
    hostile: HostileSubmitter,
    exited: list[str],
) -> None:
    verdicts = {key: [a.verdict for a in found] for key, found in arrivals.items()}
    rescued: dict[str, list[Verdict]] = {}
    for letter in dead:
        if letter.verdict is not None:
            rescued.setdefault(letter.verdict.request_id, []).append(letter.verdict)
    answers = {key: verdicts.get(key, []) + rescued.get(key, []) for key in verdicts | rescued}
    valid = set(stream.acked)
    lost = sorted((valid | set(POISON_IDS) | set(stream.drip_ids)) - answers.keys())
    unanswered = _unanswered(hostile, set(answers), dead)
    duplicates = {k: len(v) - 1 for k, v in verdicts.items() if len(v) > 1}
    unexplained = unexplained_duplicates(verdicts, drill.events)
    valid_errors = Counter(
        v.error.code.value for k in valid & answers.keys() for v in answers[k] if v.error
    )
    drip_codes = Counter(
        v.error.code.value if v.error else v.status
        for k in stream.drip_ids
        for v in answers.get(k, [])
    )
    copies_of = {letter.original for letter in dead}
    hostile_kinds = Counter(message.kind for message in hostile.placed.values())
    cut = [d for d in dead if d.original_size is not None]
    report.results["stream"] = {
        "requests": len(valid),
        "poison_messages": stream.poisoned,
        "hostile_messages": len(hostile.placed),
        "hostile_kinds": dict(hostile_kinds),
        "hostile_with_dlq_copy": sum(place in copies_of for place in hostile.placed),
        "hostile_unanswered": len(unanswered),
        "verdicts": sum(len(v) for v in verdicts.values()),
        "unique_verdicts": len(verdicts),
        "verdicts_rescued_from_dlq": sum(len(v) for v in rescued.values()),
        "duplicates": sum(duplicates.values()),
        "lost": len(lost),
        "unexplained_duplicates": len(unexplained),
        "dlq_messages": len(dead),
        "dlq_copies_cut": len(cut),
        "largest_cut_original_bytes": max((d.original_size or 0 for d in cut), default=0),
        "valid_error_verdicts": dict(valid_errors),
        "drip_verdicts": dict(drip_codes),
        "cache": dict(Counter(v.cache or "none" for k in valid for v in answers.get(k, []))),
        "faults": drill.faults,
        "workers_exited": exited,
        "events": [
            asdict(e) | {"started": e.started.isoformat(), "ended": e.ended.isoformat()}
            for e in drill.events
        ],
        "sigterm_exit_codes": drill.exit_codes,
    }
    if lost:
        report.failures.append(f"{len(lost)} requests lost: {lost[:10]}")
    if unanswered:
        report.failures.append(f"{len(unanswered)} hostile messages unanswered: {unanswered[:5]}")
    if unexplained:
        report.failures.append(f"unexplained duplicates: {dict(list(unexplained.items())[:5])}")
    report.failures += exactly_once_failures(drill.ctx.delivery, duplicates)
    if valid_errors:
        report.failures.append(f"valid requests got error verdicts: {dict(valid_errors)}")
    if set(drip_codes) - {"TIMEOUT", "FETCH_FAILED"}:
        report.failures.append(f"slow-drip requests answered {dict(drip_codes)}")
    poison_copies = len(dead) - sum(place in copies_of for place in hostile.placed)
    if poison_copies < stream.poisoned:
        report.failures.append(f"{stream.poisoned} poison messages but {poison_copies} DLQ copies")
    if any(code != 0 for _, code in drill.exit_codes):
        report.failures.append(f"SIGTERM exit statuses: {drill.exit_codes}")
    if exited:
        report.failures.append(f"workers not running at the end: {exited}")
    invisible = [name for name, fault in drill.faults.items() if not fault.get("value")]
    if invisible:
        report.failures.append(f"faults not visible: {invisible}")
    report.targets = [
        {"target": "drills: zero lost", "value": len(lost), "goal": 0, "met": not lost}
    ]


class Stream:
    """The request stream in chunks, one drill while each chunk is in flight."""

    def __init__(
        self,
        drill: Drill,
        submitter: Submitter,
        hostile: HostileSubmitter,
        pool: list[VideoRequest],
        size: dict[str, int],
        topics: TopicSet,
    ) -> None:
        self.drill = drill
        self.submitter = submitter
        self.hostile = hostile
        self.topics = topics
        self.size = size
        self._pool = iter(pool)
        self.acked: list[str] = []
        self.drip_ids: list[str] = []
        self.poisoned = 0

    def take(self, count: int) -> list[VideoRequest]:
        return [next(self._pool) for _ in range(count)]

    def extra(self, count: int = 4) -> None:
        """Submit `count` more valid requests now (so that a fault meets traffic)."""
        self.acked.extend(self.submitter.submit(self.take(count), PARTITIONS))

    def run(self, drip_url: str, run_id: str) -> None:
        drill, topics = self.drill, self.topics
        poison = Submitter(drill.services.kafka_bootstrap, topics.requests, timeout_s=300.0)

        def inject() -> None:
            with drill.event("poison", "requests", redelivers=False) as event:
                self.poisoned += poison.submit_raw(POISON, PARTITIONS)
                event.detail = f"{len(POISON)} messages"

        def wait_redis_down() -> None:
            time.sleep(3)

        def hold() -> None:
            self.extra()
            time.sleep(3)

        drills: list[Callable[[], None]] = [
            lambda: drill.kill(0),
            inject,
            self.flood,
            lambda: drill.kill(1),
            drill.restart_broker,
            lambda: drill.bounce_redis(wait_redis_down),
            lambda: drill.hang_redis(hold),
            lambda: drill.verdicts_unwritable(topics, hold),
            lambda: drill.terminate(0),
            lambda: drill.kill(1),
            lambda: drill.kill(0),
            *extra_drills(drill),
        ]
        requests = self.take(self.size["requests"])
        chunk = -(-len(requests) // (len(drills) + 1))
        for index in range(len(drills) + 1):
            part = requests[index * chunk : (index + 1) * chunk]
            if index == len(drills):
                self.drip(drip_url, run_id)
            sender = threading.Thread(
                target=lambda p=part: self.acked.extend(_paced(self.submitter, p))
            )
            sender.start()
            if index < len(drills):
                time.sleep(1.0)
                drills[index]()
            sender.join()
        poison.close()

    def flood(self) -> None:
        """Hostile messages mixed 1:1 with valid requests, in bursts of ten of each."""
        count = self.size["flood"]
        messages = hostile_messages(count, f"hostile-{uuid.uuid4().hex[:8]}")
        with self.drill.event("flood", "requests", redelivers=False) as event:
            for start in range(0, count, 10):
                for message in messages[start : start + 10]:
                    self.hostile.submit(message)
                self.extra(min(10, count - start))
            self.hostile.flush()
            event.detail = f"{len(self.hostile.placed)} hostile + {count} valid"
            dlq = wait_metric(self.drill.workers, "dfd_dlq_messages_total")
        self.drill.faults["poison-flood"] = {"metric": "dfd_dlq_messages_total", "value": dlq}

    def drip(self, url: str, run_id: str) -> None:
        """Requests for a video served one byte a second (answered by the download deadline)."""
        ids = [f"drip-{run_id}-{n}" for n in range(DRIP_REQUESTS)]
        with self.drill.event("slow-drip", url, redelivers=False):
            requests = [VideoRequest(request_id=i, video_uri=url) for i in ids]
            self.drip_ids.extend(self.submitter.submit(requests, PARTITIONS))


def _paced(
    submitter: Submitter, requests: list, per_send: int = 4, gap_s: float = 0.3
) -> list[str]:
    sent: list[str] = []
    for start in range(0, len(requests), per_send):
        sent.extend(submitter.submit(requests[start : start + per_send], PARTITIONS))
        time.sleep(gap_s)
    return sent
