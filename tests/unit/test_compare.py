"""`compare`: runs read from their `report.json`, tabled by folder names, with row means."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.cli import main
from training.compare import Cell, markdown_table, means, read_grid


def _run(path: Path, val: float, test: float, member: float = 0.5) -> Path:
    path.mkdir(parents=True)
    models = {
        "ensemble": {"val": {"roc_auc": val}, "test": {"roc_auc": test}},
        "lstm8": {"val": {"roc_auc": member}, "test": {"roc_auc": member}},
    }
    (path / "report.json").write_text(json.dumps({"models": models}))
    return path


def test_rows_are_runs_and_columns_their_parents(tmp_path: Path) -> None:
    runs = [
        _run(tmp_path / "s0" / "run", 0.9, 1.0),
        _run(tmp_path / "s0" / "run-ft", 0.7, 0.5),
        _run(tmp_path / "s1" / "run", 0.8, 0.6),
    ]
    grid = read_grid(runs)
    assert grid == {
        "run": {"s0": Cell(0.9, 1.0), "s1": Cell(0.8, 0.6)},
        "run-ft": {"s0": Cell(0.7, 0.5)},
    }
    assert means(grid)["run"] == Cell(pytest.approx(0.85), pytest.approx(0.8))
    table = markdown_table(grid, "grid").splitlines()
    assert table[2] == "| run | s0 VAL / TEST | s1 VAL / TEST | mean VAL / TEST |"
    assert table[4] == "| run | 0.900 / 1.000 | 0.800 / 0.600 | 0.850 / 0.800 |"
    assert table[5] == "| run-ft | 0.700 / 0.500 | - | 0.700 / 0.500 |"


def test_a_member_can_be_compared_and_unknown_models_are_refused(tmp_path: Path) -> None:
    run = _run(tmp_path / "s0" / "run", 0.9, 1.0, member=0.25)
    assert read_grid([run], "lstm8") == {"run": {"s0": Cell(0.25, 0.25)}}
    with pytest.raises(ValueError, match="no model 'gru8'"):
        read_grid([run], "gru8")


def test_the_same_run_twice_in_a_column_is_refused(tmp_path: Path) -> None:
    run = _run(tmp_path / "s0" / "run", 0.9, 1.0)
    with pytest.raises(ValueError, match="twice"):
        read_grid([run, run])


def test_command_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path / "s0" / "run", 0.9, 1.0)
    out = tmp_path / "report.md"
    assert main(["compare", str(run), "--out", str(out), "--title", "grid"]) == 0
    assert out.read_text().startswith("# grid (ensemble)\n")
    summary = json.loads(capsys.readouterr().out)
    assert summary["means"] == {"run": {"val": 0.9, "test": 1.0}}
