"""Grouped, seeded train/val/test splits: a group (identity, source video) never spans two."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from training.manifest import SPLITS, ManifestRow, Split, VideoEntry

logger = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.7, 0.2, 0.1)


class SplitError(ValueError):
    """Split ratios or groups are invalid."""

    code = "INVALID_SPLIT"


def parse_ratios(text: str) -> tuple[float, float, float]:
    """`"0.7,0.2,0.1"` -> train, val, test fractions (normalised to sum to 1)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError as error:
        raise SplitError(f"ratios must be three numbers like 0.7,0.2,0.1, got {text!r}") from error
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise SplitError(f"ratios must be three non-negative numbers with a positive sum: {text!r}")
    total = sum(values)
    return (values[0] / total, values[1] / total, values[2] / total)


def split_counts(total: int, ratios: Sequence[float]) -> list[int]:
    """Integer sizes summing to `total`, closest to `ratios` (largest remainder)."""
    scale = sum(ratios)
    exact = [total * ratio / scale for ratio in ratios]
    counts = [int(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def assign_groups(sizes: Mapping[str, int], ratios: Sequence[float], seed: int) -> dict[str, int]:
    """Map each group to a split index so that split sizes (in videos) come close to `ratios`.

    Groups are placed largest first (ties in a seeded random order) into the split with the most
    room left that still fits them whole, else the one with the most room left.
    """
    if not sizes:
        return {}
    if min(sizes.values()) < 1:
        raise SplitError("every group needs at least one video")
    targets = split_counts(sum(sizes.values()), ratios)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda group: -sizes[group])
    filled = [0] * len(targets)
    placement = {}
    for group in order:
        room = [target - count for target, count in zip(targets, filled, strict=True)]
        fitting = [i for i in range(len(room)) if room[i] >= sizes[group]]
        choice = max(fitting or range(len(room)), key=lambda i: (room[i], ratios[i], -i))
        placement[group] = choice
        filled[choice] += sizes[group]
    total = sum(targets)
    if any(abs(f - t) > max(1, 0.02 * total) for f, t in zip(filled, targets, strict=True)):
        logger.warning(
            "grouping keeps split sizes %s from the targets %s (largest group: %d of %d videos)",
            filled,
            targets,
            sizes[order[0]],
            total,
        )
    return placement


def grouped_split(
    entries: Sequence[VideoEntry],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    splits: Sequence[Split] = SPLITS,
) -> list[ManifestRow]:
    """Assign `entries` to `splits` (same order as `ratios`), keeping every group in one split."""
    if len(ratios) != len(splits):
        raise SplitError(f"need one ratio per split {tuple(splits)}, got {tuple(ratios)}")
    sizes = Counter(entry.group for entry in entries)
    placement = assign_groups(sizes, ratios, seed)
    return [
        ManifestRow(entry.path, entry.label, entry.group, splits[placement[entry.group]])
        for entry in entries
    ]


def connected_keys(keys_per_item: Sequence[Iterable[str]]) -> list[str]:
    """Name the component of each item, where items sharing any key are connected.

    A component is named after its smallest key, so the result is independent of item order.
    """
    key_sets = [sorted(set(keys)) for keys in keys_per_item]
    if any(not keys for keys in key_sets):
        raise SplitError("every item needs at least one key")
    names = sorted({key for keys in key_sets for key in keys})
    index = {key: i for i, key in enumerate(names)}
    rows = [index[keys[0]] for keys in key_sets for _ in keys]
    cols = [index[key] for keys in key_sets for key in keys]
    graph = coo_array((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(graph, directed=False)
    component_name: dict[int, str] = {}
    for key in names:
        component_name.setdefault(int(labels[index[key]]), key)
    return [component_name[int(labels[index[keys[0]]])] for keys in key_sets]
