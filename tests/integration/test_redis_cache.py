"""The feature cache against a real redis-server: values, TTL, and surviving a Redis restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch

from deploy.local.ports import free_port
from deploy.local.redis_node import RedisNode
from models.pipeline import VideoFeatures
from worker.cache import (
    CacheUnavailable,
    RedisFeatureCache,
    ResilientCache,
    cache_key,
    encode_features,
)

pytestmark = pytest.mark.integration

SPEC = "feedface" * 2
DIM = 2048


def features(rows: int = 4, dim: int = DIM) -> VideoFeatures:
    generator = torch.Generator().manual_seed(rows)
    return VideoFeatures(
        features=torch.randn(rows, dim, generator=generator),
        timestamps_s=[0.5 * i for i in range(rows)],
        sampled=rows + 1,
        with_face=rows,
    )


def test_put_get_with_ttl(redis_url: str) -> None:
    key = cache_key(SPEC, uuid.uuid4().hex, prefix="dfd:test")
    backend = RedisFeatureCache(redis_url, ttl_s=120)
    client = redis.Redis.from_url(redis_url)
    try:
        cache = ResilientCache(backend)
        value = features()
        assert cache.get(key, SPEC, DIM) == (None, "miss")
        assert cache.put(key, value, SPEC)
        cached, status = cache.get(key, SPEC, DIM)
        assert status == "hit" and cached is not None
        assert torch.equal(cached.features, value.features)
        assert cached.timestamps_s == value.timestamps_s
        assert client.get(key) == encode_features(value, SPEC)
        assert 0 < client.ttl(key) <= 120
        assert cache.get(key, "another-spec", DIM) == (None, "miss")
    finally:
        client.delete(key)
        client.close()
        backend.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisNode]:
    """A throwaway redis-server (no persistence) that the test may kill and restart."""
    node = RedisNode(tmp_path / "redis", free_port())
    node.start()
    yield node
    node.stop(kill=True)


def test_redis_stop_bypasses_and_restart_resumes(own_redis: RedisNode) -> None:
    clock, errors = Clock(), []
    backend = RedisFeatureCache(own_redis.url, ttl_s=60, timeout_s=0.25)
    cache = ResilientCache(backend, retry_after_s=5.0, on_error=errors.append, clock=clock)
    key, value = cache_key(SPEC, "video-1"), features()
    try:
        assert cache.put(key, value, SPEC)
        assert cache.get(key, SPEC, DIM)[1] == "hit"

        assert own_redis.stop(kill=True)
        assert cache.get(key, SPEC, DIM) == (None, "bypass")
        assert not cache.available
        assert not cache.put(key, value, SPEC)  # skipped until retry_after_s
        assert len(errors) == 1 and isinstance(errors[0], CacheUnavailable)

        clock.now += 5.0
        assert cache.get(key, SPEC, DIM) == (None, "bypass")  # retried: still down
        assert len(errors) == 2

        assert own_redis.start()
        clock.now += 5.0
        assert cache.get(key, SPEC, DIM) == (None, "miss")  # back, empty after the restart
        assert cache.available
        assert cache.put(key, value, SPEC)
        assert cache.get(key, SPEC, DIM)[1] == "hit"
        assert len(errors) == 2
    finally:
        backend.close()
