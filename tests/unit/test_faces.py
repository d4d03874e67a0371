"""Face crops: square-box geometry, MTCNN detection on skimage's astronaut, no-face handling."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from models.faces import FaceCropper, FaceCrops, crop_square, square_box
from models.spec import FaceSpec
from models.tracking import smooth_boxes

CROP = 64
# The astronaut's face in skimage's 512x512 image: a point between the eyes and nose.
FACE_POINT_512 = (224.0, 115.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def resized(image: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))


@pytest.fixture(scope="module")
def cropper() -> FaceCropper:
    return FaceCropper(FaceSpec(), CROP)


@pytest.fixture(scope="module")
def small_face_cropper() -> FaceCropper:
    return FaceCropper(FaceSpec(min_face_size=20), CROP)


def centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def contains(box: tuple[float, float, float, float], point: tuple[float, float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def crop_all(cropper: FaceCropper, frames: list[np.ndarray]) -> FaceCrops:
    """Crops of frames pooled from anywhere: detected together, each cut around its own box."""
    detections = cropper.detect(frames)
    return cropper.cut(detections, [d.box for d in detections])


def test_square_box_inside_frame() -> None:
    assert square_box((40, 50, 60, 90), 0.5, 200, 200) == (20, 40, 80, 100)


def test_square_box_extends_past_the_border() -> None:
    assert square_box((0, 0, 30, 20), 1.0, 200, 100) == (-15, -20, 45, 40)


def test_square_box_is_capped_at_the_longer_frame_side() -> None:
    assert square_box((0, 0, 100, 80), 1.0, 100, 80) == (0, -10, 100, 90)


@given(
    x=st.floats(0, 500),
    y=st.floats(0, 300),
    w=st.floats(1, 400),
    h=st.floats(1, 400),
    margin=st.floats(0, 2),
)
def test_square_box_is_a_centred_square(
    x: float, y: float, w: float, h: float, margin: float
) -> None:
    frame_w, frame_h = 640, 360
    x0, y0, x1, y1 = square_box((x, y, x + w, y + h), margin, frame_w, frame_h)
    side = x1 - x0
    assert side == y1 - y0
    assert 1 <= side <= max(frame_w, frame_h)
    assert side == max(1, round(min(max(w, h) * (1 + margin), max(frame_w, frame_h))))
    assert abs((x0 + x1) / 2 - (x + w / 2)) <= 1
    assert abs((y0 + y1) / 2 - (y + h / 2)) <= 1


def test_crop_square_zero_pads_outside_the_frame() -> None:
    frame = torch.full((3, 10, 10), 255, dtype=torch.uint8)
    crop = crop_square(frame, (-10, 0, 10, 20), 20)
    assert crop.shape == (3, 20, 20)
    assert crop.dtype == torch.uint8
    assert bool((crop[:, :10, 10:] == 255).all())
    assert int(crop[:, :, :10].sum()) == 0
    assert int(crop[:, 10:, :].sum()) == 0


def test_crop_square_rejects_a_square_outside_the_frame() -> None:
    with pytest.raises(ValueError, match="does not overlap"):
        crop_square(torch.zeros((3, 10, 10), dtype=torch.uint8), (20, 20, 30, 30), 8)


def test_finds_the_astronaut_face_at_two_frame_sizes(
    cropper: FaceCropper, astronaut: np.ndarray
) -> None:
    frame_256 = resized(astronaut, 256)
    result = crop_all(cropper, [frame_256, astronaut, frame_256])
    assert result.has_face == [True, True, True]
    assert result.crops.shape == (3, 3, CROP, CROP)
    assert result.crops.dtype == torch.uint8
    assert result.boxes[0] == result.boxes[2]
    for box, side in ((result.boxes[0], 256), (result.boxes[1], 512)):
        assert box is not None
        scale = side / 512
        assert contains(box, (FACE_POINT_512[0] * scale, FACE_POINT_512[1] * scale))
        assert 0.1 * side <= box[2] - box[0] <= 0.35 * side
    small, large = result.boxes[0], result.boxes[1]
    assert small is not None and large is not None
    assert np.allclose(np.array(small) * 2, np.array(large), atol=10)


def test_detection_on_a_downscaled_frame_maps_boxes_back(astronaut: np.ndarray) -> None:
    full = crop_all(FaceCropper(FaceSpec(min_face_size=20), CROP), [astronaut]).boxes[0]
    downscaled = FaceCropper(FaceSpec(min_face_size=20, detect_max_side=128), CROP)
    box = crop_all(downscaled, [astronaut]).boxes[0]
    assert full is not None and box is not None
    assert np.allclose(np.array(box), np.array(full), atol=0.1 * 512)
    assert contains(box, FACE_POINT_512)


def test_face_crop_is_centred_on_the_face(cropper: FaceCropper, astronaut: np.ndarray) -> None:
    result = crop_all(cropper, [astronaut])
    box = result.boxes[0]
    assert box is not None
    x0, y0, x1, y1 = square_box(box, cropper.face.margin, 512, 512)
    expected = crop_square(torch.from_numpy(astronaut).permute(2, 0, 1), (x0, y0, x1, y1), CROP)
    assert torch.equal(result.crops[0], expected)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((120, 160, 3), dtype=np.uint8),
        np.full((128, 128, 3), 128, dtype=np.uint8),
        np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8),
    ],
    ids=["blank", "uniform", "noise"],
)
def test_no_face_on_frames_without_faces(cropper: FaceCropper, frame: np.ndarray) -> None:
    result = crop_all(cropper, [frame])
    assert result.has_face == [False]
    assert result.boxes == [None]
    assert result.crops.shape == (1, 3, CROP, CROP)


def test_no_face_crop_is_the_letterboxed_frame(cropper: FaceCropper) -> None:
    frame = np.full((100, 200, 3), 128, dtype=np.uint8)
    crop = crop_all(cropper, [frame]).crops[0]
    assert bool((crop[:, CROP // 2, :] == 128).all())
    assert int(crop[:, 0, :].sum()) == 0
    assert int(crop[:, CROP - 1, :].sum()) == 0


def test_frames_smaller_than_the_minimum_face_have_no_face(cropper: FaceCropper) -> None:
    result = crop_all(cropper, [np.full((30, 30, 3), 90, dtype=np.uint8)])
    assert result.has_face == [False]


def test_largest_face_is_chosen(small_face_cropper: FaceCropper, astronaut: np.ndarray) -> None:
    big, small = resized(astronaut, 256), resized(astronaut, 128)
    assert crop_all(small_face_cropper, [small]).has_face == [True]
    big_first = np.zeros((256, 384, 3), dtype=np.uint8)
    big_first[:, :256] = big
    big_first[64:192, 256:] = small
    small_first = np.zeros((256, 384, 3), dtype=np.uint8)
    small_first[64:192, :128] = small
    small_first[:, 128:] = big
    first, second = crop_all(small_face_cropper, [big_first, small_first]).boxes
    assert first is not None and second is not None
    assert contains(first, (FACE_POINT_512[0] / 2, FACE_POINT_512[1] / 2))
    assert contains(second, (128 + FACE_POINT_512[0] / 2, FACE_POINT_512[1] / 2))


def test_detector_none_uses_the_whole_frame() -> None:
    cropper = FaceCropper(FaceSpec(detector="none"), CROP)
    frame = np.full((100, 200, 3), 77, dtype=np.uint8)
    result = crop_all(cropper, [frame, frame])
    assert result.has_face == [True, True]
    assert result.boxes == [(0.0, 0.0, 200.0, 100.0)] * 2
    assert bool((result.crops[:, :, CROP // 2, :] == 77).all())
    assert int(result.crops[:, :, 0, :].sum()) == 0


def test_no_frames_give_an_empty_batch(cropper: FaceCropper) -> None:
    result = crop_all(cropper, [])
    assert result.crops.shape == (0, 3, CROP, CROP)
    assert result.has_face == []


def test_rejects_frames_that_are_not_rgb_uint8(cropper: FaceCropper) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        crop_all(cropper, [np.zeros((32, 32), dtype=np.uint8)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        crop_all(cropper, [np.zeros((32, 32, 3), dtype=np.float32)])


def test_crops_are_deterministic(cropper: FaceCropper, astronaut: np.ndarray) -> None:
    frames = [resized(astronaut, 256), np.zeros((64, 96, 3), dtype=np.uint8)]
    assert torch.equal(crop_all(cropper, frames).crops, crop_all(cropper, frames).crops)


def test_finds_faces_in_decoded_h264_frames(
    cropper: FaceCropper, astronaut: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "astronaut.mp4"
    frame = resized(astronaut, 256)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for _ in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 4
    result = crop_all(cropper, decoded)
    assert result.has_face == [True] * 4
    for box in result.boxes:
        assert box is not None
        assert contains(box, (FACE_POINT_512[0] / 2, FACE_POINT_512[1] / 2))


def _panning_astronaut(astronaut: np.ndarray, count: int) -> list[np.ndarray]:
    """The astronaut's face moving steadily right across a 256 px frame, 3 px per frame."""
    face = resized(astronaut, 256)
    return [np.roll(face, 3 * index, axis=1) for index in range(count)]


def test_crop_smooths_a_videos_face_boxes_over_time(astronaut: np.ndarray) -> None:
    frames = _panning_astronaut(astronaut, 8)
    stamps = [index / 10 for index in range(len(frames))]
    smoothing = FaceCropper(FaceSpec(box_smoothing_s=0.3), CROP)
    detections = smoothing.detect(frames)
    detected = [d.box for d in detections]
    result = smoothing.crop(frames, stamps)
    assert result.boxes == smooth_boxes(detected, stamps, 0.3)
    assert result.boxes != detected
    assert torch.equal(result.crops, smoothing.cut(detections, result.boxes).crops)
    steps = np.diff([centre(box)[0] for box in result.boxes if box is not None])
    raw_steps = np.diff([centre(box)[0] for box in detected if box is not None])
    assert np.abs(steps - 3).max() <= np.abs(raw_steps - 3).max()


def test_crop_without_smoothing_cuts_the_detected_boxes(
    cropper: FaceCropper, astronaut: np.ndarray
) -> None:
    frames = _panning_astronaut(astronaut, 4)
    result = cropper.crop(frames, [0.0, 0.1, 0.2, 0.3])
    assert result.boxes == [d.box for d in cropper.detect(frames)]
    assert torch.equal(result.crops, crop_all(cropper, frames).crops)


def test_whole_frames_are_not_tracked() -> None:
    cropper = FaceCropper(FaceSpec(detector="none", box_smoothing_s=1.0), CROP)
    frames = [np.full((101, 161, 3), 50, dtype=np.uint8)] * 3
    result = cropper.crop(frames, [0.0, 0.1, 0.2])
    assert result.boxes == [(0.0, 0.0, 161.0, 101.0)] * 3


def test_cut_needs_one_box_per_frame(cropper: FaceCropper) -> None:
    with pytest.raises(ValueError, match="boxes for"):
        cropper.cut(cropper.detect([np.zeros((32, 32, 3), dtype=np.uint8)]), [])


def test_a_missed_face_between_two_detections_gets_the_tracks_box(astronaut: np.ndarray) -> None:
    frames = _panning_astronaut(astronaut, 5)
    frames[2] = np.full_like(frames[2], 128)  # the detector finds nothing here
    stamps = [index / 10 for index in range(len(frames))]
    filling = FaceCropper(FaceSpec(box_smoothing_s=0.3, fill_gaps_s=0.2), CROP)
    result = filling.crop(frames, stamps)
    detected = [d.box for d in filling.detect(frames)]
    assert detected[2] is None
    assert result.has_face == [True] * 5
    assert result.boxes == smooth_boxes(detected, stamps, 0.3, max_gap_s=0.2)
    unfilled = FaceCropper(FaceSpec(box_smoothing_s=0.3), CROP).crop(frames, stamps)
    assert unfilled.has_face[2] is False


def test_gap_filling_is_left_out_of_the_spec_json_when_off() -> None:
    assert "fill_gaps_s" not in FaceSpec().model_dump(mode="json")
    filling = FaceSpec(fill_gaps_s=1.0)
    assert filling.model_dump(mode="json")["fill_gaps_s"] == 1.0
    assert FaceSpec.model_validate_json(filling.model_dump_json()) == filling
