"""`extract`: videos -> face crops -> backbone features, into a feature store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

import torch

from models.spec import BackboneArch, KeyframeSnap, PipelineSpec, SamplingSpec
from training.augment import AugmentSpec
from training.dataset_card import copy_card
from training.extract import extract, open_store
from training.features import StoreSpec
from training.manifest import read_manifest


def store_spec_from_args(args: argparse.Namespace) -> StoreSpec:
    """The store spec of parsed `extract` arguments (backbone digest not yet filled in)."""
    base = (
        PipelineSpec.model_validate_json(args.spec_json.read_text(encoding="utf-8"))
        if args.spec_json
        else PipelineSpec()
    )
    inference = base.sampling
    if args.inference_frames is not None:
        frames = args.inference_frames
        inference = SamplingSpec(
            mode="uniform", num_frames=frames, max_frames=max(frames, inference.max_frames)
        )
    face = _updated(
        base.face,
        detector=args.detector,
        no_face=args.no_face,
        box_smoothing_s=args.box_smoothing_s,
        fill_gaps_s=args.fill_gaps_s,
    )
    backbone = _updated(
        base.backbone,
        arch=args.arch,
        weights=args.weights,
        dtype=args.dtype,
        input_size=args.input_size,
    )
    max_frames = inference.max_frames
    if args.sampling == "uniform":
        frames = args.frames or inference.num_frames
        uniform = SamplingSpec(
            mode="uniform", num_frames=frames, max_frames=max(frames, max_frames)
        )
        train = {"real": uniform, "fake": uniform}
    else:
        train = {
            "real": SamplingSpec(
                mode="every_nth", every_nth=args.real_every, max_frames=max_frames
            ),
            "fake": SamplingSpec(
                mode="every_nth", every_nth=args.fake_every, max_frames=max_frames
            ),
        }
    if args.keyframes is not None:
        snap = {"keyframes": KeyframeSnap(tolerance_s=args.keyframes)}
        inference = inference.model_copy(update=snap)
        train = {label: spec.model_copy(update=snap) for label, spec in train.items()}
    return StoreSpec(
        inference_sampling=inference,
        train_sampling=train,
        face=face,
        backbone=backbone,
        augment=AugmentSpec(),
        views=args.views,
        seed=args.seed,
    )


def _updated(model: Any, **changes: Any) -> Any:
    """A copy of a pydantic model with the non-None `changes` applied (validated)."""
    values = model.model_dump() | {k: v for k, v in changes.items() if v is not None}
    return type(model).model_validate(values)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `extract`."""
    parser = subparsers.add_parser(
        "extract", help="frames -> face crops -> backbone features into a feature store"
    )
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="feature store directory")
    parser.add_argument(
        "--spec-json", type=Path, help="PipelineSpec JSON: inference sampling, face, backbone"
    )
    parser.add_argument("--arch", choices=get_args(BackboneArch))
    parser.add_argument("--weights", help="imagenet | facenet (for mtcnn_onet) | none | file:PATH")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--detector", choices=["mtcnn", "none"])
    parser.add_argument("--no-face", choices=["drop", "full_frame"])
    parser.add_argument(
        "--box-smoothing-s",
        type=float,
        help="smooth each video's face boxes over this many seconds (Gaussian sigma; 0: off)",
    )
    parser.add_argument(
        "--fill-gaps-s",
        type=float,
        help="give frames without a detection the face track's box where the detections around "
        "them are at most this many seconds apart (0: off)",
    )
    parser.add_argument(
        "--inference-frames", type=int, help="uniform frames of VAL/TEST (and the checkpoint)"
    )
    parser.add_argument(
        "--sampling",
        choices=["every_nth", "uniform"],
        default="every_nth",
        help="TRAIN sampling: per label every n-th frame (research setup) or uniform",
    )
    parser.add_argument(
        "--keyframes",
        type=float,
        metavar="TOL",
        help="snap every sample time (TRAIN and inference) to a keyframe at most TOL s away",
    )
    parser.add_argument("--fake-every", type=int, default=60)
    parser.add_argument("--real-every", type=int, default=30)
    parser.add_argument("--frames", type=int, help="uniform TRAIN frames (default: inference's)")
    parser.add_argument("--views", type=int, default=0, help="augmented views per TRAIN video")
    parser.add_argument("--seed", type=int, default=0, help="backbone init and augmentation seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--calibration-videos",
        type=int,
        default=32,
        help="weights none: TRAIN videos whose crops set the BatchNorm statistics (0: none)",
    )
    parser.add_argument("--shard-videos", type=int, default=64, help="videos per shard")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `extract` and print a JSON summary line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = read_manifest(args.manifest)
    store, module = open_store(
        store_spec_from_args(args),
        args.out,
        rows,
        calibration_videos=args.calibration_videos,
        shard_videos=args.shard_videos,
    )
    copy_card(args.manifest, store.root)
    counts = extract(rows, store, module, manifest_dir=args.manifest.parent, device=args.device)
    summary = {"command": "extract", "store": str(args.out), "spec_hash": store.spec_hash, **counts}
    print(json.dumps(summary))
    return 0
