"""`extract`: a dataset copied elsewhere with its manifest resumes its feature store; a manifest
that places a stored video elsewhere is refused."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tests.videos import index_frames, make_video
from training.cli import main
from training.commands.extract import add_parser, store_spec_from_args
from training.features import SpecMismatch
from training.manifest import ManifestRow, read_manifest, write_manifest

SPLITS = ("train", "val", "test")


def _dataset(root: Path) -> Path:
    rows = []
    (root / "clips").mkdir(parents=True)
    for i in range(3):
        path = make_video(root / "clips" / f"v{i}.mp4", index_frames(6), fps=6)
        rows.append(ManifestRow(str(path), "real" if i % 2 else "fake", f"g{i}", SPLITS[i]))
    write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


def _extract(manifest: Path, store: Path) -> None:
    args = [
        "extract",
        "--manifest",
        manifest,
        "--out",
        store,
        "--arch",
        "mobilenet_v3_large",
        "--weights",
        "none",
        "--detector",
        "none",
        "--input-size",
        "32",
        "--inference-frames",
        "3",
        "--sampling",
        "uniform",
    ]
    assert main([str(a) for a in args]) == 0


def test_a_moved_dataset_resumes_its_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _extract(_dataset(tmp_path / "here"), store)
    first = json.loads((store / "store.json").read_text())
    assert sorted(e["path"] for e in first["entries"]) == [f"clips/v{i}.mp4" for i in range(3)]
    assert first["dataset_root"] == str((tmp_path / "here").absolute())

    shutil.move(tmp_path / "here", tmp_path / "there")
    _extract(tmp_path / "there" / "manifest.csv", store)
    second = json.loads((store / "store.json").read_text())
    assert second["entries"] == first["entries"]  # nothing extracted again
    assert second["dataset_root"] == str((tmp_path / "there").absolute())


def test_a_manifest_with_other_splits_is_refused(tmp_path: Path) -> None:
    manifest, store = _dataset(tmp_path / "data"), tmp_path / "store"
    _extract(manifest, store)
    rows = read_manifest(manifest)
    write_manifest(manifest, [dataclasses.replace(rows[0], split="test"), *rows[1:]])
    with pytest.raises(SpecMismatch, match=r"clips/v0\.mp4 is stored as .*/train"):
        _extract(manifest, store)


def test_keyframes_flag_snaps_train_and_inference_sampling_alike() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    base = ["extract", "--manifest", "m.csv", "--out", "s", "--sampling", "uniform"]
    plain = store_spec_from_args(parser.parse_args([*base, "--inference-frames", "8"]))
    snapped = store_spec_from_args(
        parser.parse_args([*base, "--inference-frames", "8", "--keyframes", "0.25"])
    )
    assert plain.inference_sampling.keyframes is None
    samplings = [snapped.inference_sampling, *snapped.train_sampling.values()]
    assert [s.keyframes.tolerance_s for s in samplings if s.keyframes] == [0.25] * 3
    assert snapped.inference_sampling.num_frames == plain.inference_sampling.num_frames == 8
    with pytest.raises(ValueError):
        store_spec_from_args(parser.parse_args([*base, "--keyframes", "-1"]))
