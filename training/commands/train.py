"""`train`: fit the ensemble members on a feature store (`training.train`).

Every default comes from `TrainConfig`, the settings saved as the run's `run.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.spec import MemberSpec
from training.features import FeatureStore
from training.runs import TrainConfig
from training.train import MEMBER_BASE, parse_members, train_run

DEFAULT_MEMBERS = "lstm768,lstm512,gru768"


def _default(field: str) -> Any:
    return TrainConfig.model_fields[field].default


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `train`."""
    parser = subparsers.add_parser("train", help="train the ensemble members on a feature store")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    members = parser.add_mutually_exclusive_group()
    members.add_argument("--members", default=DEFAULT_MEMBERS)
    members.add_argument("--member-spec", type=Path, help="JSON file: a list of MemberSpec objects")
    parser.add_argument(
        "--temporal-change",
        action="store_true",
        help="members of --members also read each frame's absolute change from the previous one",
    )
    parser.add_argument(
        "--centre-sequences",
        action="store_true",
        help="members of --members read each frame minus its video's mean frame",
    )
    parser.add_argument("--epochs", type=int, default=_default("epochs"))
    parser.add_argument("--batch-size", type=int, default=_default("batch_size"))
    parser.add_argument("--lr", type=float, default=_default("lr"))
    parser.add_argument("--weight-decay", type=float, default=_default("weight_decay"))
    parser.add_argument("--schedule", choices=["onecycle", "cosine"], default=_default("schedule"))
    parser.add_argument("--balance", choices=["loss", "sampler"], default=_default("balance"))
    parser.add_argument("--window", type=int, default=_default("window"))
    parser.add_argument("--stride", type=int, default=_default("stride"))
    parser.add_argument("--patience", type=int, default=_default("patience"))
    parser.add_argument("--seed", type=int, default=_default("seed"))
    parser.add_argument(
        "--threads", type=int, default=_default("threads"), help="torch threads (0: default)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed `train` arguments."""
    if args.member_spec is not None:
        raw = json.loads(args.member_spec.read_text(encoding="utf-8"))
        members = tuple(MemberSpec.model_validate(m) for m in raw)
    else:
        base = MEMBER_BASE.model_copy(
            update={
                "temporal_change": args.temporal_change,
                "centre_sequences": args.centre_sequences,
            }
        )
        members = parse_members(args.members, base)
    return TrainConfig(
        members=members,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        balance=args.balance,
        window=args.window,
        stride=args.stride,
        patience=args.patience,
        seed=args.seed,
        threads=args.threads,
    )


def run(args: argparse.Namespace) -> int:
    """Run `train` from parsed arguments; prints one JSON line per member."""
    results = train_run(FeatureStore.open(args.store), args.out, config_from_args(args))
    for name, meta in results.items():
        print(
            json.dumps(
                {
                    "member": name,
                    "best_epoch": meta["best_epoch"],
                    "best_val_auc": meta["best_val_auc"],
                    "epochs_run": meta["epochs_run"],
                }
            )
        )
    return 0
