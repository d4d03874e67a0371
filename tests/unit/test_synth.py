"""The synthetic dataset: files, labels, determinism, where fakes differ, faces found."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from training.cli import main
from training.dataset_card import read_card, training_data
from training.manifest import read_labels
from training.synth import (
    SynthError,
    encode_mp4,
    generate_dataset,
    plan_clips,
    upload_encoding,
)
from training.synth_render import ClipRecipe, RenderedClip, render_clip
from training.synth_sources import SOURCE_IDS, load_source

SIZE = (128, 96)
FRAMES = 10


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def _face_mask(clip: RenderedClip, grow: float) -> np.ndarray:
    """`(T, H, W)` True inside each frame's face box, grown by `grow` of its size on every side."""
    frames, height, width = clip.frames.shape[:3]
    ys, xs = np.mgrid[0:height, 0:width]
    masks = np.zeros((frames, height, width), dtype=bool)
    for index, (x0, y0, x1, y1) in enumerate(clip.face_boxes):
        dx, dy = (x1 - x0) * grow, (y1 - y0) * grow
        masks[index] = (xs >= x0 - dx) & (xs <= x1 + dx) & (ys >= y0 - dy) & (ys <= y1 + dy)
    return masks


def _fakes(count: int, seed: int, size: tuple[int, int] = SIZE) -> list[ClipRecipe]:
    recipes = plan_clips(4 * count, seed, frames=FRAMES, size=size, fake_ratio=0.5)
    return [recipe for recipe in recipes if recipe.label == "fake"][:count]


def test_tiny_dataset_is_decodable_and_consistently_labelled(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    entries = generate_dataset(out, 6, seed=3, frames=FRAMES, size=SIZE, fps=10, workers=1)
    assert Counter(entry.label for entry in entries) == {"real": 3, "fake": 3}
    assert read_labels(out / "labels.csv") == entries
    on_disk = {str(path) for path in out.glob("*/*.mp4")}
    assert on_disk == {entry.path for entry in entries}
    for entry in entries:
        path = Path(entry.path)
        assert path.parent.name == entry.label
        assert path.name.split("_")[0] == entry.group
        assert entry.group in SOURCE_IDS
        frames = _decode(path)
        assert frames.shape == (FRAMES, SIZE[1], SIZE[0], 3)
    assert "NOT deepfake data" in (out / "README.md").read_text()
    assert read_card(out / "labels.dataset.json") == training_data("synthetic", "synth v1")
    recipes = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    assert [r["label"] for r in recipes] == [e.label for e in entries]
    assert all((r["manipulation"] is None) == (r["label"] == "real") for r in recipes)


def test_same_seed_same_labels_groups_and_frames() -> None:
    first = plan_clips(8, seed=11, frames=4, size=SIZE)
    assert plan_clips(8, seed=11, frames=4, size=SIZE) == first
    assert plan_clips(8, seed=12, frames=4, size=SIZE) != first
    for recipe in first[:3]:
        np.testing.assert_array_equal(render_clip(recipe).frames, render_clip(recipe).frames)
    assert not np.array_equal(render_clip(first[0]).frames, render_clip(first[1]).frames)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    """x264 with its macroblock tree wrote other bytes for about half of these clips each run."""
    first, second = (
        generate_dataset(tmp_path / name, 12, seed=5, workers=1) for name in ("a", "b")
    )
    for a, b in zip(first, second, strict=True):
        assert Path(a.path).read_bytes() == Path(b.path).read_bytes(), a.path


def test_plan_balances_labels_and_groups() -> None:
    recipes = plan_clips(2 * len(SOURCE_IDS) + 5, seed=0, frames=2, fake_ratio=0.25)
    assert Counter(recipe.label for recipe in recipes)["fake"] == round(len(recipes) * 0.25)
    group_sizes = Counter(recipe.source for recipe in recipes)
    assert set(group_sizes) == set(SOURCE_IDS)
    assert max(group_sizes.values()) - min(group_sizes.values()) <= 1
    strengths = [recipe.manipulation for recipe in recipes if recipe.manipulation is not None]
    assert min(strengths) < 0.5 < max(strengths)


@pytest.mark.parametrize("size", [(63, 64), (96, 97), (160, 48)])
def test_plan_rejects_bad_frame_sizes(size: tuple[int, int]) -> None:
    with pytest.raises(SynthError):
        plan_clips(1, 0, size=size)


def test_fakes_differ_from_their_real_counterpart_in_the_face_region() -> None:
    for recipe in _fakes(4, seed=5):
        fake, real = render_clip(recipe), render_clip(recipe.as_real())
        np.testing.assert_array_equal(fake.face_boxes, real.face_boxes)
        difference = np.abs(fake.frames.astype(np.int16) - real.frames).sum(axis=3)
        inside = difference[_face_mask(real, grow=0.0)].mean()
        outside = difference[~_face_mask(real, grow=0.3)].mean()
        assert inside > 1.0
        assert outside == 0.0


def test_encoded_fakes_still_differ_mostly_in_the_face_region(tmp_path: Path) -> None:
    recipe = _fakes(1, seed=9)[0]
    fake, real = render_clip(recipe), render_clip(recipe.as_real())
    encode_mp4(fake.frames, tmp_path / "fake.mp4", recipe.fps, recipe.crf)
    encode_mp4(real.frames, tmp_path / "real.mp4", recipe.fps, recipe.crf)
    difference = np.abs(
        _decode(tmp_path / "fake.mp4").astype(np.int16) - _decode(tmp_path / "real.mp4")
    )
    difference = difference.sum(axis=3)
    inside = difference[_face_mask(real, grow=0.0)].mean()
    outside = difference[~_face_mask(real, grow=0.3)].mean()
    assert inside > 3 * outside


def test_the_paste_jitters_from_frame_to_frame() -> None:
    recipe = _fakes(1, seed=13)[0]
    fake, real = render_clip(recipe), render_clip(recipe.as_real())
    residual = fake.frames.astype(np.int16) - real.frames
    changes = np.abs(np.diff(residual, axis=0)).mean(axis=(1, 2, 3))
    assert (changes > 0).all()


def test_face_boxes_stay_inside_the_frame() -> None:
    for recipe in plan_clips(12, seed=2, frames=FRAMES, size=SIZE):
        boxes = render_clip(recipe).face_boxes
        width, height = SIZE
        assert (boxes[:, 0] > -0.1 * width).all() and (boxes[:, 2] < 1.1 * width).all()
        assert (boxes[:, 1] > -0.1 * height).all() and (boxes[:, 3] < 1.1 * height).all()


def test_every_source_loads_with_a_face_box_inside_the_photo() -> None:
    for source_id in SOURCE_IDS[:5]:
        photo = load_source(source_id)
        height, width = photo.image.shape[:2]
        x0, y0, x1, y1 = photo.face_box
        assert photo.image.dtype == np.uint8 and photo.image.shape[2] == 3
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    with pytest.raises(KeyError):
        load_source("lfw100")


def test_mtcnn_finds_the_face_in_most_real_and_fake_frames() -> None:
    torch = pytest.importorskip("torch")
    from facenet_pytorch import MTCNN
    from PIL import Image

    torch.set_num_threads(1)
    detector = MTCNN(keep_all=False, min_face_size=40, device="cpu")
    recipes = plan_clips(len(SOURCE_IDS), seed=21, frames=FRAMES, size=(160, 160))
    photos = [r for r in recipes if r.source in ("astronaut", "gracehopper", "cameraman")]
    chosen = photos + [r for r in recipes if r.source.startswith("lfw")][:5]
    chosen += [dataclasses.replace(r, manipulation=0.9) for r in chosen[:4]]
    for recipe in chosen:
        clip = render_clip(recipe)
        frames = [Image.fromarray(frame) for frame in clip.frames[::3]]
        boxes, _ = detector.detect(frames)
        found = 0
        for detected, expected in zip(boxes, clip.face_boxes[::3], strict=True):
            if detected is not None:
                found += _iou(np.asarray(detected[0], dtype=float), expected) > 0.3
        assert found >= 0.75 * len(frames), recipe


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


def test_synth_cli_uses_worker_processes_and_refuses_a_used_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--videos", "4", "--seed", "1", "--frames", "3"]
    assert main([*argv, "--size", "64x64", "--workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == 4 and summary["real"] == 2 and summary["fake"] == 2
    assert _decode(Path(read_labels(out / "labels.csv")[0].path)).shape == (3, 64, 64, 3)
    assert main(argv) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "INVALID_SYNTH_REQUEST"


def test_upload_encoding_has_b_frames_and_a_keyframe_every_keyint_frames(tmp_path: Path) -> None:
    [recipe] = plan_clips(1, 5, frames=40, size=(128, 96), fps=20.0)
    path = tmp_path / "upload.mp4"
    encode_mp4(render_clip(recipe).frames, path, recipe.fps, recipe.crf, upload_encoding(10))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.has_b_frames > 0
        keyframes = [p.pts for p in container.demux(stream) if p.size and p.is_keyframe]
    ticks_per_frame = 1 / (recipe.fps * stream.time_base)
    gaps = np.diff([0, *sorted(keyframes)]) / ticks_per_frame
    assert len(keyframes) >= 4 and max(gaps) <= 10
