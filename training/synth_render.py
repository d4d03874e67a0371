"""Rendering of one synthetic clip: a pure function of its `ClipRecipe`.

A real clip films a source photograph with a virtual camera: smooth random pan, zoom and roll of a
crop window, drifting gain and gamma, and sensor noise. A fake clip is the same clip with a
self-blended face (after Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images",
CVPR 2022): a copy of the face, colour-shifted, blurred or sharpened and slightly rescaled, is
pasted back through a soft elliptical mask. The paste jitters in position, scale and colour from
frame to frame, which leaves the seams, colour mismatch and temporal flicker that face swaps leave.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from training.manifest import Label
from training.synth_sources import Box, SourcePhoto, load_source

_TAU = 2.0 * math.pi


@dataclass(frozen=True)
class ClipRecipe:
    """Everything that decides the frames of one synthetic clip."""

    source: str
    seed: int
    frames: int
    width: int
    height: int
    fps: float
    manipulation: float | None
    crf: int

    @property
    def label(self) -> Label:
        return "real" if self.manipulation is None else "fake"

    def as_real(self) -> ClipRecipe:
        """The same clip without the face manipulation (a fake's real counterpart)."""
        return dataclasses.replace(self, manipulation=None)


@dataclass(frozen=True)
class RenderedClip:
    """Frames `(T, H, W, 3)` uint8 RGB and the face box `(T, 4)` of each frame, in pixels."""

    frames: np.ndarray
    face_boxes: np.ndarray


@dataclass(frozen=True)
class _Wave:
    """A smooth zero-mean signal: the sum of two sinusoids."""

    amplitude: float
    freqs: tuple[float, float]
    phases: tuple[float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator, amplitude: float) -> _Wave:
        freqs = (float(rng.uniform(0.08, 0.35)), float(rng.uniform(0.35, 0.9)))
        phases = (float(rng.uniform(0, _TAU)), float(rng.uniform(0, _TAU)))
        return cls(amplitude, freqs, phases)

    def __call__(self, t: float) -> float:
        slow = math.sin(_TAU * self.freqs[0] * t + self.phases[0])
        fast = math.sin(_TAU * self.freqs[1] * t + self.phases[1])
        return self.amplitude * (0.7 * slow + 0.3 * fast)


@dataclass(frozen=True)
class _Scene:
    """The filmed photograph and the camera, lighting and noise of one clip."""

    image: Image.Image
    fill: tuple[int, int, int]
    face_box: Box
    window: float
    center: tuple[float, float]
    pan_x: _Wave
    pan_y: _Wave
    zoom: _Wave
    roll_deg: _Wave
    gain: float
    gain_wave: _Wave
    gamma: float
    gamma_wave: _Wave
    noise_sigma: float


@dataclass(frozen=True)
class _Manipulation:
    """A self-blended face paste and its per-frame jitter."""

    colour_gain: np.ndarray
    colour_offset: np.ndarray
    blur_sigma: float
    sharpen: float
    scale: float
    shift: tuple[float, float]
    mask_axes: tuple[float, float]
    feather: float
    alpha: float
    jitter_px: float
    jitter_scale: float
    jitter_colour: float


@dataclass(frozen=True)
class _View:
    """The camera at one instant: window centre in the photo, photo pixels per frame pixel, roll."""

    center: tuple[float, float]
    scale: float
    angle: float


def render_clip(recipe: ClipRecipe) -> RenderedClip:
    """Render the frames of `recipe` (deterministic: same recipe, same frames)."""
    scene_seed, noise_seed, manip_seed = np.random.SeedSequence(recipe.seed).spawn(3)
    scene = _draw_scene(np.random.default_rng(scene_seed), load_source(recipe.source), recipe)
    noise_rng = np.random.default_rng(noise_seed)
    manip_rng = np.random.default_rng(manip_seed)
    manipulation = (
        None if recipe.manipulation is None else _draw_manipulation(manip_rng, recipe.manipulation)
    )
    size = (recipe.width, recipe.height)
    frames = np.empty((recipe.frames, recipe.height, recipe.width, 3), dtype=np.uint8)
    boxes = np.empty((recipe.frames, 4), dtype=np.float32)
    for index in range(recipe.frames):
        t = index / recipe.fps
        view = _camera_view(scene, t, size)
        frame = _capture(scene, view, size)
        frame = _expose(frame, scene, t)
        frame += noise_rng.standard_normal(frame.shape, dtype=np.float32) * scene.noise_sigma
        ellipse = _face_ellipse(scene.face_box, view, size)
        if manipulation is not None:
            frame = _paste_face(frame, ellipse, manipulation, manip_rng)
        frames[index] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        boxes[index] = _ellipse_box(ellipse)
    return RenderedClip(frames, boxes)


def _draw_scene(rng: np.random.Generator, photo: SourcePhoto, recipe: ClipRecipe) -> _Scene:
    image, face_box = _vary_photo(rng, photo, recipe.width)
    face_w = face_box[2] - face_box[0]
    window = face_w / float(rng.uniform(0.38, 0.55))
    face_cx = (face_box[0] + face_box[2]) / 2
    face_cy = (face_box[1] + face_box[3]) / 2
    offset = rng.uniform(-0.05, 0.05, size=2) * window
    red, green, blue = (int(v) for v in np.asarray(image).reshape(-1, 3).mean(axis=0))
    return _Scene(
        image=image,
        fill=(red, green, blue),
        face_box=face_box,
        window=window,
        center=(face_cx + float(offset[0]), face_cy + float(offset[1])),
        pan_x=_Wave.draw(rng, float(rng.uniform(0.01, 0.06)) * window),
        pan_y=_Wave.draw(rng, float(rng.uniform(0.01, 0.05)) * window),
        zoom=_Wave.draw(rng, float(rng.uniform(0.0, 0.08))),
        roll_deg=_Wave.draw(rng, float(rng.uniform(0.0, 6.0))),
        gain=float(rng.uniform(0.85, 1.15)),
        gain_wave=_Wave.draw(rng, float(rng.uniform(0.0, 0.15))),
        gamma=float(rng.uniform(0.85, 1.15)),
        gamma_wave=_Wave.draw(rng, float(rng.uniform(0.0, 0.1))),
        noise_sigma=float(rng.uniform(1.0, 4.0)),
    )


def _vary_photo(
    rng: np.random.Generator, photo: SourcePhoto, frame_width: int
) -> tuple[Image.Image, Box]:
    """A per-clip variant of the photo: mirror, white balance, saturation, JPEG, and a resize so
    that the camera window spans about one frame width (keeps the crop free of aliasing)."""
    pixels = photo.image.astype(np.float32)
    x0, y0, x1, y1 = photo.face_box
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
        width = photo.image.shape[1]
        x0, x1 = width - x1, width - x0
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + (pixels - grey) * float(rng.uniform(0.75, 1.2))
    pixels = pixels * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    shrink = min(1.0, 1.3 * frame_width * 0.55 / (x1 - x0))
    if shrink < 1.0:
        size = (round(image.width * shrink), round(image.height * shrink))
        image = image.resize(size, Image.Resampling.LANCZOS)
        x0, y0, x1, y1 = (v * shrink for v in (x0, y0, x1, y1))

    quality = int(rng.integers(60, 96))
    image = _jpeg_roundtrip(image, quality)
    return image, (x0, y0, x1, y1)


def _jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _camera_view(scene: _Scene, t: float, size: tuple[int, int]) -> _View:
    width, height = size
    window = scene.window * (1.0 + scene.zoom(t))
    cx = scene.center[0] + scene.pan_x(t)
    cy = scene.center[1] + scene.pan_y(t)
    window_h = window * height / width
    if window < scene.image.width:
        cx = min(max(cx, window / 2), scene.image.width - window / 2)
    if window_h < scene.image.height:
        cy = min(max(cy, window_h / 2), scene.image.height - window_h / 2)
    return _View((cx, cy), window / width, math.radians(scene.roll_deg(t)))


def _capture(scene: _Scene, view: _View, size: tuple[int, int]) -> np.ndarray:
    """The frame the camera sees: an affine crop of the photo (float32, 0..255)."""
    width, height = size
    cos, sin = math.cos(view.angle) * view.scale, math.sin(view.angle) * view.scale
    cx, cy = view.center
    coefficients = (
        cos,
        -sin,
        cx - cos * width / 2 + sin * height / 2,
        sin,
        cos,
        cy - sin * width / 2 - cos * height / 2,
    )
    crop = scene.image.transform(
        size,
        Image.Transform.AFFINE,
        coefficients,
        resample=Image.Resampling.BILINEAR,
        fillcolor=scene.fill,
    )
    return np.asarray(crop, dtype=np.float32)


def _expose(frame: np.ndarray, scene: _Scene, t: float) -> np.ndarray:
    gain = scene.gain + scene.gain_wave(t)
    gamma = scene.gamma + scene.gamma_wave(t)
    return np.power(frame / 255.0, gamma, dtype=np.float32) * np.float32(255.0 * gain)


@dataclass(frozen=True)
class _Ellipse:
    """The face in frame pixels: centre, half-axes and the roll of its vertical axis."""

    center: tuple[float, float]
    half_axes: tuple[float, float]
    angle: float


def _face_ellipse(face_box: Box, view: _View, size: tuple[int, int]) -> _Ellipse:
    x0, y0, x1, y1 = face_box
    dx = (x0 + x1) / 2 - view.center[0]
    dy = (y0 + y1) / 2 - view.center[1]
    cos, sin = math.cos(view.angle), math.sin(view.angle)
    center = (
        (cos * dx + sin * dy) / view.scale + size[0] / 2,
        (-sin * dx + cos * dy) / view.scale + size[1] / 2,
    )
    half_axes = ((x1 - x0) / 2 / view.scale, (y1 - y0) / 2 / view.scale)
    return _Ellipse(center, half_axes, view.angle)


def _ellipse_box(ellipse: _Ellipse) -> tuple[float, float, float, float]:
    (cx, cy), (a, b) = ellipse.center, ellipse.half_axes
    cos, sin = abs(math.cos(ellipse.angle)), abs(math.sin(ellipse.angle))
    half_w = a * cos + b * sin
    half_h = a * sin + b * cos
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def _draw_manipulation(rng: np.random.Generator, strength: float) -> _Manipulation:
    blur = rng.random() < 0.6
    return _Manipulation(
        colour_gain=1.0 + strength * rng.uniform(-0.12, 0.12, size=3).astype(np.float32),
        colour_offset=strength * rng.uniform(-10.0, 10.0, size=3).astype(np.float32),
        blur_sigma=0.4 + 1.4 * strength if blur else 0.0,
        sharpen=0.0 if blur else 0.3 + 1.2 * strength,
        scale=1.0 + strength * float(rng.choice((-1.0, 1.0))) * float(rng.uniform(0.02, 0.07)),
        shift=(strength * float(rng.uniform(-2, 2)), strength * float(rng.uniform(-2, 2))),
        mask_axes=(float(rng.uniform(0.85, 1.05)), float(rng.uniform(0.95, 1.15))),
        feather=float(rng.uniform(0.05, 0.35 - 0.25 * strength)),
        alpha=float(min(1.0, 0.55 + 0.45 * strength + rng.uniform(0.0, 0.2))),
        jitter_px=0.3 + 1.5 * strength,
        jitter_scale=0.005 + 0.025 * strength,
        jitter_colour=0.005 + 0.03 * strength,
    )


def _paste_face(
    frame: np.ndarray, face: _Ellipse, manipulation: _Manipulation, rng: np.random.Generator
) -> np.ndarray:
    """Blend a transformed copy of the face back over it through a jittered soft ellipse."""
    jitter_x, jitter_y = rng.normal(0.0, manipulation.jitter_px, size=2)
    jitter_scale = float(rng.normal(0.0, manipulation.jitter_scale))
    jitter_colour = rng.normal(0.0, manipulation.jitter_colour, size=3).astype(np.float32)

    donor = _filter(frame, manipulation)
    donor = donor * (manipulation.colour_gain + jitter_colour) + manipulation.colour_offset
    center = (
        face.center[0] + manipulation.shift[0] + jitter_x,
        face.center[1] + manipulation.shift[1] + jitter_y,
    )
    donor = _rescale_about(donor, face.center, center, manipulation.scale * (1 + jitter_scale))
    half_axes = (
        face.half_axes[0] * manipulation.mask_axes[0] * (1 + jitter_scale),
        face.half_axes[1] * manipulation.mask_axes[1] * (1 + jitter_scale),
    )
    mask = _soft_ellipse(frame.shape[:2], center, half_axes, face.angle, manipulation.feather)
    mask = (mask * manipulation.alpha)[:, :, None]
    return mask * donor + (1.0 - mask) * frame


def _filter(frame: np.ndarray, manipulation: _Manipulation) -> np.ndarray:
    if manipulation.blur_sigma > 0:
        sigma = manipulation.blur_sigma
        return gaussian_filter(frame, sigma=(sigma, sigma, 0))
    smooth = gaussian_filter(frame, sigma=(1.0, 1.0, 0))
    return frame + manipulation.sharpen * (frame - smooth)


def _rescale_about(
    image: np.ndarray, source: tuple[float, float], target: tuple[float, float], scale: float
) -> np.ndarray:
    """Scale `image` by `scale` so that the point `source` lands on `target`."""
    height, width = image.shape[:2]
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    inverse = 1.0 / scale
    coefficients = (
        inverse,
        0.0,
        source[0] - target[0] * inverse,
        0.0,
        inverse,
        source[1] - target[1] * inverse,
    )
    moved = pil.transform(
        (width, height),
        Image.Transform.AFFINE,
        coefficients,
        resample=Image.Resampling.BILINEAR,
    )
    return np.asarray(moved, dtype=np.float32)


def _soft_ellipse(
    shape: tuple[int, int],
    center: tuple[float, float],
    half_axes: tuple[float, float],
    angle: float,
    feather: float,
) -> np.ndarray:
    """1 inside the ellipse, 0 outside, with a linear ramp `feather` (fraction of radius) wide."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dx, dy = xs - center[0], ys - center[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * dx - sin * dy) / half_axes[0]
    v = (sin * dx + cos * dy) / half_axes[1]
    radius = np.sqrt(u * u + v * v)
    return np.clip((1.0 - radius) / feather, 0.0, 1.0)
