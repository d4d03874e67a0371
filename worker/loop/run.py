"""Run step: the handler in a bounded thread pool, with a second line of defence.

`MessageHandler` answers every message itself; should an exception still escape it, the message's
original bytes go to the dead-letter topic with code INTERNAL (logged with its stack trace) and the
worker keeps running: the offset completes once that copy is delivered.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from producer.contracts import ErrorCode
from worker.loop.task import Task
from worker.messages import Inbound, Outbound
from worker.metrics import Metrics
from worker.verdicts import dlq_headers

log = logging.getLogger(__name__)

Handler = Callable[[Inbound], list[Outbound]]


def internal_copy(inbound: Inbound, error: BaseException, dlq_topic: str) -> Outbound:
    """The dead-letter copy of a message whose handler raised `error`."""
    message = f"unexpected {type(error).__name__} while handling the message: {error}"
    return Outbound(
        topic=dlq_topic,
        key=inbound.key,
        value=inbound.value or b"",
        headers=dlq_headers(inbound, ErrorCode.INTERNAL, message),
    )


class RunInThreads:
    """Runs `handler` on each submitted task in at most `max_workers` threads; `finished()`
    hands back (on the loop's thread) the tasks whose records are ready."""

    def __init__(
        self, handler: Handler, max_workers: int, dlq_topic: str, metrics: Metrics
    ) -> None:
        self._handler = handler
        self._dlq_topic = dlq_topic
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="request")
        self._finished: queue.SimpleQueue[Task] = queue.SimpleQueue()

    def submit(self, task: Task) -> None:
        """Handle `task` in the pool."""
        self._pool.submit(self._run, task)

    def finished(self) -> list[Task]:
        """The tasks handled since the last call (never blocks)."""
        done: list[Task] = []
        while True:
            try:
                done.append(self._finished.get_nowait())
            except queue.Empty:
                return done

    def close(self) -> None:
        """Stop taking work; handlers still running are abandoned (their offsets not stored)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, task: Task) -> None:
        try:
            task.records = self._handler(task.inbound)
        except BaseException as exc:  # the handler must never stop the worker
            log.error(
                "handler raised; the message goes to the dead-letter topic",
                exc_info=True,
                extra={
                    "topic": task.inbound.topic,
                    "partition": task.inbound.partition,
                    "offset": task.inbound.offset,
                },
            )
            self._metrics.dlq_messages.labels(code=ErrorCode.INTERNAL.value).inc()
            task.records = [internal_copy(task.inbound, exc, self._dlq_topic)]
        task.handled_at = time.monotonic()
        self._finished.put(task)
