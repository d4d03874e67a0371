"""What the benchmarks run on: checkpoints built with the models API, videos from training.synth.

No weights are downloaded: backbones (but the O-net, whose weights ship in the facenet-pytorch
wheel) and members are randomly initialised, which costs exactly as much compute as trained
weights (the verdicts themselves are meaningless and never reported).
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from models.backbones import build_backbone
from models.checkpoint import save_checkpoint
from models.ensemble import Ensemble
from models.spec import (
    DEFAULT_MEMBERS,
    ONET_INPUT_SIZE,
    BackboneSpec,
    ComputeDtype,
    EnsembleSpec,
    FaceSpec,
    MemberSpec,
    PipelineSpec,
    SamplingSpec,
)
from training.demo import DEMO_FACE, DEMO_MEMBERS
from training.synth import SYNTH_ENCODING, generate_dataset, plan_clips, upload_encoding
from training.synth_render import render_clip

log = logging.getLogger(__name__)

EVERY_NTH = 30
"""The research notebooks looked at every 30th frame; the benchmark checkpoints sample the same."""

TINY_MEMBERS = (
    MemberSpec(name="lstm_a", kind="lstm", hidden_size=16, dropout=0.0, fc_dims=(8,)),
    MemberSpec(name="lstm_b", kind="lstm", hidden_size=12, dropout=0.0, fc_dims=(8,)),
    MemberSpec(name="gru_a", kind="gru", hidden_size=16, dropout=0.0, fc_dims=(8,)),
)


def representative_spec(dtype: ComputeDtype) -> PipelineSpec:
    """ResNet50 (random init), MTCNN, the default members (lstm768, lstm512, gru768), every 30th
    frame (at most 64)."""
    return PipelineSpec(
        name="bench-representative",
        version="bench",
        sampling=SamplingSpec(mode="every_nth", every_nth=EVERY_NTH, max_frames=64),
        face=FaceSpec(detector="mtcnn", no_face="full_frame"),
        backbone=BackboneSpec(arch="resnet50", weights="none", dtype=dtype),
        ensemble=EnsembleSpec(members=DEFAULT_MEMBERS),
        training={"source": "benchmarks.assets", "weights": "random init (timing only)"},
    )


def onet_spec(dtype: ComputeDtype) -> PipelineSpec:
    """The demo's model, the one that serves on CPU-only machines: MTCNN face tracks,
    O-net face features (the facenet-pytorch wheel's weights) and the demo's three small members
    (random init), every 30th frame (at most 64)."""
    return PipelineSpec(
        name="bench-onet",
        version="bench",
        sampling=SamplingSpec(mode="every_nth", every_nth=EVERY_NTH, max_frames=64),
        face=DEMO_FACE,
        backbone=BackboneSpec(
            arch="mtcnn_onet", weights="facenet", input_size=ONET_INPUT_SIZE, dtype=dtype
        ),
        ensemble=EnsembleSpec(members=DEMO_MEMBERS),
        training={"source": "benchmarks.assets", "weights": "O-net facenet, members random init"},
    )


def smoke_spec(dtype: ComputeDtype) -> PipelineSpec:
    """The same stages at a fraction of the cost (MobileNetV3 on 64 px crops, tiny members)."""
    return PipelineSpec(
        name="bench-smoke",
        version="bench",
        sampling=SamplingSpec(mode="every_nth", every_nth=EVERY_NTH, max_frames=64),
        face=FaceSpec(detector="mtcnn", no_face="full_frame"),
        backbone=BackboneSpec(
            arch="mobilenet_v3_large", weights="none", input_size=64, dtype=dtype
        ),
        ensemble=EnsembleSpec(members=TINY_MEMBERS),
        training={"source": "benchmarks.assets", "weights": "random init (timing only)"},
    )


def drill_spec() -> PipelineSpec:
    """A cheap model for the fault drills, a correctness check where compute does not matter."""
    return PipelineSpec(
        name="bench-drills",
        version="bench",
        sampling=SamplingSpec(mode="uniform", num_frames=4, max_frames=4),
        face=FaceSpec(detector="none"),
        backbone=BackboneSpec(arch="mobilenet_v3_large", weights="none", input_size=64),
        ensemble=EnsembleSpec(members=TINY_MEMBERS),
        training={"source": "benchmarks.assets", "weights": "random init (timing only)"},
    )


def write_checkpoint(path: Path, spec: PipelineSpec, seed: int = 0) -> Path:
    """A checkpoint of `spec` with random-init members (and backbone, unless its weights are the
    O-net's from the facenet-pytorch wheel), saved with the models API."""
    backbone = build_backbone(spec.backbone, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ensemble = Ensemble(spec.ensemble, spec.feature_dim, temperature=spec.temperature)
    save_checkpoint(path, spec, backbone, ensemble)
    return path


RESOLUTIONS: dict[str, tuple[int, int]] = {
    "160": (160, 160),
    "720p": (1280, 720),
    "1080p": (1920, 1080),
}
"""`--resolution`: frame width and height of the benchmark clips."""
GOPS = ("1s", "2s", "250")
"""`--gop`: the most frames between keyframes: one or two seconds, or x264's default 250."""


def keyint(gop: str, fps: float) -> int:
    """Frames between keyframes (at most) of a `--gop` value at `fps`."""
    if gop not in GOPS:
        raise ValueError(f"gop must be one of {GOPS}, got {gop!r}")
    return 250 if gop == "250" else round(int(gop[:-1]) * fps)


def synth_videos(
    out: Path,
    count: int,
    *,
    frames: int,
    fps: float,
    seed: int,
    resolution: str = "160",
    gop: str | None = None,
) -> list[Path]:
    """`count` labelled synthetic face clips from `training.synth`, rendered at `resolution`.

    At 160 px without `gop`: the dataset's own clips (x264 veryfast), as every earlier benchmark
    ran. Otherwise encoded as uploads are (x264's default preset and parameters, B-frames
    included) with a keyframe at least every `gop` (default 250 frames, x264's own).
    """
    encoding = (
        SYNTH_ENCODING
        if resolution == "160" and gop is None
        else upload_encoding(keyint(gop or "250", fps))
    )
    entries = generate_dataset(
        out, count, seed, frames=frames, size=RESOLUTIONS[resolution], fps=fps, encoding=encoding
    )
    return [Path(entry.path) for entry in entries]


def face_segment(path: Path, *, seconds: float, fps: int, size: int, gop: int, seed: int) -> Path:
    """A short synthetic face clip, H.264 without B-frames and with a fixed keyframe interval,
    so that it can be looped by remuxing (see `loop_video`)."""
    [recipe] = plan_clips(1, seed, frames=round(seconds * fps), size=(size, size), fps=fps)
    frames = render_clip(recipe).frames
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {
            "preset": "veryfast",
            "x264-params": f"bframes=0:keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame))))
        container.mux(stream.encode())
    return path


def loop_video(segment: Path, out: Path, repeats: int) -> Path:
    """`segment` played `repeats` times, by remuxing its packets with shifted timestamps (no
    re-encoding: a 60-minute video takes seconds)."""
    with av.open(str(segment)) as source:
        stream = source.streams.video[0]
        packets = [
            (bytes(p), p.pts, p.dts, p.is_keyframe, p.duration)
            for p in source.demux(stream)
            if p.size
        ]
        time_base = stream.time_base
        span = max(pts + (duration or 0) for _, pts, _, _, duration in packets) - min(
            pts for _, pts, _, _, _ in packets
        )
        with av.open(str(out), mode="w", format="mp4") as sink:
            target = sink.add_stream_from_template(stream)
            for repeat in range(repeats):
                shift = repeat * span
                for data, pts, dts, keyframe, duration in packets:
                    packet = av.Packet(data)
                    packet.stream = target
                    packet.time_base = time_base
                    packet.pts, packet.dts, packet.duration = pts + shift, dts + shift, duration
                    packet.is_keyframe = keyframe
                    sink.mux(packet)
    return out
