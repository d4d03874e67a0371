"""Face crops of a split's videos, cut once and cached in one safetensors file.

The crops are the inference pipeline's own (`models.video.decode_frames`, `FaceCropper`,
`kept_frames`), so a backbone fine-tuned on them sees what `extract` and serving feed it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import track
from safetensors import safe_open
from safetensors.torch import save_file

from models.errors import PipelineError
from models.faces import FaceCropper
from models.spec import DecodeLimits, FaceSpec, SamplingSpec
from models.stages import kept_frames
from models.video import decode_frames
from training.manifest import ManifestRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropSet:
    """Face crops `[N, 3, S, S]` uint8 of several videos; `video[i]` indexes `paths`/`targets`."""

    crops: torch.Tensor
    video: torch.Tensor  # [N] int64
    paths: list[str]
    targets: list[int]  # per video: 1 = fake, 0 = real

    def frame_targets(self) -> torch.Tensor:
        """The class index of every crop."""
        return torch.tensor(self.targets, dtype=torch.int64)[self.video]


def cut_crops(
    rows: Sequence[ManifestRow],
    face: FaceSpec,
    size: int,
    sampling: SamplingSpec,
    limits: DecodeLimits | None = None,
) -> CropSet:
    """The face crops of `rows`' videos; a video that cannot be read or has no face is skipped."""
    cropper = FaceCropper(face, size)
    limits = limits or DecodeLimits()
    pieces, video, paths, targets = [], [], [], []
    for row in track(rows, description=f"crops of {len(rows)} videos"):
        try:
            decoded = decode_frames(row.path, sampling, limits)
            faces = cropper.crop(decoded.frames, decoded.timestamps_s)
            crops = faces.crops[kept_frames(faces.has_face, face.no_face)].cpu()
        except PipelineError as error:
            logger.warning("%s: %s %s", row.path, error.code, error.message)
            continue
        video += [len(paths)] * len(crops)
        pieces.append(crops)
        paths.append(row.path)
        targets.append(int(row.label == "fake"))
    if not pieces:
        raise ValueError("no face crops could be cut from the given videos")
    return CropSet(torch.cat(pieces), torch.tensor(video, dtype=torch.int64), paths, targets)


def save_crops(path: Path, crops: CropSet) -> None:
    """Write a crop set to one safetensors file (the video list in its metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    save_file(
        {"crops": crops.crops.contiguous(), "video": crops.video},
        str(temporary),
        metadata={"paths": json.dumps(crops.paths), "targets": json.dumps(crops.targets)},
    )
    temporary.replace(path)


def load_crops(path: Path) -> CropSet:
    """A crop set written by `save_crops`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        crops, video = handle.get_tensor("crops"), handle.get_tensor("video")
    return CropSet(crops, video, json.loads(metadata["paths"]), json.loads(metadata["targets"]))
