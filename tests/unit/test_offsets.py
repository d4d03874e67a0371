"""OffsetTracker: commit positions advance only over finished prefixes of each partition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.offsets import OffsetTracker

P = ("requests", 0)
Q = ("requests", 1)


def test_out_of_order_completion_waits_for_the_lowest_pending() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.add(P, offset)
    assert tracker.committable(P) == 10
    assert tracker.done(P, 11) is None
    assert tracker.done(P, 12) is None
    assert tracker.done(P, 10) == 13
    assert tracker.committable(P) == 13
    assert tracker.pending() == 0


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    tracker.add(P, 0)
    tracker.add(Q, 5)
    assert tracker.done(Q, 5) == 6
    assert tracker.committable(P) == 0
    assert tracker.pending([P]) == 1
    assert tracker.pending([Q]) == 0


def test_forgotten_partitions_ignore_late_completions() -> None:
    tracker = OffsetTracker()
    tracker.add(P, 3)
    tracker.forget([P])
    assert tracker.done(P, 3) is None
    assert tracker.committable(P) is None
    assert tracker.pending() == 0


def test_unknown_offsets_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.add(P, 1)
    assert tracker.done(P, 7) is None
    assert tracker.committable(P) == 1


@given(st.permutations(list(range(20))))
def test_commit_position_is_the_finished_prefix(order: list[int]) -> None:
    tracker = OffsetTracker()
    for offset in range(20):
        tracker.add(P, offset)
    finished: set[int] = set()
    for offset in order:
        tracker.done(P, offset)
        finished.add(offset)
        prefix = 0
        while prefix in finished:
            prefix += 1
        assert tracker.committable(P) == prefix
