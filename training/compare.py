"""`compare`: evaluated runs side by side in one markdown table.

Each run is a directory holding the `report.json` that `evaluate` wrote. A table row is a run's
folder name, a column its parent folder's name, so a grid laid out as `OUT/s<seed>/run-<arm>`
reads arms by seeds. A cell is one model's VAL / TEST ROC-AUC (the ensemble by default), and the
last column is the row's mean over the cells it has.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.evaluate import ENSEMBLE, REPORT_JSON


@dataclass(frozen=True)
class Cell:
    """One run's VAL and TEST ROC-AUC."""

    val: float
    test: float


Grid = dict[str, dict[str, Cell]]
"""Row (run folder name) -> column (its parent's name) -> cell, in the order the runs came."""


def read_grid(runs: Sequence[Path], model: str = ENSEMBLE) -> Grid:
    """The cells of `runs` for `model`; a run named twice in one column is refused."""
    grid: Grid = {}
    for run in runs:
        report = json.loads((run / REPORT_JSON).read_text(encoding="utf-8"))
        if model not in report["models"]:
            raise ValueError(f"{run / REPORT_JSON} has no model {model!r}")
        scores = report["models"][model]
        row = grid.setdefault(run.name, {})
        column = run.parent.name
        if column in row:
            raise ValueError(f"{run.name} appears twice under {column}")
        row[column] = Cell(scores["val"]["roc_auc"], scores["test"]["roc_auc"])
    return grid


def means(grid: Grid) -> dict[str, Cell]:
    """Each row's mean VAL and TEST ROC-AUC over its cells."""
    return {
        row: Cell(
            statistics.fmean(cell.val for cell in cells.values()),
            statistics.fmean(cell.test for cell in cells.values()),
        )
        for row, cells in grid.items()
    }


def markdown_table(grid: Grid, title: str) -> str:
    """`grid` as a markdown document: one row per run, columns in first-seen order, then means."""
    columns = list(dict.fromkeys(column for cells in grid.values() for column in cells))
    header = ["run", *(f"{column} VAL / TEST" for column in columns), "mean VAL / TEST"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row, mean in means(grid).items():
        cells = [_cell(grid[row].get(column)) for column in columns]
        lines.append("| " + " | ".join([row, *cells, _cell(mean)]) + " |")
    return "\n".join(lines) + "\n"


def _cell(cell: Cell | None) -> str:
    return "-" if cell is None else f"{cell.val:.3f} / {cell.test:.3f}"
