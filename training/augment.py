"""Seeded augmented views of one video's face crops (TRAIN split only).

A view applies one set of photometric changes to every frame (a horizontal flip, colour jitter,
JPEG re-compression, Gaussian blur), as a re-encoded or re-edited copy of the video would, and a
temporal change to the frame sequence (a contiguous temporal crop, then random frame drops).
Every random choice comes from a generator seeded by `stable_seed(seed, video path, view)`, so
a view is the same in every run and every process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torchvision.transforms.v2 import functional as F


class AugmentSpec(BaseModel):
    """Strength and probability of each augmentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    brightness: float = Field(0.2, ge=0.0, lt=1.0)
    contrast: float = Field(0.2, ge=0.0, lt=1.0)
    saturation: float = Field(0.2, ge=0.0, lt=1.0)
    jpeg_p: float = Field(0.5, ge=0.0, le=1.0)
    jpeg_quality: tuple[int, int] = (30, 90)
    blur_p: float = Field(0.3, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    min_keep_fraction: float = Field(0.6, gt=0.0, le=1.0)
    drop_p: float = Field(0.1, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class AugmentedView:
    """Augmented crops and, for each, its position in the original sequence."""

    crops: torch.Tensor  # [M, 3, S, S] uint8
    positions: list[int]  # sorted indices into the original N frames (M >= 1)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from `parts` (e.g. seed, video, view), the same in every process."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def augment_view(crops: torch.Tensor, spec: AugmentSpec, seed: int) -> AugmentedView:
    """One augmented view of `[N, 3, S, S]` uint8 crops (N >= 1), deterministic for `seed`."""
    if crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[1] != 3 or len(crops) == 0:
        raise ValueError(
            f"expected non-empty [N, 3, S, S] uint8 crops, got {crops.dtype} {crops.shape}"
        )
    rng = np.random.default_rng(seed)
    positions = temporal_positions(len(crops), spec, rng)
    return AugmentedView(crops=photometric(crops[positions], spec, rng), positions=positions)


def temporal_positions(count: int, spec: AugmentSpec, rng: np.random.Generator) -> list[int]:
    """A contiguous crop of at least `min_keep_fraction` of the frames, then random drops."""
    keep = int(rng.integers(max(1, int(np.ceil(spec.min_keep_fraction * count))), count + 1))
    start = int(rng.integers(0, count - keep + 1))
    window = np.arange(start, start + keep)
    kept = window[rng.random(keep) >= spec.drop_p]
    if len(kept) == 0:
        kept = window[[int(rng.integers(0, keep))]]
    return [int(i) for i in kept]


def photometric(crops: torch.Tensor, spec: AugmentSpec, rng: np.random.Generator) -> torch.Tensor:
    """The same flip, colour jitter, JPEG quality and blur for every crop of the view."""
    # Draw every number up front, so the stream of draws does not depend on earlier outcomes.
    flip = rng.random() < spec.flip_p
    brightness, contrast, saturation = (
        rng.uniform(1 - s, 1 + s) for s in (spec.brightness, spec.contrast, spec.saturation)
    )
    jpeg = rng.random() < spec.jpeg_p
    quality = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))
    blur = rng.random() < spec.blur_p
    sigma = float(rng.uniform(*spec.blur_sigma))

    out = F.horizontal_flip(crops) if flip else crops
    out = F.adjust_brightness(out, float(brightness))
    out = F.adjust_contrast(out, float(contrast))
    out = F.adjust_saturation(out, float(saturation))
    if jpeg:
        out = jpeg_roundtrip(out, quality)
    if blur:
        kernel = 2 * int(np.ceil(3 * sigma)) + 1
        out = F.gaussian_blur(out, [kernel, kernel], [sigma, sigma])
    return out.contiguous()


def jpeg_roundtrip(crops: torch.Tensor, quality: int) -> torch.Tensor:
    """Each `[3, S, S]` uint8 crop JPEG-encoded at `quality` and decoded again (Pillow)."""
    decoded = []
    for crop in crops:
        buffer = BytesIO()
        Image.fromarray(crop.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as image:
            decoded.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
    return torch.stack(decoded)
