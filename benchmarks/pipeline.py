"""`pipeline`: the same videos and checkpoint through three designs, side by side.

(a) research: ffmpeg writes every 30th frame as JPEG, PIL loads them, face crops and one ResNet50
    forward per video, then the ensemble, in float32 (as the notebooks ran it);
(b) worker: `python -m worker` end to end over Kafka (submit -> verdict), real local stack, with
    its backbone compiled (`DFD_COMPILE_BACKBONE=true`);
(c) bare: face detector, backbone and heads on frames already in memory, at the worker's dtype
    and with its compiled backbone, frames pooled across videos as the worker batches them, one
    stage after the other;
(d) decode and compute: each video decoded and run through the stages in one process, one after
    the other, with the checkpoint's sampling (full decoding) and snapped to keyframes;
(e) decode only: (d) without the stages, which is what keyframe sampling changes.

Every arm also reports the share of the machine's decode ceiling it reaches (`benchmarks.ceiling`,
measured in the same run on the same clips). `--resolution` and `--gop` choose the clips.

The arms run interleaved (a, c, b, a, c, b, ...), each repeat on its own set of videos so that
the worker misses its cache every time, and the report gives each arm's median repeat: other jobs
on a shared machine come and go, and interleaving spreads them over all arms alike. Every arm also
reports the CPU seconds it used per frame (the work done, whatever share of the CPU it got).
(a) and (c) run with one torch thread and with one per core, and the ratios use the faster: on
an oversubscribed machine a multi-threaded OpenMP team on the main thread can burn several times
the CPU of one thread at its barriers (the worker computes in its batcher threads). A last arm
runs (c) uncompiled, in the worker's dtype and in float32, to show what the compilation and the
compute dtype buy on this CPU. At `--size smoke` nothing is compiled (compiling takes over a
minute per process on 2 cores, and the smoke run only checks that every arm runs), so b and c run
eager and the uncompiled arm, the same as c there, is left out.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.ceiling import ceiling_fraction, decode_ceiling
from benchmarks.context import Context, run_probe
from benchmarks.e2e import Fleet, burst_figures, fleet
from benchmarks.measure import (
    cpu_figures,
    latency_summary,
    median_run,
    ratio,
    target,
    throughput,
)
from benchmarks.report import Report
from benchmarks.services import open_services
from benchmarks.traffic import requests_for

SNAP_S = "0.5"
"""The keyframe arm's snapping tolerance (seconds): half of the 1-s sampling interval."""
MAX_BATCH_FRAMES = 256
"""The worker's default `max_batch_frames`: the pooled bare arm batches frames the same way."""
SIZES = {
    "smoke": {"videos": 2, "frames": 60, "fps": 30.0, "repeats": 1},
    "full": {"videos": 12, "frames": 300, "fps": 30.0, "repeats": 3},
}


def _probe_figures(result: dict[str, Any]) -> dict[str, Any]:
    latencies = result["latencies_s"]
    frames = int(result["frames"])
    decoded = result.get("frames_decoded")
    if decoded is not None:
        elapsed = float(result["elapsed_s"])
        decoded_rate = {"frames_decoded": decoded, "decoded_frames_per_s": round(decoded / elapsed)}
    else:
        decoded_rate = {}
    return {
        **decoded_rate,
        **throughput(len(latencies), frames, float(result["elapsed_s"])),
        **cpu_figures(result["cpu_s"], frames),
        "latency": latency_summary(latencies),
        "peak_rss_mib": result["peak_rss_mib"],
        "rss_after_load_mib": result["rss_after_load_mib"],
        "torch_threads": result["torch_threads"],
    }


def _worker_figures(workers: Fleet, videos: list[Path], tag: str) -> dict[str, Any]:
    cpu_started = workers.cpu_seconds()
    arrivals = workers.burst(requests_for(videos, f"{tag}-{uuid.uuid4().hex[:8]}"))
    cpu_ended = workers.cpu_seconds()
    figures = burst_figures(workers.submitter, arrivals)
    used = None if cpu_started is None or cpu_ended is None else cpu_ended - cpu_started
    return {**figures, **cpu_figures(used, int(figures["frames"]))}


def _load1() -> float:
    """The one-minute load average now: how busy the shared machine is as an arm starts."""
    return round(os.getloadavg()[0], 2)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median throughput (the lower middle one of an even count), plus every
    repeat's throughput, CPU per frame and load, in the order they ran."""
    return {
        **median_run(runs, "videos_per_s"),
        "repeats_videos_per_s": [run["videos_per_s"] for run in runs],
        "repeats_cpu_ms_per_frame": [run["cpu_ms_per_frame"] for run in runs],
        "repeats_load1": [run["load1"] for run in runs],
    }


def _best(results: dict[str, dict[str, Any]], prefix: str) -> str:
    """The fastest of the arms named `prefix`_t<threads> (by median videos/s)."""
    arms = [name for name in results if name.startswith(f"{prefix}_t")]
    return max(arms, key=lambda name: results[name]["videos_per_s"])


def run(ctx: Context) -> Report:
    size = SIZES[ctx.size]
    count, repeats = size["videos"], size["repeats"]
    thread_counts = sorted({1, os.cpu_count() or 1})
    compiled = ctx.size == "full"
    report = ctx.report(
        "pipeline", **size, torch_threads=thread_counts, worker_dtype=ctx.dtype, compiled=compiled
    )
    checkpoint = ctx.checkpoint()
    videos = ctx.videos(
        1 + repeats * count,
        frames=size["frames"],
        fps=size["fps"],
        seed=uuid.uuid4().int % 2**31,
    )
    warmup = videos[0]
    sets = [videos[1 + r * count : 1 + (r + 1) * count] for r in range(repeats)]
    common = ["--checkpoint", checkpoint, "--warmup", warmup]
    pooled = ["--pooled", str(MAX_BATCH_FRAMES)]
    compile_flag = ["--compile"] if compiled else []
    decoding = [*compile_flag, "--decode"]
    research, bare, worker = "a_research_fp32", f"c_bare_{ctx.dtype}_pooled", "b_worker_e2e"
    full, keyframes = "d_decode_and_compute_full", "d_decode_and_compute_keyframes"
    only_full, only_keyframes = "e_decode_only_full", "e_decode_only_keyframes"
    cores = max(thread_counts)
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def probe(arm: str, threads: int, *args: str | Path) -> None:
        load1 = _load1()
        result = run_probe(args[0], *common, "--threads", str(threads), *args[1:])
        runs[f"{arm}_t{threads}"].append(_probe_figures(result) | {"load1": load1})

    with (
        open_services(ctx.workdir, ctx.kafka, ctx.redis_url) as services,
        fleet(
            services,
            checkpoint,
            [videos[0].parent.parent],
            ctx.workdir / "logs",
            compile_backbone=str(compiled).lower(),
        ) as workers,
    ):
        workers.burst(requests_for([warmup], f"warmup-{uuid.uuid4().hex[:8]}"))
        for index, timed in enumerate(sets):
            for threads in thread_counts:
                scratch = ctx.workdir / f"jpeg{index}-{threads}"
                probe(research, threads, "research", "--scratch", scratch, *timed)
            for threads in thread_counts:
                probe(bare, threads, "bare", *pooled, *compile_flag, *timed)
            probe(full, cores, "bare", *decoding, *timed)
            probe(keyframes, cores, "bare", *decoding, "--keyframes", SNAP_S, *timed)
            probe(only_full, cores, "bare", "--decode", "--decode-only", *timed)
            probe(
                only_keyframes,
                cores,
                "bare",
                "--decode",
                "--decode-only",
                "--keyframes",
                SNAP_S,
                *timed,
            )
            load1 = _load1()
            runs[worker].append(_worker_figures(workers, timed, f"p{index}") | {"load1": load1})
        workers_rss = workers.peak_rss_mib()
    if compiled:
        for threads in thread_counts:
            probe(f"c_bare_{ctx.dtype}_pooled_eager", threads, "bare", *pooled, *sets[0])
    if ctx.dtype != "float32":
        for threads in thread_counts:
            probe(
                "c_bare_float32_pooled_eager",
                threads,
                "bare",
                *pooled,
                "--dtype",
                "float32",
                *sets[0],
            )
    for arm, arm_runs in runs.items():
        report.results[arm] = _median_run(arm_runs)
    report.results[worker]["peak_rss_mib"] = workers_rss
    ceiling = decode_ceiling(sets[0])
    report.config["decode_ceiling"] = ceiling
    for figures in report.results.values():
        video_frames_per_s = figures["videos_per_s"] * size["frames"]
        figures["video_frames_per_s"] = round(video_frames_per_s, 1)
        figures["decode_ceiling_fraction"] = ceiling_fraction(video_frames_per_s, ceiling)

    best_a, best_c = _best(report.results, research), _best(report.results, bare)
    a, b, c = (report.results[arm]["videos_per_s"] for arm in (best_a, worker, best_c))
    report.ratios = {
        "b/a videos_per_s": ratio(b, a),
        "b/c videos_per_s": ratio(b, c),
        "c/b cpu_ms_per_frame": ratio(
            report.results[best_c]["cpu_ms_per_frame"],
            report.results[worker]["cpu_ms_per_frame"],
        ),
    }
    eager_arm = f"c_bare_{ctx.dtype}_pooled_eager" if compiled else bare
    eager = report.results[_best(report.results, eager_arm)]
    if compiled:
        report.ratios["compiled/eager bare pooled videos_per_s"] = ratio(c, eager["videos_per_s"])
    if ctx.dtype != "float32":
        fp32 = report.results[_best(report.results, "c_bare_float32_pooled_eager")]
        report.ratios[f"{ctx.dtype}/float32 bare pooled eager videos_per_s"] = ratio(
            eager["videos_per_s"], fp32["videos_per_s"]
        )
    d_full, d_key = (report.results[_best(report.results, arm)] for arm in (full, keyframes))
    report.ratios["d keyframes/full videos_per_s"] = ratio(
        d_key["videos_per_s"], d_full["videos_per_s"]
    )
    e_full, e_key = (
        report.results[_best(report.results, arm)] for arm in (only_full, only_keyframes)
    )
    report.ratios["e keyframes/full videos_per_s"] = ratio(
        e_key["videos_per_s"], e_full["videos_per_s"]
    )
    report.ratios["b/d_full cpu_ms_per_frame"] = ratio(
        report.results[worker]["cpu_ms_per_frame"], d_full["cpu_ms_per_frame"]
    )
    report.targets = [
        target("worker e2e / bare compute (videos/s)", report.ratios["b/c videos_per_s"], 0.85),
        target("worker / research-style (videos/s)", report.ratios["b/a videos_per_s"], 3.0),
        target(
            "keyframe / full-decode sampling, decode and compute (videos/s)",
            report.ratios["d keyframes/full videos_per_s"],
            2.0,
        ),
        target(
            "keyframe / full-decode sampling, decode only (videos/s)",
            report.ratios["e keyframes/full videos_per_s"],
            2.0,
        ),
        target(
            "worker / decode+compute in one process (CPU ms per sampled frame)",
            report.ratios["b/d_full cpu_ms_per_frame"],
            1.15,
            higher_is_better=False,
        ),
    ]
    for index, figures in enumerate(runs[worker]):
        if figures["cache"] != {"miss": count}:
            report.failures.append(
                f"worker repeat {index} expected only cache misses, got {figures['cache']}"
            )
        if figures["errors"]:
            report.failures.append(
                f"worker repeat {index} returned error verdicts: {figures['errors']}"
            )
    compilation = (
        "b and c compile the backbone (torch.compile, inductor, frozen weights), a runs eager as "
        "the notebooks did"
        if compiled
        else "nothing is compiled at smoke size (b, c and d run eager)"
    )
    report.notes.append(
        f"model {ctx.model!r}: random-init backbone (the O-net's own weights with `onet`) and "
        f"members (timing only: same compute as trained weights); {compilation}; "
        f"each arm's median of {repeats} interleaved repeats (repeats_* list them all); "
        "a and c run with 1 torch thread and with one per core (_t<n>), and the ratios use the "
        "faster of the two; "
        "b latency is submit->verdict with all videos submitted at once (queueing included), "
        "a/c latencies are per-video service times; see b's service_* and stage_mean_ms; "
        "cpu_ms_per_frame counts every thread of the arm's process (a: and ffmpeg); "
        "d decodes and computes one video after the other in one process (decode timed, "
        f"{'compiled' if compiled else 'eager'} backbone, {cores} torch threads), with the "
        "checkpoint's sampling (full: every frame decoded) and snapped to keyframes within "
        f"{SNAP_S} s; e is d without the faces, backbone and heads; "
        "video_frames_per_s = videos/s x frames per clip, decode_ceiling_fraction = that / "
        "config.decode_ceiling.frames_per_s (every core decoding the first set's clips, plus "
        "NVDEC where present)"
    )
    return report
