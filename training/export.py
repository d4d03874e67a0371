"""`export`: one checkpoint with the store's backbone, the run's members and the calibration.

The inference spec takes the store's inference sampling, face settings and backbone (its weights
digest included), the run's members, and the temperature and ensemble threshold fitted on VAL by
`evaluate`; training metadata records the store, the run settings and the TEST metrics, and
`trained_on` the store's dataset card (`training.dataset_card`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.backbones import build_backbone
from models.checkpoint import save_checkpoint
from models.ensemble import Ensemble
from models.spec import EnsembleSpec, PipelineSpec
from training.dataset_card import store_card
from training.evaluate import ENSEMBLE, REPORT_JSON
from training.features import FeatureStore, FeatureStoreError
from training.runs import load_member, read_config


class ExportError(FeatureStoreError):
    """The run cannot be exported as evaluated."""

    code = "EXPORT"


def export_run(
    store: FeatureStore, run: Path, out: Path, *, name: str = "dfd-ensemble", version: str = "0"
) -> PipelineSpec:
    """Write the checkpoint of an evaluated run to `out`; returns the saved spec."""
    report_file = run / REPORT_JSON
    if not report_file.is_file():
        raise ExportError(f"{run} is not evaluated ({REPORT_JSON} missing): run `evaluate` first")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    if report["spec_hash"] != store.spec_hash:
        raise ExportError(f"{report_file} was made on features {report['spec_hash']}, not these")
    if report["windowed_test_videos"]:
        raise ExportError(
            "evaluation scored some TEST videos as several windows, which the checkpoint does "
            "not do; train with --window at least the inference sampling's frame count"
        )
    config = read_config(run)
    spec = PipelineSpec(
        name=name,
        version=version,
        sampling=store.spec.inference_sampling,
        face=store.spec.face,
        backbone=store.spec.backbone,
        ensemble=EnsembleSpec(members=config.members),
        threshold=report["threshold"],
        temperature=report["temperature"],
        training=_training_metadata(store, run, report),
        trained_on=store_card(store.root),
    )
    backbone = build_backbone(spec.backbone, state_dict=store.backbone_state())
    ensemble = Ensemble(spec.ensemble, spec.feature_dim, temperature=spec.temperature)
    for member in config.members:
        _, state = load_member(run, member.name)
        ensemble.member(member.name).load_state_dict(state)
    return save_checkpoint(out, spec, backbone, ensemble)


def _training_metadata(store: FeatureStore, run: Path, report: dict[str, Any]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for entry in store.entries:
        if entry.view == 0:
            split = counts.setdefault(entry.split, {"real": 0, "fake": 0})
            split[entry.label] += 1
    return {
        "dataset": {"store": str(store.root.absolute()), "videos": counts},
        "store": json.loads(store.spec.model_dump_json()),
        "backbone_training": store.backbone_record(),
        "run": json.loads(read_config(run).model_dump_json()),
        "metrics": {name: model["test"] for name, model in report["models"].items()},
        "ensemble_beats_every_member": report["ensemble_beats_every_member"],
        "thresholds": {name: model["threshold"] for name, model in report["models"].items()},
        "calibration": {"temperature": report["temperature"], "split": "val"},
        "test_metrics_of": ENSEMBLE,
    }
