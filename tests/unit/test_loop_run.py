"""Run step: handlers run in a bounded pool; an escaping exception becomes an INTERNAL DLQ copy."""

from __future__ import annotations

import threading
import time

import pytest

from producer.contracts import ErrorCode
from worker.loop.run import RunInThreads
from worker.loop.task import Task
from worker.messages import Inbound, Outbound
from worker.metrics import Metrics
from worker.verdicts import DLQ_ERROR_CODE, DLQ_ERROR_MESSAGE, DLQ_ORIGINAL_OFFSET


def inbound(offset: int = 7, value: bytes = b"[[[") -> Inbound:
    return Inbound("requests", 1, offset, b"key", value, [("trace", b"t-1")])


def wait_finished(step: RunInThreads, count: int) -> list[Task]:
    done: list[Task] = []
    deadline = time.monotonic() + 10
    while len(done) < count:
        assert time.monotonic() < deadline, "handlers did not finish"
        done += step.finished()
        time.sleep(0.005)
    return done


def test_records_of_the_handler_come_back() -> None:
    record = Outbound("verdicts", b"r", b"{}")
    step = RunInThreads(lambda _inbound: [record], 2, "dlq", Metrics())
    task = Task(inbound())
    step.submit(task)
    [done] = wait_finished(step, 1)
    assert done is task and done.records == [record]
    assert done.handled_at >= done.accepted_at
    step.close()


def test_an_escaping_exception_becomes_an_internal_dlq_copy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def crash(_inbound: Inbound) -> list[Outbound]:
        raise RecursionError("maximum recursion depth exceeded")

    metrics = Metrics()
    step = RunInThreads(crash, 2, "dlq", metrics)
    step.submit(Task(inbound()))
    [done] = wait_finished(step, 1)
    [copy] = done.records
    headers = dict(copy.headers)
    assert (copy.topic, copy.key, copy.value) == ("dlq", b"key", b"[[[")
    assert headers[DLQ_ERROR_CODE] == ErrorCode.INTERNAL.value.encode()
    assert b"RecursionError" in headers[DLQ_ERROR_MESSAGE]
    assert headers[DLQ_ORIGINAL_OFFSET] == b"7"
    assert headers["trace"] == b"t-1"
    assert metrics.dlq_messages.labels(code="INTERNAL")._value.get() == 1
    [record] = [r for r in caplog.records if r.name == "worker.loop.run"]
    assert record.exc_info is not None
    step.submit(Task(inbound(8)))  # the pool keeps working
    assert len(wait_finished(step, 1)) == 1
    step.close()


def test_at_most_max_workers_handlers_run_at_once() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def slow(_inbound: Inbound) -> list[Outbound]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return []

    step = RunInThreads(slow, 3, "dlq", Metrics())
    for offset in range(12):
        step.submit(Task(inbound(offset)))
    assert len(wait_finished(step, 12)) == 12
    assert most <= 3
    step.close()
