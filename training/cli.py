"""`python -m training <command>`: an argparse subcommand registry with lazy imports.

Every command is a module of `training/commands/` with `add_parser(subparsers) ->
argparse.ArgumentParser` (registering the same name) and `run(args) -> int`, listed in `COMMANDS`;
the work itself lives in the library modules of `training/`, which hold no argument parsing.
Only the chosen command's module is imported, so light commands do not pay for torch. Commands
print one JSON object per line on stdout and log to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A registered subcommand: the module that implements it and a one-line help."""

    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "synth": Command("training.commands.synth", "generate a labelled synthetic dataset (offline)"),
    "index": Command("training.commands.index", "build a grouped train/val/test manifest"),
    "finetune": Command(
        "training.commands.finetune", "train a backbone on face crops with self-blended fakes"
    ),
    "extract": Command("training.commands.extract", "frames -> face crops -> backbone features"),
    "train": Command("training.commands.train", "train the ensemble members on a feature store"),
    "evaluate": Command(
        "training.commands.evaluate", "calibrate on VAL, report members and ensemble on TEST"
    ),
    "compare": Command(
        "training.commands.compare", "evaluated runs side by side (VAL / TEST ROC-AUC table)"
    ),
    "export": Command("training.commands.export", "write the evaluated ensemble as one checkpoint"),
    "explain": Command(
        "training.commands.explain", "attention heatmap strip of one video's face crops"
    ),
    "demo": Command(
        "training.commands.demo", "synth + index + extract + train + evaluate + export"
    ),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The top-level parser; the command named in `argv` (if any) gets its full subparser."""
    chosen = next((arg for arg in argv if arg in COMMANDS), None)
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        if name == chosen:
            module = importlib.import_module(command.module)
            module.add_parser(subparsers).set_defaults(run=module.run)
        else:
            subparsers.add_parser(name, help=command.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the process arguments), configure logging and run the command."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(arguments).parse_args(arguments)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args))
