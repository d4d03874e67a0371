"""Build a dataset manifest (`path,label,group,split`) from a dataset on disk.

Sources:
- Celeb-DF v2: `Celeb-real/id{A}_{NNNN}.mp4`, `YouTube-real/{NNNNN}.mp4`,
  `Celeb-synthesis/id{A}_id{B}_{NNNN}.mp4` and `List_of_testing_videos.txt`
  (`<1 real | 0 fake> <relative path>` per line). A fake `id{A}_id{B}_{NNNN}` shows identities
  A and B (its source video `id{A}_{NNNN}` is one of A's), so identities are merged into connected
  groups; every YouTube-real video is a group of its own.
- folders: `real/` and `fake/` (any depth); groups from `labels.csv` at the root when present,
  else the file-name prefix before the first `_`.
- a CSV of `path,label[,group]` (see `training.manifest.read_labels`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.manifest import SPLITS, Label, ManifestRow, VideoEntry, absolute_path, read_labels
from training.splits import DEFAULT_RATIOS, connected_keys, grouped_split

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
CELEBDF_TEST_LIST = "List_of_testing_videos.txt"
_CELEB_REAL = re.compile(r"(id\d+)_\d+")
_CELEB_FAKE = re.compile(r"(id\d+)_(id\d+)_\d+")
_YOUTUBE_REAL = re.compile(r"\d+")


class DatasetLayoutError(ValueError):
    """A dataset on disk does not have the layout it claims."""

    code = "INVALID_DATASET"


@dataclass(frozen=True)
class CelebDF:
    """The videos of a Celeb-DF v2 tree and the paths of its official test list."""

    entries: list[VideoEntry]
    official_test: frozenset[str]


def scan_celebdf(root: Path) -> CelebDF:
    """Index a Celeb-DF v2 tree with identity-connected groups."""
    folders: list[tuple[str, Label, re.Pattern[str]]] = [
        ("Celeb-real", "real", _CELEB_REAL),
        ("YouTube-real", "real", _YOUTUBE_REAL),
        ("Celeb-synthesis", "fake", _CELEB_FAKE),
    ]
    paths: list[str] = []
    labels: list[Label] = []
    keys: list[tuple[str, ...]] = []
    for folder, label, pattern in folders:
        for path in _videos(root / folder, required=True):
            match = pattern.fullmatch(path.stem)
            if match is None:
                raise DatasetLayoutError(f"{path}: name does not follow the Celeb-DF v2 layout")
            paths.append(str(path))
            labels.append(label)
            keys.append(match.groups() or (f"yt{path.stem}",))
    groups = connected_keys(keys)
    entries = [VideoEntry(*row) for row in zip(paths, labels, groups, strict=True)]
    test_list = root / CELEBDF_TEST_LIST
    official = _read_celebdf_test_list(test_list, entries) if test_list.is_file() else frozenset()
    return CelebDF(entries, official)


def scan_folders(root: Path) -> list[VideoEntry]:
    """Index `root/real` and `root/fake`; groups from `root/labels.csv` or file-name prefixes."""
    found: dict[str, Label] = {}
    for label in ("real", "fake"):
        for path in _videos(root / label, required=False):
            found[str(path)] = label
    if not found:
        raise DatasetLayoutError(f"{root}: no videos under real/ or fake/")
    labels_file = root / "labels.csv"
    if not labels_file.is_file():
        return [VideoEntry(path, label, _prefix(Path(path).stem)) for path, label in found.items()]
    entries = read_labels(labels_file)
    listed = {entry.path: entry for entry in entries}
    if set(listed) != set(found):
        missing, extra = set(listed) - set(found), set(found) - set(listed)
        raise DatasetLayoutError(
            f"{labels_file} and the folders disagree: {len(missing)} listed but absent "
            f"(e.g. {sorted(missing)[:1]}), {len(extra)} present but unlisted "
            f"(e.g. {sorted(extra)[:1]})"
        )
    for entry in entries:
        if entry.label != found[entry.path]:
            raise DatasetLayoutError(f"{entry.path}: labelled {entry.label} but not in that folder")
    return entries


def scan_csv(file: Path) -> list[VideoEntry]:
    """Index a `path,label[,group]` CSV; every listed video must exist."""
    entries = read_labels(file)
    missing = [entry.path for entry in entries if not Path(entry.path).is_file()]
    if missing:
        raise DatasetLayoutError(f"{file}: {len(missing)} listed videos are missing: {missing[:3]}")
    return entries


def build_manifest(
    entries: Sequence[VideoEntry],
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    official_test: frozenset[str] | None = None,
) -> list[ManifestRow]:
    """Grouped train/val/test split of `entries`, sorted by path.

    With `official_test`, those videos form the test split and the others are split train:val
    at `ratios[0]:ratios[1]`; the official list is taken as published, so the index only counts
    (and logs) train/val videos whose group also has a test video.
    """
    if official_test is None:
        rows = grouped_split(entries, ratios, seed)
    else:
        unknown = official_test - {entry.path for entry in entries}
        if unknown:
            raise DatasetLayoutError(f"official test videos not indexed: {sorted(unknown)[:3]}")
        rest = [entry for entry in entries if entry.path not in official_test]
        listed = [entry for entry in entries if entry.path in official_test]
        test = [ManifestRow(e.path, e.label, e.group, "test") for e in listed]
        rows = grouped_split(rest, ratios[:2], seed, splits=("train", "val")) + test
        test_groups = {row.group for row in test}
        shared = sum(row.group in test_groups for row in rows if row.split != "test")
        if shared:
            logger.warning("%d train/val videos share a group with the official test list", shared)
    rows.sort(key=lambda row: row.path)
    return rows


def _read_celebdf_test_list(file: Path, entries: Sequence[VideoEntry]) -> frozenset[str]:
    label_of = {entry.path: entry.label for entry in entries}
    listed: set[str] = set()
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise DatasetLayoutError(f"{file}:{number}: expected '<1|0> <relative path>'")
        path = absolute_path(file.parent / parts[1])
        expected: Label = "real" if parts[0] == "1" else "fake"
        if path not in label_of:
            raise DatasetLayoutError(f"{file}:{number}: {parts[1]} is not in the dataset tree")
        if label_of[path] != expected:
            raise DatasetLayoutError(f"{file}:{number}: {parts[1]} is listed as {expected}")
        listed.add(path)
    return frozenset(listed)


def _videos(folder: Path, *, required: bool) -> list[Path]:
    if not folder.is_dir():
        if required:
            raise DatasetLayoutError(f"missing folder {folder}")
        return []
    found = (p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    return sorted(Path(absolute_path(path)) for path in found)


def _prefix(stem: str) -> str:
    return stem.split("_", 1)[0]


def summarize(rows: Sequence[ManifestRow]) -> dict[str, dict[str, int | float]]:
    """Per split: videos, their fraction of all, real, fake and groups."""
    counts = Counter((row.split, row.label) for row in rows)
    groups = Counter(split for split, _ in {(row.split, row.group) for row in rows})
    summary: dict[str, dict[str, int | float]] = {}
    for split in SPLITS:
        videos = counts[(split, "real")] + counts[(split, "fake")]
        summary[split] = {
            "videos": videos,
            "fraction": round(videos / max(1, len(rows)), 4),
            "real": counts[(split, "real")],
            "fake": counts[(split, "fake")],
            "groups": groups[split],
        }
    return summary
