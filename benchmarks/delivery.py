"""`delivery`: at-least-once and exactly-once workers side by side, in one run (issue 15).

Two one-worker fleets on the same stack, checkpoint and Redis, one per `DFD_DELIVERY` mode,
measured interleaved (at-least-once first in even repeats, exactly-once first in odd ones):
- the `pipeline` figure: videos/s of a burst of uncached videos (each mode and repeat its own
  videos, so every one misses the cache);
- the `cache` figure: the verdict latency of cache hits, one request at a time (submit -> verdict
  read by a `read_committed` reader), where the exactly-once commit cadence shows most.
The exactly-once worker commits on its default cadence (`DFD_TRANSACTION_INTERVAL_MS=100`).
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from typing import Any

from benchmarks.assets import synth_videos
from benchmarks.context import Context
from benchmarks.e2e import burst_figures, fleet
from benchmarks.measure import latency_summary, median_run, ratio, target
from benchmarks.report import Report
from benchmarks.services import open_services
from benchmarks.traffic import requests_for

MODES = ("at-least-once", "exactly-once")
TRANSACTION_INTERVAL_MS = 100
SIZES = {
    "smoke": {"videos": 2, "frames": 60, "fps": 30.0, "repeats": 1, "hits": 5},
    "full": {"videos": 6, "frames": 90, "fps": 30.0, "repeats": 3, "hits": 20},
}


def run(ctx: Context) -> Report:
    size = SIZES[ctx.size]
    count, repeats = size["videos"], size["repeats"]
    report = ctx.report(
        "delivery", **size, worker_dtype=ctx.dtype, transaction_interval_ms=TRANSACTION_INTERVAL_MS
    )
    checkpoint = ctx.checkpoint()
    videos = synth_videos(
        ctx.workdir / "videos",
        1 + len(MODES) * repeats * count,
        frames=size["frames"],
        fps=size["fps"],
        seed=uuid.uuid4().int % 2**31,
    )
    warmup, fresh = videos[0], iter(videos[1:])
    sets = {(m, r): [next(fresh) for _ in range(count)] for r in range(repeats) for m in MODES}
    run_id = uuid.uuid4().hex[:8]
    roots = [warmup.parent.parent]
    bursts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    hit_latencies: dict[str, list[float]] = defaultdict(list)
    hit_cache: dict[str, Counter[str]] = defaultdict(Counter)
    with (
        open_services(ctx.workdir, ctx.kafka, ctx.redis_url) as services,
        fleet(services, checkpoint, roots, ctx.workdir / "logs-alo", delivery=MODES[0]) as alo,
        fleet(services, checkpoint, roots, ctx.workdir / "logs-eos", delivery=MODES[1]) as eos,
    ):
        fleets = dict(zip(MODES, (alo, eos), strict=True))
        for mode, workers in fleets.items():
            workers.burst(requests_for([warmup], f"warmup-{mode}-{run_id}"))
        for repeat in range(repeats):
            for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
                workers, tag = fleets[mode], f"{mode}-{repeat}-{run_id}"
                arrivals = workers.burst(requests_for(sets[mode, repeat], f"burst-{tag}"))
                bursts[mode].append(burst_figures(workers.submitter, arrivals))
                arrivals = workers.one_by_one(requests_for([warmup] * size["hits"], f"hit-{tag}"))
                sent = workers.submitter.sent_at
                hit_latencies[mode] += [a.received_at - sent[r] for r, a in arrivals.items()]
                hit_cache[mode].update(a.verdict.cache or "none" for a in arrivals.values())
    for mode in MODES:
        report.results[f"{mode}_burst"] = median_run(bursts[mode], "videos_per_s") | {
            "repeats_videos_per_s": [b["videos_per_s"] for b in bursts[mode]]
        }
        report.results[f"{mode}_hit_one_by_one"] = {
            "latency": latency_summary(hit_latencies[mode]),
            "cache": dict(hit_cache[mode]),
        }
        if any(b["cache"] != {"miss": count} for b in bursts[mode]):
            report.failures.append(f"{mode}: a burst was not all cache misses")
        if set(hit_cache[mode]) != {"hit"}:
            report.failures.append(f"{mode}: hits were not all cache hits: {hit_cache[mode]}")
    alo_burst, eos_burst = (report.results[f"{m}_burst"]["videos_per_s"] for m in MODES)
    alo_p50, eos_p50 = (report.results[f"{m}_hit_one_by_one"]["latency"]["p50_ms"] for m in MODES)
    report.ratios = {
        "exactly-once/at-least-once burst videos_per_s": ratio(eos_burst, alo_burst),
        "exactly-once - at-least-once cache-hit p50 ms": round(eos_p50 - alo_p50, 1),
    }
    report.targets = [
        target(
            "exactly-once throughput cost (videos/s ratio)",
            report.ratios["exactly-once/at-least-once burst videos_per_s"],
            0.9,
        ),
        target(
            "exactly-once cache-hit p50 cost (ms)",
            report.ratios["exactly-once - at-least-once cache-hit p50 ms"],
            TRANSACTION_INTERVAL_MS + 20.0,
            higher_is_better=False,
        ),
    ]
    report.notes.append(
        "one worker per mode, both running; bursts: median of the interleaved repeats; "
        "hit latency: every one-by-one request of every repeat"
    )
    return report
