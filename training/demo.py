"""`demo`: synth -> index -> extract -> train -> evaluate -> export in one command, offline.

Produces `DIR/demo.ckpt` for the README's serving demo with the recipe `training/README.md`
measures on `synth`: MTCNN's O-net (the one pretrained face network available offline, from the
facenet-pytorch wheel) on face crops whose boxes follow a face track (smoothed over time, the
detector's gaps filled), and members that read each frame's departure from its video's mean frame
and the change from frame to frame. Every step is skipped when its output is already there (the
store and the run resume on their own).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from models.spec import ONET_INPUT_SIZE, BackboneSpec, FaceSpec, SamplingSpec
from training.dataset_card import card_path, copy_card, indexed_card, write_card
from training.evaluate import REPORT_JSON, evaluate_run
from training.export import export_run
from training.extract import extract, open_store
from training.features import StoreSpec
from training.index import build_manifest, scan_csv
from training.manifest import read_manifest, write_manifest
from training.runs import TrainConfig
from training.synth import generate_dataset
from training.train import MEMBER_BASE, parse_members, train_run

logger = logging.getLogger(__name__)

DEMO_MEMBERS = parse_members(
    "lstm64,lstm32,gru64",
    MEMBER_BASE.model_copy(update={"temporal_change": True, "centre_sequences": True}),
)
DEMO_FACE = FaceSpec(detector="mtcnn", no_face="full_frame", box_smoothing_s=0.5, fill_gaps_s=1.0)
"""MTCNN face tracks: boxes smoothed over 0.5 s, gaps of up to 1 s between detections filled."""


def demo_store_spec(frames: int, seed: int) -> StoreSpec:
    """The demo's features: O-net features of `DEMO_FACE` crops of `frames` uniform frames."""
    uniform = SamplingSpec(mode="uniform", num_frames=frames, max_frames=frames)
    return StoreSpec(
        inference_sampling=uniform,
        train_sampling={"real": uniform, "fake": uniform},
        face=DEMO_FACE,
        backbone=BackboneSpec(arch="mtcnn_onet", weights="facenet", input_size=ONET_INPUT_SIZE),
        seed=seed,
    )


def run_demo(out: Path, videos: int, seed: int, frames: int, epochs: int) -> dict[str, Any]:
    """Run (or finish) the whole demo chain in `out`; returns a summary with step timings."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    data = out / "synth"
    if not (data / "labels.csv").is_file():
        generate_dataset(data, videos, seed)
    timings["synth"] = time.perf_counter() - started

    manifest = out / "manifest.csv"
    if not manifest.is_file():
        write_manifest(manifest, build_manifest(scan_csv(data / "labels.csv"), seed=seed))
    write_card(card_path(manifest), indexed_card("csv", data / "labels.csv"))
    rows = read_manifest(manifest)

    step = time.perf_counter()
    store, backbone = open_store(demo_store_spec(frames, seed), out / "store", rows)
    copy_card(manifest, store.root)
    extract(rows, store, backbone, manifest_dir=manifest.parent)
    timings["extract"] = time.perf_counter() - step

    step = time.perf_counter()
    run = out / "run"
    config = TrainConfig(members=DEMO_MEMBERS, epochs=epochs, seed=seed)
    train_run(store, run, config)
    timings["train"] = time.perf_counter() - step

    step = time.perf_counter()
    report = (
        json.loads((run / REPORT_JSON).read_text(encoding="utf-8"))
        if (run / REPORT_JSON).is_file()
        else evaluate_run(store, run)
    )
    checkpoint = out / "demo.ckpt"
    if not checkpoint.is_file():
        export_run(store, run, checkpoint, name="dfd-demo", version="demo")
    timings["evaluate_export"] = time.perf_counter() - step
    return {
        "command": "demo",
        "checkpoint": str(checkpoint),
        "test_roc_auc": {name: m["test"]["roc_auc"] for name, m in report["models"].items()},
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
    }
