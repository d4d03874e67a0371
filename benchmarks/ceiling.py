"""The machine's decode ceiling: how many frames of the benchmark's own clips it decodes per second
with every CPU core busy (one process per core, one codec thread each, every frame decoded by
PyAV, no colour conversion), plus NVDEC where a CUDA device and PyNvVideoCodec are present (every
frame to RGB on the GPU, `NVDEC_STREAMS` decoders at once). Measured in the same run as the arms
it is compared with; the sum is an upper bound (NVDEC's demuxing also takes CPU).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import torch

from models.decoders import nvdec_importable

NVDEC_STREAMS = 8
NVDEC_BATCH = 32


def decode_every_frame(path: str) -> int:
    """Frames of `path` decoded on one CPU thread (PyAV)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return sum(1 for _ in container.decode(stream))


def nvdec_every_frame(path: str) -> int:
    """Frames of `path` decoded on NVDEC to RGB tensors on the GPU (PyNvVideoCodec)."""
    import PyNvVideoCodec as nvc

    decoder = nvc.SimpleDecoder(
        path, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB
    )
    frames = 0
    while batch := decoder.get_batch_frames(NVDEC_BATCH):
        frames += len(batch)
    return frames


def _jobs(videos: Sequence[Path], workers: int) -> list[str]:
    """The clips, repeated so that every worker gets at least one."""
    return [str(v) for v in videos] * max(1, math.ceil(workers / max(1, len(videos))))


def cpu_ceiling(videos: Sequence[Path], processes: int | None = None) -> dict[str, Any]:
    """Every core decoding the clips in its own process (started before the clock)."""
    processes = processes or os.cpu_count() or 1
    jobs = _jobs(videos, processes)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        list(pool.map(decode_every_frame, jobs[:processes]))  # start and warm every process
        started = time.perf_counter()
        frames = sum(pool.map(decode_every_frame, jobs))
        elapsed = time.perf_counter() - started
    return {"processes": processes, "frames": frames, "frames_per_s": round(frames / elapsed, 1)}


def nvdec_ceiling(videos: Sequence[Path]) -> dict[str, Any]:
    """`NVDEC_STREAMS` NVDEC decoders at once over the clips."""
    jobs = _jobs(videos, NVDEC_STREAMS)
    with ThreadPoolExecutor(NVDEC_STREAMS) as pool:
        list(pool.map(nvdec_every_frame, jobs[:NVDEC_STREAMS]))
        torch.cuda.synchronize()
        started = time.perf_counter()
        frames = sum(pool.map(nvdec_every_frame, jobs))
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return {"streams": NVDEC_STREAMS, "frames": frames, "frames_per_s": round(frames / elapsed, 1)}


def decode_ceiling(videos: Sequence[Path]) -> dict[str, Any]:
    """The CPU ceiling, NVDEC's (None without it) and their sum (`frames_per_s`)."""
    cpu = cpu_ceiling(videos)
    nvdec = nvdec_ceiling(videos) if torch.cuda.is_available() and nvdec_importable() else None
    total = cpu["frames_per_s"] + (nvdec["frames_per_s"] if nvdec else 0.0)
    return {"cpu": cpu, "nvdec": nvdec, "frames_per_s": round(total, 1)}


def ceiling_fraction(video_frames_per_s: float | None, ceiling: dict[str, Any]) -> float | None:
    """An arm's frames of video handled per second as a fraction of the decode ceiling."""
    if not video_frames_per_s or not ceiling["frames_per_s"]:
        return None
    return round(video_frames_per_s / ceiling["frames_per_s"], 3)
