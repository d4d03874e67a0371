"""Which frames of a video to look at: pure functions over a frame count or a duration."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from models.spec import SamplingSpec


def sample_indices(frame_count: int, spec: SamplingSpec) -> list[int]:
    """Sorted, unique frame indices in [0, frame_count) chosen by `spec`.

    `uniform`: the centres of min(num_frames, max_frames) equal segments (every frame when the
    video is shorter). `every_nth`: frames 0, n, 2n, ...; when more than `max_frames`, an evenly
    spaced subset of those.
    """
    if frame_count <= 0:
        return []
    if spec.mode == "uniform":
        return segment_centres(frame_count, min(spec.num_frames, spec.max_frames))
    candidates = range(0, frame_count, spec.every_nth)
    return [candidates[i] for i in segment_centres(len(candidates), spec.max_frames)]


def segment_centres(count: int, k: int) -> list[int]:
    """Centres of `k` equal segments of range(count); all of range(count) when count <= k."""
    if count <= k:
        return list(range(count))
    return [(2 * i + 1) * count // (2 * k) for i in range(k)]


def estimate_frame_count(duration_s: float, fps: float) -> int:
    """Number of frames of a constant-rate video lasting `duration_s` seconds."""
    if duration_s <= 0 or fps <= 0:
        return 0
    return max(1, math.floor(duration_s * fps + 0.5))


def sample_times(duration_s: float, spec: SamplingSpec, fps: float) -> list[float]:
    """Sampled presentation times (seconds from the start) when only duration and rate are known."""
    return [index / fps for index in sample_indices(estimate_frame_count(duration_s, fps), spec)]


@dataclass(frozen=True)
class SampleTime:
    """A time to sample (seconds, stream time) and whether a keyframe is shown exactly then."""

    time_s: float
    on_keyframe: bool


def snap_to_keyframes(
    targets_s: Sequence[float], keyframes_s: Sequence[float], tolerance_s: float
) -> list[SampleTime]:
    """Each sorted target moved to the nearest keyframe (sorted `keyframes_s`) at most
    `tolerance_s` away (the earlier one on a tie), else kept; sorted, without repeats (targets
    that snap to the same keyframe become one sample)."""
    plan: list[SampleTime] = []
    for target_s in targets_s:
        keyframe_s = _nearest(keyframes_s, target_s)
        if keyframe_s is not None and abs(keyframe_s - target_s) <= tolerance_s:
            sample = SampleTime(keyframe_s, on_keyframe=True)
        else:
            sample = SampleTime(target_s, on_keyframe=False)
        if not plan or sample.time_s > plan[-1].time_s:
            plan.append(sample)
    return plan


def _nearest(sorted_values: Sequence[float], value: float) -> float | None:
    position = bisect.bisect_left(sorted_values, value)
    around = sorted_values[max(0, position - 1) : position + 1]
    return min(around, key=lambda candidate: abs(candidate - value), default=None)
