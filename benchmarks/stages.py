"""`stages`: where a video's time goes, stage by stage, on `--device` (cpu or cuda), and how close
the worker's processing path comes to its slowest stage.

Each stage runs alone on the same videos, after a warm-up, `repeats` times (the median counts);
CUDA work is synchronised before a clock stops:
- decode: decoding and sampling (the detector's decoder: PyAV, or NVDEC on CUDA with
  PyNvVideoCodec installed), one video per thread, at the worker's settings (`decode_workers`
  videos at once, `decode_threads` codec threads each; arm `WxT`), with one video per core, one
  codec thread each, and at the worker's settings with the samples snapped to keyframes
  (`WxT_keyframes`, `SamplingSpec.keyframes` with its default tolerance);
- faces: MTCNN face crops of the sampled frames, pooled up to `max_batch_frames`;
- embed: the backbone on those crops, in batches of `max_batch_frames`: as the worker runs it
  (compiled at `--size full`, in the checkpoint's dtype), eager in that dtype, eager in float32;
- classify: the ensemble on batches of `classify_batch` videos.
Then `worker`: the worker's own processing path (`load_detector`, `warm_up`, `VideoProcessor` with
its decode slots, dynamic batchers and in-process cache; every request a miss), all requests in
flight at once up to `max_inflight`, with the same two decode settings. No broker: `pipeline`
measures the Kafka path end to end.

Each decode and worker arm also reports the share of the machine's decode ceiling it reaches
(`benchmarks.ceiling`: every core decoding the same clips, plus NVDEC where present, measured in
the same run): decoded frames/s for decode arms, videos/s x frames per clip for worker arms.
`--resolution` and `--gop` choose the clips; `--device cuda` with `DFD_DECODER`-style selection
(`auto`) decodes the worker arms on NVDEC where PyNvVideoCodec is installed.

The worker overlaps its stages (decode threads, the face and backbone batcher threads), so its
bound is the slowest stage's frames/s; run one after another, the stages would give the harmonic
sum ("serial bound").
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

from benchmarks.ceiling import ceiling_fraction, decode_ceiling
from benchmarks.context import Context
from benchmarks.e2e import verdict_figures
from benchmarks.measure import latency_summary, median_run, peak_rss_mib, ratio, throughput
from benchmarks.probe import load_detector as probe_detector
from benchmarks.report import Report
from benchmarks.traffic import requests_for
from models.pipeline import Detector
from models.spec import KeyframeSnap, SamplingSpec
from models.stages import VideoFaces
from models.video import DecodedVideo
from worker.app import build_cache, load_detector, processing_settings, source_policy, warm_up
from worker.metrics import Metrics
from worker.processing import VideoProcessor
from worker.settings import WorkerSettings

T = TypeVar("T")

SIZES = {
    "smoke": {"videos": 2, "frames": 60, "fps": 30.0, "repeats": 1},
    "full": {"videos": 96, "frames": 300, "fps": 30.0, "repeats": 3},
}


def _timed(device: torch.device, work: Callable[[], T]) -> tuple[float, T]:
    """Seconds `work` takes, queued CUDA work included, and what it returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def _median_seconds(device: torch.device, work: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The median seconds of `repeats` runs after a warm-up run (first CUDA kernels, allocator,
    caches), and the last run's result."""
    work()
    runs = [_timed(device, work) for _ in range(repeats)]
    return statistics.median(seconds for seconds, _ in runs), runs[-1][1]


def _rate(frames: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "frames": frames,
        "elapsed_s": round(seconds, 4),
        "frames_per_s": round(frames / seconds, 1) if seconds > 0 else None,
        **extra,
    }


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _decode_configs(settings: WorkerSettings) -> dict[str, WorkerSettings]:
    """The worker's decode settings, and one video per core with one codec thread each, by
    `<videos at once>x<codec threads>`."""
    cores = os.cpu_count() or 1
    configs = {f"{settings.decode_workers}x{settings.decode_threads}": settings}
    configs.setdefault(
        f"{cores}x1", settings.model_copy(update={"decode_workers": cores, "decode_threads": 1})
    )
    return configs


def _decode_all(
    detector: Detector,
    videos: Sequence[Path],
    settings: WorkerSettings,
    sampling: SamplingSpec | None = None,
) -> list[DecodedVideo]:
    """The videos decoded by the detector's decoder, with its spec's sampling or `sampling`."""
    chosen = sampling or detector.spec.sampling

    def decode(video: Path) -> DecodedVideo:
        return detector.frame_decoder.decode(
            video, chosen, detector.decode_limits, threads=settings.decode_threads
        )

    with ThreadPoolExecutor(settings.decode_workers) as pool:
        return list(pool.map(decode, videos))


def _faces(detector: Detector, videos: Sequence[DecodedVideo], batch: int) -> list[VideoFaces]:
    """Faces detected in batches of frames pooled from the videos, then cut and kept per video."""
    frames = [frame for video in videos for frame in video.frames]
    found = [d for chunk in _chunks(frames, batch) for d in detector.detect_faces(chunk)]
    faces, offset = [], 0
    for video in videos:
        span = found[offset : offset + len(video.frames)]
        faces.append(detector.faces_from(span, video.timestamps_s))
        offset += len(video.frames)
    return faces


def _embed(detector: Detector, crops: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([detector.embed(crops[i : i + batch]) for i in range(0, len(crops), batch)])


def _stage_results(
    detector: Detector,
    variants: dict[str, Detector],
    settings: WorkerSettings,
    videos: list[Path],
    repeats: int,
) -> dict[str, dict[str, Any]]:
    """Each stage alone on the same videos (see the module docstring)."""
    device = detector.device
    results: dict[str, dict[str, Any]] = {}
    for name, config in _decode_configs(settings).items():
        seconds, decoded = _median_seconds(
            device, lambda c=config: _decode_all(detector, videos, c), repeats
        )
        results[f"decode_{name}"] = _rate(
            sum(len(video.frames) for video in decoded),
            seconds,
            videos=len(videos),
            decoded_frames_per_s=round(sum(v.frames_decoded for v in decoded) / seconds),
        )
    default = next(iter(_decode_configs(settings)))
    snapped = detector.spec.sampling.model_copy(update={"keyframes": KeyframeSnap()})
    seconds, keyframed = _median_seconds(
        device, lambda: _decode_all(detector, videos, settings, snapped), repeats
    )
    results[f"decode_{default}_keyframes"] = _rate(
        sum(len(video.frames) for video in keyframed),
        seconds,
        videos=len(videos),
        decoded_frames_per_s=round(sum(v.frames_decoded for v in keyframed) / seconds),
    )
    frames = sum(len(video.frames) for video in decoded)
    batch = settings.max_batch_frames
    seconds, faces = _median_seconds(device, lambda: _faces(detector, decoded, batch), repeats)
    crops = torch.cat([video_faces.kept_crops for video_faces in faces])
    results["faces"] = _rate(frames, seconds)
    for name, variant in variants.items():
        seconds, _ = _median_seconds(device, lambda v=variant: _embed(v, crops, batch), repeats)
        results[f"embed_{name}"] = _rate(len(crops), seconds)
    rows = _embed(detector, crops, batch).split([len(video_faces.kept) for video_faces in faces])
    features = [
        detector.features_from(video_faces, row)
        for video_faces, row in zip(faces, rows, strict=True)
    ]
    seconds, _ = _median_seconds(
        device,
        lambda: [detector.classify(part) for part in _chunks(features, settings.classify_batch)],
        repeats,
    )
    results["classify"] = _rate(frames, seconds, videos=len(videos))
    return results


def _worker_run(
    detector: Detector, settings: WorkerSettings, videos: list[Path], tag: str
) -> dict[str, Any]:
    """All requests through a fresh `VideoProcessor` (fresh cache: all misses), at most
    `max_inflight` at a time, as the consumer feeds it."""
    metrics = Metrics()
    processor = VideoProcessor(
        detector,
        build_cache(settings, metrics),
        source_policy(settings),
        metrics,
        processing_settings(settings),
    )
    requests = requests_for(videos, f"{tag}-{uuid.uuid4().hex[:8]}")
    latencies: list[float] = []

    def serve(request: Any) -> Any:
        started = time.perf_counter()
        verdict = processor.process(request)
        latencies.append(time.perf_counter() - started)
        return verdict

    try:
        elapsed = -time.perf_counter()
        with ThreadPoolExecutor(settings.max_inflight) as pool:
            verdicts = list(pool.map(serve, requests))
        elapsed += time.perf_counter()
    finally:
        processor.close()
    summary = verdict_figures(verdicts)
    return {
        **summary,
        **throughput(summary["videos"], summary["frames"], elapsed),
        "latency": latency_summary(latencies),
    }


def _worker_results(
    detector: Detector, settings: WorkerSettings, videos: list[Path], repeats: int
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, config in _decode_configs(settings).items():
        _worker_run(detector, config, videos, "warmup")
        runs = [_worker_run(detector, config, videos, f"r{r}") for r in range(repeats)]
        results[f"worker_{name}"] = median_run(runs, "frames_per_s") | {
            "repeats_frames_per_s": [run["frames_per_s"] for run in runs]
        }
    return results


def run(ctx: Context) -> Report:
    size = SIZES[ctx.size]
    compiled = ctx.size == "full"
    report = ctx.report("stages", **size, device=ctx.device, dtype=ctx.dtype, compiled=compiled)
    checkpoint = ctx.checkpoint()
    videos = ctx.videos(
        size["videos"],
        frames=size["frames"],
        fps=size["fps"],
        seed=uuid.uuid4().int % 2**31,
    )
    settings = WorkerSettings(
        checkpoint=checkpoint,
        device=ctx.device,
        compile_backbone=compiled,
        redis_url=None,
        allowed_roots=[videos[0].parent.parent],
        log_format="text",
    )
    detector = load_detector(settings)
    report.config["warm_up_s"] = round(warm_up(detector), 2)
    report.config["decoder"] = detector.frame_decoder.kind
    report.config["worker_settings"] = settings.model_dump(
        include={"max_batch_frames", "max_wait_ms", "classify_batch", "max_inflight"}
    )
    worker_arm = f"{'compiled' if compiled else 'eager'}_{ctx.dtype}"
    variants = {worker_arm: detector}
    variants |= {
        f"eager_{dtype}": probe_detector(checkpoint, dtype, device=ctx.device)
        for dtype in dict.fromkeys((ctx.dtype, "float32"))
        if f"eager_{dtype}" != worker_arm
    }
    stages = _stage_results(detector, variants, settings, videos, size["repeats"])
    report.results |= stages
    report.results |= _worker_results(detector, settings, videos, size["repeats"])
    ceiling = decode_ceiling(videos)
    report.config["decode_ceiling"] = ceiling
    for name, figures in report.results.items():
        if name.startswith("decode_"):
            figures["decode_ceiling_fraction"] = ceiling_fraction(
                figures["decoded_frames_per_s"], ceiling
            )
        elif name.startswith("worker_"):
            video_frames_per_s = figures["videos_per_s"] * size["frames"]
            figures["video_frames_per_s"] = round(video_frames_per_s, 1)
            figures["decode_ceiling_fraction"] = ceiling_fraction(video_frames_per_s, ceiling)
    report.config["peak_rss_mib"] = peak_rss_mib()
    if detector.device.type == "cuda":
        report.config["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)

    default = next(iter(_decode_configs(settings)))
    pipeline = {
        "decode": stages[f"decode_{default}"],
        "faces": stages["faces"],
        f"embed_{worker_arm}": stages[f"embed_{worker_arm}"],
        "classify": stages["classify"],
    }
    rates = {name: figures["frames_per_s"] for name, figures in pipeline.items()}
    limiting = min(rates, key=lambda name: rates[name])
    serial = 1 / sum(1 / rate for rate in rates.values())
    worker = report.results[f"worker_{default}"]["frames_per_s"]
    report.config["limiting_stage"] = limiting
    keyframes = stages[f"decode_{default}_keyframes"]
    report.ratios = {
        "decode keyframes / full (videos/s)": ratio(
            stages[f"decode_{default}"]["elapsed_s"], keyframes["elapsed_s"]
        ),
        "worker / slowest stage (frames/s)": ratio(worker, rates[limiting]),
        "worker / serial bound (frames/s)": ratio(worker, serial),
        f"embed {worker_arm} / eager float32": ratio(
            rates[f"embed_{worker_arm}"], stages["embed_eager_float32"]["frames_per_s"]
        ),
    }
    for arm, figures in report.results.items():
        if figures.get("errors"):
            report.failures.append(f"{arm} returned error verdicts: {figures['errors']}")
    report.notes.append(
        f"limiting stage at the worker's settings: {limiting} ({rates[limiting]} frames/s); "
        "stage arms: median of the repeats after a warm-up, frames = sampled frames; "
        "worker arms: VideoProcessor without Kafka, in-process cache, every request a miss; "
        f"model {ctx.model!r}: random-init weights, but the O-net's own with `onet` (timing only)"
    )
    return report
