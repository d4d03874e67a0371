"""Benchmark measurements that reach across processes."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.measure import cpu_seconds, descendants, tree_cpu_seconds

BUSY_CHILD = (
    "import subprocess, sys; "
    "child = subprocess.Popen([sys.executable, '-c', 'while True: pass']); "
    "sys.stdin.read(); child.kill()"
)


def test_a_worker_is_measured_with_the_processes_it_started() -> None:
    parent = subprocess.Popen([sys.executable, "-c", BUSY_CHILD], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        [child] = descendants(parent.pid)
        time.sleep(1.0)
        own, child_cpu = cpu_seconds(parent.pid), cpu_seconds(child)
        assert own is not None and child_cpu is not None and child_cpu > 0.2
        total = tree_cpu_seconds(parent.pid)
        assert total is not None and total >= own + child_cpu
    finally:
        parent.communicate(b"")
    assert tree_cpu_seconds(parent.pid) is None  # gone
