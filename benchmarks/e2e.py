"""Workers over Kafka for the end-to-end benchmarks: a fleet, bursts of requests, their figures."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import latency_summary, peak_rss_mib, throughput, tree_cpu_seconds
from benchmarks.services import Services
from benchmarks.traffic import Arrival, Submitter, VerdictCollector
from benchmarks.workers import worker_env
from deploy.local.topics import TopicSet, private_topics
from deploy.local.worker_process import WorkerProcess, wait_assigned
from producer.contracts import Verdict, VideoRequest

VERDICT_TIMEOUT_S = 1800.0


@dataclass
class Fleet:
    workers: list[WorkerProcess]
    topics: TopicSet
    partitions: int
    submitter: Submitter
    collector: VerdictCollector

    def burst(self, requests: Sequence[VideoRequest]) -> dict[str, Arrival]:
        """Submit all `requests` at once and wait for their first verdicts."""
        ids = self.submitter.submit(requests, self.partitions)
        return self.collector.wait_for(ids, VERDICT_TIMEOUT_S)

    def one_by_one(self, requests: Sequence[VideoRequest]) -> dict[str, Arrival]:
        """Submit each request only after the previous verdict arrived (latency without queue)."""
        arrivals: dict[str, Arrival] = {}
        for request in requests:
            arrivals |= self.burst([request])
        return arrivals

    def peak_rss_mib(self) -> float | None:
        peaks = [peak_rss_mib(w.pid) for w in self.workers]
        return None if None in peaks else sum(p for p in peaks if p is not None)

    def cpu_seconds(self) -> float | None:
        """CPU time used so far by all worker processes together, their decode processes
        included."""
        used = [tree_cpu_seconds(w.pid) for w in self.workers]
        return None if None in used else sum(u for u in used if u is not None)


@contextmanager
def fleet(
    services: Services,
    checkpoint: Path,
    roots: Sequence[Path],
    log_dir: Path,
    *,
    workers: int = 1,
    partitions: int = 4,
    torch_threads: int | None = None,
    use_redis: bool = True,
    pin_cores: bool = False,
    **settings: str,
) -> Iterator[Fleet]:
    """`workers` ready worker processes sharing fresh topics, all partitions assigned; with
    `pin_cores`, worker i runs on the i-th core this process may use (modulo their count)."""
    group = f"bench-{uuid.uuid4().hex[:10]}"
    redis_url = services.redis_url if use_redis else None
    with private_topics(services.kafka_bootstrap, partitions) as topics:
        env = worker_env(
            services.kafka_bootstrap, topics, group, checkpoint, roots, redis_url, **settings
        )
        cores = sorted(os.sched_getaffinity(0))
        started = [
            WorkerProcess(
                f"{group}-w{index}",
                log_dir,
                env,
                torch_threads=torch_threads,
                cpus=(cores[index % len(cores)],) if pin_cores else (),
            )
            for index in range(workers)
        ]
        collector: VerdictCollector | None = None
        submitter: Submitter | None = None
        try:
            for worker in started:
                worker.wait_ready()
            wait_assigned(started, partitions)
            collector = VerdictCollector(services.kafka_bootstrap, topics.verdicts)
            submitter = Submitter(services.kafka_bootstrap, topics.requests)
            yield Fleet(started, topics, partitions, submitter, collector)
        finally:
            for worker in started:
                worker.stop()
            if submitter is not None:
                submitter.close()
            if collector is not None:
                collector.close()


def verdict_figures(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Videos and sampled frames, mean per-stage times (the workers' own `timings_ms`), cache
    statuses and error codes of a set of verdicts."""
    stages: dict[str, list[float]] = {}
    for verdict in verdicts:
        for stage, ms in verdict.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
    return {
        "videos": len(verdicts),
        "frames": sum(v.frames.sampled for v in verdicts if v.frames is not None),
        "stage_mean_ms": {k: round(float(np.mean(v)), 1) for k, v in sorted(stages.items())},
        "cache": dict(Counter(v.cache or "none" for v in verdicts)),
        "errors": dict(Counter(v.error.code.value for v in verdicts if v.error is not None)),
    }


def burst_figures(submitter: Submitter, arrivals: dict[str, Arrival]) -> dict[str, Any]:
    """Throughput over the burst (first send to last verdict), end-to-end latency (queueing
    included), the workers' own service time, mean per-stage times and cache statuses."""
    verdicts = [arrival.verdict for arrival in arrivals.values()]
    sent = [submitter.sent_at[request_id] for request_id in arrivals]
    received = [arrival.received_at for arrival in arrivals.values()]
    summary = verdict_figures(verdicts)
    return {
        **summary,
        **throughput(summary["videos"], summary["frames"], max(received) - min(sent)),
        "latency": latency_summary(
            [arrivals[r].received_at - submitter.sent_at[r] for r in arrivals]
        ),
        "service": {
            f"service_{key}": value
            for key, value in latency_summary(
                [v.timings_ms.get("total", 0.0) / 1000 for v in verdicts]
            ).items()
        },
        "kafka_path_mean_ms": _kafka_path(submitter, arrivals),
    }


def _kafka_path(submitter: Submitter, arrivals: dict[str, Arrival]) -> dict[str, float]:
    """Where end-to-end time goes outside the worker's own stages (same-host clocks): from send
    to the start of processing (produce, broker, the worker's fetch and queue) and from the
    verdict's completion to its arrival here (produce, broker, this reader's fetch)."""
    to_start, to_reader = [], []
    for request_id, arrival in arrivals.items():
        completed = arrival.verdict.completed_at.timestamp()
        started = completed - arrival.verdict.timings_ms.get("total", 0.0) / 1000
        to_start.append(started - submitter.sent_wall[request_id])
        to_reader.append(arrival.received_wall - completed)
    return {
        "send_to_start_ms": round(float(np.mean(to_start)) * 1000, 1),
        "verdict_to_reader_ms": round(float(np.mean(to_reader)) * 1000, 1),
    }
