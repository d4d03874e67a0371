"""Typed CSV files of the dataset side.

- labels (`path,label[,group]`): labelled videos without a split, e.g. a synthetic dataset's
  `labels.csv`;
- manifest (`path,label,group,split`): what `python -m training index` writes and training reads.

Paths in either file are relative to the file's own directory (absolute paths are kept as they
are); readers return absolute paths. Labels are `real` or `fake`; splits `train`, `val`, `test`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

Label = Literal["real", "fake"]
Split = Literal["train", "val", "test"]
LABELS: tuple[Label, ...] = get_args(Label)
SPLITS: tuple[Split, ...] = get_args(Split)

LABEL_COLUMNS = ("path", "label", "group")
MANIFEST_COLUMNS = ("path", "label", "group", "split")


class ManifestError(ValueError):
    """A labels or manifest file is malformed."""

    code = "INVALID_MANIFEST"


@dataclass(frozen=True)
class VideoEntry:
    """A labelled video; `group` is its identity/source id (never split across train/val/test)."""

    path: str
    label: Label
    group: str


@dataclass(frozen=True)
class ManifestRow:
    """A labelled video assigned to a split."""

    path: str
    label: Label
    group: str
    split: Split


def parse_label(value: str) -> Label:
    """`real` or `fake` (case and surrounding blanks ignored)."""
    label = value.strip().lower()
    if label not in LABELS:
        raise ManifestError(f"label must be one of {LABELS}, got {value!r}")
    return cast(Label, label)


def parse_split(value: str) -> Split:
    """`train`, `val` or `test` (case and surrounding blanks ignored)."""
    split = value.strip().lower()
    if split not in SPLITS:
        raise ManifestError(f"split must be one of {SPLITS}, got {value!r}")
    return cast(Split, split)


def read_labels(file: Path) -> list[VideoEntry]:
    """Read `path,label[,group]` rows; a missing or empty group defaults to the file stem."""
    entries = []
    for row in _read_rows(file, required=("path", "label")):
        path = _resolve(file, row["path"])
        group = (row.get("group") or "").strip() or Path(path).stem
        entries.append(VideoEntry(path, parse_label(row["label"]), group))
    _check_unique(file, [entry.path for entry in entries])
    return entries


def write_labels(file: Path, entries: Iterable[VideoEntry]) -> None:
    """Write `path,label,group` rows (paths relative to `file`'s directory where possible)."""
    _write_rows(
        file,
        LABEL_COLUMNS,
        ((_relative(file, e.path), e.label, e.group) for e in entries),
    )


def read_manifest(file: Path) -> list[ManifestRow]:
    """Read a manifest written by `write_manifest`, with absolute paths."""
    rows = []
    for row in _read_rows(file, required=MANIFEST_COLUMNS):
        group = row["group"].strip()
        if not group:
            raise ManifestError(f"{file}: empty group for {row['path']!r}")
        rows.append(
            ManifestRow(
                _resolve(file, row["path"]),
                parse_label(row["label"]),
                group,
                parse_split(row["split"]),
            )
        )
    _check_unique(file, [row.path for row in rows])
    return rows


def write_manifest(file: Path, rows: Iterable[ManifestRow]) -> None:
    """Write `path,label,group,split` rows (paths relative to `file`'s directory where possible)."""
    _write_rows(
        file,
        MANIFEST_COLUMNS,
        ((_relative(file, r.path), r.label, r.group, r.split) for r in rows),
    )


def _read_rows(file: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = set(required) - set(reader.fieldnames or ())
            if missing:
                raise ManifestError(f"{file}: missing columns {sorted(missing)}")
            rows = list(reader)
    except OSError as error:
        raise ManifestError(f"{file}: cannot read: {error}") from error
    for number, row in enumerate(rows, start=2):
        if any(row.get(column) is None for column in required) or not row["path"].strip():
            raise ManifestError(f"{file}:{number}: incomplete row")
    return rows


def _write_rows(file: Path, header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def absolute_path(path: str | Path) -> str:
    """The normalised absolute form of `path` (how readers and indexers spell video paths)."""
    return os.path.normpath(os.path.abspath(path))


def _resolve(file: Path, path: str) -> str:
    return absolute_path(file.parent / path.strip())


def _relative(file: Path, path: str) -> str:
    directory = Path(absolute_path(file.parent))
    absolute = Path(absolute_path(path))
    if absolute.is_relative_to(directory):
        return absolute.relative_to(directory).as_posix()
    return str(absolute)


def _check_unique(file: Path, paths: list[str]) -> None:
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise ManifestError(f"{file}: {path!r} is listed twice")
        seen.add(path)
