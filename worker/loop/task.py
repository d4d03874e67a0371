"""One consumed message on its way through the loop's steps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from worker.messages import Inbound, Outbound
from worker.offsets import PartitionKey


@dataclass(eq=False)
class Task:
    """An accepted message, its records once handled, and how many are not delivered yet."""

    inbound: Inbound
    accepted_at: float = field(default_factory=time.monotonic)
    handled_at: float = 0.0
    records: list[Outbound] = field(default_factory=list)
    undelivered: int = 0

    @property
    def partition(self) -> PartitionKey:
        return (self.inbound.topic, self.inbound.partition)

    @property
    def offset(self) -> int:
        return self.inbound.offset
