"""Redis dies mid-stream: verdicts keep coming with `cache: bypass`, errors are counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from deploy.local.ports import free_port
from deploy.local.redis_node import RedisNode
from deploy.local.worker_process import WorkerProcess
from tests.checkpoints import make_checkpoint
from tests.integration.workers import (
    VerdictLog,
    publish,
    requests_for,
    unique,
    worker_env,
    write_clips,
)


def test_redis_outage_bypasses_the_cache(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.mktemp("redis-outage")
    root = base / "videos"
    clips = write_clips(root, 4, salt=3)
    redis = RedisNode(base / "redis", free_port())
    redis.start()
    topics = topic_factory(partitions=2)
    env = worker_env(
        kafka_bootstrap,
        topics,
        unique("group"),
        make_checkpoint(base / "tiny.pt"),
        [root],
        redis_url=redis.url,
        cache_timeout_s="0.2",
        cache_retry_after_s="1",
    )
    verdicts = VerdictLog(kafka_bootstrap, topics.verdicts)
    worker = WorkerProcess("cached", base / "logs", env)
    try:
        worker.wait_ready()
        before = requests_for(clips, unique("before"))
        publish(kafka_bootstrap, topics.requests, before)
        answers = verdicts.wait_for(r.request_id for r in before)
        assert {v.cache for v in answers.values()} == {"miss"}
        assert worker.metric("dfd_cache_errors_total") == 0

        redis.stop(kill=True)
        during = requests_for(clips, unique("during"))
        publish(kafka_bootstrap, topics.requests, during)
        answers = verdicts.wait_for(r.request_id for r in during)
        assert {v.status for v in answers.values()} == {"ok"}
        assert {v.cache for v in answers.values()} == {"bypass"}
        assert worker.metric("dfd_cache_errors_total") >= 1
        assert worker.metric("dfd_cache_bypass_total") == len(during)
        assert worker.terminate() == 0
    finally:
        verdicts.close()
        if worker.popen.poll() is None:
            worker.kill()
        redis.stop(kill=True)
