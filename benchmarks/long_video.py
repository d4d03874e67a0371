"""`long-video`: time and peak RSS of the decode + pipeline process on a 1-minute and a 60-minute
video (128x128, 32 fps, 8 s keyframe interval). Both sample the same number of frames (every 30th,
at most 64), so any growth of memory with length would come from decoding.

The 60-minute video is a 10-second clip looped by remuxing (seconds to make, no re-encoding).
"""

from __future__ import annotations

import os
import uuid

from benchmarks.assets import face_segment, loop_video
from benchmarks.context import Context, run_probe
from benchmarks.measure import ratio, target
from benchmarks.report import Report

SEGMENT_S = 10
FPS = 32
SIZE = 128
GOP = 256
LENGTHS_MIN = (1, 60)


def run(ctx: Context) -> Report:
    report = ctx.report("long-video", fps=FPS, size=f"{SIZE}x{SIZE}", gop=GOP, segment_s=SEGMENT_S)
    checkpoint = ctx.checkpoint()
    segment = face_segment(
        ctx.workdir / "segment.mp4",
        seconds=SEGMENT_S,
        fps=FPS,
        size=SIZE,
        gop=GOP,
        seed=uuid.uuid4().int % 2**31,
    )
    for minutes in LENGTHS_MIN:
        video = loop_video(segment, ctx.workdir / f"{minutes}min.mp4", minutes * 60 // SEGMENT_S)
        result = run_probe(
            "predict", "--checkpoint", checkpoint, "--threads", str(os.cpu_count() or 1), video
        )
        report.results[f"{minutes}_min"] = {
            "videos": 1,
            "frames": result["frames"],
            "elapsed_s": round(result["elapsed_s"], 3),
            "bytes": video.stat().st_size,
            "last_timestamp_s": result["last_timestamp_s"],
            "rss_after_load_mib": result["rss_after_load_mib"],
            "peak_rss_mib": result["peak_rss_mib"],
            "peak_growth_mib": round(result["peak_rss_mib"] - result["rss_after_load_mib"], 1),
        }
    short, long = report.results["1_min"], report.results["60_min"]
    report.ratios = {
        "60/1 peak_rss": ratio(long["peak_rss_mib"], short["peak_rss_mib"]),
        "60/1 elapsed": ratio(long["elapsed_s"], short["elapsed_s"]),
    }
    report.targets = [
        target(
            "60-min / 1-min peak RSS", report.ratios["60/1 peak_rss"], 1.10, higher_is_better=False
        )
    ]
    if short["frames"] != long["frames"]:
        report.notes.append(f"sampled frames differ: {short['frames']} vs {long['frames']}")
    report.notes.append("one process per video: `python -m benchmarks.probe predict`")
    return report
