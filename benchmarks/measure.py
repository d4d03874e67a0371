"""Small measuring helpers: latency percentiles, throughput, CPU time and resident memory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max of latencies, in milliseconds."""
    if not seconds:
        return {}
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "mean_ms": round(float(values.mean()), 1),
        "max_ms": round(float(values.max()), 1),
    }


def throughput(videos: int, frames: int, elapsed_s: float) -> dict[str, float]:
    """Videos/s and frames/s over one timed span."""
    return {
        "videos": videos,
        "frames": frames,
        "elapsed_s": round(elapsed_s, 3),
        "videos_per_s": round(videos / elapsed_s, 4) if elapsed_s > 0 else 0.0,
        "frames_per_s": round(frames / elapsed_s, 3) if elapsed_s > 0 else 0.0,
    }


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU time of a live process, all its threads together (/proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # from field 3 (state) on; utime and stime: 14, 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The live processes below `pid` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a live process and of its live descendants (a worker and its decode
    processes): `cpu_seconds` of each, summed; None when `pid` is gone."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(child) or 0.0 for child in descendants(pid))


def cpu_figures(cpu_s: float | None, frames: int) -> dict[str, float | None]:
    """CPU seconds spent on a timed span and per frame: the work done, whatever the wall clock
    shows on a machine shared with other jobs."""
    if cpu_s is None:
        return {"cpu_s": None, "cpu_ms_per_frame": None}
    per_frame = round(cpu_s * 1000 / frames, 1) if frames else None
    return {"cpu_s": round(cpu_s, 2), "cpu_ms_per_frame": per_frame}


def status_kib(field: str, pid: int | str = "self") -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS), in KiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """Peak resident set size of a live process (VmHWM), in MiB."""
    kib = status_kib("VmHWM", pid)
    return None if kib is None else round(kib / 1024, 1)


def rss_mib(pid: int | str = "self") -> float | None:
    """Current resident set size of a live process (VmRSS), in MiB."""
    kib = status_kib("VmRSS", pid)
    return None if kib is None else round(kib / 1024, 1)


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False when not possible."""
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def target(
    name: str, value: float | None, goal: float, *, higher_is_better: bool = True
) -> dict[str, Any]:
    """One target of the brief: the measured value, the goal and whether it is met."""
    met = None if value is None else (value >= goal if higher_is_better else value <= goal)
    return {"target": name, "value": value, "goal": goal, "met": met}


def median_run(runs: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The repeat with the median `key` (the lower middle one of an even count)."""
    return sorted(runs, key=lambda run: run[key])[(len(runs) - 1) // 2]
