"""Face tracks: a video's per-frame face boxes smoothed over time.

A face detector's boxes jitter from frame to frame by a pixel or two even when the face moves
smoothly; crops cut from them shake by as much, which hides the frame-to-frame flicker a pasted
face leaves. Smoothing a video's boxes over its sampled frames keeps the camera's motion and drops
the detector's noise.

`smooth_boxes` fits, for each frame, a straight line through the box centres and sizes of the
frames around it, weighted by a Gaussian of their time distance (local linear regression): steady
motion passes unchanged and unbiased, also at the ends of a clip, where a moving average lags.
Frames far apart in time (sparse sampling) barely influence each other. A track is cut where the
box jumps (a scene cut, or another face becomes the largest), so two faces are never averaged.

The detector also misses a face now and then (a dark or blurred face, a turned head). Such a frame
would fall back to no face, and a crop sequence that jumps between a face and the whole frame
looks like the flicker of a pasted face. With `max_gap_s` the frames between two detections of
one track, at most that far apart in time, get the track's box at their own time (the same local
line; linear interpolation when nothing is smoothed).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

Box = tuple[float, float, float, float]

MIN_TRACK_IOU = 0.3
"""Consecutive boxes that overlap less than this start a new track."""


def smooth_boxes(
    boxes: Sequence[Box | None],
    timestamps_s: Sequence[float],
    sigma_s: float,
    max_gap_s: float = 0.0,
) -> list[Box | None]:
    """`boxes` (x1, y1, x2, y2; None where no face was found) smoothed over time; `sigma_s` is the
    Gaussian's standard deviation in seconds (0: no smoothing). Frames without a box between two
    detections of one track at most `max_gap_s` apart get the track's box (0: none do)."""
    if len(boxes) != len(timestamps_s):
        raise ValueError(f"{len(boxes)} boxes for {len(timestamps_s)} timestamps")
    if sigma_s < 0 or max_gap_s < 0:
        raise ValueError(f"sigma_s and max_gap_s must not be negative, got {sigma_s}, {max_gap_s}")
    smoothed: list[Box | None] = list(boxes)
    for track in _tracks(boxes):
        at = track + _gaps(track, timestamps_s, max_gap_s)
        if sigma_s == 0 and len(at) == len(track):
            continue
        times = np.asarray([timestamps_s[i] for i in track], dtype=np.float64)
        values = np.asarray([_centre_size(boxes[i]) for i in track], dtype=np.float64)
        at_times = np.asarray([timestamps_s[i] for i in at], dtype=np.float64)
        rows = (
            _local_linear(times, values, sigma_s, at_times)
            if sigma_s > 0
            else np.stack([np.interp(at_times, times, column) for column in values.T], axis=1)
        )
        for i, row in zip(at, rows, strict=True):
            smoothed[i] = _corners(row)
    return smoothed


def _gaps(track: list[int], timestamps_s: Sequence[float], max_gap_s: float) -> list[int]:
    """The frames between consecutive detections of `track` that are at most `max_gap_s` apart
    (none when `max_gap_s` is 0, even where timestamps repeat)."""
    if max_gap_s == 0:
        return []
    return [
        missing
        for before, after in pairwise(track)
        if after - before > 1 and timestamps_s[after] - timestamps_s[before] <= max_gap_s
        for missing in range(before + 1, after)
    ]


def _tracks(boxes: Sequence[Box | None]) -> list[list[int]]:
    """Indices of the found boxes, split where consecutive ones overlap less than MIN_TRACK_IOU."""
    tracks: list[list[int]] = []
    previous: Box | None = None
    for index, box in enumerate(boxes):
        if box is None:
            continue
        if previous is None or _iou(previous, box) < MIN_TRACK_IOU:
            tracks.append([])
        tracks[-1].append(index)
        previous = box
    return tracks


def _local_linear(
    times: np.ndarray, values: np.ndarray, sigma_s: float, at: np.ndarray
) -> np.ndarray:
    """At each time of `at`, the Gaussian-weighted least-squares line through the rows of
    `values` [N, K] (observed at `times`), evaluated there."""
    offsets = times[None, :] - at[:, None]  # [at, of]
    weights = np.exp(-0.5 * (offsets / sigma_s) ** 2)
    s0 = weights.sum(axis=1)
    s1 = (weights * offsets).sum(axis=1)
    s2 = (weights * offsets**2).sum(axis=1)
    y0 = weights @ values
    y1 = (weights * offsets) @ values
    determinant = s0 * s2 - s1 * s1
    flat = determinant <= 1e-12 * np.maximum(s0 * s2, 1e-300)  # one distinct time: no slope
    safe = np.where(flat, 1.0, determinant)
    line = (s2[:, None] * y0 - s1[:, None] * y1) / safe[:, None]
    mean = y0 / s0[:, None]
    return np.where(flat[:, None], mean, line)


def _centre_size(box: Box | None) -> tuple[float, float, float, float]:
    assert box is not None
    x1, y1, x2, y2 = box
    return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


def _corners(row: np.ndarray) -> Box:
    cx, cy, width, height = (float(v) for v in row)
    width, height = max(width, 1e-3), max(height, 1e-3)
    return (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)


def _iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
