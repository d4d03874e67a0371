"""`finetune`: a backbone trained as a frame-level real/fake classifier (`training.finetune`).

Every default comes from `FinetuneConfig`; the output's `backbone.safetensors` is what
`extract --arch ARCH --input-size S --weights file:PATH` reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from models.spec import BackboneArch, BackboneSpec, FaceSpec
from training.finetune import WEIGHTS_FILE, FinetuneConfig, finetune
from training.manifest import read_manifest

_DEFAULTS = FinetuneConfig()


def _default(field: str) -> Any:
    return getattr(_DEFAULTS, field)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `finetune`."""
    parser = subparsers.add_parser(
        "finetune", help="train a backbone on TRAIN face crops with self-blended fakes"
    )
    backbone, face = _DEFAULTS.backbone, _DEFAULTS.face
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output directory (resumable)")
    parser.add_argument("--arch", choices=get_args(BackboneArch), default=backbone.arch)
    parser.add_argument(
        "--weights",
        default=backbone.weights,
        help="start: imagenet | facenet (for mtcnn_onet) | none | file:PATH",
    )
    parser.add_argument("--input-size", type=int, default=backbone.input_size)
    parser.add_argument("--detector", choices=["mtcnn", "none"], default=face.detector)
    parser.add_argument("--no-face", choices=["drop", "full_frame"], default=face.no_face)
    parser.add_argument("--box-smoothing-s", type=float, default=face.box_smoothing_s)
    parser.add_argument("--fill-gaps-s", type=float, default=face.fill_gaps_s)
    parser.add_argument("--frames", type=int, default=_default("frames"))
    parser.add_argument("--epochs", type=int, default=_default("epochs"))
    parser.add_argument("--batch-size", type=int, default=_default("batch_size"))
    parser.add_argument("--lr", type=float, default=_default("lr"))
    parser.add_argument("--weight-decay", type=float, default=_default("weight_decay"))
    parser.add_argument("--patience", type=int, default=_default("patience"))
    parser.add_argument("--seed", type=int, default=_default("seed"))
    parser.add_argument(
        "--no-dataset-fakes",
        dest="dataset_fakes",
        action="store_false",
        help="train on self-blended fakes only (ignore the TRAIN split's fake videos)",
    )
    parser.add_argument(
        "--self-blend-p",
        type=float,
        default=_default("self_blend_p"),
        help="chance that a real crop gets a self-blended twin (0 with the dataset's fakes: "
        "supervised fine-tuning)",
    )
    parser.add_argument(
        "--clip-frames",
        type=int,
        default=_default("clip_frames"),
        help="train on clips of K consecutive sampled crops (mean features and their change from "
        "frame to frame; self-blended twins jitter per frame); 0: single frames",
    )
    parser.add_argument(
        "--clip-centred",
        action="store_true",
        help="the clip classifier reads each crop's features minus the clip's mean, not the mean "
        "(what members trained with --centre-sequences read)",
    )
    parser.add_argument("--amp", choices=["auto", "bfloat16", "off"], default=_default("amp"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=_default("threads"), help="torch threads (0: default)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The `FinetuneConfig` of parsed `finetune` arguments."""
    return FinetuneConfig(
        backbone=BackboneSpec(arch=args.arch, weights=args.weights, input_size=args.input_size),
        face=FaceSpec(
            detector=args.detector,
            no_face=args.no_face,
            box_smoothing_s=args.box_smoothing_s,
            fill_gaps_s=args.fill_gaps_s,
        ),
        frames=args.frames,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
        dataset_fakes=args.dataset_fakes,
        self_blend_p=args.self_blend_p,
        clip_frames=args.clip_frames,
        clip_centred=args.clip_centred,
        amp=args.amp,
        threads=args.threads,
    )


def run(args: argparse.Namespace) -> int:
    """Run `finetune`; prints one JSON line per epoch and a summary line."""
    record = finetune(
        read_manifest(args.manifest),
        args.out,
        config_from_args(args),
        device=args.device,
        on_epoch=lambda epoch: print(json.dumps({"epoch": epoch}), flush=True),
    )
    summary = {
        "command": "finetune",
        "weights": str(args.out / WEIGHTS_FILE),
        "arch": record["arch"],
        "best_epoch": record["best_epoch"],
        "best_val_auc": record["best_val_auc"],
        "weights_sha256": record["weights_sha256"],
    }
    print(json.dumps(summary))
    return 0
