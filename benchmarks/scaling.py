"""`scaling`: one worker against two on a 4-partition topic, each worker with one torch thread.

Each phase uses fresh worker processes with their in-process cache (no Redis), so every request
misses; requests are spread round-robin over the partitions.
"""

from __future__ import annotations

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
            report.results[f"{count}_worker{'s' if count > 1 else ''}"] = figures
    one, two = report.results["1_worker"], report.results["2_workers"]
    report.ratios = {"2/1 videos_per_s": ratio(two["videos_per_s"], one["videos_per_s"])}
    report.targets = [
        target("two workers / one (videos/s)", report.ratios["2/1 videos_per_s"], 1.7)
    ]
    report.notes.append(
        f"{report.machine['cores']} cores: two one-thread workers can use at most "
        f"{min(2, report.machine['cores'] or 1)} cores"
    )
    return report
