"""`export`: write an evaluated run as one checkpoint (`training.export`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.export import export_run
from training.features import FeatureStore


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `export`."""
    parser = subparsers.add_parser("export", help="write the evaluated ensemble as one checkpoint")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--run", dest="run_dir", type=Path, required=True, help="run directory")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    parser.add_argument("--name", default="dfd-ensemble")
    parser.add_argument("--version", default="0")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `export` and print a JSON summary line."""
    spec = export_run(
        FeatureStore.open(args.store), args.run_dir, args.out, name=args.name, version=args.version
    )
    summary = {
        "command": "export",
        "checkpoint": str(args.out),
        "spec_hash": spec.spec_hash,
        "threshold": spec.threshold,
        "temperature": spec.temperature,
    }
    print(json.dumps(summary))
    return 0
