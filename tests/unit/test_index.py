"""Dataset indexing: Celeb-DF v2 layout, folders, CSV, the manifest file and the `index` CLI."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from training.cli import main
from training.dataset_card import card_path, read_card, training_data
from training.index import (
    DatasetLayoutError,
    build_manifest,
    scan_celebdf,
    scan_csv,
    scan_folders,
)
from training.manifest import (
    ManifestError,
    ManifestRow,
    VideoEntry,
    read_labels,
    read_manifest,
    write_labels,
    write_manifest,
)

RATIOS = (0.7, 0.2, 0.1)
OFFICIAL_TEST = (
    "1 YouTube-real/00003.mp4",
    "0 Celeb-synthesis/id0_id1_0000.mp4",
    "1 Celeb-real/id10_0001.mp4",
    "0 Celeb-synthesis/id56_id55_0000.mp4",
    "1 Celeb-real/id58_0000.mp4",
)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _celebdf_tree(root: Path, test_list: tuple[str, ...] = OFFICIAL_TEST) -> Path:
    """60 identities in many small connected groups, plus 40 YouTube-real videos (EMPTY files)."""
    for identity in range(60):
        for clip in range(2):
            _touch(root / "Celeb-real" / f"id{identity}_{clip:04d}.mp4")
    for a in range(0, 54, 2):
        _touch(root / "Celeb-synthesis" / f"id{a}_id{a + 1}_0000.mp4")
        _touch(root / "Celeb-synthesis" / f"id{a + 1}_id{a}_0001.mp4")
    _touch(root / "Celeb-synthesis" / "id54_id55_0000.mp4")
    _touch(root / "Celeb-synthesis" / "id56_id55_0000.mp4")
    for clip in range(40):
        _touch(root / "YouTube-real" / f"{clip:05d}.mp4")
    (root / "List_of_testing_videos.txt").write_text("\n".join(test_list) + "\n")
    return root


def _identities(path: str) -> list[str]:
    stem = Path(path).stem
    return re.findall(r"id\d+", stem) or [f"yt{stem}"]


def _assert_identities_in_one_split(rows: list[ManifestRow]) -> None:
    splits: dict[str, set[str]] = {}
    for row in rows:
        for identity in _identities(row.path):
            splits.setdefault(identity, set()).add(row.split)
    spanning = {identity: s for identity, s in splits.items() if len(s) > 1}
    assert not spanning


def test_celebdf_scan_labels_and_merges_connected_identities(tmp_path: Path) -> None:
    dataset = scan_celebdf(_celebdf_tree(tmp_path))
    by_name = {Path(entry.path).name: entry for entry in dataset.entries}
    assert len(by_name) == 120 + 56 + 40
    assert by_name["id0_id1_0000.mp4"].label == "fake"
    assert by_name["00003.mp4"].label == "real"
    assert by_name["id0_0000.mp4"].group == by_name["id1_id0_0001.mp4"].group
    chain = {by_name[name].group for name in ("id54_0000.mp4", "id55_0001.mp4", "id56_0000.mp4")}
    assert len(chain) == 1
    assert by_name["id57_0000.mp4"].group != by_name["id58_0000.mp4"].group
    assert len({entry.group for entry in dataset.entries}) == 27 + 1 + 3 + 40
    assert len(dataset.official_test) == len(OFFICIAL_TEST)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_celebdf_grouped_split_meets_ratios_without_identity_leaks(
    tmp_path: Path, seed: int
) -> None:
    entries = scan_celebdf(_celebdf_tree(tmp_path)).entries
    rows = build_manifest(entries, ratios=RATIOS, seed=seed)
    assert sorted(row.path for row in rows) == sorted(entry.path for entry in entries)
    _assert_identities_in_one_split(rows)
    sizes = Counter(row.split for row in rows)
    for split, ratio in zip(("train", "val", "test"), RATIOS, strict=True):
        assert abs(sizes[split] - ratio * len(rows)) <= 1


def test_celebdf_split_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    entries = scan_celebdf(_celebdf_tree(tmp_path)).entries
    first = build_manifest(entries, seed=7)
    assert build_manifest(list(reversed(entries)), seed=7) == first
    assert build_manifest(entries, seed=8) != first


def test_official_test_list_is_honoured(tmp_path: Path) -> None:
    root = _celebdf_tree(tmp_path)
    dataset = scan_celebdf(root)
    rows = build_manifest(dataset.entries, seed=0, official_test=dataset.official_test)
    test = {row.path for row in rows if row.split == "test"}
    assert test == {str(root / line.split()[1]) for line in OFFICIAL_TEST}
    rest = [row for row in rows if row.split != "test"]
    train = sum(row.split == "train" for row in rest)
    assert abs(train - len(rest) * 0.7 / 0.9) <= 1
    train_val_groups = {
        split: {row.group for row in rest if row.split == split} for split in ("train", "val")
    }
    assert not train_val_groups["train"] & train_val_groups["val"]


def test_official_test_list_label_must_match_the_tree(tmp_path: Path) -> None:
    root = _celebdf_tree(tmp_path, ("0 Celeb-real/id3_0000.mp4",))
    with pytest.raises(DatasetLayoutError, match="listed as fake"):
        scan_celebdf(root)


def test_official_test_list_entries_must_exist(tmp_path: Path) -> None:
    root = _celebdf_tree(tmp_path, ("1 Celeb-real/id99_0000.mp4",))
    with pytest.raises(DatasetLayoutError, match="not in the dataset tree"):
        scan_celebdf(root)


def test_celebdf_rejects_unexpected_names_and_missing_folders(tmp_path: Path) -> None:
    root = _celebdf_tree(tmp_path / "a")
    _touch(root / "Celeb-synthesis" / "id0_0003.mp4")
    with pytest.raises(DatasetLayoutError, match="Celeb-DF v2 layout"):
        scan_celebdf(root)
    with pytest.raises(DatasetLayoutError, match="missing folder"):
        scan_celebdf(tmp_path / "empty")


def test_index_cli_writes_a_relative_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _celebdf_tree(tmp_path / "celebdf")
    out = tmp_path / "celebdf" / "manifest.csv"
    argv = ["index", "--out", str(out), "--celebdf", str(root), "--seed", "4", "--official-test"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["test"]["videos"] == len(OFFICIAL_TEST)
    assert summary["dataset"]["name"] == "celeb-df-v2"
    assert read_card(card_path(out)) == training_data("real", "celeb-df-v2")
    lines = out.read_text().splitlines()
    assert lines[0] == "path,label,group,split"
    assert lines[1].startswith(("Celeb-real/", "Celeb-synthesis/", "YouTube-real/"))
    rows = read_manifest(out)
    assert all(Path(row.path).is_file() for row in rows)
    with pytest.raises(SystemExit):
        main([*argv, "--ratios", "0.7,0.3"])
    assert "three non-negative numbers" in capsys.readouterr().err


def test_index_cli_reports_layout_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["index", "--out", str(tmp_path / "m.csv"), "--folders", str(tmp_path), "--seed", "1"]
    assert main(argv) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "INVALID_DATASET"
    assert main([*argv, "--official-test"]) == 2


def test_folders_group_by_file_name_prefix(tmp_path: Path) -> None:
    for name in ("real/alice_0.mp4", "real/bob_1.mp4", "fake/alice_2.mp4", "fake/x/carol.MP4"):
        _touch(tmp_path / name)
    _touch(tmp_path / "real" / "notes.txt")
    entries = {Path(e.path).name: e for e in scan_folders(tmp_path)}
    assert {name: (e.label, e.group) for name, e in entries.items()} == {
        "alice_0.mp4": ("real", "alice"),
        "bob_1.mp4": ("real", "bob"),
        "alice_2.mp4": ("fake", "alice"),
        "carol.MP4": ("fake", "carol"),
    }


def test_folders_use_labels_csv_when_present(tmp_path: Path) -> None:
    for name in ("real/a_0.mp4", "fake/a_1.mp4"):
        _touch(tmp_path / name)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,group\nreal/a_0.mp4,real,p1\nfake/a_1.mp4,fake,p1\n")
    assert {e.group for e in scan_folders(tmp_path)} == {"p1"}
    labels.write_text("path,label,group\nreal/a_0.mp4,real,p1\n")
    with pytest.raises(DatasetLayoutError, match="disagree"):
        scan_folders(tmp_path)
    labels.write_text("path,label,group\nreal/a_0.mp4,fake,p1\nfake/a_1.mp4,fake,p1\n")
    with pytest.raises(DatasetLayoutError, match="not in that folder"):
        scan_folders(tmp_path)


def test_csv_source_defaults_group_to_stem_and_requires_files(tmp_path: Path) -> None:
    _touch(tmp_path / "videos" / "one.mp4")
    _touch(tmp_path / "videos" / "two.mp4")
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\nvideos/one.mp4,REAL\nvideos/two.mp4, fake\n")
    entries = scan_csv(listing)
    assert [(e.label, e.group) for e in entries] == [("real", "one"), ("fake", "two")]
    listing.write_text("path,label\nvideos/three.mp4,real\n")
    with pytest.raises(DatasetLayoutError, match="missing"):
        scan_csv(listing)


def test_manifest_round_trip_and_validation(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "b.mp4"
    rows = [
        ManifestRow(str(tmp_path / "data" / "a.mp4"), "real", "g1", "train"),
        ManifestRow(str(outside), "fake", "g,2", "test"),
    ]
    file = tmp_path / "data" / "manifest.csv"
    write_manifest(file, rows)
    assert file.read_text().splitlines()[1] == "a.mp4,real,g1,train"
    assert read_manifest(file) == rows

    write_labels(file, [VideoEntry(str(tmp_path / "data" / "a.mp4"), "fake", "g1")])
    assert read_labels(file) == [VideoEntry(str(tmp_path / "data" / "a.mp4"), "fake", "g1")]
    for text, message in (
        ("path,label,group,split\na.mp4,maybe,g,train\n", "label"),
        ("path,label,group,split\na.mp4,real,g,holdout\n", "split"),
        ("path,label,group\na.mp4,real,g\n", "missing columns"),
        ("path,label,group,split\na.mp4,real,g,train\na.mp4,fake,g,val\n", "twice"),
        ("path,label,group,split\na.mp4,real,,train\n", "empty group"),
    ):
        file.write_text(text)
        with pytest.raises(ManifestError, match=message):
            read_manifest(file)
