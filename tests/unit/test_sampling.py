"""Frame sampling: pure functions over a frame count or a duration."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.sampling import estimate_frame_count, sample_indices, sample_times, segment_centres
from models.spec import SamplingSpec


def test_uniform_takes_the_centres_of_equal_segments() -> None:
    assert sample_indices(100, SamplingSpec(mode="uniform", num_frames=4)) == [12, 37, 62, 87]
    assert sample_indices(10, SamplingSpec(mode="uniform", num_frames=5)) == [1, 3, 5, 7, 9]


def test_uniform_is_capped_at_max_frames() -> None:
    spec = SamplingSpec(mode="uniform", num_frames=32, max_frames=4)
    assert sample_indices(100, spec) == [12, 37, 62, 87]


def test_uniform_takes_every_frame_of_a_short_video() -> None:
    assert sample_indices(3, SamplingSpec(mode="uniform", num_frames=8)) == [0, 1, 2]


def test_every_nth_starts_at_the_first_frame() -> None:
    spec = SamplingSpec(mode="every_nth", every_nth=30, max_frames=64)
    assert sample_indices(100, spec) == [0, 30, 60, 90]
    assert sample_indices(90, spec) == [0, 30, 60]


def test_every_nth_over_the_cap_keeps_an_evenly_spaced_subset() -> None:
    spec = SamplingSpec(mode="every_nth", every_nth=10, max_frames=4)
    # candidates 0, 10, ..., 990 (100 of them); the centres of 4 segments of those
    assert sample_indices(1000, spec) == [120, 370, 620, 870]


@pytest.mark.parametrize("mode", ["uniform", "every_nth"])
def test_no_frames_gives_no_indices(mode: str) -> None:
    assert sample_indices(0, SamplingSpec(mode=mode)) == []


@given(
    frame_count=st.integers(min_value=0, max_value=100_000),
    mode=st.sampled_from(["uniform", "every_nth"]),
    every_nth=st.integers(min_value=1, max_value=500),
    num_frames=st.integers(min_value=1, max_value=200),
    max_frames=st.integers(min_value=1, max_value=200),
)
def test_indices_are_sorted_unique_in_range_and_capped(
    frame_count: int, mode: str, every_nth: int, num_frames: int, max_frames: int
) -> None:
    spec = SamplingSpec(
        mode=mode, every_nth=every_nth, num_frames=num_frames, max_frames=max_frames
    )
    indices = sample_indices(frame_count, spec)
    assert indices == sorted(set(indices))
    assert all(0 <= index < frame_count for index in indices)
    assert len(indices) <= max_frames
    if mode == "uniform":
        assert len(indices) == min(frame_count, num_frames, max_frames)
    else:
        assert all(index % every_nth == 0 for index in indices)
        assert len(indices) == min(-(-frame_count // every_nth), max_frames)


@given(count=st.integers(min_value=1, max_value=10_000), k=st.integers(min_value=1, max_value=300))
def test_segment_centres_lie_in_their_segments(count: int, k: int) -> None:
    centres = segment_centres(count, k)
    if count <= k:
        assert centres == list(range(count))
    else:
        for i, centre in enumerate(centres):
            assert math.floor(i * count / k) <= centre < (i + 1) * count / k


def test_estimate_frame_count_rounds_duration_times_rate() -> None:
    assert estimate_frame_count(10.0, 25.0) == 250
    assert estimate_frame_count(1.001, 29.97) == 30
    assert estimate_frame_count(0.01, 25.0) == 1
    assert estimate_frame_count(0.0, 25.0) == 0


def test_sample_times_are_sampled_indices_over_the_rate() -> None:
    spec = SamplingSpec(mode="uniform", num_frames=4)
    assert sample_times(4.0, spec, 25.0) == pytest.approx([0.48, 1.48, 2.48, 3.48])
    every_second = SamplingSpec(mode="every_nth", every_nth=25, max_frames=100)
    assert sample_times(3.0, every_second, 25.0) == pytest.approx([0.0, 1.0, 2.0])
