"""`python -m benchmarks NAME [--size smoke|full] [--resolution 160|720p|1080p] [--gop 1s|2s|250]
[--json OUT]`: measured comparisons (`--resolution` and `--gop` shape the clips of `stages` and
`pipeline`).

Each benchmark prints a table and writes its report as JSON; the exit status is 1 when a
correctness check of a benchmark fails (the drills' zero-lost rule), 2 for usage errors.
Kafka and Redis come from `--kafka`/`--redis` (or DFD_BENCH_KAFKA_BOOTSTRAP/DFD_BENCH_REDIS_URL);
without them a private local stack is started (the drills always start their own).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.assets import GOPS, RESOLUTIONS
from benchmarks.context import MODELS, Context
from benchmarks.report import Report, render

BENCHMARKS: dict[str, str] = {
    "pipeline": "benchmarks.pipeline",
    "cache": "benchmarks.cache",
    "scaling": "benchmarks.scaling",
    "long-video": "benchmarks.long_video",
    "stages": "benchmarks.stages",
    "drills": "benchmarks.drills",
    "delivery": "benchmarks.delivery",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", choices=[*BENCHMARKS, "all"], help="benchmark to run")
    parser.add_argument("--size", choices=("smoke", "full"), default="smoke")
    parser.add_argument("--json", type=Path, help="write the report(s) here as JSON")
    parser.add_argument("--workdir", type=Path, help="keep videos, checkpoints, logs here")
    parser.add_argument("--kafka", default=os.environ.get("DFD_BENCH_KAFKA_BOOTSTRAP"))
    parser.add_argument("--redis", default=os.environ.get("DFD_BENCH_REDIS_URL"))
    parser.add_argument(
        "--device", default="cpu", help="torch device of the benchmarks that take one (stages)"
    )
    parser.add_argument(
        "--resolution",
        choices=list(RESOLUTIONS),
        default="160",
        help="clip size of stages and pipeline: 160 (the synth's 160x160), 720p, 1080p",
    )
    parser.add_argument(
        "--gop",
        choices=GOPS,
        default=None,
        help="clips encoded as uploads (x264 defaults, B-frames) with a keyframe every 1 s, 2 s "
        "or 250 frames (default at 720p/1080p: 250)",
    )
    parser.add_argument(
        "--delivery",
        choices=("at-least-once", "exactly-once"),
        default="at-least-once",
        help="the workers' delivery guarantee (drills)",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="size",
        help="the benchmark checkpoint: the size's own (representative ResNet50 at full, a "
        "MobileNet at smoke) or the demo's O-net model, which serves CPU-only machines",
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser


def run_benchmark(name: str, context: Context) -> Report:
    """Run one benchmark by name."""
    module = importlib.import_module(BENCHMARKS[name])
    workdir = context.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    return module.run(dataclasses.replace(context, workdir=workdir))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    with tempfile.TemporaryDirectory(prefix="dfd-bench-") as temporary:
        root = (args.workdir or Path(temporary)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        context = Context(
            args.size,
            root,
            root,
            args.kafka,
            args.redis,
            args.device,
            resolution=args.resolution,
            gop=args.gop,
            delivery=args.delivery,
            model=args.model,
        )
        reports = []
        for name in names:
            report = run_benchmark(name, context)
            print(render(report), flush=True)
            reports.append(report.to_dict())
    if args.json:
        document = reports[0] if len(reports) == 1 else {"reports": reports}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any(report["failures"] for report in reports) else 0
