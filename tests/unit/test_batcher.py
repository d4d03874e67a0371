"""`DynamicBatcher`: batch composition, ordering, splitting, errors and draining.

Assertions are about which items went into which batch, never about elapsed time; the generous
`result(timeout=...)` values only keep a broken batcher from hanging the suite.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch

from worker.batcher import BatcherClosed, DynamicBatcher

WAIT = 10.0  # seconds; a safety net, not a measurement


class Recorder:
    """A batch function that records its batches; optionally blocks on the first call."""

    def __init__(self, block_first: bool = False, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not block_first:
            self.release.set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        self.release.wait(WAIT)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [item * 10 for item in items]


@pytest.fixture
def closing() -> Iterator[list[DynamicBatcher]]:
    made: list[DynamicBatcher] = []
    yield made
    for batcher in made:
        batcher.close(WAIT)


def make(closing: list[DynamicBatcher], fn: Recorder, **kwargs: object) -> DynamicBatcher:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, **kwargs)  # type: ignore[arg-type]
    closing.append(batcher)
    return batcher


def test_full_batch_dispatches_without_waiting_for_the_deadline(closing: list) -> None:
    fn = Recorder()
    batcher = make(closing, fn, max_batch=4, max_wait_ms=60_000)
    assert batcher.submit([1, 2, 3, 4]).result(WAIT) == [10, 20, 30, 40]
    assert fn.batches == [[1, 2, 3, 4]]


def test_partial_batch_dispatches_after_the_wait(closing: list) -> None:
    fn = Recorder()
    batcher = make(closing, fn, max_batch=64, max_wait_ms=5)
    assert batcher.submit([7, 8, 9]).result(WAIT) == [70, 80, 90]
    assert fn.batches == [[7, 8, 9]]


def test_queued_submissions_are_combined_in_arrival_order(closing: list) -> None:
    fn = Recorder(block_first=True)
    batcher = make(closing, fn, max_batch=4, max_wait_ms=5)
    first = batcher.submit([0])
    assert fn.entered.wait(WAIT)
    futures = [batcher.submit([n]) for n in range(1, 11)]
    assert batcher.queued == 10
    fn.release.set()
    assert [f.result(WAIT) for f in futures] == [[n * 10] for n in range(1, 11)]
    assert first.result(WAIT) == [0]
    assert fn.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_concurrent_submitters_get_their_own_results(closing: list) -> None:
    fn = Recorder()
    batcher = make(closing, fn, max_batch=8, max_wait_ms=2)

    def submit(worker: int) -> list[int]:
        items = [worker * 100 + n for n in range(worker % 5 + 1)]
        return batcher.submit(items).result(WAIT)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(submit, range(40)))
    for worker, result in enumerate(results):
        assert result == [(worker * 100 + n) * 10 for n in range(worker % 5 + 1)]
    assert all(1 <= len(batch) <= 8 for batch in fn.batches)
    assert sorted(item for batch in fn.batches for item in batch) == sorted(
        worker * 100 + n for worker in range(40) for n in range(worker % 5 + 1)
    )


def test_large_submission_is_split_and_resolves_once_complete(closing: list) -> None:
    fn = Recorder(block_first=True)
    batcher = make(closing, fn, max_batch=4, max_wait_ms=5)
    blocker = batcher.submit([0])
    assert fn.entered.wait(WAIT)
    big = batcher.submit(list(range(1, 11)))
    after = batcher.submit([11])
    fn.release.set()
    assert big.result(WAIT) == [n * 10 for n in range(1, 11)]
    assert after.result(WAIT) == [110]
    assert blocker.result(WAIT) == [0]
    assert fn.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]


def test_error_fails_only_the_culprits_future(closing: list) -> None:
    fn = Recorder(block_first=True, fail_on=3)
    batcher = make(closing, fn, max_batch=3, max_wait_ms=5)
    blocker = batcher.submit([0])
    assert fn.entered.wait(WAIT)
    a = batcher.submit([1, 2])
    b = batcher.submit([3, 4, 5])  # split: [3] with a, then [4, 5]
    c = batcher.submit([6])
    fn.release.set()
    assert blocker.result(WAIT) == [0]
    assert a.result(WAIT) == [10, 20]  # retried alone
    with pytest.raises(ValueError, match="bad item 3"):
        b.result(WAIT)
    assert c.result(WAIT) == [60]
    assert fn.batches == [[0], [1, 2, 3], [1, 2], [3], [6]]  # b's remaining part was dropped


def test_one_poisoned_item_among_many_jobs_fails_only_its_job(closing: list) -> None:
    fn = Recorder(block_first=True, fail_on=13)
    batcher = make(closing, fn, max_batch=64, max_wait_ms=5)
    blocker = batcher.submit([0])
    assert fn.entered.wait(WAIT)
    jobs = [batcher.submit([10 * job + n for n in range(4)]) for job in range(1, 6)]
    fn.release.set()
    assert blocker.result(WAIT) == [0]
    with pytest.raises(ValueError, match="bad item 13"):
        jobs[0].result(WAIT)
    for job, future in enumerate(jobs[1:], start=2):
        assert future.result(WAIT) == [100 * job + 10 * n for n in range(4)]
    assert fn.batches[1] == [10 * job + n for job in range(1, 6) for n in range(4)]
    assert fn.batches[2:] == [[10 * job + n for n in range(4)] for job in range(1, 6)]


class OutOfMemory:
    """A batch function that runs out of memory on batches larger than `fits`."""

    def __init__(self, fits: int, error: type[Exception] = torch.cuda.OutOfMemoryError) -> None:
        self.fits = fits
        self.error = error
        self.sizes: list[int] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        if len(items) > self.fits:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [item * 10 for item in items]


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_out_of_memory_halves_the_batch_until_it_fits(
    closing: list, error: type[Exception]
) -> None:
    fn = OutOfMemory(fits=2, error=error)
    batcher = make(closing, fn, max_batch=8, max_wait_ms=60_000)
    first = batcher.submit([1, 2, 3])  # one job cut in two by the first halving
    second = batcher.submit([4, 5, 6, 7, 8])
    assert first.result(WAIT) == [10, 20, 30]
    assert second.result(WAIT) == [40, 50, 60, 70, 80]
    assert fn.sizes == [8, 4, 2, 2, 4, 2, 2]


def test_out_of_memory_on_a_single_item_fails_its_job_only(closing: list) -> None:
    fn = OutOfMemory(fits=0)
    batcher = make(closing, fn, max_batch=2, max_wait_ms=60_000)
    future = batcher.submit([1, 2])
    with pytest.raises(torch.cuda.OutOfMemoryError):
        future.result(WAIT)
    assert fn.sizes == [2, 1]  # the job failed with its first item; its second was not tried


def test_wrong_result_count_is_an_error(closing: list) -> None:
    batcher = make(closing, lambda items: items[:-1], max_batch=4, max_wait_ms=1)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        batcher.submit([1, 2]).result(WAIT)
    assert batcher.submit([]).result(WAIT) == []


def test_wrong_result_count_for_several_jobs_is_retried_job_by_job(closing: list) -> None:
    fn = Recorder(block_first=True)
    batcher = make(
        closing,
        lambda items: fn(items)[:1] if len(items) > 1 else fn(items),
        max_batch=4,
        max_wait_ms=5,
    )
    blocker = batcher.submit([0])
    assert fn.entered.wait(WAIT)
    one, two = batcher.submit([1]), batcher.submit([2])
    fn.release.set()
    assert (blocker.result(WAIT), one.result(WAIT), two.result(WAIT)) == ([0], [10], [20])
    assert fn.batches == [[0], [1, 2], [1], [2]]


def test_cancelled_future_is_skipped(closing: list) -> None:
    fn = Recorder(block_first=True)
    batcher = make(closing, fn, max_batch=4, max_wait_ms=5)
    batcher.submit([0])
    assert fn.entered.wait(WAIT)
    cancelled = batcher.submit([1, 2])
    kept = batcher.submit([3])
    assert cancelled.cancel()
    fn.release.set()
    assert kept.result(WAIT) == [30]
    assert fn.batches == [[0], [3]]


def test_on_batch_reports_sizes(closing: list) -> None:
    sizes: list[int] = []
    seconds: list[float] = []

    def on_batch(size: int, elapsed: float) -> None:
        sizes.append(size)
        seconds.append(elapsed)

    batcher = make(closing, Recorder(), max_batch=2, max_wait_ms=1, on_batch=on_batch)
    batcher.submit([1, 2, 3]).result(WAIT)
    batcher.close(WAIT)
    assert sizes == [2, 1]
    assert all(value >= 0 for value in seconds)


def test_close_drains_queued_work_then_refuses(closing: list) -> None:
    fn = Recorder(block_first=True)
    batcher = make(closing, fn, max_batch=2, max_wait_ms=60_000)
    blocker = batcher.submit([0, 1])
    assert fn.entered.wait(WAIT)
    queued: list[Future[list[int]]] = [batcher.submit([n]) for n in range(2, 5)]
    closer = threading.Thread(target=batcher.close, args=(WAIT,))
    closer.start()
    fn.release.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert blocker.result(0) == [0, 10]
    assert [f.result(0) for f in queued] == [[20], [30], [40]]
    assert fn.batches == [[0, 1], [2, 3], [4]]  # the last partial batch did not wait 60 s
    with pytest.raises(BatcherClosed):
        batcher.submit([5])


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_batch=0, max_wait_ms=1)
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_batch=1, max_wait_ms=-1)
