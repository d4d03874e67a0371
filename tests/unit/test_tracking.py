"""Face tracks: local linear smoothing of a video's face boxes over time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.tracking import Box, smooth_boxes


def _moving(count: int, step_s: float = 0.1) -> tuple[list[Box | None], list[float]]:
    """A 40 px face moving steadily right and down, growing 0.5 px per frame."""
    boxes: list[Box | None] = []
    for index in range(count):
        x, y, side = 20 + 3.0 * index, 30 + 1.5 * index, 40 + 0.5 * index
        boxes.append((x, y, x + side, y + side))
    return boxes, [index * step_s for index in range(count)]


def _array(boxes: list[Box | None]) -> np.ndarray:
    return np.array([box if box is not None else (np.nan,) * 4 for box in boxes])


def test_zero_sigma_returns_the_boxes() -> None:
    boxes, stamps = _moving(5)
    boxes[2] = None
    assert smooth_boxes(boxes, stamps, 0.0) == boxes


@given(count=st.integers(2, 30), sigma=st.floats(0.05, 5.0))
def test_steady_motion_passes_unchanged_also_at_the_ends(count: int, sigma: float) -> None:
    boxes, stamps = _moving(count)
    np.testing.assert_allclose(_array(smooth_boxes(boxes, stamps, sigma)), _array(boxes), atol=1e-6)


def test_detector_jitter_is_reduced() -> None:
    boxes, stamps = _moving(36, step_s=1 / 12)
    rng = np.random.default_rng(0)
    noisy: list[Box | None] = [
        tuple(float(v) for v in np.array(box) + rng.normal(0, 1.5, 4)) for box in boxes
    ]
    smoothed = smooth_boxes(noisy, stamps, 0.25)
    raw_error = np.sqrt(np.mean((_array(noisy) - _array(boxes)) ** 2))
    smooth_error = np.sqrt(np.mean((_array(smoothed) - _array(boxes)) ** 2))
    assert smooth_error < raw_error / 2


def test_missing_faces_stay_missing_and_the_track_goes_on_across_them() -> None:
    boxes, stamps = _moving(9)
    boxes[4] = None
    jittered = list(boxes)
    jittered[3] = (26.0, 36.0, 68.0, 78.0)  # 2 px off the line
    smoothed = smooth_boxes(jittered, stamps, 0.2)
    assert smoothed[4] is None
    assert smoothed[5] != boxes[5]  # pulled by frame 3's error: one track across the gap


def test_a_jump_to_another_face_starts_a_new_track() -> None:
    first, stamps = _moving(6)
    second: list[Box | None] = [(200.0 + i, 10.0, 260.0 + i, 70.0) for i in range(6)]
    later = [0.6 + s for s in stamps]
    joined = smooth_boxes(first + second, stamps + later, 1.0)
    assert joined[:6] == smooth_boxes(first, stamps, 1.0)
    assert joined[6:] == smooth_boxes(second, later, 1.0)


def test_frames_far_apart_in_time_barely_move() -> None:
    boxes: list[Box | None] = [(10.0, 10.0, 50.0, 50.0), (12.0, 10.0, 52.0, 50.0)]
    boxes.append((11.0, 10.0, 51.0, 50.0))
    smoothed = smooth_boxes(boxes, [0.0, 5.0, 10.0], 0.5)
    np.testing.assert_allclose(_array(smoothed), _array(boxes), atol=1e-6)


def test_one_box_and_repeated_timestamps() -> None:
    assert smooth_boxes([(1.0, 2.0, 3.0, 4.0)], [0.0], 1.0) == [(1.0, 2.0, 3.0, 4.0)]
    same_time = smooth_boxes([(0.0, 0.0, 10.0, 10.0), (2.0, 0.0, 12.0, 10.0)], [1.0, 1.0], 1.0)
    np.testing.assert_allclose(_array(same_time), [[1.0, 0.0, 11.0, 10.0]] * 2)


def test_rejects_mismatched_lengths_and_negative_sigma() -> None:
    with pytest.raises(ValueError, match="timestamps"):
        smooth_boxes([None, None], [0.0], 1.0)
    with pytest.raises(ValueError, match="negative"):
        smooth_boxes([None], [0.0], -1.0)
    with pytest.raises(ValueError, match="negative"):
        smooth_boxes([None], [0.0], 1.0, max_gap_s=-1.0)


@given(
    count=st.integers(3, 30),
    sigma=st.sampled_from([0.0, 0.1, 0.5, 2.0]),
    missing=st.sets(st.integers(1, 28), max_size=20),
)
def test_filled_gaps_lie_on_steady_motion(count: int, sigma: float, missing: set[int]) -> None:
    boxes, stamps = _moving(count)  # runs of at most 2 missing frames keep one track
    holes = {i for i in missing if i < count - 1 and not {i - 1, i - 2} <= missing}
    with_holes: list[Box | None] = [None if i in holes else b for i, b in enumerate(boxes)]
    filled = smooth_boxes(with_holes, stamps, sigma, max_gap_s=10.0)
    np.testing.assert_allclose(_array(filled), _array(boxes), atol=1e-6)


def test_only_gaps_between_detections_within_max_gap_are_filled() -> None:
    boxes, stamps = _moving(12)  # 0.1 s apart
    missing = {0, 2, 3, 6, 7, 8, 11}
    holes: list[Box | None] = [None if i in missing else b for i, b in enumerate(boxes)]
    filled = smooth_boxes(holes, stamps, 0.0, max_gap_s=0.35)
    assert [i for i, box in enumerate(filled) if box is None] == [0, 6, 7, 8, 11]
    assert filled[2] is not None and filled[3] is not None
    np.testing.assert_allclose(_array(filled[2:4]), _array(boxes[2:4]), atol=1e-6)
    assert smooth_boxes(holes, stamps, 0.0) == holes
    repeated: list[Box | None] = [(0.0, 0.0, 40.0, 40.0), None, (2.0, 0.0, 42.0, 40.0)]
    assert smooth_boxes(repeated, [0.5, 0.5, 0.5], 0.0)[1] is None  # 0 fills none


def test_no_gap_is_filled_across_a_jump_to_another_face() -> None:
    stamps = [0.0, 0.1, 0.2]
    boxes: list[Box | None] = [(0.0, 0.0, 40.0, 40.0), None, (200.0, 0.0, 240.0, 40.0)]
    assert smooth_boxes(boxes, stamps, 0.5, max_gap_s=1.0)[1] is None
