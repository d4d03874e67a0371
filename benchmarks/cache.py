"""`cache`: the same videos twice through one worker: feature-cache misses, then hits.

Latency is measured one request at a time (no queueing), throughput with all videos at once
(a second set of videos, so that its first pass misses too).
"""

from __future__ import annotations

import uuid

from benchmarks.assets import synth_videos
from benchmarks.context import Context
from benchmarks.e2e import burst_figures, fleet
from benchmarks.measure import ratio, target
from benchmarks.report import Report
from benchmarks.services import open_services
from benchmarks.traffic import requests_for

SIZES = {
    "smoke": {"videos": 2, "frames": 60, "fps": 30.0},
    "full": {"videos": 8, "frames": 300, "fps": 30.0},
}


def run(ctx: Context) -> Report:
    size = SIZES[ctx.size]
    report = ctx.report("cache", **size, worker_dtype=ctx.dtype)
    checkpoint = ctx.checkpoint()
    videos = synth_videos(
        ctx.workdir / "videos",
        2 * size["videos"] + 1,
        frames=size["frames"],
        fps=size["fps"],
        seed=uuid.uuid4().int % 2**31,
    )
    warmup, latency_set, burst_set = (
        videos[0],
        videos[1 : 1 + size["videos"]],
        videos[1 + size["videos"] :],
    )
    run_id = uuid.uuid4().hex[:8]
    with (
        open_services(ctx.workdir, ctx.kafka, ctx.redis_url) as services,
        fleet(services, checkpoint, [videos[0].parent.parent], ctx.workdir / "logs") as workers,
    ):
        workers.burst(requests_for([warmup], f"warmup-{run_id}"))
        for phase in ("miss", "hit"):
            arrivals = workers.one_by_one(requests_for(latency_set, f"lat-{phase}-{run_id}"))
            report.results[f"{phase}_one_by_one"] = burst_figures(workers.submitter, arrivals)
            arrivals = workers.burst(requests_for(burst_set, f"burst-{phase}-{run_id}"))
            report.results[f"{phase}_burst"] = burst_figures(workers.submitter, arrivals)
        peak = workers.peak_rss_mib()
    for name, figures in report.results.items():
        figures["peak_rss_mib"] = peak
        expected = {name.split("_")[0]: figures["videos"]}
        if figures["cache"] != expected:
            report.failures.append(
                f"{name}: expected cache statuses {expected}, got {figures['cache']}"
            )
    miss, hit = report.results["miss_one_by_one"], report.results["hit_one_by_one"]
    report.ratios = {
        "miss/hit p50 latency": ratio(miss["latency"]["p50_ms"], hit["latency"]["p50_ms"]),
        "hit/miss burst videos_per_s": ratio(
            report.results["hit_burst"]["videos_per_s"],
            report.results["miss_burst"]["videos_per_s"],
        ),
    }
    report.targets = [
        target("cache hit p50 lower than miss (x)", report.ratios["miss/hit p50 latency"], 20.0)
    ]
    report.notes.append("latency = submit -> verdict over Kafka, one request at a time")
    return report
