"""Keyframe-aware sampling: the snapping plan, the spec field, decoding clips with known GOPs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.sampling import SampleTime, sample_indices, snap_to_keyframes
from models.spec import DecodeLimits, KeyframeSnap, PipelineSpec, SamplingSpec, feature_hash
from models.video import DecodedVideo, decode_frames
from tests.videos import index_frames, make_video, pipe, read_index

FPS = 25
FRAMES = 300  # 12 s
GOP = 25  # a keyframe every second
X264_GOP = {"x264-params": f"bframes=3:keyint={GOP}:min-keyint={GOP}:scenecut=0"}
EVERY_SECOND = SamplingSpec(mode="every_nth", every_nth=GOP, max_frames=64)
FIVE = SamplingSpec(mode="uniform", num_frames=5)  # frames 30, 90, 150, 210, 270


def snapping(sampling: SamplingSpec, tolerance_s: float) -> SamplingSpec:
    return sampling.model_copy(update={"keyframes": KeyframeSnap(tolerance_s=tolerance_s)})


def decode(path: Path, sampling: SamplingSpec) -> DecodedVideo:
    return decode_frames(path, sampling, DecodeLimits(), threads=1)


def content(video: DecodedVideo) -> list[int]:
    return [read_index(frame) for frame in video.frames]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gop")
    for name in ("gop.mp4", "gop.mkv"):
        make_video(root / name, index_frames(FRAMES), FPS, gop_size=GOP, options=X264_GOP)
    return root


def test_targets_near_a_keyframe_move_to_it_and_merge() -> None:
    plan = snap_to_keyframes([0.1, 0.9, 1.2, 2.5, 4.05], [0.0, 1.0, 2.0, 4.0], 0.2)
    assert plan == [
        SampleTime(0.0, True),
        SampleTime(1.0, True),  # 0.9 and 1.2 (within 0.2 of it) are one sample
        SampleTime(2.5, False),
        SampleTime(4.0, True),
    ]


def test_without_keyframes_every_target_is_kept() -> None:
    plan = snap_to_keyframes([0.5, 1.5], [], 1.0)
    assert plan == [SampleTime(0.5, False), SampleTime(1.5, False)]


@given(
    targets=st.lists(st.floats(0, 1000, allow_nan=False), max_size=50).map(sorted),
    keyframes=st.lists(st.floats(0, 1000, allow_nan=False), max_size=50).map(sorted),
    tolerance=st.floats(0, 10, allow_nan=False),
)
def test_a_plan_is_sorted_unique_and_moves_times_at_most_the_tolerance(
    targets: list[float], keyframes: list[float], tolerance: float
) -> None:
    plan = snap_to_keyframes(targets, keyframes, tolerance)
    times = [sample.time_s for sample in plan]
    assert times == sorted(set(times))
    assert len(plan) <= len(targets)
    for sample in plan:
        if sample.on_keyframe:
            assert sample.time_s in keyframes
            assert any(abs(sample.time_s - t) <= tolerance for t in targets)
        else:
            assert sample.time_s in targets
    for target in targets:  # every target is represented by a sample within the tolerance
        assert any(abs(sample.time_s - target) <= tolerance for sample in plan)


def test_the_default_spec_leaves_keyframes_out_of_its_json_and_hash() -> None:
    spec = PipelineSpec()
    assert "keyframes" not in spec.sampling.model_dump(mode="json")
    assert "keyframes" not in spec.model_dump_json()
    snapped = spec.model_copy(update={"sampling": snapping(spec.sampling, 0.5)})
    assert snapped.spec_hash != spec.spec_hash
    assert snapped.spec_hash == feature_hash(snapped.sampling, snapped.face, snapped.backbone)
    assert PipelineSpec.model_validate_json(snapped.model_dump_json()) == snapped


def test_keyframe_samples_decode_only_the_keyframes(clips: Path) -> None:
    full = decode(clips / "gop.mp4", EVERY_SECOND)
    snapped = decode(clips / "gop.mp4", snapping(EVERY_SECOND, 0.2))
    expected = list(range(0, FRAMES, GOP))
    assert content(full) == content(snapped) == expected
    assert snapped.timestamps_s == pytest.approx([i / FPS for i in expected])
    assert snapped.frames_decoded == len(expected)
    assert full.frames_decoded >= FRAMES - GOP


def test_far_from_a_keyframe_only_the_gop_prefix_is_decoded(clips: Path) -> None:
    targets = sample_indices(FRAMES, FIVE)
    assert targets == [30, 90, 150, 210, 270]
    full = decode(clips / "gop.mp4", FIVE)
    prefix = decode(clips / "gop.mp4", snapping(FIVE, 0.1))
    assert content(prefix) == content(full) == targets
    # each target decodes from the keyframe before it: 5 or 15 frames (+ B-frame reordering)
    assert prefix.frames_decoded < sum(t % GOP + 1 for t in targets) + 5 * 4
    assert prefix.frames_decoded < full.frames_decoded


def test_snapping_and_prefixes_mix_within_one_video(clips: Path) -> None:
    # 1.2 s -> 1 s; 3.6 s and 8.4 s are 0.4 s from a keyframe; 6.0 s is one; 10.8 s -> 11 s
    video = decode(clips / "gop.mp4", snapping(FIVE, 0.25))
    assert content(video) == [25, 90, 150, 210, 275]
    assert video.indices == [25, 90, 150, 210, 275]


def test_containers_without_a_full_index_decode_as_before(clips: Path) -> None:
    plain = decode(clips / "gop.mkv", EVERY_SECOND)
    snapped = decode(clips / "gop.mkv", snapping(EVERY_SECOND, 0.2))
    assert content(snapped) == content(plain)
    assert snapped.frames_decoded == plain.frames_decoded


def test_a_stream_that_cannot_seek_decodes_as_before(tmp_path: Path) -> None:
    path = make_video(
        tmp_path / "faststart.mp4",
        index_frames(FRAMES),
        FPS,
        gop_size=GOP,
        options=X264_GOP,
        container_options={"movflags": "faststart"},
    )
    stream = pipe(path.read_bytes())
    video = decode_frames(stream, snapping(EVERY_SECOND, 0.2), DecodeLimits(), threads=1)
    assert content(video) == list(range(0, FRAMES, GOP))
    assert video.frames_decoded >= FRAMES - GOP
