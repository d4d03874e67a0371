"""`index`: write a grouped train/val/test manifest of a dataset on disk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from models.spec import DatasetKind
from training.dataset_card import card_path, indexed_card, write_card
from training.index import (
    DatasetLayoutError,
    build_manifest,
    scan_celebdf,
    scan_csv,
    scan_folders,
    summarize,
)
from training.manifest import ManifestError, write_manifest
from training.splits import DEFAULT_RATIOS, SplitError, parse_ratios


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `index`."""
    parser = subparsers.add_parser(
        "index", help="build a grouped train/val/test manifest (path,label,group,split)"
    )
    parser.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--celebdf", type=Path, metavar="ROOT", help="Celeb-DF v2 root")
    source.add_argument("--folders", type=Path, metavar="ROOT", help="root with real/ and fake/")
    source.add_argument("--csv", type=Path, metavar="FILE", help="CSV of path,label[,group]")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument(
        "--ratios",
        type=_ratios,
        default=DEFAULT_RATIOS,
        help="train,val,test fractions (default 0.7,0.2,0.1)",
    )
    parser.add_argument(
        "--dataset-kind",
        choices=get_args(DatasetKind),
        help="what the videos are (default: the dataset's card; Celeb-DF: real)",
    )
    parser.add_argument(
        "--dataset-name", help="the dataset's name (default: its card's; Celeb-DF: celeb-df-v2)"
    )
    parser.add_argument(
        "--official-test",
        action="store_true",
        help="Celeb-DF only: test = List_of_testing_videos.txt, the rest split train:val",
    )
    return parser


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        return parse_ratios(text)
    except SplitError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def run(args: argparse.Namespace) -> int:
    """Index, split, write the manifest and print a JSON summary line."""
    try:
        official = None
        if args.celebdf is not None:
            dataset = scan_celebdf(args.celebdf)
            entries = dataset.entries
            if args.official_test:
                if not dataset.official_test:
                    raise DatasetLayoutError(f"{args.celebdf}: no official test list found")
                official = dataset.official_test
        elif args.official_test:
            raise DatasetLayoutError("--official-test needs --celebdf")
        elif args.folders is not None:
            entries = scan_folders(args.folders)
        else:
            entries = scan_csv(args.csv)
        rows = build_manifest(entries, ratios=args.ratios, seed=args.seed, official_test=official)
        write_manifest(args.out, rows)
        layout = "celebdf" if args.celebdf else "folders" if args.folders else "csv"
        source = args.celebdf or args.folders or args.csv
        card = indexed_card(layout, source, kind=args.dataset_kind, name=args.dataset_name)
        write_card(card_path(args.out), card)
    except (DatasetLayoutError, ManifestError, SplitError) as error:
        error_line = {"code": error.code, "message": str(error)}
        print(json.dumps({"command": "index", "error": error_line}))
        return 2
    summary = {"out": str(args.out), "dataset": card.model_dump(), "splits": summarize(rows)}
    print(json.dumps({"command": "index", **summary}))
    return 0
