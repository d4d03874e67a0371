"""A benchmark's report: results per arm, ratios measured side by side, targets, failures."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TABLE_KEYS = (
    "videos",
    "frames",
    "videos_per_s",
    "frames_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "cpu_ms_per_frame",
    "load1",
    "peak_rss_mib",
    "elapsed_s",
)


@dataclass
class Report:
    """What one benchmark run measured. `failures` make the command exit non-zero."""

    name: str
    size: str
    machine: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalars of a result, nested dicts flattened one level (latency percentiles)."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({k: v for k, v in value.items() if not isinstance(v, dict | list)})
        elif not isinstance(value, list):
            flat[key] = value
    return flat


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def render(report: Report) -> str:
    """A readable plain-text table of the report."""
    machine = report.machine
    lines = [
        f"== {report.name} (size {report.size}) ==",
        f"machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, "
        f"torch threads {machine.get('torch_threads')}, device {machine.get('device')}, "
        f"bf16 {machine.get('cpu_bf16')}",
    ]
    rows = {name: _flat(metrics) for name, metrics in report.results.items()}
    keys = [k for k in TABLE_KEYS if any(k in row for row in rows.values())] or sorted(
        {k for row in rows.values() for k in row}
    )
    if rows:
        header = ["arm", *keys]
        table = [header] + [
            [name, *(_cell(row.get(k)) for k in keys)] for name, row in rows.items()
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for index, row in enumerate(table):
            lines.append(
                "  ".join(
                    cell.rjust(w) if i else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                )
            )
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
    for name, value in report.ratios.items():
        lines.append(f"ratio {name}: {_cell(value)}")
    for item in report.targets:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[item["met"]]
        lines.append(
            f"target {item['target']}: {_cell(item['value'])} (goal {item['goal']}) {verdict}"
        )
    lines.extend(f"note: {note}" for note in report.notes)
    lines.extend(f"FAILURE: {failure}" for failure in report.failures)
    return "\n".join(lines)
