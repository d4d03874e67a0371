"""`explain`: a PNG strip of a video's sampled face crops with the ensemble's attention per frame.

Runs the checkpoint's own stages (`Detector.decode`, `faces`, `features`, `classify`), so the
crops, weights and score are exactly what serving computes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.pipeline import Detector, Prediction
from training.plots import plot_attention_strip


def explain_video(detector: Detector, video: Path, out: Path) -> Prediction:
    """Write the attention strip of `video` to `out`; returns the prediction shown."""
    decoded = detector.decode(video)
    faces = detector.faces(decoded.frames, decoded.timestamps_s)
    crops = faces.kept_crops
    prediction = detector.classify([detector.features(faces)])[0]
    title = (
        f"{video.name}: P(fake) = {prediction.fake_probability:.3f} -> {prediction.label} "
        f"(threshold {prediction.threshold:.3f}; {prediction.with_face}/{prediction.sampled} "
        "frames with a face)"
    )
    plot_attention_strip(
        crops.permute(0, 2, 3, 1).cpu().numpy(),
        prediction.attention,
        prediction.timestamps_s,
        out,
        title,
    )
    return prediction


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
