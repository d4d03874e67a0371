"""Dataset cards: what `index` records next to a manifest and `extract` hands to the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.spec import SYNTHETIC_USE, TrainingData
from training.dataset_card import (
    FOLDER_CARD,
    card_path,
    copy_card,
    indexed_card,
    read_card,
    store_card,
    training_data,
    write_card,
)
from training.manifest import ManifestError


def test_each_kind_has_its_intended_use() -> None:
    assert training_data("synthetic", "synth v1").intended_use == SYNTHETIC_USE
    assert "celeb-df-v2" in training_data("real", "celeb-df-v2").intended_use
    assert training_data("unknown", "x").intended_use == "unknown"


def test_index_takes_the_datasets_own_card(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    assert indexed_card("csv", labels) == TrainingData()  # no card: unknown
    write_card(card_path(labels), training_data("synthetic", "synth v1"))
    assert card_path(labels) == tmp_path / "labels.dataset.json"
    assert indexed_card("csv", labels).kind == "synthetic"
    write_card(tmp_path / FOLDER_CARD, training_data("real", "my-set"))
    assert indexed_card("folders", tmp_path).name == "my-set"
    assert indexed_card("celebdf", tmp_path) == training_data("real", "celeb-df-v2")


def test_flags_replace_the_card_and_its_intended_use(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    write_card(card_path(labels), training_data("synthetic", "synth v1"))
    assert indexed_card("csv", labels, name="synth v2") == training_data("synthetic", "synth v2")
    assert indexed_card("folders", tmp_path, kind="real", name="ffpp") == training_data(
        "real", "ffpp"
    )


def test_the_store_gets_the_manifests_card(tmp_path: Path) -> None:
    manifest, store = tmp_path / "manifest.csv", tmp_path / "store"
    store.mkdir()
    copy_card(manifest, store)  # none yet: the store says unknown
    assert store_card(store) == TrainingData()
    card = training_data("real", "celeb-df-v2")
    write_card(card_path(manifest), card)
    copy_card(manifest, store)
    assert store_card(store) == card


def test_a_malformed_card_is_a_manifest_error(tmp_path: Path) -> None:
    bad = tmp_path / "labels.dataset.json"
    bad.write_text('{"kind": "deepfakes", "name": 3}')
    with pytest.raises(ManifestError, match="not a valid dataset card"):
        read_card(bad)
