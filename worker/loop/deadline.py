"""A hard deadline for a blocking client call that may ignore its own timeout.

librdkafka's `rd_kafka_send_offsets_to_transaction()` can wait forever after a broker restart
although it is given a timeout (confluentinc/librdkafka#5456: the coordinator request's timeout is
never checked). The exactly-once step runs its transactional calls through `call_within`, so a
call that hangs is noticed and its producer replaced instead of wedging the poll loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class CallHung(Exception):
    """A call did not return within its deadline; it is still running in its abandoned thread."""

    def __init__(self, name: str, limit_s: float) -> None:
        super().__init__(f"{name} did not return within {limit_s:g} s")
        self.name = name
        self.limit_s = limit_s


def call_within(call: Callable[[], T], limit_s: float, name: str) -> T:
    """`call()`'s result (or exception), run in a daemon thread; `CallHung` when it has not
    returned after `limit_s`. The caller's thread stays responsive to signals meanwhile."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"call-{name}", daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        raise CallHung(name, limit_s)
    if failure:
        raise failure[0]
    return outcome[0]
