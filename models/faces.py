"""Face crops: the largest MTCNN face of each frame, cut as a square with a margin.

Geometry (shared by every path, so crops never depend on which branch produced them):

- A face crop is a square centred on the frame's face box, side ``max(w, h) * (1 + margin)``
  capped at the frame's longer side. Parts of the square outside the frame are padded with zeros
  (black), so the face stays centred and keeps its scale at the frame border.
- The whole frame (no face found, or detector ``"none"``) is letterboxed: the square of side
  ``max(H, W)`` centred on the frame, zero padded. Nothing of the frame is cut off.
- The square is resized to ``crop_size`` with antialiased bilinear interpolation (torchvision),
  which is deterministic on CPU.

A frame's face box is the largest detected face, smoothed over the video's face track when
``face.box_smoothing_s`` is above 0 (`models.tracking`): detector jitter would otherwise shake
the crops more than a pasted face flickers. With ``face.fill_gaps_s`` above 0, frames where the
detector missed a face between two detections of its track get the track's box, so the crops do
not jump between the face and the whole frame.

Detection runs MTCNN (facenet-pytorch) on the cropper's device, one batched call per frame size,
on frames downscaled so their longer side is at most ``face.detect_max_side``. ``min_face_size``
is measured in pixels of that detection image, which bounds the detector's image pyramid.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
from torch import nn
from torchvision.transforms.v2.functional import resize

from models.errors import WeightsError
from models.mtcnn import detect_faces
from models.spec import FaceSpec
from models.tracking import Box, smooth_boxes
from models.transfer import to_device

PixelBox = tuple[int, int, int, int]

PYRAMID_FACTOR = 0.709  # MTCNN's image-pyramid scale step (facenet-pytorch default)


@dataclass(frozen=True)
class FaceDetection:
    """One frame's largest face box (None: no face) and the frame on the cropper's device, so
    that cutting its crop later needs no second upload."""

    box: Box | None
    frame: torch.Tensor  # [3, H, W] uint8


@dataclass(frozen=True)
class FaceCrops:
    """One square crop per input frame, in input order."""

    crops: torch.Tensor  # [N, 3, S, S] uint8 RGB on the cropper's device
    has_face: list[bool]
    boxes: list[Box | None]  # chosen face box (x1, y1, x2, y2) in frame pixels


def frame_max_side(face: FaceSpec, crop_size: int) -> int:
    """The longest frame side the face stage can use: frames may be scaled down to it right
    after decoding without changing what it finds beyond the rounding of a resize.

    Detection sees at most `detect_max_side` pixels. A crop is cut from the full frame around a
    detected face, which is at least `min_face_size` detection pixels wide: at this side the
    square around the smallest such face still has `crop_size` pixels, so no crop is enlarged
    from fewer pixels than it was before (larger faces are shrunk to `crop_size` either way).
    Whole frames (detector "none") are letterboxed to `crop_size`.
    """
    if face.detector == "none":
        return crop_size
    smallest_square = face.min_face_size * (1.0 + face.margin)
    return max(face.detect_max_side, math.ceil(face.detect_max_side * crop_size / smallest_square))


def square_box(box: Box, margin: float, frame_w: int, frame_h: int) -> PixelBox:
    """Integer square ``(x0, y0, x1, y1)`` centred on ``box``, side ``max(w, h) * (1 + margin)``.

    The side is at least 1 and at most ``max(frame_w, frame_h)``; the square may extend past the
    frame border (the caller zero-pads those parts).
    """
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + margin)
    side_px = max(1, round(min(side, max(frame_w, frame_h))))
    x0 = round((x1 + x2) / 2 - side_px / 2)
    y0 = round((y1 + y2) / 2 - side_px / 2)
    return (x0, y0, x0 + side_px, y0 + side_px)


def crop_square(frame: torch.Tensor, square: PixelBox, size: int) -> torch.Tensor:
    """Cut ``square`` out of a ``[3, H, W]`` uint8 frame, zero padded, resized to ``size``."""
    height, width = frame.shape[-2:]
    x0, y0, x1, y1 = square
    scale = size / (x1 - x0)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix1 <= ix0 or iy1 <= iy0:
        raise ValueError(f"square {square} does not overlap the {width}x{height} frame")
    left, top = _scaled_offset(ix0 - x0, scale, size), _scaled_offset(iy0 - y0, scale, size)
    right = max(left + 1, _scaled_offset(ix1 - x0, scale, size))
    bottom = max(top + 1, _scaled_offset(iy1 - y0, scale, size))
    visible = resize(frame[:, iy0:iy1, ix0:ix1], [bottom - top, right - left], antialias=True)
    return F.pad(visible, (left, size - right, top, size - bottom))


def _scaled_offset(offset: int, scale: float, size: int) -> int:
    return min(size, max(0, round(offset * scale)))


def mtcnn_weights(file_name: str) -> dict[str, torch.Tensor]:
    """A state dict shipped in the facenet-pytorch wheel (`pnet.pt`, `rnet.pt`, `onet.pt`),
    loaded weights-only."""
    data = resources.files("facenet_pytorch") / "data"
    try:
        with resources.as_file(data / file_name) as path:
            return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise WeightsError(f"cannot load MTCNN weights {file_name} from {data}: {exc}") from exc


def _load_mtcnn(device: torch.device) -> tuple[nn.Module, nn.Module, nn.Module]:
    """P/R/O-nets with the weights shipped in the facenet-pytorch wheel."""
    nets: list[nn.Module] = []
    for net_class, file_name in ((PNet, "pnet.pt"), (RNet, "rnet.pt"), (ONet, "onet.pt")):
        net = net_class(pretrained=False)
        try:
            net.load_state_dict(mtcnn_weights(file_name))
        except RuntimeError as exc:
            raise WeightsError(f"MTCNN weights {file_name} do not fit: {exc}") from exc
        nets.append(net.to(device, memory_format=_memory_format(device)).eval())
    pnet, rnet, onet = nets
    return pnet, rnet, onet


def _memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CPU: the same boxes, 1.5-2.4x faster (P-net's max-pooling most of all);
    on CUDA it measured no faster."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


class FaceCropper:
    """Batched MTCNN face detection, face tracks and square face crops (see the module
    docstring). `crop` runs all three for one video; the worker runs `detect` on frames pooled
    from several videos, then `crop_detected` (`track` and `cut`) per video."""

    def __init__(self, face: FaceSpec, crop_size: int, device: torch.device | str = "cpu") -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.face = face
        self.crop_size = crop_size
        self.device = torch.device(device)
        self._nets = _load_mtcnn(self.device) if face.detector == "mtcnn" else None

    def crop(
        self, frames: Sequence[np.ndarray | torch.Tensor], timestamps_s: Sequence[float]
    ) -> FaceCrops:
        """One crop per frame of one video (frames in display order, at `timestamps_s`)."""
        return self.crop_detected(self.detect(frames), timestamps_s)

    def crop_detected(
        self, detections: Sequence[FaceDetection], timestamps_s: Sequence[float]
    ) -> FaceCrops:
        """The crops of one video's detections (in display order): `track`, then `cut`."""
        return self.cut(detections, self.track([d.box for d in detections], timestamps_s))

    def detect(self, frames: Sequence[np.ndarray | torch.Tensor]) -> list[FaceDetection]:
        """The largest face of each ``H x W x 3`` uint8 RGB frame (None where none is found; the
        whole frame for detector "none"). Frames may differ in size and come from several videos:
        one upload and one batched detection per frame size. Frames may also be tensors (NVDEC's
        frames on the GPU: no upload)."""
        detections: list[FaceDetection | None] = [None] * len(frames)
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, frame in enumerate(frames):
            _check_frame(frame, index)
            by_size[tuple(frame.shape[:2])].append(index)
        for indices in by_size.values():
            batch = to_device(_stacked([frames[i] for i in indices]), self.device)
            batch = batch.permute(0, 3, 1, 2)
            found = self._find_faces(batch)
            for index, frame, box in zip(indices, batch, found, strict=True):
                detections[index] = FaceDetection(box, frame)
        return [d for d in detections if d is not None]

    def track(self, boxes: Sequence[Box | None], timestamps_s: Sequence[float]) -> list[Box | None]:
        """One video's boxes smoothed over time and its detector's gaps filled
        (`FaceSpec.box_smoothing_s`, `FaceSpec.fill_gaps_s`; `models.tracking`)."""
        if self.face.detector == "none":  # whole frames: nothing to track
            return list(boxes)
        return smooth_boxes(boxes, timestamps_s, self.face.box_smoothing_s, self.face.fill_gaps_s)

    def cut(self, detections: Sequence[FaceDetection], boxes: Sequence[Box | None]) -> FaceCrops:
        """The square crop around the box given for each detection's frame (the letterboxed
        frame where it is None), on the cropper's device."""
        if len(detections) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes for {len(detections)} frames")
        size = self.crop_size
        crops = torch.zeros((len(boxes), 3, size, size), dtype=torch.uint8, device=self.device)
        for index, (detection, box) in enumerate(zip(detections, boxes, strict=True)):
            height, width = detection.frame.shape[-2:]
            square = (
                square_box((0.0, 0.0, float(width), float(height)), 0.0, width, height)
                if box is None
                else square_box(box, self.face.margin, width, height)
            )
            crops[index] = crop_square(detection.frame, square, size)
        return FaceCrops(crops=crops, has_face=[b is not None for b in boxes], boxes=list(boxes))

    def _find_faces(self, batch: torch.Tensor) -> list[Box | None]:
        """The largest face of each ``[B, 3, H, W]`` uint8 frame; the whole frame for "none"."""
        height, width = batch.shape[-2:]
        if self._nets is None:
            return [(0.0, 0.0, float(width), float(height))] * len(batch)
        scale = min(1.0, self.face.detect_max_side / max(height, width))
        small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
        if min(small_h, small_w) < self.face.min_face_size:
            return [None] * len(batch)
        small = batch if scale == 1.0 else resize(batch, [small_h, small_w], antialias=True)
        with torch.inference_mode():
            detections = detect_faces(
                small,
                self.face.min_face_size,
                self._nets,
                self.face.thresholds,
                PYRAMID_FACTOR,
            )
        return [
            _largest_box(found, width / small_w, height / small_h, width, height)
            for found in detections
        ]


def _largest_box(
    detections: np.ndarray, scale_x: float, scale_y: float, width: int, height: int
) -> Box | None:
    """The largest-area detection, scaled back to frame pixels and clipped to the frame."""
    boxes = np.asarray(detections, dtype=np.float64).reshape(-1, 5)[:, :4]
    if len(boxes) == 0:
        return None
    x1, y1, x2, y2 = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
    return (
        float(np.clip(x1 * scale_x, 0, width)),
        float(np.clip(y1 * scale_y, 0, height)),
        float(np.clip(x2 * scale_x, 0, width)),
        float(np.clip(y2 * scale_y, 0, height)),
    )


def _stacked(frames: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
    """``[B, H, W, 3]`` of frames of one size (numpy arrays or tensors, on their device)."""
    if all(isinstance(frame, torch.Tensor) for frame in frames):
        return torch.stack(list(frames))  # type: ignore[arg-type]
    host = [f.cpu().numpy() if isinstance(f, torch.Tensor) else f for f in frames]
    return torch.from_numpy(np.stack(host))


def _check_frame(frame: np.ndarray | torch.Tensor, index: int) -> None:
    uint8 = frame.dtype == (torch.uint8 if isinstance(frame, torch.Tensor) else np.uint8)
    if not uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"frame {index}: expected an HxWx3 uint8 RGB array, got {frame.dtype} {frame.shape}"
        )
