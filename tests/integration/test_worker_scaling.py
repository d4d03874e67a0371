"""Several workers in one group over a 4-partition topic; a third joins mid-stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from deploy.local.worker_process import WorkerProcess, wait_until
from tests.checkpoints import make_checkpoint
from tests.integration.workers import (
    VerdictLog,
    publish,
    requests_for,
    unique,
    worker_env,
    write_clips,
)


def assigned(workers: list[WorkerProcess]) -> list[float]:
    return [worker.metric("dfd_assigned_partitions") for worker in workers]


def test_group_shares_partitions_and_loses_nothing_when_a_worker_joins(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.mktemp("scaling")
    root = base / "videos"
    clips = write_clips(root, 8, salt=11)
    checkpoint = make_checkpoint(base / "tiny.pt")
    topics = topic_factory(partitions=4)
    env = worker_env(kafka_bootstrap, topics, unique("group"), checkpoint, [root])
    logs = base / "logs"
    verdicts = VerdictLog(kafka_bootstrap, topics.verdicts)
    workers = [WorkerProcess("one", logs, env), WorkerProcess("two", logs, env)]
    try:
        for worker in workers:
            worker.wait_ready()
        wait_until(
            lambda: sorted(assigned(workers)) == [2, 2], 300, "both workers own two partitions"
        )
        first = requests_for(clips * 3, unique("first"))
        publish(kafka_bootstrap, topics.requests, first)
        answers = verdicts.wait_for(r.request_id for r in first)
        assert {v.worker_id for v in answers.values()} == {"one", "two"}

        second = requests_for(clips * 4, unique("second"))
        publish(kafka_bootstrap, topics.requests, second)
        workers.append(WorkerProcess("three", logs, env))
        workers[-1].wait_ready()
        answers = verdicts.wait_for(r.request_id for r in second)
        assert all(v.status == "ok" for v in answers.values())
        wait_until(lambda: sum(assigned(workers)) == 4, 300, "all partitions assigned")
        assert min(assigned(workers)) >= 1

        third = requests_for(clips * 2, unique("third"))
        publish(kafka_bootstrap, topics.requests, third)
        answers = verdicts.wait_for(r.request_id for r in third)
        assert {v.worker_id for v in answers.values()} <= {"one", "two", "three"}
        for worker in workers:
            assert worker.terminate() == 0, worker.log()
    finally:
        verdicts.close()
        for worker in workers:
            if worker.popen.poll() is None:
                worker.kill()
