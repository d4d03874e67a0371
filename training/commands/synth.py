"""`synth`: generate the labelled synthetic dataset (a pipeline check, not deepfake data)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from training.synth import DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_SIZE, SynthError, generate_dataset


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `synth`."""
    parser = subparsers.add_parser(
        "synth", help="generate a labelled synthetic video dataset (offline)"
    )
    parser.add_argument("--out", type=Path, required=True, help="new or empty output directory")
    parser.add_argument("--videos", type=int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames per clip")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=DEFAULT_SIZE,
        help=f"frame size WxH (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})",
    )
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frame rate")
    parser.add_argument("--fake-ratio", type=float, default=0.5, help="share of fake clips")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    return parser


def parse_size(text: str) -> tuple[int, int]:
    """`"160x160"` -> (160, 160)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size must look like 160x160, got {text!r}") from error
    return width, height


def run(args: argparse.Namespace) -> int:
    """Generate the dataset and print a JSON summary line."""
    started = time.perf_counter()
    try:
        entries = generate_dataset(
            args.out,
            args.videos,
            args.seed,
            frames=args.frames,
            size=args.size,
            fps=args.fps,
            fake_ratio=args.fake_ratio,
            workers=args.workers,
        )
    except SynthError as error:
        error_line = {"code": error.code, "message": str(error)}
        print(json.dumps({"command": "synth", "error": error_line}))
        return 2
    summary = {
        "command": "synth",
        "out": str(args.out),
        "videos": len(entries),
        "real": sum(entry.label == "real" for entry in entries),
        "fake": sum(entry.label == "fake" for entry in entries),
        "groups": len({entry.group for entry in entries}),
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(summary))
    return 0
