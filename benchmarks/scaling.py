"""`scaling`: one worker against two on a 4-partition topic, each worker with one torch thread.

Two pairs of phases: the workers free to use every core, and each worker pinned to a core of its
own (worker i on core i). Unpinned, one worker already spreads its decode, face and backbone
threads over every core, so on a machine with few cores a second worker finds none left; pinned,
each worker has the same one-core budget, which measures whether the design itself (consumer
group, partitions, broker, cache) scales. Each phase uses fresh worker processes with their
in-process cache (no Redis), so every request misses; requests are spread round-robin over the
partitions.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter

from benchmarks.assets import synth_videos
from benchmarks.context import Context
from benchmarks.e2e import burst_figures, fleet
from benchmarks.measure import ratio, target
from benchmarks.report import Report
from benchmarks.services import open_services
from benchmarks.traffic import requests_for

PARTITIONS = 4
SIZES = {
    "smoke": {"videos": 8, "frames": 60, "fps": 30.0},
    "full": {"videos": 16, "frames": 300, "fps": 30.0},
}


def run(ctx: Context) -> Report:
    size = SIZES[ctx.size]
    report = ctx.report("scaling", **size, partitions=PARTITIONS, torch_threads_per_worker=1)
    checkpoint = ctx.checkpoint()
    videos = synth_videos(
        ctx.workdir / "videos",
        size["videos"] + 1,
        frames=size["frames"],
        fps=size["fps"],
        seed=uuid.uuid4().int % 2**31,
    )
    warmup, timed = videos[0], videos[1:]
    with open_services(ctx.workdir, ctx.kafka, ctx.redis_url) as services:
        for pinned in (False, True):
            for count in (1, 2):
                run_id = uuid.uuid4().hex[:8]
                with fleet(
                    services,
                    checkpoint,
                    [warmup.parent.parent],
                    ctx.workdir / "logs",
                    workers=count,
                    partitions=PARTITIONS,
                    torch_threads=1,
                    use_redis=False,
                    pin_cores=pinned,
                    decode_workers="1",
                    decode_threads="1",
                ) as workers:
                    for partition in range(PARTITIONS):  # warm every worker up
                        workers.burst(requests_for([warmup], f"warmup-{partition}-{run_id}"))
                    arrivals = workers.burst(requests_for(timed, f"scaling-{count}-{run_id}"))
                    figures = burst_figures(workers.submitter, arrivals)
                    figures["peak_rss_mib"] = workers.peak_rss_mib()
                    figures["per_worker"] = dict(
                        Counter(a.verdict.worker_id for a in arrivals.values())
                    )
                    figures["cores"] = {
                        w.name: sorted(os.sched_getaffinity(w.pid)) for w in workers.workers
                    }
                report.results[_arm(count, pinned)] = figures
    for arm in (_arm(1, True), _arm(2, True)):
        cores = list(report.results[arm]["cores"].values())
        if not _pinned_apart(cores, len(os.sched_getaffinity(0))):
            report.failures.append(f"{arm}: workers were not pinned to distinct cores: {cores}")
    report.ratios = {
        f"2/1 videos_per_s{suffix}": ratio(
            report.results[_arm(2, pinned)]["videos_per_s"],
            report.results[_arm(1, pinned)]["videos_per_s"],
        )
        for pinned, suffix in ((False, ""), (True, ", one core each"))
    }
    report.targets = [
        target(
            "two workers / one, one core each (videos/s)",
            report.ratios["2/1 videos_per_s, one core each"],
            1.7,
        )
    ]
    report.notes.append(
        f"{report.machine['cores']} cores: unpinned, two one-thread workers share them with each "
        "other (and with Kafka, Redis and this process); pinned (taskset), worker i owns core i "
        "and the broker, Redis and this process float"
    )
    return report


def _pinned_apart(cores: list[list[int]], available: int) -> bool:
    """Each worker on exactly one core, and on different cores while there are enough."""
    return all(len(own) == 1 for own in cores) and (
        len({own[0] for own in cores}) == min(len(cores), available)
    )


def _arm(count: int, pinned: bool) -> str:
    workers = f"{count}_worker{'s' if count > 1 else ''}"
    return f"{workers}_one_core_each" if pinned else workers
