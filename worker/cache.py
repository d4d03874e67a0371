"""Feature and prediction cache keyed by content digest: Redis or an in-process LRU.

Features live under `dfd:feat:<spec_hash>:<sha256>` (`cache_key`), so a retrained head still reuses
them; predictions under `dfd:pred:<model_digest>:<sha256>` (`prediction_key`), so only the very
same model (spec, backbone and member weights, temperature, threshold) shares them. Values are
encoded by `worker.cache_codec` (raw tensors with a JSON header, or a JSON document; never pickle).
`ResilientCache` keeps the worker serving when the backend fails: a lookup that cannot reach the
backend is a "bypass", and after a failure the backend is skipped for `retry_after_s` before it is
tried again, so a dead or slow Redis costs at most one timeout per interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from models.pipeline import Prediction, VideoFeatures
from worker.cache_codec import (
    CacheCorrupt,
    check_features,
    decode_features,
    decode_prediction,
    encode_features,
    encode_prediction,
)

__all__ = [
    "CacheCorrupt",
    "CacheStatus",
    "CacheUnavailable",
    "FeatureStore",
    "LruFeatureCache",
    "RedisFeatureCache",
    "ResilientCache",
    "cache_key",
    "check_features",
    "decode_features",
    "decode_prediction",
    "encode_features",
    "encode_prediction",
    "prediction_key",
]

log = logging.getLogger(__name__)

CacheStatus = Literal["hit", "miss", "bypass"]
_Value = TypeVar("_Value")


class CacheUnavailable(Exception):
    """The cache backend cannot be reached or did not answer in time."""


class FeatureStore(Protocol):
    """A byte store for encoded features."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, blob: bytes) -> None: ...


def cache_key(spec_hash: str, digest: str, prefix: str = "dfd:feat") -> str:
    """The cache key of a video's features: namespaced by the spec that produced them."""
    return f"{prefix}:{spec_hash}:{digest}"


def prediction_key(model_digest: str, digest: str, prefix: str = "dfd:pred") -> str:
    """The cache key of a video's prediction: namespaced by the whole model that made it."""
    return f"{prefix}:{model_digest}:{digest}"


class RedisFeatureCache:
    """Encoded features in Redis with a TTL; no retries, short timeouts."""

    def __init__(self, url: str, ttl_s: int = 7 * 86400, timeout_s: float = 0.25) -> None:
        if ttl_s < 1:
            raise ValueError("ttl_s must be at least one second")
        self._ttl_s = ttl_s
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    def get(self, key: str) -> bytes | None:
        """The stored value, or None; raises `CacheUnavailable` when Redis fails."""
        try:
            value = self._client.get(key)
        except redis.RedisError as exc:
            raise CacheUnavailable(f"redis get failed: {exc}") from exc
        return value if isinstance(value, bytes) else None

    def put(self, key: str, blob: bytes) -> None:
        """Store with the TTL; raises `CacheUnavailable` when Redis fails."""
        try:
            self._client.set(key, blob, ex=self._ttl_s)
        except redis.RedisError as exc:
            raise CacheUnavailable(f"redis set failed: {exc}") from exc

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


class LruFeatureCache:
    """Encoded features in process memory, least recently used evicted first; thread-safe."""

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: str, blob: bytes) -> None:
        with self._lock:
            self._entries[key] = blob
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class ResilientCache:
    """Cache front: decodes features and predictions, turns backend failures into bypasses.

    `on_error` is called with every backend failure (`CacheUnavailable`) and every value that
    cannot be decoded or does not fit the spec (`CacheCorrupt` or any other exception of the
    decoder, served as a miss). While the backend is being skipped, no error is reported.
    """

    def __init__(
        self,
        backend: FeatureStore,
        retry_after_s: float = 5.0,
        on_error: Callable[[Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._retry_after_s = retry_after_s
        self._on_error = on_error
        self._clock = clock
        self._skip_until: float | None = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        """False while the backend is skipped after a failure."""
        with self._lock:
            return self._skip_until is None

    def get(
        self, key: str, spec_hash: str, feature_dim: int
    ) -> tuple[VideoFeatures | None, CacheStatus]:
        """Cached features that fit the spec (`check_features`) and how the lookup went: "hit",
        "miss" or "bypass"."""
        return self._lookup(
            key, lambda blob: check_features(decode_features(blob, spec_hash), feature_dim)
        )

    def put(self, key: str, value: VideoFeatures, spec_hash: str) -> bool:
        """Store features; False when the backend was skipped or failed."""
        return self._store(key, lambda: encode_features(value, spec_hash))

    def get_prediction(self, key: str, model_digest: str) -> tuple[Prediction | None, CacheStatus]:
        """A cached prediction and how the lookup went: "hit", "miss" or "bypass"."""
        return self._lookup(key, lambda blob: decode_prediction(blob, model_digest))

    def put_prediction(self, key: str, value: Prediction, model_digest: str) -> bool:
        """Store a prediction; False when the backend was skipped or failed."""
        return self._store(key, lambda: encode_prediction(value, model_digest))

    def _lookup(
        self, key: str, decode: Callable[[bytes], _Value]
    ) -> tuple[_Value | None, CacheStatus]:
        if self._skipping():
            return None, "bypass"
        try:
            blob = self._backend.get(key)
        except CacheUnavailable as exc:
            self._failed(exc)
            return None, "bypass"
        self._succeeded()
        if blob is None:
            return None, "miss"
        try:
            return decode(blob), "hit"
        except Exception as exc:  # whatever a stored value holds, it is only ever a miss
            log.warning(
                "corrupt cache value treated as a miss", extra={"key": key, "error": repr(exc)}
            )
            self._report(exc)
            return None, "miss"

    def _store(self, key: str, encode: Callable[[], bytes]) -> bool:
        if self._skipping():
            return False
        blob = encode()
        try:
            self._backend.put(key, blob)
        except CacheUnavailable as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    def _skipping(self) -> bool:
        with self._lock:
            return self._skip_until is not None and self._clock() < self._skip_until

    def _failed(self, exc: CacheUnavailable) -> None:
        with self._lock:
            first = self._skip_until is None
            self._skip_until = self._clock() + self._retry_after_s
        if first:
            log.warning(
                "cache unavailable; bypassing it",
                extra={"error": str(exc), "retry_after_s": self._retry_after_s},
            )
        self._report(exc)

    def _succeeded(self) -> None:
        with self._lock:
            recovered = self._skip_until is not None
            self._skip_until = None
        if recovered:
            log.info("cache available again")

    def _report(self, exc: Exception) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(exc)
        except Exception:
            log.exception("cache on_error callback failed")
