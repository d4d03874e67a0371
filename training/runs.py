"""A training run directory and its settings.

A run directory holds `run.json` (the run's `TrainConfig` and the store it trained on),
`log.jsonl` (one line per member epoch), `members/<name>.safetensors` + `members/<name>.json`
(best weights and their metadata) and `curves/<name>.png`. `train` writes it; `evaluate` and
`export` read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.spec import MemberSpec
from training.features import FeatureStore, FeatureStoreError, SpecMismatch, dump_json

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
MEMBERS_DIR = "members"
CURVES_DIR = "curves"


class TrainConfig(BaseModel):
    """Settings of one training run (saved as `run.json`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: tuple[MemberSpec, ...]
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    balance: Literal["loss", "sampler"] = "loss"
    window: int = Field(64, ge=1)
    stride: int = Field(32, ge=1)
    patience: int = Field(8, ge=1)
    seed: int = 0
    threads: int = Field(0, ge=0)


def member_files(run: Path, name: str) -> tuple[Path, Path]:
    """The weights and metadata files of a member in a run directory."""
    return run / MEMBERS_DIR / f"{name}.safetensors", run / MEMBERS_DIR / f"{name}.json"


def load_member(run: Path, name: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The metadata and weights of a trained member."""
    weights, meta = member_files(run, name)
    if not meta.is_file() or not weights.is_file():
        raise FeatureStoreError(f"member {name} is not trained in {run}")
    return json.loads(meta.read_text(encoding="utf-8")), load_file(str(weights))


def read_config(run: Path) -> TrainConfig:
    """The settings of a run directory."""
    file = run / RUN_FILE
    if not file.is_file():
        raise FeatureStoreError(f"no training run at {run} ({RUN_FILE} missing)")
    return TrainConfig.model_validate(json.loads(file.read_text(encoding="utf-8"))["config"])


def start_run(store: FeatureStore, run: Path, config: TrainConfig) -> None:
    """Write `run.json`, or check that an existing run used the same store."""
    file = run / RUN_FILE
    if file.is_file():
        previous = json.loads(file.read_text(encoding="utf-8"))
        if previous["store_spec_hash"] != store.spec_hash:
            raise SpecMismatch(
                f"{run} was trained on features {previous['store_spec_hash']}, "
                f"not on this store's {store.spec_hash}"
            )
    run.mkdir(parents=True, exist_ok=True)
    document = {
        "store": str(store.root.absolute()),
        "store_spec_hash": store.spec_hash,
        "config": config.model_dump(mode="json"),
    }
    dump_json(file, document)


def append_log(run: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to the run's `log.jsonl`."""
    with (run / LOG_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def save_member(run: Path, name: str, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write a trained member's weights, then its metadata (which marks it finished)."""
    weights_file, meta_file = member_files(run, name)
    weights_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights_file))
    dump_json(meta_file, meta)
