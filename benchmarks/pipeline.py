"""`pipeline`: the same videos and checkpoint through three designs, side by side.

(a) research: ffmpeg writes every 30th frame as JPEG, PIL loads them, face crops and one ResNet50
    forward per video, then the ensemble, in float32 (as the notebooks ran it);
(b) worker: `python -m worker` end to end over Kafka (submit -> verdict), real local stack;
(c) bare: face detector, backbone and heads on frames already in memory, at the worker's dtype,
    per video and with frames pooled across videos as the worker batches them (b/c uses the
    faster of the two).
A fourth arm runs (c) in float32 to show what the compute dtype buys on this CPU.
"""

from __future__ import annotations

import os
import uuid

from benchmarks.assets import synth_videos
from benchmarks.context import Context, run_probe
from benchmarks.e2e import burst_figures, fleet
from benchmarks.measure import latency_summary, ratio, target, throughput
from benchmarks.report import Report
from benchmarks.services import open_services
from benchmarks.traffic import requests_for

MAX_BATCH_FRAMES = 256
"""The worker's default `max_batch_frames`: the pooled bare arm batches frames the same way."""
SIZES = {
    "smoke": {"videos": 2, "frames": 60, "fps": 30.0},
    "full": {"videos": 12, "frames": 300, "fps": 30.0},
}


def _probe_figures(result: dict[str, object]) -> dict[str, object]:
    latencies = result["latencies_s"]
    assert isinstance(latencies, list)
    return {
        **throughput(len(latencies), int(result["frames"]), float(result["elapsed_s"])),  # type: ignore[arg-type]
        "latency": latency_summary(latencies),
        "peak_rss_mib": result["peak_rss_mib"],
        "rss_after_load_mib": result["rss_after_load_mib"],
        "torch_threads": result["torch_threads"],
    }


def run(ctx: Context) -> Report:
    size = SIZES[ctx.size]
    threads = os.cpu_count() or 1
    report = ctx.report("pipeline", **size, torch_threads=threads, worker_dtype=ctx.dtype)
    checkpoint = ctx.checkpoint()
    videos = synth_videos(
        ctx.workdir / "videos",
        size["videos"] + 1,
        frames=size["frames"],
        fps=size["fps"],
        seed=uuid.uuid4().int % 2**31,
    )
    warmup, timed = videos[0], videos[1:]
    common = ["--checkpoint", checkpoint, "--threads", str(threads), "--warmup", warmup]
    research = run_probe("research", *common, "--scratch", ctx.workdir / "jpeg", *timed)
    report.results["a_research_fp32"] = _probe_figures(research)
    bare = run_probe("bare", *common, *timed)
    report.results[f"c_bare_{ctx.dtype}"] = _probe_figures(bare)
    pooled = run_probe("bare", *common, "--pooled", str(MAX_BATCH_FRAMES), *timed)
    report.results[f"c_bare_{ctx.dtype}_pooled"] = _probe_figures(pooled)
    if ctx.dtype != "float32":
        bare_fp32 = run_probe("bare", *common, "--dtype", "float32", *timed)
        report.results["c_bare_float32"] = _probe_figures(bare_fp32)

    with (
        open_services(ctx.workdir, ctx.kafka, ctx.redis_url) as services,
        fleet(services, checkpoint, [videos[0].parent.parent], ctx.workdir / "logs") as workers,
    ):
        workers.burst(requests_for([warmup], f"warmup-{uuid.uuid4().hex[:8]}"))
        arrivals = workers.burst(requests_for(timed, f"pipeline-{uuid.uuid4().hex[:8]}"))
        worker = burst_figures(workers.submitter, arrivals)
        worker["peak_rss_mib"] = workers.peak_rss_mib()
    report.results["b_worker_e2e"] = worker

    a = report.results["a_research_fp32"]["videos_per_s"]
    b = worker["videos_per_s"]
    c = max(
        report.results[f"c_bare_{ctx.dtype}"]["videos_per_s"],
        report.results[f"c_bare_{ctx.dtype}_pooled"]["videos_per_s"],
    )
    report.ratios = {"b/a videos_per_s": ratio(b, a), "b/c videos_per_s": ratio(b, c)}
    if ctx.dtype != "float32":
        report.ratios[f"{ctx.dtype}/float32 bare videos_per_s"] = ratio(
            c, report.results["c_bare_float32"]["videos_per_s"]
        )
    report.targets = [
        target("worker e2e / bare compute (videos/s)", report.ratios["b/c videos_per_s"], 0.85),
        target("worker / research-style (videos/s)", report.ratios["b/a videos_per_s"], 3.0),
    ]
    if worker["cache"] != {"miss": len(timed)}:
        report.failures.append(f"worker arm expected only cache misses, got {worker['cache']}")
    if worker["errors"]:
        report.failures.append(f"worker arm returned error verdicts: {worker['errors']}")
    report.notes.append(
        "random-init ResNet50/members (timing only: same compute as trained weights); "
        "b latency is submit->verdict with all videos submitted at once (queueing included), "
        "a/c latencies are per-video service times; see b's service_* and stage_mean_ms"
    )
    return report
