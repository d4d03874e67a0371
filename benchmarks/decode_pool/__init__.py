"""The decode pool, measured: memory under concurrent 4K decodes, and CPU per sampled frame.

    python -m benchmarks.decode_pool memory [--videos 16] [--budget-mib 2048 1024]
    python -m benchmarks.decode_pool throughput [--videos 8] [--repeats 2]

`memory`: `--videos` callers decode a 3840x2160 H.264 clip at once through a `DecodePool` (one
process per core) with the checkpoint-default sampling (32 frames), scaled for the default face
stage (2757 px), each holding its frames for a moment as the face stage would. The process and its
decode children are sampled every 20 ms from /proc: the peak of their summed PSS (shared frame
memory counted once) and of their summed RSS (counted in each process that maps it), above the
baseline before the decodes, against the budget.

`throughput`: 1280x720 clips (synthetic faces, x264 defaults with B-frames, a 2 s GOP), every
30th frame sampled, the representative checkpoint (MTCNN, ResNet50 float32, random weights), one
torch thread. Arms, interleaved per repeat: `bare` (decode + faces + backbone + ensemble in one
thread, one video after another), `threads` (the worker's `VideoProcessor` decoding in request
threads) and `pool` (the same with the decode pool). Each reports videos/s and the CPU ms per
sampled frame of the process plus its decode children.

(A package run as `python -m benchmarks.decode_pool`: spawned decode children then do not import
this module, with torch, as their main module.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from benchmarks.assets import representative_spec, write_checkpoint
from benchmarks.measure import cpu_seconds, median_run, ratio
from models.decode_pool import DecodePool, ThreadDecoder, VideoDecoder
from models.faces import frame_max_side
from models.pipeline import Detector
from models.spec import PipelineSpec
from models.video import decode_frames
from models.video_budget import MemoryBudget
from producer.contracts import VideoRequest
from training.synth import plan_clips
from training.synth_render import render_clip
from worker.cache import ResilientCache
from worker.metrics import Metrics
from worker.processing import ProcessingSettings, VideoProcessor
from worker.sources import SourcePolicy

FPS = 30
GOP = 2 * FPS
HOLD_S = 0.3
"""How long a `memory` caller holds its frames (the face stage's share of a video's time)."""
SAMPLE_S = 0.02


def encode(path: Path, frames: list[np.ndarray], options: dict[str, str]) -> Path:
    """H.264 at FPS with x264's defaults plus `options` (as an upload would be encoded)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS), options=options)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def face_clip(path: Path, seed: int, seconds: float, size: tuple[int, int]) -> Path:
    """A synthetic face clip: one second rendered by `training.synth`, played forth and back."""
    if path.exists():
        return path
    [recipe] = plan_clips(1, seed, frames=FPS, size=size, fps=FPS)
    rendered = [np.ascontiguousarray(frame) for frame in render_clip(recipe).frames]
    loop = rendered + rendered[::-1]
    frames = [loop[index % len(loop)] for index in range(round(seconds * FPS))]
    return encode(path, frames, {"x264-params": f"keyint={GOP}"})


def uhd_clip(path: Path, seconds: float) -> Path:
    """A 3840x2160 clip: a 720p synthetic face clip's frames upscaled 3x (x264 veryfast)."""
    if path.exists():
        return path
    [recipe] = plan_clips(1, 7, frames=FPS // 2, size=(1280, 720), fps=FPS)
    tripled = np.ones((3, 3, 1), np.uint8)
    rendered = [np.kron(frame, tripled) for frame in render_clip(recipe).frames]
    loop = rendered + rendered[::-1]
    frames = [loop[index % len(loop)] for index in range(round(seconds * FPS))]
    return encode(path, frames, {"preset": "veryfast", "x264-params": f"keyint={GOP}"})


def _family(root: int) -> list[int]:
    """`root` and its child processes (the decode pool's)."""
    children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
    return [root, *map(int, children)]


def _kib(pid: int, path: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_now() -> tuple[int, int]:
    """(PSS, RSS) in bytes, summed over this process and its children."""
    pids = _family(os.getpid())
    pss = sum(_kib(pid, "smaps_rollup", "Pss") for pid in pids)
    rss = sum(_kib(pid, "status", "VmRSS") for pid in pids)
    return pss << 10, rss << 10


@contextmanager
def peak_memory() -> Iterator[dict[str, int]]:
    """Samples `memory_now` every SAMPLE_S while the block runs; yields the running peaks."""
    peaks = {"pss": 0, "rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pss, rss = memory_now()
            peaks["pss"], peaks["rss"] = max(peaks["pss"], pss), max(peaks["rss"], rss)
            stop.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        stop.set()
        sampler.join()


def memory(workdir: Path, videos: int, budgets_mib: list[int]) -> dict[str, Any]:
    clip = uhd_clip(workdir / "uhd.mp4", seconds=2.0)
    arms = {f"pool_{mib}MiB": _memory_arm(clip, videos, mib) for mib in budgets_mib}
    return {"videos": videos, "clip": "3840x2160, 60 frames", "arms": arms}


def _memory_arm(clip: Path, videos: int, budget_mib: int) -> dict[str, Any]:
    spec = PipelineSpec()
    budget = MemoryBudget(budget_mib << 20)
    pool = DecodePool(
        os.cpu_count() or 1, budget, max_side=frame_max_side(spec.face, spec.backbone.input_size)
    )
    pool.start()
    reserved = [0]

    def decode_and_hold(_index: int) -> int:
        with pool.decode(clip, spec.sampling, spec.decode) as video:
            reserved[0] = max(reserved[0], budget.in_use)
            checksum = sum(int(frame[::64, ::64].sum()) for frame in video.frames)
            time.sleep(HOLD_S)
            return checksum

    try:
        baseline_pss, baseline_rss = memory_now()
        started = time.perf_counter()
        with peak_memory() as peaks, ThreadPoolExecutor(videos) as executor:
            list(executor.map(decode_and_hold, range(videos)))
        elapsed = time.perf_counter() - started
    finally:
        pool.close()
    return {
        "budget_mib": budget_mib,
        "frames_reserved_peak_mib": round(reserved[0] / 2**20, 1),
        "pss_above_baseline_mib": round((peaks["pss"] - baseline_pss) / 2**20, 1),
        "rss_above_baseline_mib": round((peaks["rss"] - baseline_rss) / 2**20, 1),
        "baseline_pss_mib": round(baseline_pss / 2**20, 1),
        "within_budget": peaks["pss"] - baseline_pss <= budget.total_bytes,
        "elapsed_s": round(elapsed, 2),
    }


class _NoStore:
    """A cache that never hits, so every request decodes (the arms measure decode + compute)."""

    def get(self, key: str) -> bytes | None:
        return None

    def put(self, key: str, blob: bytes) -> None:
        return None


def _family_cpu(pool: VideoDecoder | None) -> float:
    pids = [os.getpid(), *(pool.pids if isinstance(pool, DecodePool) else [])]
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


def _bare(detector: Detector, clips: list[Path], max_side: int) -> int:
    sampled = 0
    for clip in clips:
        video = decode_frames(
            clip, detector.spec.sampling, detector.decode_limits, threads=1, max_side=max_side
        )
        detector.classify([detector.features(detector.faces(video.frames, video.timestamps_s))])
        sampled += len(video.frames)
    return sampled


def _worker(detector: Detector, clips: list[Path], decoder: VideoDecoder, concurrency: int) -> int:
    processor = VideoProcessor(
        detector,
        ResilientCache(_NoStore()),
        SourcePolicy((clips[0].parent,)),
        Metrics(),
        ProcessingSettings(worker_id="bench"),
        decoder,
    )
    requests = [
        VideoRequest(request_id=f"r{index}", video_uri=clip.as_uri())
        for index, clip in enumerate(clips)
    ]
    try:
        with ThreadPoolExecutor(concurrency) as executor:
            verdicts = list(executor.map(processor.process, requests))
    finally:
        processor.close()
    failed = [verdict.error for verdict in verdicts if verdict.status != "ok"]
    if failed:
        raise RuntimeError(f"requests failed: {failed[:3]}")
    return sum(verdict.frames.sampled for verdict in verdicts if verdict.frames)


def throughput(workdir: Path, videos: int, repeats: int, concurrency: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    clips_dir = workdir / "720p"
    clips_dir.mkdir(parents=True, exist_ok=True)
    sources = [face_clip(clips_dir / f"face{seed}.mp4", seed, 4.0, (1280, 720)) for seed in (1, 2)]
    clips = [sources[index % len(sources)] for index in range(videos)]
    spec = representative_spec("float32")
    detector = Detector.load(write_checkpoint(workdir / "representative.pt", spec))
    detector.warm_up()
    max_side = frame_max_side(spec.face, spec.backbone.input_size)
    processes = os.cpu_count() or 1
    pool = DecodePool(processes, MemoryBudget(2 << 30), max_side=max_side, threads=1)
    pool.start()
    threads = ThreadDecoder(processes, MemoryBudget(2 << 30), max_side=max_side, threads=1)
    arms: dict[str, Callable[[], int]] = {
        "bare": lambda: _bare(detector, clips, max_side),
        "threads": lambda: _worker(detector, clips, threads, concurrency),
        "pool": lambda: _worker(detector, clips, pool, concurrency),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    try:
        _bare(detector, clips[:1], max_side)  # first-call costs out of the way
        for repeat in range(repeats):
            names = list(arms) if repeat % 2 == 0 else list(arms)[::-1]
            for name in names:
                decoder = pool if name == "pool" else None
                cpu_before, started = _family_cpu(decoder), time.perf_counter()
                sampled = arms[name]()
                elapsed = time.perf_counter() - started
                cpu = _family_cpu(decoder) - cpu_before
                runs[name].append(
                    {
                        "videos_per_s": round(videos / elapsed, 3),
                        "sampled_frames": sampled,
                        "cpu_ms_per_sampled_frame": round(cpu * 1000 / sampled, 1),
                        "elapsed_s": round(elapsed, 2),
                        "load1": round(os.getloadavg()[0], 2),
                    }
                )
    finally:
        pool.close()
    results = {name: median_run(arm_runs, "videos_per_s") for name, arm_runs in runs.items()}
    for name, arm_runs in runs.items():
        results[name]["repeats_cpu_ms_per_sampled_frame"] = [
            run["cpu_ms_per_sampled_frame"] for run in arm_runs
        ]
    bare_cpu = results["bare"]["cpu_ms_per_sampled_frame"]
    return {
        "clips": f"{videos} x 1280x720, 4 s at {FPS} fps, GOP {GOP}, every 30th frame",
        "decode_processes": processes,
        "request_threads": concurrency,
        "arms": results,
        "cpu_per_frame_vs_bare": {
            name: ratio(results[name]["cpu_ms_per_sampled_frame"], bare_cpu)
            for name in ("threads", "pool")
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_pool")
    parser.add_argument("command", choices=["memory", "throughput"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dfd-bench-decode-pool"))
    parser.add_argument("--videos", type=int, default=None)
    parser.add_argument("--budget-mib", type=int, nargs="+", default=[2048, 1024])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="request threads")
    parser.add_argument("--keep", action="store_true", help="keep the clips in --workdir")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.command == "memory":
            result = memory(args.workdir, args.videos or 16, args.budget_mib)
        else:
            result = throughput(args.workdir, args.videos or 8, args.repeats, args.concurrency)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
