"""`evaluate`: calibrate on VALIDATION, then score every member and the ensemble on TEST.

- Temperature: one temperature shared by all members (as in the checkpoint), chosen by minimising
  the validation NLL of the ensemble probability (bounded 1-D search over log T).
- Threshold: per model, the validation threshold maximising Youden's J (TPR - FPR).
- TEST metrics at that threshold: accuracy, balanced accuracy, F1, ROC-AUC, average precision and
  EER (from the ROC curve), for each member and the ensemble side by side.

Writes `report.json` (with per-video TEST probabilities keyed by video path), `report.md`,
`roc.png` and `confusion.png` into the run directory. Only clean views (view 0) are evaluated;
VAL and TEST features use the inference sampling, so these numbers are what the exported
checkpoint computes on the same files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)
from torch import Tensor

from models.ensemble import normalised_weights
from models.heads import build_member
from models.spec import EnsembleSpec
from training.features import FeatureStore, StoreEntry, dump_json
from training.plots import plot_confusion, plot_roc_curves
from training.runs import load_member, read_config
from training.scoring import aggregate_probabilities, window_logits

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ENSEMBLE = "ensemble"
TEMPERATURE_BOUNDS = (0.05, 20.0)


def ensemble_probabilities(
    logits: Mapping[str, Sequence[Tensor]], weights: Sequence[float], temperature: float
) -> dict[str, np.ndarray]:
    """Per-video fake probability of each member and of their weighted average (`"ensemble"`)."""
    members = {
        name: aggregate_probabilities(values, temperature).double().numpy()
        for name, values in logits.items()
    }
    ensemble = sum(w * p for w, p in zip(weights, members.values(), strict=True))
    return {**members, ENSEMBLE: np.asarray(ensemble)}


def binary_nll(probabilities: np.ndarray, targets: Sequence[int]) -> float:
    """Mean negative log-likelihood of binary targets under fake probabilities."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    y = np.asarray(targets, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def fit_temperature(
    logits: Mapping[str, Sequence[Tensor]], weights: Sequence[float], targets: Sequence[int]
) -> float:
    """The temperature minimising the ensemble's NLL on `targets` (bounded search over log T)."""

    def loss(log_t: float) -> float:
        probabilities = ensemble_probabilities(logits, weights, math.exp(log_t))[ENSEMBLE]
        return binary_nll(probabilities, targets)

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


def youden_threshold(targets: Sequence[int], scores: np.ndarray) -> float:
    """The score threshold (predict fake when `score >= threshold`) maximising TPR - FPR."""
    fpr, tpr, thresholds = roc_curve(targets, scores)
    finite = np.isfinite(thresholds)
    best = int(np.argmax(np.where(finite, tpr - fpr, -np.inf)))
    return float(min(1.0, thresholds[best]))


def equal_error_rate(targets: Sequence[int], scores: np.ndarray) -> float:
    """The error rate where the false positive and false negative rates meet (ROC curve)."""
    fpr, tpr, _ = roc_curve(targets, scores)
    fnr = 1.0 - tpr
    index = int(np.argmin(np.abs(fnr - fpr)))
    return float((fpr[index] + fnr[index]) / 2.0)


def metrics(targets: Sequence[int], scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Threshold metrics at `threshold` and ranking metrics of `scores`."""
    predictions = (scores >= threshold).astype(int)
    return {
        "accuracy": float(accuracy_score(targets, predictions)),
        "balanced_accuracy": float(balanced_accuracy_score(targets, predictions)),
        "f1": float(f1_score(targets, predictions, zero_division=0)),
        "roc_auc": float(roc_auc_score(targets, scores)),
        "average_precision": float(average_precision_score(targets, scores)),
        "eer": equal_error_rate(targets, scores),
    }


def evaluate_run(store: FeatureStore, run: Path) -> dict[str, Any]:
    """Calibrate on VAL, score on TEST; writes the report files and returns `report.json`."""
    config = read_config(run)
    val_entries = store.select("val", clean_only=True)
    test_entries = store.select("test", clean_only=True)
    for split, entries in (("val", val_entries), ("test", test_entries)):
        if len({e.target for e in entries}) < 2:
            raise ValueError(f"the {split} split needs videos of both labels")
    val_logits, test_logits = {}, {}
    for spec in config.members:
        meta, state = load_member(run, spec.name)
        member = build_member(spec, int(meta["input_dim"]))
        member.load_state_dict(state)
        for entries, out in ((val_entries, val_logits), (test_entries, test_logits)):
            sequences = [store.features(e) for e in entries]
            out[spec.name] = window_logits(member, sequences, config.window, config.stride)
    weights = normalised_weights(EnsembleSpec(members=config.members))
    val_targets = [e.target for e in val_entries]
    test_targets = [e.target for e in test_entries]
    temperature = fit_temperature(val_logits, weights, val_targets)
    val_scores = ensemble_probabilities(val_logits, weights, temperature)
    test_scores = ensemble_probabilities(test_logits, weights, temperature)

    models = {}
    for name, scores in test_scores.items():
        threshold = youden_threshold(val_targets, val_scores[name])
        models[name] = {
            "threshold": threshold,
            "val": metrics(val_targets, val_scores[name], threshold),
            "test": metrics(test_targets, scores, threshold),
        }
    member_aucs = [models[m.name]["test"]["roc_auc"] for m in config.members]
    report = {
        "store": str(store.root.absolute()),
        "spec_hash": store.spec_hash,
        "temperature": temperature,
        "threshold": models[ENSEMBLE]["threshold"],
        "window": config.window,
        "windowed_test_videos": sum(e.length > config.window for e in test_entries),
        "counts": {
            split: {"videos": len(t), "fake": int(sum(t)), "real": len(t) - int(sum(t))}
            for split, t in (("val", val_targets), ("test", test_targets))
        },
        "models": models,
        "ensemble_beats_every_member": models[ENSEMBLE]["test"]["roc_auc"] > max(member_aucs),
        "test_predictions": _predictions(store, test_entries, test_scores),
    }
    dump_json(run / REPORT_JSON, report)
    (run / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")
    plot_roc_curves(test_targets, test_scores, run / "roc.png", "TEST ROC")
    ensemble_threshold = models[ENSEMBLE]["threshold"]
    predicted = (test_scores[ENSEMBLE] >= ensemble_threshold).astype(int).tolist()
    plot_confusion(test_targets, predicted, run / "confusion.png", "TEST, ensemble")
    return report


def _predictions(
    store: FeatureStore, entries: Sequence[StoreEntry], scores: Mapping[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    return {
        store.video_path(entry): {
            "label": entry.label,
            "fake_probability": float(scores[ENSEMBLE][i]),
            "members": {n: float(s[i]) for n, s in scores.items() if n != ENSEMBLE},
        }
        for i, entry in enumerate(entries)
    }


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table (members and ensemble side by side)."""
    columns = ["accuracy", "balanced_accuracy", "f1", "roc_auc", "average_precision", "eer"]
    counts = report["counts"]
    lines = [
        "# Evaluation report",
        "",
        f"- features: `{report['spec_hash']}`; temperature {report['temperature']:.4f} "
        "(fitted on VAL)",
        f"- VAL: {counts['val']['videos']} videos ({counts['val']['fake']} fake); "
        f"TEST: {counts['test']['videos']} videos ({counts['test']['fake']} fake)",
        "- thresholds: Youden's J on VAL, per model",
        "",
        "| model | threshold | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for name, result in report["models"].items():
        values = " | ".join(f"{result['test'][c]:.4f}" for c in columns)
        lines.append(f"| {name} | {result['threshold']:.4f} | {values} |")
    verdict = "beats" if report["ensemble_beats_every_member"] else "does NOT beat"
    lines += ["", f"The ensemble {verdict} every member on TEST ROC-AUC.", ""]
    return "\n".join(lines)
