"""Child processes of the benchmarks, so each arm's peak RSS and thread count are its own.

    python -m benchmarks.probe research --checkpoint C --threads T --scratch DIR --warmup V VIDEO...
    python -m benchmarks.probe bare --checkpoint C --threads T [--dtype D] [--pooled N] \
        [--compile] [--decode [--keyframes TOL] [--decode-only]] --warmup V VIDEO...
    python -m benchmarks.probe predict --checkpoint C --threads T VIDEO

Each prints one JSON line: per-video latencies (s), frames, elapsed time and RSS figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image

from benchmarks.assets import EVERY_NTH
from benchmarks.measure import peak_rss_mib, rss_mib
from models.backbones import build_backbone
from models.checkpoint import load_checkpoint
from models.ensemble import Ensemble
from models.pipeline import Detector
from models.spec import ComputeDtype, KeyframeSnap
from models.video import DecodedVideo


def load_detector(
    checkpoint: Path,
    dtype: ComputeDtype | None = None,
    *,
    compile_backbone: bool = False,
    device: str = "cpu",
) -> Detector:
    """The checkpoint's detector on `device`, its backbone computing in `dtype` when given,
    warmed up (and compiled with `compile_backbone`) as the worker does before it turns ready."""
    detector = _loaded_detector(checkpoint, dtype, compile_backbone, device)
    detector.warm_up()
    return detector


def _loaded_detector(
    checkpoint: Path, dtype: ComputeDtype | None, compile_backbone: bool, device: str
) -> Detector:
    if dtype is None:
        return Detector.load(checkpoint, device, compile_backbone=compile_backbone)
    loaded = load_checkpoint(checkpoint)
    spec = loaded.spec.model_copy(
        update={"backbone": loaded.spec.backbone.model_copy(update={"dtype": dtype})}
    )
    backbone = build_backbone(spec.backbone, state_dict=loaded.backbone_state)
    ensemble = Ensemble(spec.ensemble, spec.feature_dim, temperature=spec.temperature)
    for name, state in loaded.member_states.items():
        ensemble.member(name).load_state_dict(state)
    return Detector(spec, backbone, ensemble, device, compile_backbone=compile_backbone)


def extract_jpegs(video: Path, out: Path, threads: int) -> list[Path]:
    """The research notebooks' first step: ffmpeg writes every 30th frame as a JPEG file."""
    out.mkdir(parents=True)
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
            "-threads", str(threads),
            "-i", str(video),
            "-vf", f"select=not(mod(n\\,{EVERY_NTH}))",
            "-fps_mode", "vfr",
            "-q:v", "2",
            str(out / "%05d.jpg"),
        ],
        check=True,
    )  # fmt: skip
    return sorted(out.glob("*.jpg"))


def research_video(detector: Detector, video: Path, scratch: Path, threads: int) -> int:
    """ffmpeg -> JPEG files -> PIL -> face crops -> one backbone forward -> ensemble."""
    frames = [
        np.asarray(Image.open(path).convert("RGB"))
        for path in extract_jpegs(video, scratch, threads)
    ]
    with av.open(str(video)) as container:
        fps = float(container.streams.video[0].average_rate or 1)
    timestamps_s = [index * EVERY_NTH / fps for index in range(len(frames))]
    return bare_video(detector, frames, timestamps_s)


def bare_video(detector: Detector, frames: Sequence[np.ndarray], timestamps_s: list[float]) -> int:
    """Face detector, backbone and heads on frames already in memory (the pipeline's stages)."""
    detector.classify([detector.features(detector.faces(frames, timestamps_s))])
    return len(frames)


def bare_pooled(
    detector: Detector, videos: Sequence[DecodedVideo], max_batch_frames: int
) -> list[tuple[int, float]]:
    """Frames of several videos pooled into batches of at most `max_batch_frames`, as the
    worker batches them; (frames, seconds until its batch finished) per video."""
    done: list[tuple[int, float]] = []
    started = time.perf_counter()
    group: list[DecodedVideo] = []
    for index, video in enumerate(videos):
        group.append(video)
        following = len(videos[index + 1].frames) if index + 1 < len(videos) else None
        pooled = sum(len(v.frames) for v in group)
        if following is not None and pooled + following <= max_batch_frames:
            continue
        found = detector.detect_faces([frame for v in group for frame in v.frames])
        faces, offset = [], 0
        for v in group:
            span = found[offset : offset + len(v.frames)]
            faces.append(detector.faces_from(span, v.timestamps_s))
            offset += len(v.frames)
        pooled = detector.embed(torch.cat([f.kept_crops for f in faces]))
        rows = pooled.split([len(f.kept) for f in faces])
        detector.classify([detector.features_from(f, r) for f, r in zip(faces, rows, strict=True)])
        finished = time.perf_counter() - started
        done.extend((len(v.frames), finished) for v in group)
        group = []
    return done


def run_research(args: argparse.Namespace) -> dict[str, Any]:
    detector = load_detector(args.checkpoint, "float32")
    loaded_rss = rss_mib()
    research_video(detector, args.warmup, args.scratch / "warmup", args.threads)
    latencies, frames = [], 0
    started, cpu_started = time.perf_counter(), _cpu_time()
    for index, video in enumerate(args.videos):
        begun = time.perf_counter()
        frames += research_video(detector, video, args.scratch / str(index), args.threads)
        latencies.append(time.perf_counter() - begun)
    elapsed, cpu_s = time.perf_counter() - started, _cpu_time() - cpu_started
    shutil.rmtree(args.scratch, ignore_errors=True)
    return _result(latencies, frames, elapsed, loaded_rss) | {"cpu_s": cpu_s}


def run_bare(args: argparse.Namespace) -> dict[str, Any]:
    detector = load_detector(args.checkpoint, args.dtype, compile_backbone=args.compile)
    loaded_rss = rss_mib()
    if args.decode:
        return run_decode_and_compute(detector, args, loaded_rss)
    decoded = [detector.decode(video) for video in [args.warmup, *args.videos]]
    bare_video(detector, decoded[0].frames, decoded[0].timestamps_s)
    tags = {"dtype": detector.spec.backbone.dtype, "compiled": args.compile}
    if args.pooled:
        cpu_started = _cpu_time()
        done = bare_pooled(detector, decoded[1:], args.pooled)
        latencies = [seconds for _, seconds in done]
        result = _result(latencies, sum(f for f, _ in done), max(latencies), loaded_rss)
        return result | tags | {"cpu_s": _cpu_time() - cpu_started}
    latencies, frames = [], 0
    started, cpu_started = time.perf_counter(), _cpu_time()
    for video in decoded[1:]:
        begun = time.perf_counter()
        frames += bare_video(detector, video.frames, video.timestamps_s)
        latencies.append(time.perf_counter() - begun)
    elapsed, cpu_s = time.perf_counter() - started, _cpu_time() - cpu_started
    return _result(latencies, frames, elapsed, loaded_rss) | tags | {"cpu_s": cpu_s}


def run_decode_and_compute(
    detector: Detector, args: argparse.Namespace, loaded_rss: float | None
) -> dict[str, Any]:
    """Decode and compute one video after the other in this process (decode timed too), with
    the checkpoint's sampling or, with `--keyframes`, that sampling snapped to keyframes; with
    `--decode-only` the sampled frames are counted, not computed."""
    if args.keyframes is not None:
        snap = KeyframeSnap(tolerance_s=args.keyframes)
        sampling = detector.spec.sampling.model_copy(update={"keyframes": snap})
        detector.spec = detector.spec.model_copy(update={"sampling": sampling})

    def compute(video: DecodedVideo) -> int:
        if args.decode_only:
            return len(video.frames)
        return bare_video(detector, video.frames, video.timestamps_s)

    compute(detector.decode(args.warmup))
    latencies, frames, decoded = [], 0, 0
    started, cpu_started = time.perf_counter(), _cpu_time()
    for path in args.videos:
        begun = time.perf_counter()
        video = detector.decode(path)
        decoded += video.frames_decoded
        frames += compute(video)
        latencies.append(time.perf_counter() - begun)
    elapsed, cpu_s = time.perf_counter() - started, _cpu_time() - cpu_started
    tags = {"dtype": detector.spec.backbone.dtype, "compiled": args.compile}
    return (
        _result(latencies, frames, elapsed, loaded_rss)
        | tags
        | {
            "cpu_s": cpu_s,
            "frames_decoded": decoded,
        }
    )


def run_predict(args: argparse.Namespace) -> dict[str, Any]:
    detector = load_detector(args.checkpoint)
    loaded_rss = rss_mib()
    loaded_peak = peak_rss_mib()
    begun = time.perf_counter()
    prediction = detector.predict_file(args.video)
    elapsed = time.perf_counter() - begun
    return _result([elapsed], prediction.sampled, elapsed, loaded_rss) | {
        "peak_rss_after_load_mib": loaded_peak,
        "last_timestamp_s": prediction.timestamps_s[-1],
    }


def _cpu_time() -> float:
    """CPU seconds used so far by this process (all threads) and its waited-for children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _result(
    latencies: list[float], frames: int, elapsed: float, loaded_rss: float | None
) -> dict[str, Any]:
    return {
        "latencies_s": latencies,
        "frames": frames,
        "elapsed_s": elapsed,
        "rss_after_load_mib": loaded_rss,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("research", "bare", "predict"):
        command = commands.add_parser(name)
        command.add_argument("--checkpoint", type=Path, required=True)
        command.add_argument("--threads", type=int, required=True)
        if name == "predict":
            command.add_argument("video", type=Path)
            continue
        command.add_argument("--warmup", type=Path, required=True)
        command.add_argument("videos", type=Path, nargs="+")
        if name == "research":
            command.add_argument("--scratch", type=Path, required=True)
        else:
            command.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
            command.add_argument(
                "--pooled", type=int, default=0, help="pool frames across videos up to N"
            )
            command.add_argument(
                "--compile", action="store_true", help="torch.compile the backbone, as the worker"
            )
            command.add_argument(
                "--decode", action="store_true", help="decode each video in the timed loop"
            )
            command.add_argument(
                "--keyframes",
                type=float,
                default=None,
                help="with --decode: snap sample times to keyframes within this many seconds",
            )
            command.add_argument(
                "--decode-only",
                action="store_true",
                help="with --decode: decode and sample only (no faces, backbone or heads)",
            )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runner = {"research": run_research, "bare": run_bare, "predict": run_predict}[args.command]
    print(json.dumps(runner(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
