"""`explain`: attention strip of one video's face crops (`training.explain`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.pipeline import Detector
from training.explain import explain_video


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `explain`."""
    parser = subparsers.add_parser(
        "explain", help="attention heatmap strip of one video's sampled face crops"
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--device", default="cpu")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `explain` and print the prediction as a JSON line."""
    prediction = explain_video(Detector.load(args.checkpoint, args.device), args.video, args.out)
    summary = {
        "command": "explain",
        "video": str(args.video),
        "png": str(args.out),
        "fake_probability": prediction.fake_probability,
        "label": prediction.label,
        "attention": prediction.attention,
        "timestamps_s": prediction.timestamps_s,
    }
    print(json.dumps(summary))
    return 0
