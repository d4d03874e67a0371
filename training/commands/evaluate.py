"""`evaluate`: calibrate on VAL, report members and ensemble on TEST (`training.evaluate`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from training.evaluate import evaluate_run
from training.features import FeatureStore


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `evaluate`."""
    parser = subparsers.add_parser(
        "evaluate", help="calibrate on VAL, report members and ensemble on TEST"
    )
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--run", dest="run_dir", type=Path, required=True, help="run directory")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `evaluate` and print a JSON summary line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    report = evaluate_run(FeatureStore.open(args.store), args.run_dir)
    summary = {
        "command": "evaluate",
        "temperature": report["temperature"],
        "threshold": report["threshold"],
        "test_roc_auc": {name: m["test"]["roc_auc"] for name, m in report["models"].items()},
        "ensemble_beats_every_member": report["ensemble_beats_every_member"],
    }
    print(json.dumps(summary))
    return 0
