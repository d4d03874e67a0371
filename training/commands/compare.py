"""`compare`: evaluated runs side by side in one markdown table (`training.compare`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.compare import markdown_table, means, read_grid
from training.evaluate import ENSEMBLE


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `compare`."""
    parser = subparsers.add_parser(
        "compare", help="evaluated runs side by side: VAL / TEST ROC-AUC as a markdown table"
    )
    parser.add_argument(
        "runs", type=Path, nargs="+", help="run directories (rows: their names, columns: parents)"
    )
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--model", default=ENSEMBLE, help="member name or 'ensemble'")
    parser.add_argument("--title", default="ROC-AUC per run")
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the table and print the row means as one JSON line."""
    grid = read_grid(args.runs, args.model)
    args.out.write_text(markdown_table(grid, f"{args.title} ({args.model})"), encoding="utf-8")
    summary = {
        "command": "compare",
        "out": str(args.out),
        "means": {row: {"val": m.val, "test": m.test} for row, m in means(grid).items()},
    }
    print(json.dumps(summary))
    return 0
