"""In-order offset bookkeeping: an offset is committable once every earlier one is done."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable


class OffsetTracker:
    """Tracks pending offsets per partition while work on them finishes out of order.

    `committable(p)` is the Kafka commit position of partition `p`: the lowest pending offset, or
    one past the highest finished offset when nothing is pending.
    """

    def __init__(self) -> None:
        self._pending: dict[Hashable, OrderedDict[int, None]] = {}
        self._next: dict[Hashable, int] = {}

    def add(self, partition: Hashable, offset: int) -> None:
        """Record that work on `offset` started (offsets of a partition arrive in order)."""
        self._pending.setdefault(partition, OrderedDict())[offset] = None

    def done(self, partition: Hashable, offset: int) -> int | None:
        """Mark `offset` finished; return the new commit position if it moved, else None.

        Offsets of partitions that are no longer tracked (revoked) are ignored.
        """
        pending = self._pending.get(partition)
        if pending is None or offset not in pending:
            return None
        before = self.committable(partition)
        del pending[offset]
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)
        after = self.committable(partition)
        return after if after != before else None

    def committable(self, partition: Hashable) -> int | None:
        """The commit position of `partition`, or None before anything finished there."""
        pending = self._pending.get(partition)
        if pending:
            return next(iter(pending))
        return self._next.get(partition)

    def pending(self, partitions: Iterable[Hashable] | None = None) -> int:
        """How many offsets are pending in `partitions` (all partitions when None)."""
        chosen = self._pending.keys() if partitions is None else partitions
        return sum(len(self._pending.get(p, ())) for p in chosen)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Stop tracking `partitions` (revoked or lost); late completions there are ignored."""
        for partition in partitions:
            self._pending.pop(partition, None)
            self._next.pop(partition, None)
