"""A Triton-style dynamic batcher: many callers, one background thread, one `fn` call per batch.

Submissions queue up in arrival order. The thread dispatches a batch as soon as `max_batch` items
are queued, or when the oldest queued item has waited `max_wait_ms`. A submission larger than
`max_batch` is split across consecutive batches; its future resolves when every part is done. A
future cancelled before its first item is dispatched is skipped.

One bad input never fails its batch-mates: when `fn` raises, each job's part of the batch is retried
alone, so only the culprit's future gets the exception (its later parts are dropped). When `fn`
runs out of memory (CUDA or otherwise), the batch is halved and retried, down to single items.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """`submit` was called after `close`."""


@dataclass(eq=False)
class _Job(Generic[T, R]):
    items: Sequence[T]
    arrived: float
    future: Future[list[R]] = field(default_factory=Future)
    results: list[R | None] = field(default_factory=list)
    taken: int = 0
    done: int = 0
    started: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)

    @property
    def left(self) -> int:
        return len(self.items) - self.taken

    def deliver(self, part: _Part[T, R], results: list[R]) -> None:
        """Store one part's results; resolve the future once every item has one."""
        self.results[part.start : part.stop] = results
        self.done += len(part)
        if self.done == len(self.items) and not self.future.done():
            self.future.set_result(list(self.results))  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Part(Generic[T, R]):
    """Items `start:stop` of a job, taken into one batch."""

    job: _Job[T, R]
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def items(self) -> Sequence[T]:
        return self.job.items[self.start : self.stop]


class DynamicBatcher(Generic[T, R]):
    """Groups items from concurrent `submit` calls into batches for `fn` (one item, one result)."""

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        max_batch: int,
        max_wait_ms: float,
        name: str = "",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self._fn = fn
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000.0
        self._name = name
        self._on_batch = on_batch
        self._jobs: deque[_Job[T, R]] = deque()
        self._queued = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[T]) -> Future[list[R]]:
        """Queue `items`; the future resolves to their results, in the same order."""
        job: _Job[T, R] = _Job(items=items, arrived=time.monotonic())
        if not items:
            job.future.set_result([])
            return job.future
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"batcher {self._name!r} is closed")
            self._jobs.append(job)
            self._queued += len(items)
            self._cond.notify()
        return job.future

    def close(self, timeout_s: float | None = None) -> None:
        """Stop accepting work, finish what is queued and stop the thread (wait `timeout_s`)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("batcher did not drain in time", extra={"batcher": self._name})

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        with self._cond:
            return self._queued

    def _run(self) -> None:
        while True:
            parts = self._next_batch()
            if parts is None:
                return
            if parts:
                self._dispatch(parts)

    def _next_batch(self) -> list[_Part[T, R]] | None:
        """Wait for a full batch, the oldest item's deadline, or close; None once drained."""
        with self._cond:
            while True:
                if not self._jobs:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                if self._closed or self._queued >= self._max_batch:
                    break
                remaining = self._jobs[0].arrived + self._max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take()

    def _take(self) -> list[_Part[T, R]]:
        parts: list[_Part[T, R]] = []
        room = self._max_batch
        while self._jobs and room:
            job = self._jobs[0]
            if not job.started:
                job.started = True
                if not job.future.set_running_or_notify_cancel():
                    self._drop_front()
                    continue
            if job.future.done():  # an earlier part failed
                self._drop_front()
                continue
            count = min(room, job.left)
            parts.append(_Part(job, job.taken, job.taken + count))
            job.taken += count
            self._queued -= count
            room -= count
            if not job.left:
                self._jobs.popleft()
        return parts

    def _drop_front(self) -> None:
        job = self._jobs.popleft()
        self._queued -= job.left

    def _dispatch(self, parts: list[_Part[T, R]]) -> None:
        """Run `parts` as one batch. When `fn` raises, retry smaller so that only the culprit
        fails: on out-of-memory the batch is halved, otherwise each job's part runs alone; a
        part that fails alone (or a single item out of memory) fails its job."""
        parts = [part for part in parts if not part.job.future.done()]
        if not parts:
            return
        try:
            results = self._call([item for part in parts for item in part.items])
        except Exception as exc:
            retries = _halves(parts) if _out_of_memory(exc) else [[part] for part in parts]
            if len(retries) < 2:
                for part in parts:
                    part.job.future.set_exception(exc)
                return
            log.warning(
                "batch failed; retrying it in smaller batches",
                extra={"batcher": self._name, "error": repr(exc), "retries": len(retries)},
            )
            for retry in retries:
                self._dispatch(retry)
            return
        offset = 0
        for part in parts:
            part.job.deliver(part, results[offset : offset + len(part)])
            offset += len(part)

    def _call(self, batch: list[T]) -> list[R]:
        """`fn(batch)`, checked to give one result per item, reported to `on_batch`."""
        started = time.perf_counter()
        try:
            results = self._fn(batch)
        finally:
            self._report(len(batch), time.perf_counter() - started)
        if len(results) != len(batch):
            raise RuntimeError(
                f"batch function returned {len(results)} results for {len(batch)} items"
            )
        return results

    def _report(self, size: int, seconds: float) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(size, seconds)
        except Exception:
            log.exception("on_batch callback failed", extra={"batcher": self._name})


def _out_of_memory(error: Exception) -> bool:
    """True for CUDA's `OutOfMemoryError` and any other error whose message says "out of memory"."""
    return isinstance(error, torch.cuda.OutOfMemoryError | MemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def _halves(parts: list[_Part[T, R]]) -> list[list[_Part[T, R]]]:
    """`parts` cut into two batches of about half the items each (a part may be cut in two);
    a single item stays whole (one batch)."""
    total = sum(len(part) for part in parts)
    if total < 2:
        return [parts]
    first: list[_Part[T, R]] = []
    second: list[_Part[T, R]] = []
    room = total // 2
    for part in parts:
        take = min(room, len(part))
        if take:
            first.append(_Part(part.job, part.start, part.start + take))
        if take < len(part):
            second.append(_Part(part.job, part.start + take, part.stop))
        room -= take
    return [first, second]
