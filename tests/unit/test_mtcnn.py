"""MTCNN detection: the batched window resize against PyTorch's area interpolation, and the
detector's boxes against facenet-pytorch's `detect_face` on the same frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from facenet_pytorch.models.utils.detect_face import detect_face
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data as skdata
from skimage.transform import resize

from models import mtcnn
from models.faces import PYRAMID_FACTOR, _load_mtcnn
from models.mtcnn import _area_resize_tables, area_resize_windows, detect_faces

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def area_reference(
    frames: torch.Tensor, index: list[int], windows: list[tuple[int, ...]], size: int
) -> torch.Tensor:
    return torch.cat(
        [
            F.interpolate(
                frames[i, :, top:bottom, left:right].unsqueeze(0).float(), (size, size), mode="area"
            )
            for i, (top, bottom, left, right) in zip(index, windows, strict=True)
        ]
    )


@st.composite
def frames_and_windows(draw: st.DrawFn) -> tuple[torch.Tensor, list[int], list[tuple[int, ...]]]:
    count, height, width = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 40)),
        draw(st.integers(1, 40)),
    )
    seed = draw(st.integers(0, 2**16))
    frames = torch.from_numpy(
        np.random.default_rng(seed).integers(0, 256, (count, 3, height, width), dtype=np.uint8)
    )
    index, windows = [], []
    for _ in range(draw(st.integers(1, 6))):
        top = draw(st.integers(0, height - 1))
        left = draw(st.integers(0, width - 1))
        bottom = draw(st.integers(top + 1, height))
        right = draw(st.integers(left + 1, width))
        index.append(draw(st.integers(0, count - 1)))
        windows.append((top, bottom, left, right))
    return frames, index, windows


@settings(max_examples=60, deadline=None)
@given(frames_and_windows(), st.sampled_from([5, 24, 48]))
def test_both_window_resizes_equal_area_interpolation(
    case: tuple[torch.Tensor, list[int], list[tuple[int, ...]]], size: int
) -> None:
    frames, index, windows = case
    expected = area_reference(frames, index, windows, size)
    as_tensors = torch.tensor(index), torch.tensor(windows)
    torch.testing.assert_close(area_resize_windows(frames, *as_tensors, size), expected)
    torch.testing.assert_close(
        _area_resize_tables(frames, *as_tensors, size), expected, atol=1e-4, rtol=0
    )


def test_tables_in_chunks_of_one_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 30, 20), np.uint8))
    index, windows = [3, 0, 2, 3], [(0, 30, 0, 20), (5, 9, 2, 19), (1, 2, 3, 4), (10, 29, 7, 8)]
    monkeypatch.setattr(mtcnn, "TABLE_BYTES", 1)
    torch.testing.assert_close(
        _area_resize_tables(frames, torch.tensor(index), torch.tensor(windows), 24),
        area_reference(frames, index, windows, 24),
        atol=1e-4,
        rtol=0,
    )


def test_window_resize_needs_uint8_frames() -> None:
    with pytest.raises(ValueError, match="uint8"):
        area_resize_windows(
            torch.zeros(1, 3, 8, 8), torch.tensor([0]), torch.tensor([[0, 8, 0, 8]]), 4
        )


def test_no_windows_give_an_empty_batch() -> None:
    frames = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    empty = torch.zeros(0, dtype=torch.int64), torch.zeros((0, 4), dtype=torch.int64)
    assert area_resize_windows(frames, *empty, 24).shape == (0, 3, 24, 24)
    assert _area_resize_tables(frames, *empty, 24).shape == (0, 3, 24, 24)


def test_boxes_equal_facenet_pytorch() -> None:
    astronaut = (resize(skdata.astronaut(), (200, 200), anti_aliasing=True) * 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (2, 200, 200, 3), dtype=np.uint8)
    frames = np.stack([np.roll(astronaut, shift, axis=1) for shift in (0, 30, 60)] + list(noise))
    nets = _load_mtcnn(torch.device("cpu"))
    thresholds = (0.6, 0.7, 0.7)
    with torch.inference_mode():
        expected, _ = detect_face(
            torch.from_numpy(frames), 20, *nets, list(thresholds), PYRAMID_FACTOR, "cpu"
        )
        found = detect_faces(
            torch.from_numpy(frames).permute(0, 3, 1, 2), 20, nets, thresholds, PYRAMID_FACTOR
        )
    assert [len(boxes) for boxes in found] == [len(boxes) for boxes in expected]
    assert all(len(boxes) for boxes in found[:3])
    for boxes, reference in zip(found, expected, strict=True):
        np.testing.assert_allclose(boxes, np.asarray(reference, dtype=np.float32), atol=1e-3)
