"""The dataset card: what a dataset is, carried from the dataset on disk into the checkpoint.

A card is the JSON of `models.spec.TrainingData` (kind, name, intended use). `synth` writes one
next to its `labels.csv` (`labels.dataset.json`); `index` writes one next to the manifest it
writes (`manifest.csv` -> `manifest.dataset.json`): Celeb-DF's, the card of the CSV or folder it
indexed, or one made from `--dataset-kind/--dataset-name`; `extract` copies the manifest's card
into the feature store (`dataset.json`) and `export` writes it into the checkpoint spec's
`trained_on`. Without a card along the way the checkpoint says `unknown`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from models.spec import SYNTHETIC_USE, DatasetKind, TrainingData
from training.manifest import ManifestError

CARD_SUFFIX = ".dataset.json"
FOLDER_CARD = "dataset.json"
"""The card of a folder dataset (`ROOT/dataset.json`) and of a feature store."""

SYNTH_NAME = "synth v1"
CELEBDF_NAME = "celeb-df-v2"


def training_data(kind: DatasetKind, name: str) -> TrainingData:
    """The card of a dataset of `kind` called `name`, with the intended use that follows."""
    uses = {
        "synthetic": SYNTHETIC_USE,
        "real": f"deepfake detection on face videos like those of {name}",
        "unknown": "unknown",
    }
    return TrainingData(kind=kind, name=name, intended_use=uses[kind])


def indexed_card(
    layout: Literal["celebdf", "folders", "csv"],
    source: Path,
    *,
    kind: DatasetKind | None = None,
    name: str | None = None,
) -> TrainingData:
    """The card of a dataset `index` reads: Celeb-DF's, a folder's `dataset.json` or a CSV's
    card; `kind`/`name` replace what it says (the intended use follows them)."""
    if layout == "celebdf":
        found: TrainingData | None = training_data("real", CELEBDF_NAME)
    elif layout == "folders":
        found = read_card(source / FOLDER_CARD)
    else:
        found = read_card(card_path(source))
    found = found or TrainingData()
    if kind is None and name is None:
        return found
    return training_data(kind or found.kind, name or found.name)


def card_path(csv_file: Path) -> Path:
    """The card that goes with a labels or manifest CSV (`x.csv` -> `x.dataset.json`)."""
    return csv_file.with_name(csv_file.stem + CARD_SUFFIX)


def read_card(path: Path) -> TrainingData | None:
    """The card at `path`, None when there is none; a malformed card is a `ManifestError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ManifestError(f"{path}: cannot read: {error}") from error
    try:
        return TrainingData.model_validate_json(text)
    except ValidationError as error:
        raise ManifestError(f"{path} is not a valid dataset card: {error}") from error


def write_card(path: Path, card: TrainingData) -> None:
    """Write `card` as JSON to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(card.model_dump_json(indent=1) + "\n", encoding="utf-8")


def copy_card(manifest: Path, store_root: Path) -> None:
    """Give the feature store the manifest's card (a manifest without one leaves the store's)."""
    source = card_path(manifest)
    if read_card(source) is not None:
        shutil.copyfile(source, store_root / FOLDER_CARD)


def store_card(store_root: Path) -> TrainingData:
    """What the store's features were extracted from (`unknown` without a card)."""
    return read_card(store_root / FOLDER_CARD) or TrainingData()
