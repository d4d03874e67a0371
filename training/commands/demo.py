"""`demo`: the whole chain on `synth` in one command (`training.demo`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.demo import run_demo


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `demo`."""
    parser = subparsers.add_parser(
        "demo", help="synth + index + extract + train + evaluate + export into DIR/demo.ckpt"
    )
    parser.add_argument("--out", type=Path, required=True, help="demo directory")
    parser.add_argument("--videos", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=36, help="uniform frames per video")
    parser.add_argument("--epochs", type=int, default=40)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `demo` and print its summary as a JSON line."""
    print(json.dumps(run_demo(args.out, args.videos, args.seed, args.frames, args.epochs)))
    return 0
