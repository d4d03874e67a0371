"""Face photographs that installed packages ship, used as the identities of the synthetic dataset.

Sources (each one is an identity `group`):
- `astronaut`: `skimage.data.astronaut()` (Eileen Collins, 512x512 RGB);
- `gracehopper`: matplotlib's sample `grace_hopper.jpg` (512x600 RGB);
- `cameraman`: `skimage.data.camera()` (512x512 grey);
- `lfw000`..`lfw099`: the 100 face crops of `skimage.data.lfw_subset()` (25x25 grey), tinted and
  upscaled onto a plain backdrop. LFW may hold the same person twice; they count as distinct.

Face boxes of the three photographs were found once with `facenet_pytorch.MTCNN` and are fixed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from matplotlib import cbook
from PIL import Image
from skimage import data as skdata

Box = tuple[float, float, float, float]

LFW_COUNT = 100
_LFW_CANVAS = 256
_LFW_FACE_SIDE = 120
_PHOTO_FACE_BOXES: dict[str, Box] = {
    "astronaut": (181.0, 62.0, 268.0, 172.0),
    "gracehopper": (174.0, 120.0, 356.0, 340.0),
    "cameraman": (199.0, 119.0, 254.0, 192.0),
}
_SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 134], [198, 134, 96], [141, 85, 54]],
    dtype=np.float32,
)

SOURCE_IDS: tuple[str, ...] = (
    *_PHOTO_FACE_BOXES,
    *(f"lfw{i:03d}" for i in range(LFW_COUNT)),
)


@dataclass(frozen=True)
class SourcePhoto:
    """An RGB photograph and the box `(x0, y0, x1, y1)` of its face, in pixels."""

    source_id: str
    image: np.ndarray
    face_box: Box


@cache
def load_source(source_id: str) -> SourcePhoto:
    """The photograph of one identity (cached per process)."""
    if source_id in _PHOTO_FACE_BOXES:
        return SourcePhoto(source_id, _load_photo(source_id), _PHOTO_FACE_BOXES[source_id])
    if source_id.startswith("lfw") and source_id[3:].isdigit():
        index = int(source_id[3:])
        if index < LFW_COUNT:
            return _lfw_photo(source_id, index)
    raise KeyError(f"unknown synthetic source {source_id!r}")


def _load_photo(source_id: str) -> np.ndarray:
    if source_id == "astronaut":
        return skdata.astronaut()
    if source_id == "gracehopper":
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    return np.repeat(skdata.camera()[:, :, None], 3, axis=2)


@cache
def _lfw_faces() -> np.ndarray:
    return skdata.lfw_subset()[:LFW_COUNT]


def _lfw_photo(source_id: str, index: int) -> SourcePhoto:
    """One LFW crop, tinted with a skin tone, upscaled and placed on a soft two-colour backdrop."""
    rng = np.random.default_rng([7, index])
    side = _LFW_CANVAS
    top, bottom = rng.uniform(40, 220, size=(2, 3)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (side, side, 3)).copy()

    grey = _lfw_faces()[index].astype(np.float32)
    tone = _SKIN_TONES[index % len(_SKIN_TONES)]
    tinted = np.clip(grey[:, :, None] * tone * 1.1, 0, 255).astype(np.uint8)
    face = np.asarray(
        Image.fromarray(tinted).resize((_LFW_FACE_SIDE, _LFW_FACE_SIDE), Image.Resampling.BICUBIC)
    )
    x0 = (side - _LFW_FACE_SIDE) // 2
    y0 = (side - _LFW_FACE_SIDE) // 2 - 8
    canvas[y0 : y0 + _LFW_FACE_SIDE, x0 : x0 + _LFW_FACE_SIDE] = face
    inset = 0.08 * _LFW_FACE_SIDE
    box = (x0 + inset, y0 + inset / 2, x0 + _LFW_FACE_SIDE - inset, y0 + _LFW_FACE_SIDE)
    return SourcePhoto(source_id, canvas.astype(np.uint8), box)
