"""MTCNN face detection, batched over frames and candidate windows.

The three stages (P-net over an image pyramid, then R-net and O-net on the candidate windows)
follow `facenet_pytorch.models.utils.detect_face` and use its helpers and networks. One thing
differs: on an accelerator the candidate windows of the second and third stage are cut and
resized for all candidates at once (`area_resize_windows`), where facenet-pytorch loops over them
in Python with two tensor operations each. About 20 candidates per frame reach the second stage;
on an H200 that loop took 85% of the detection time, holding the GIL that the decoding threads
need. On CPU the loop stays (it is the cheaper way there). The boxes equal facenet-pytorch's up
to float rounding (`tests/unit/test_mtcnn.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    fixed_batch_process,
    generateBoundingBox,
    imresample,
    pad,
    rerec,
)
from torch import nn
from torchvision.ops.boxes import batched_nms

TABLE_BYTES = 64 << 20
"""Most memory for the summed-area tables of one chunk of frames."""


def area_resize_windows(
    frames: torch.Tensor,
    image_index: torch.Tensor,
    windows: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Windows of `[B, C, H, W]` uint8 frames, each resized to `size` x `size` by area
    interpolation, as float32 `[K, C, size, size]`.

    Window k is `frames[image_index[k], :, top:bottom, left:right]` for `windows[k] = (top,
    bottom, left, right)` (non-empty, inside the frame). Each output cell is the mean of the
    pixels it covers, as `F.interpolate(window.float(), size, mode="area")` (adaptive average
    pooling) computes it. On CPU it does exactly that per window; elsewhere it computes all
    windows at once from exact integer summed-area tables (frames in chunks of `TABLE_BYTES`).
    """
    if frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    resize = _area_resize_each if frames.device.type == "cpu" else _area_resize_tables
    return resize(frames, image_index, windows, size)


def _area_resize_tables(
    frames: torch.Tensor, image_index: torch.Tensor, windows: torch.Tensor, size: int
) -> torch.Tensor:
    """`area_resize_windows` for all windows at once, from summed-area tables."""
    count, channels, height, width = len(image_index), *frames.shape[1:]
    out = torch.empty((count, channels, size, size), device=frames.device)
    if count == 0:
        return out
    top, bottom, left, right = windows.to(frames.device, torch.int64).unbind(1)
    cells = torch.arange(size, device=frames.device)
    heights, widths = (bottom - top)[:, None], (right - left)[:, None]
    rows0 = top[:, None] + torch.div(cells * heights, size, rounding_mode="floor")
    rows1 = top[:, None] + torch.div((cells + 1) * heights + size - 1, size, rounding_mode="floor")
    cols0 = left[:, None] + torch.div(cells * widths, size, rounding_mode="floor")
    cols1 = left[:, None] + torch.div((cells + 1) * widths + size - 1, size, rounding_mode="floor")
    area = ((rows1 - rows0)[:, :, None] * (cols1 - cols0)[:, None, :]).unsqueeze(-1)
    rows, cols = height + 1, width + 1
    exact = torch.int32 if height * width * 255 < 2**31 else torch.int64
    chunk = max(1, TABLE_BYTES // (channels * rows * cols * exact.itemsize))
    index = image_index.to(frames.device, torch.int64)
    for first in range(0, len(frames), chunk):
        picked = ((index >= first) & (index < first + chunk)).nonzero().squeeze(1)
        if len(picked) == 0:
            continue
        pixels = frames[first : first + chunk].permute(0, 2, 3, 1).to(exact)
        table = F.pad(pixels.cumsum(1).cumsum(2), (0, 0, 1, 0, 1, 0)).reshape(-1, channels)
        start = ((index[picked] - first) * rows)[:, None, None]
        r0, r1 = start + rows0[picked][:, :, None], start + rows1[picked][:, :, None]
        c0, c1 = cols0[picked][:, None, :], cols1[picked][:, None, :]
        sums = (
            _corners(table, r1 * cols + c1)
            - _corners(table, r0 * cols + c1)
            - _corners(table, r1 * cols + c0)
            + _corners(table, r0 * cols + c0)
        )
        out[picked] = (sums / area[picked]).permute(0, 3, 1, 2).float()
    return out


def _area_resize_each(
    frames: torch.Tensor, image_index: torch.Tensor, windows: torch.Tensor, size: int
) -> torch.Tensor:
    """`area_resize_windows` one window at a time: cheaper on CPU, where an operation costs no
    kernel launch but the tables cost a pass over every frame."""
    out = torch.empty((len(image_index), frames.shape[1], size, size))
    for k, (frame, (top, bottom, left, right)) in enumerate(
        zip(image_index.tolist(), windows.tolist(), strict=True)
    ):
        window = frames[frame, :, top:bottom, left:right].unsqueeze(0).float()
        out[k] = F.interpolate(window, size=(size, size), mode="area")[0]
    return out


def _net_input(pixels: torch.Tensor) -> torch.Tensor:
    """The MTCNN nets' input scaling: (pixel - 127.5) / 128."""
    return (pixels - 127.5) * 0.0078125


def _corners(table: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Rows `flat` (`[K, S, S]` indices) of the `[N, C]` table, as `[K, S, S, C]`."""
    return table.index_select(0, flat.reshape(-1)).view(*flat.shape, table.shape[1])


def _windows(
    boxes: torch.Tensor, image_index: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """facenet-pytorch's candidate windows (boxes clipped to the image), as (top, bottom, left,
    right) rows; candidates whose window is empty are dropped with their box and image index."""
    y, ey, x, ex = pad(boxes, width, height)
    windows = torch.from_numpy(np.stack([y - 1, ey, x - 1, ex], axis=1).astype(np.int64))
    keep = torch.from_numpy((ey > y - 1) & (ex > x - 1)).to(boxes.device)
    return boxes[keep], image_index[keep], windows[keep.cpu()]


def _refine(
    frames: torch.Tensor,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    net: nn.Module,
    size: int,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score the candidates with `net` on their `size` px windows; keep those above
    `threshold`: (boxes with scores, image index, box regression)."""
    height, width = frames.shape[2:4]
    boxes, image_index, windows = _windows(boxes, image_index, width, height)
    crops = _net_input(area_resize_windows(frames, image_index, windows, size))
    out = fixed_batch_process(crops, net)
    score = out[-1][:, 1]
    passed = score > threshold
    boxes = torch.cat((boxes[passed, :4], score[passed].unsqueeze(1)), dim=1)
    return boxes, image_index[passed], out[0][passed]


def detect_faces(
    frames: torch.Tensor,
    min_face_size: int,
    nets: tuple[nn.Module, nn.Module, nn.Module],
    thresholds: Sequence[float],
    factor: float,
) -> list[np.ndarray]:
    """Face boxes `[n, 5]` (x1, y1, x2, y2, score) of each `[B, 3, H, W]` uint8 frame (on the
    nets' device), as `detect_face` of facenet-pytorch finds them."""
    pnet, rnet, onet = nets
    images = frames.float()
    height, width = images.shape[2:4]
    scale = 12.0 / min_face_size
    smallest = min(height, width) * scale
    boxes_by_scale, index_by_scale, picks, offset = [], [], [], 0
    while smallest >= 12:
        resized = imresample(images, (int(height * scale + 1), int(width * scale + 1)))
        regression, probability = pnet(_net_input(resized))
        found, index = generateBoundingBox(regression, probability[:, 1], scale, thresholds[0])
        picks.append(batched_nms(found[:, :4], found[:, 4], index, 0.5) + offset)
        boxes_by_scale.append(found)
        index_by_scale.append(index)
        offset += len(found)
        scale *= factor
        smallest *= factor
    boxes = torch.cat(boxes_by_scale)[torch.cat(picks)]
    image_index = torch.cat(index_by_scale)[torch.cat(picks)]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
    boxes, image_index = boxes[pick], image_index[pick]
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack(
        [
            boxes[:, 0] + boxes[:, 5] * box_w,
            boxes[:, 1] + boxes[:, 6] * box_h,
            boxes[:, 2] + boxes[:, 7] * box_w,
            boxes[:, 3] + boxes[:, 8] * box_h,
            boxes[:, 4],
        ],
        dim=1,
    )
    boxes = rerec(boxes)
    if len(boxes):
        boxes, image_index, shift = _refine(frames, boxes, image_index, rnet, 24, thresholds[1])
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
        boxes = rerec(bbreg(boxes[pick], shift[pick]))
        image_index = image_index[pick]
    if len(boxes):
        boxes, image_index, shift = _refine(frames, boxes, image_index, onet, 48, thresholds[2])
        boxes = bbreg(boxes, shift)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_index, 0.7, "Min")
        boxes, image_index = boxes[pick], image_index[pick]
    found_boxes = boxes.cpu().numpy()
    found_index = image_index.cpu().numpy()
    return [found_boxes[found_index == i] for i in range(len(frames))]
