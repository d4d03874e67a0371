"""Self-blended images (SBI, Shiohara & Yamasaki, CVPR 2022) from face crops, without landmarks.

A fake is made from one real crop: a perturbed copy of it (colour, sharpness, scale) is blended
back onto the original through a soft face mask. Without landmarks the mask comes from the face
box: MTCNN's square crop centres the face, so the mask is an ellipse around the crop's centre
whose outline is deformed at random (a few low-order harmonics of the radius, then the convex
hull, as SBI's landmark hulls are convex), softened by a Gaussian blur and scaled by a blend
ratio. The blend changes the crop only where the mask is positive.

Every random choice comes from the `numpy.random.Generator` passed in, so a seed fixes a blend.
`draw_blend` makes those choices (a `BlendDraw`) and `render_blend` applies them, so a clip's
frames can share one blend whose mask position, scale and colour jitter from frame to frame
(`jittered`): the temporal flicker a face swap leaves, made from a real clip alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field
from scipy.spatial import ConvexHull
from torchvision.transforms.v2 import functional as F

_HARMONICS = np.arange(2, 5)
"""The harmonics of the mask outline's random deformation."""


class BlendSpec(BaseModel):
    """Ranges of the random mask, source perturbation and blend (fractions of the crop side)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    centre_jitter: float = Field(0.05, ge=0.0, le=0.25)
    radius_x: tuple[float, float] = (0.26, 0.38)
    radius_y: tuple[float, float] = (0.32, 0.45)
    deform: float = Field(0.12, ge=0.0, lt=0.5)
    blur: tuple[float, float] = (0.01, 0.08)
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
    gain: float = Field(0.12, ge=0.0, lt=1.0)
    offset: float = Field(0.08, ge=0.0, lt=1.0)
    sharpen_p: float = Field(0.5, ge=0.0, le=1.0)
    sigma: tuple[float, float] = (0.3, 1.5)
    scale: tuple[float, float] = (0.94, 1.06)
    shift: float = Field(0.03, ge=0.0, lt=0.25)
    jitter_px: float = Field(
        0.015, ge=0.0, lt=0.25, description="largest per-frame shift (std, fraction of the side)"
    )
    jitter_scale: float = Field(0.02, ge=0.0, lt=0.5, description="largest per-frame rescale (std)")
    jitter_colour: float = Field(0.03, ge=0.0, lt=0.5, description="largest per-frame gain (std)")


@dataclass(frozen=True)
class Blended:
    """A self-blended crop and the mask (blend ratio included) that made it."""

    image: torch.Tensor  # [3, S, S] uint8
    mask: torch.Tensor  # [S, S] float32 in [0, 1]


@dataclass(frozen=True)
class BlendDraw:
    """The random choices of one blend of a `size` px crop (lengths in pixels)."""

    size: int
    centre: np.ndarray  # [2]
    radii: np.ndarray  # [2]
    amplitudes: np.ndarray  # [3] of the radius harmonics 2, 3, 4
    phases: np.ndarray  # [3]
    mask_blur: float
    ratio: float
    gain: np.ndarray  # [3]
    offset: np.ndarray  # [3], 0..255
    sharpen: bool
    sigma: float
    scale: float
    shift: np.ndarray  # [2]


def draw_blend(size: int, spec: BlendSpec, rng: np.random.Generator) -> BlendDraw:
    """The random choices of one blend: mask shape and blend ratio, then the source's colour,
    sharpness, scale and shift."""
    centre = size / 2 + rng.uniform(-spec.centre_jitter, spec.centre_jitter, 2) * size
    radii = np.array([rng.uniform(*spec.radius_x), rng.uniform(*spec.radius_y)]) * size
    amplitudes = rng.uniform(-spec.deform, spec.deform, len(_HARMONICS)) / _HARMONICS
    phases = rng.uniform(0.0, 2 * np.pi, len(_HARMONICS))
    mask_blur = max(float(rng.uniform(*spec.blur)) * size, 0.3)
    ratio = float(spec.ratios[int(rng.integers(len(spec.ratios)))])
    return BlendDraw(
        size=size,
        centre=centre,
        radii=radii,
        amplitudes=amplitudes,
        phases=phases,
        mask_blur=mask_blur,
        ratio=ratio,
        gain=1.0 + rng.uniform(-spec.gain, spec.gain, 3),
        offset=rng.uniform(-spec.offset, spec.offset, 3) * 255,
        sharpen=bool(rng.random() < spec.sharpen_p),
        sigma=float(rng.uniform(*spec.sigma)),
        scale=float(rng.uniform(*spec.scale)),
        shift=rng.uniform(-spec.shift, spec.shift, 2) * size,
    )


def jittered(
    draw: BlendDraw, strength: float, spec: BlendSpec, rng: np.random.Generator
) -> BlendDraw:
    """`draw` moved for one frame of a clip: mask and source shifted together, rescaled and
    colour-shifted by Gaussian jitter of `strength` (0..1) times the spec's largest jitter."""
    move = rng.normal(0.0, strength * spec.jitter_px * draw.size, 2)
    rescale = 1.0 + float(rng.normal(0.0, strength * spec.jitter_scale))
    return dataclasses.replace(
        draw,
        centre=draw.centre + move,
        radii=draw.radii * rescale,
        gain=draw.gain + rng.normal(0.0, strength * spec.jitter_colour, 3),
        scale=draw.scale * rescale,
        shift=draw.shift + move,
    )


def render_blend(crop: torch.Tensor, draw: BlendDraw) -> Blended:
    """`crop` (`[3, S, S]` uint8, S = `draw.size`) with the blend `draw` applied."""
    if crop.dtype != torch.uint8 or crop.shape != (3, draw.size, draw.size):
        raise ValueError(
            f"expected a [3, {draw.size}, {draw.size}] uint8 crop, got {crop.dtype} "
            f"{tuple(crop.shape)}"
        )
    mask = blend_mask(draw)
    source = perturbed_source(crop, draw)
    target = crop.float()
    blended = source * mask + target * (1.0 - mask)
    image = torch.where(mask > 0, blended.round().clamp(0, 255), target).to(torch.uint8)
    return Blended(image=image, mask=mask)


def self_blend(crop: torch.Tensor, spec: BlendSpec, rng: np.random.Generator) -> Blended:
    """A self-blended fake of one `[3, S, S]` uint8 crop."""
    if crop.dtype != torch.uint8 or crop.ndim != 3 or crop.shape[0] != 3:
        raise ValueError(f"expected a [3, S, S] uint8 crop, got {crop.dtype} {tuple(crop.shape)}")
    return render_blend(crop, draw_blend(int(crop.shape[-1]), spec, rng))


def blend_mask(draw: BlendDraw) -> torch.Tensor:
    """The soft `[S, S]` mask in [0, 1] of a draw: a deformed convex ellipse, blurred, times the
    blend ratio."""
    size = draw.size
    angles = np.linspace(0.0, 2 * np.pi, 32, endpoint=False)
    harmonics = np.cos(np.outer(angles, _HARMONICS) + draw.phases)
    scale = 1.0 + (draw.amplitudes * harmonics).sum(axis=1)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points = draw.centre + directions * draw.radii * scale[:, None]
    hull = points[ConvexHull(points).vertices]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in hull.tolist()], fill=255)
    mask = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]
    sigma = draw.mask_blur
    kernel = 2 * int(np.ceil(3 * sigma)) + 1
    soft = F.gaussian_blur(mask, [kernel, kernel], [sigma, sigma])[0]
    return (soft * draw.ratio).clamp(0.0, 1.0)


def perturbed_source(crop: torch.Tensor, draw: BlendDraw) -> torch.Tensor:
    """The `[3, S, S]` float copy to blend in: per-channel colour gain and offset, a blur or a
    sharpening, and a small rescale and shift about the centre."""
    gain = torch.from_numpy(draw.gain).float().view(3, 1, 1)
    offset = torch.from_numpy(draw.offset).float().view(3, 1, 1)
    image = crop.float() * gain + offset
    kernel = 2 * int(np.ceil(3 * draw.sigma)) + 1
    blurred = F.gaussian_blur(image[None], [kernel, kernel], [draw.sigma, draw.sigma])[0]
    image = 2 * image - blurred if draw.sharpen else blurred
    moved = F.affine(
        image[None],
        angle=0.0,
        translate=[float(draw.shift[0]), float(draw.shift[1])],
        scale=draw.scale,
        shear=[0.0, 0.0],
        interpolation=F.InterpolationMode.BILINEAR,
    )[0]
    return moved.clamp(0.0, 255.0)
