"""Small random checkpoints for tests (no downloads): random backbone, tiny ensemble members."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

from models.backbones import build_backbone
from models.checkpoint import save_checkpoint
from models.ensemble import Ensemble
from models.spec import (
    BackboneArch,
    BackboneSpec,
    ComputeDtype,
    EnsembleSpec,
    FaceSpec,
    MemberSpec,
    PipelineSpec,
    SamplingSpec,
)

TINY_MEMBERS = (
    MemberSpec(name="lstm_a", kind="lstm", hidden_size=8, dropout=0.0, fc_dims=(8,)),
    MemberSpec(name="lstm_b", kind="lstm", hidden_size=12, dropout=0.0, fc_dims=(8,)),
    MemberSpec(name="gru_a", kind="gru", hidden_size=16, dropout=0.0, fc_dims=(8,)),
)


def tiny_spec(
    *,
    arch: BackboneArch = "mobilenet_v3_large",
    detector: Literal["mtcnn", "none"] = "none",
    no_face: Literal["drop", "full_frame"] = "drop",
    dtype: ComputeDtype = "float32",
    input_size: int = 64,
    num_frames: int = 4,
    threshold: float = 0.5,
    weights: tuple[float, ...] | None = None,
) -> PipelineSpec:
    """A fast spec: random backbone weights, few frames, small crops, tiny members."""
    return PipelineSpec(
        name="test-ensemble",
        version="test",
        sampling=SamplingSpec(mode="uniform", num_frames=num_frames, max_frames=num_frames),
        face=FaceSpec(detector=detector, no_face=no_face, min_face_size=20),
        backbone=BackboneSpec(arch=arch, weights="none", input_size=input_size, dtype=dtype),
        ensemble=EnsembleSpec(members=TINY_MEMBERS, weights=weights),
        threshold=threshold,
        training={"source": "tests.checkpoints"},
    )


def make_checkpoint(
    path: str | os.PathLike[str],
    *,
    spec: PipelineSpec | None = None,
    seed: int = 0,
    **spec_options: Any,
) -> Path:
    """Write a random checkpoint of `spec` (default: `tiny_spec(**spec_options)`) to `path`."""
    if spec is None:
        spec = tiny_spec(**spec_options)
    backbone = build_backbone(spec.backbone, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ensemble = Ensemble(spec.ensemble, spec.feature_dim, temperature=spec.temperature)
        for member in ensemble.members.values():  # non-trivial BatchNorm statistics
            member.norm.running_mean.uniform_(-0.1, 0.1)
            member.norm.running_var.uniform_(0.5, 2.0)
    save_checkpoint(path, spec, backbone, ensemble)
    return Path(path)
