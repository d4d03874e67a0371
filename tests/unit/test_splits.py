"""Grouped, seeded splits: ratios, determinism, group integrity and identity merging."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.manifest import VideoEntry
from training.splits import (
    SplitError,
    assign_groups,
    connected_keys,
    grouped_split,
    parse_ratios,
    split_counts,
)


def test_parse_ratios_normalises_and_rejects_bad_input() -> None:
    assert parse_ratios("7,2,1") == pytest.approx((0.7, 0.2, 0.1))
    assert parse_ratios("0.8,0.2,0") == pytest.approx((0.8, 0.2, 0.0))
    for bad in ("0.7,0.3", "a,b,c", "0.5,-0.1,0.6", "0,0,0"):
        with pytest.raises(SplitError):
            parse_ratios(bad)


@settings(deadline=None)
@given(st.integers(0, 10_000), st.lists(st.floats(0.01, 10), min_size=1, max_size=5))
def test_split_counts_sum_to_total_and_stay_within_one(total: int, ratios: list[float]) -> None:
    counts = split_counts(total, ratios)
    assert sum(counts) == total
    for count, ratio in zip(counts, ratios, strict=True):
        assert abs(count - total * ratio / sum(ratios)) < 1


def test_many_small_groups_meet_the_ratios_within_one_video() -> None:
    sizes = {f"g{i}": 1 + i % 4 for i in range(80)} | {f"single{i}": 1 for i in range(40)}
    total = sum(sizes.values())
    placement = assign_groups(sizes, (0.7, 0.2, 0.1), seed=3)
    filled = [sum(size for g, size in sizes.items() if placement[g] == s) for s in range(3)]
    for count, ratio in zip(filled, (0.7, 0.2, 0.1), strict=True):
        assert abs(count - ratio * total) <= 1


def test_assignment_is_seeded() -> None:
    sizes = {f"g{i}": 1 + i % 3 for i in range(60)}
    first = assign_groups(sizes, (0.7, 0.2, 0.1), seed=5)
    assert assign_groups(dict(reversed(sizes.items())), (0.7, 0.2, 0.1), seed=5) == first
    assert assign_groups(sizes, (0.7, 0.2, 0.1), seed=6) != first


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=60),
    st.integers(0, 2**32),
)
def test_no_split_overshoots_by_a_whole_group(sizes_list: list[int], seed: int) -> None:
    sizes = {f"g{i}": size for i, size in enumerate(sizes_list)}
    ratios = (0.7, 0.2, 0.1)
    placement = assign_groups(sizes, ratios, seed)
    assert set(placement) == set(sizes)
    targets = split_counts(sum(sizes_list), ratios)
    for split, target in enumerate(targets):
        filled = sum(size for g, size in sizes.items() if placement[g] == split)
        assert filled <= target + max(sizes_list) - 1


def test_grouped_split_keeps_groups_whole_and_honours_an_empty_split() -> None:
    entries = [
        VideoEntry(f"/v/{i}.mp4", "fake" if i % 3 else "real", f"g{i // 3}") for i in range(90)
    ]
    rows = grouped_split(entries, (0.8, 0.2, 0.0), seed=1)
    assert [row.path for row in rows] == [entry.path for entry in entries]
    splits_of_group: dict[str, set[str]] = {}
    for row in rows:
        splits_of_group.setdefault(row.group, set()).add(row.split)
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    assert sum(row.split == "train" for row in rows) == 72
    assert not any(row.split == "test" for row in rows)


def test_grouped_split_needs_one_ratio_per_split() -> None:
    with pytest.raises(SplitError):
        grouped_split([VideoEntry("/v/a.mp4", "real", "a")], (0.5, 0.5), seed=0)


def test_connected_keys_merge_transitively_and_name_by_smallest_key() -> None:
    keys = [("id5", "id3"), ("id3",), ("id9",), ("id3", "id7"), ("yt1",), ("id7", "id1")]
    assert connected_keys(keys) == ["id1", "id1", "id9", "id1", "yt1", "id1"]
    assert connected_keys(list(reversed(keys))) == ["id1", "yt1", "id1", "id9", "id1", "id1"]


def test_connected_keys_need_a_key_per_item() -> None:
    with pytest.raises(SplitError):
        connected_keys([("a",), ()])


def test_an_oversized_group_is_kept_whole_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    sizes = {"giant": 50, "a": 3, "b": 2}
    placement = assign_groups(sizes, (0.7, 0.2, 0.1), seed=0)
    assert placement["giant"] == 0
    assert "largest group: 50 of 55 videos" in caplog.text
