"""The drills' faults for exactly-once delivery (issue 15), run in both delivery modes.

- `kill mid-transaction`: the broker is paused (SIGSTOP) so that the workers' transactions of
  finished verdicts block between begin and commit, a worker is SIGKILLed inside one, then the
  broker resumes (SIGCONT): its open transaction must never become visible, and the partitions'
  next owner redoes its work.
- `rebalance storm`: group members join and leave every few seconds for a while. They are plain
  consumers of the group (a worker process needs tens of seconds to load its model on a small
  machine): each takes partitions away from the workers, leaves without committing, and gives them
  back - every join and leave is a revocation and an assignment for the workers.
In exactly-once mode a `read_committed` reader must see no duplicate at all
(`exactly_once_failures`).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from confluent_kafka import Consumer

if TYPE_CHECKING:
    from benchmarks.drills import Drill

BROKER_PAUSE_S = 2.0
STORM_S = 30.0
STORM_PERIOD_S = 3.0


def extra_drills(drill: Drill) -> list[Callable[[], None]]:
    """The faults added to the drills' list."""
    return [lambda: kill_mid_transaction(drill, 0), lambda: rebalance_storm(drill)]


def kill_mid_transaction(drill: Drill, slot: int) -> None:
    """SIGKILL the worker in `slot` while the paused broker holds its transaction open."""
    assert drill.stack is not None
    pid = drill.stack.kafka.pid()
    assert pid is not None, "the drills run their own broker"
    with drill.event("sigkill-mid-transaction", drill.workers[slot].name, redelivers=True):
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(BROKER_PAUSE_S)
            drill.workers[slot].kill()
        finally:
            os.kill(pid, signal.SIGCONT)
    drill.restart(slot)


def rebalance_storm(drill: Drill) -> None:
    """Members join and leave the workers' group every `STORM_PERIOD_S` for `STORM_S`."""
    group = drill.env["DFD_GROUP_ID"]
    members: list[Consumer] = []
    with drill.event("rebalance-storm", group, redelivers=True) as event:
        deadline = time.monotonic() + STORM_S
        joins = 0
        try:
            while time.monotonic() < deadline:
                member = _member(drill.env["DFD_BOOTSTRAP_SERVERS"], group)
                member.subscribe([drill.env["DFD_REQUESTS_TOPIC"]])
                members.append(member)
                joins += 1
                until = time.monotonic() + STORM_PERIOD_S
                while time.monotonic() < until:
                    for polled in members:
                        polled.poll(0.1)
                if len(members) > 1:
                    members.pop(0).close()
        finally:
            for member in members:
                member.close()
        event.detail = f"{joins} members joined and left"


def _member(bootstrap: str, group: str) -> Consumer:
    """A group member that takes partitions and gives them back without committing."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": f"storm-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )


def exactly_once_failures(delivery: str, duplicates: dict[str, int]) -> list[str]:
    """In exactly-once mode any duplicate verdict is a failure."""
    if delivery != "exactly-once" or not duplicates:
        return []
    sample = dict(list(duplicates.items())[:5])
    return [f"exactly-once: {sum(duplicates.values())} duplicate verdicts: {sample}"]
