"""Offline command line: run a checkpoint on video files, or show a checkpoint's spec.

    python -m models predict --checkpoint CKPT [--device cpu] VIDEO...
    python -m models info CKPT

Both print JSON lines on stdout. `predict` prints one line per video, an error line for a video
that fails, and exits 0; the exit status is non-zero only for usage errors (2) and a checkpoint
that cannot be loaded (1).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import describe
from models.errors import CheckpointError, PipelineError, WeightsError
from models.pipeline import Detector, Prediction

logger = logging.getLogger(__name__)

EXIT_UNLOADABLE = 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m models`; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.command == "info":
        return _info(args.checkpoint)
    return _predict(args.checkpoint, args.device, args.videos, args.threads)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify video files, one JSON line each")
    predict.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file")
    predict.add_argument("--device", default="cpu", type=_device, help="torch device (cpu)")
    predict.add_argument("--threads", default=0, type=int, help="decoder threads (0: auto)")
    predict.add_argument("videos", nargs="+", type=Path, help="video files")
    info = commands.add_parser("info", help="print a checkpoint's spec and spec_hash")
    info.add_argument("checkpoint", type=Path, help="checkpoint file")
    return parser


def _device(text: str) -> torch.device:
    try:
        return torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from exc


def _info(checkpoint: Path) -> int:
    try:
        header = describe(checkpoint)
    except CheckpointError as exc:
        return _unloadable(checkpoint, exc)
    _emit(header)
    return 0


def _predict(checkpoint: Path, device: torch.device, videos: list[Path], threads: int) -> int:
    try:
        detector = Detector.load(checkpoint, device)
    except (CheckpointError, WeightsError, RuntimeError) as exc:
        return _unloadable(checkpoint, exc)
    model = {
        "name": detector.spec.name,
        "version": detector.spec.version,
        "spec_hash": detector.spec.spec_hash,
    }
    for video in videos:
        try:
            prediction = detector.predict_file(video, threads=threads)
        except PipelineError as exc:
            _emit(_error_line(video, exc.code, exc.message))
        except Exception as exc:  # one bad video must not stop the others
            logger.exception("unexpected failure on %s", video)
            _emit(_error_line(video, "INTERNAL", f"{type(exc).__name__}: {exc}"))
        else:
            _emit(_verdict_line(video, prediction, model))
    return 0


def _verdict_line(video: Path, prediction: Prediction, model: dict[str, str]) -> dict[str, Any]:
    return {
        "video": str(video),
        "status": "ok",
        "label": prediction.label,
        "fake_probability": prediction.fake_probability,
        "threshold": prediction.threshold,
        "model": model,
        "members": prediction.members,
        "frames": {
            "sampled": prediction.sampled,
            "with_face": prediction.with_face,
            "timestamps_s": prediction.timestamps_s,
            "attention": prediction.attention,
        },
    }


def _error_line(video: Path, code: str, message: str) -> dict[str, Any]:
    return {"video": str(video), "status": "error", "error": {"code": code, "message": message}}


def _unloadable(checkpoint: Path, exc: Exception) -> int:
    error = {"code": "CHECKPOINT_UNUSABLE", "message": f"{type(exc).__name__}: {exc}"}
    print(json.dumps({"checkpoint": str(checkpoint), "error": error}), file=sys.stderr)
    return EXIT_UNLOADABLE


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)
