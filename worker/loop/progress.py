"""Liveness bookkeeping: the open requests' ages and the last moment work moved.

A worker is stalled when requests are open and nothing (no delivery, no finished request) has
happened for the stall timeout: `/healthz` then answers 503 so that Kubernetes restarts it.
Read from the health server's thread, written from the loop's: guarded by a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from worker.loop.task import Task


class Progress:
    """Open tasks in acceptance order and the time of the latest progress (monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[Task, None] = {}
        self._moved_at = clock()
        self._moved_wall = time.time()

    def opened(self, task: Task) -> None:
        """`task` was accepted."""
        with self._lock:
            if not self._open:
                self._moved_at = self._clock()
            self._open[task] = None

    def closed(self, task: Task) -> None:
        """`task` finished (its records delivered), or was abandoned."""
        with self._lock:
            self._open.pop(task, None)
        self.moved()

    def moved(self) -> None:
        """Something was delivered or finished."""
        with self._lock:
            self._moved_at = self._clock()
            self._moved_wall = time.time()

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def oldest_age_s(self) -> float:
        """Seconds since the oldest open task was accepted (0 when none is open)."""
        with self._lock:
            oldest = next(iter(self._open), None)
            return 0.0 if oldest is None else max(0.0, self._clock() - oldest.accepted_at)

    def last_progress_wall(self) -> float:
        """Unix time of the latest progress."""
        with self._lock:
            return self._moved_wall

    def stalled(self, timeout_s: float) -> str | None:
        """Why the worker is stalled, or None: open work and no progress for `timeout_s`."""
        with self._lock:
            idle = self._clock() - self._moved_at
            if self._open and idle > timeout_s:
                return f"no progress for {idle:.0f} s with {len(self._open)} requests open"
            return None
