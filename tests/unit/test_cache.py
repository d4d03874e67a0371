"""Feature and prediction cache: codecs, the LRU and the failure handling of `ResilientCache`."""

from __future__ import annotations

import dataclasses
import json
import struct
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.local.ports import free_port
from models.pipeline import Prediction, VideoFeatures
from worker.cache import (
    CacheCorrupt,
    CacheUnavailable,
    LruFeatureCache,
    RedisFeatureCache,
    ResilientCache,
    cache_key,
    decode_features,
    decode_prediction,
    encode_features,
    encode_prediction,
    prediction_key,
)
from worker.cache_codec import MAGIC, check_features

SPEC = "a" * 16
DIM = 8  # the feature dimension `features()` makes by default
MODEL = "c" * 64


def features(rows: int = 5, dim: int = 8, dtype: torch.dtype = torch.float32) -> VideoFeatures:
    generator = torch.Generator().manual_seed(rows * 1000 + dim)
    return VideoFeatures(
        features=torch.randn(rows, dim, generator=generator).to(dtype),
        timestamps_s=[0.1 * i + 1 / 3 for i in range(rows)],
        sampled=rows + 2,
        with_face=rows,
    )


def bits(tensor: torch.Tensor) -> torch.Tensor:
    width = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return tensor.contiguous().view(width[tensor.dtype])


def assert_identical(left: VideoFeatures, right: VideoFeatures) -> None:
    assert left.features.dtype == right.features.dtype
    assert left.features.shape == right.features.shape
    assert torch.equal(bits(left.features), bits(right.features))
    assert left.timestamps_s == right.timestamps_s
    assert (left.sampled, left.with_face) == (right.sampled, right.with_face)


def prediction(probability: float = 1 / 3, threshold: float = 0.5) -> Prediction:
    return Prediction(
        fake_probability=probability,
        label="fake" if probability >= threshold else "real",
        threshold=threshold,
        members={"lstm768": 0.1 + 1e-17, "gru768": 2 / 3, "tiny": 5e-324},
        timestamps_s=[0.0, 1 / 30, 2.000000000000001],
        attention=[0.2, 0.30000000000000004, 0.5],
        sampled=4,
        with_face=3,
    )


def document_with(**changes: object) -> bytes:
    document = json.loads(encode_prediction(prediction(), MODEL))
    document.update(changes)
    return json.dumps(document).encode()


def header_of(blob: bytes) -> dict:
    (length,) = struct.unpack_from("<I", blob, 6)
    return json.loads(blob[10 : 10 + length])


def with_raw_header(blob: bytes, raw: bytes) -> bytes:
    (length,) = struct.unpack_from("<I", blob, 6)
    return blob[:6] + struct.pack("<I", len(raw)) + raw + blob[10 + length :]


def with_header(blob: bytes, **changes: object) -> bytes:
    return with_raw_header(blob, json.dumps(header_of(blob) | changes).encode())


# ---------------------------------------------------------------- codec


def test_codec_covers_every_field_of_video_features() -> None:
    names = {field.name for field in dataclasses.fields(VideoFeatures)}
    assert names == {"features", "timestamps_s", "sampled", "with_face"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_bit_identical(dtype: torch.dtype) -> None:
    original = features(dtype=dtype)
    original.features[0, :4] = torch.tensor([-0.0, float("inf"), float("nan"), 1e-30])
    blob = encode_features(original, SPEC)
    assert blob.startswith(MAGIC)
    decoded = decode_features(blob, SPEC)
    assert_identical(decoded, original)
    decoded.features.add_(1)  # writable and independent of the blob
    assert_identical(decode_features(blob, SPEC), original)


def test_round_trip_of_views_and_empty_features() -> None:
    base = features(rows=6, dim=4)
    strided = VideoFeatures(base.features.t().contiguous().t()[:, :3], [0.0] * 6, 6, 6)
    assert not strided.features.is_contiguous()
    assert_identical(decode_features(encode_features(strided, SPEC), SPEC), strided)
    empty = VideoFeatures(torch.zeros(0, 2048), [], sampled=4, with_face=0)
    assert_identical(decode_features(encode_features(empty, SPEC), SPEC), empty)


def test_unsupported_tensors_are_refused_at_encode() -> None:
    with pytest.raises(ValueError, match="dtype"):
        encode_features(VideoFeatures(torch.zeros(2, 2, dtype=torch.float64), [0, 1], 2, 2), SPEC)
    with pytest.raises(ValueError, match=r"\[T, D\]"):
        encode_features(VideoFeatures(torch.zeros(2), [0, 1], 2, 2), SPEC)


def test_wrong_spec_hash_is_corrupt() -> None:
    blob = encode_features(features(), SPEC)
    with pytest.raises(CacheCorrupt, match="spec_hash"):
        decode_features(blob, "b" * 16)


@pytest.mark.parametrize("cut", [0, 3, 9, 10, 30, -4, -1])
def test_truncated_values_are_corrupt(cut: int) -> None:
    blob = encode_features(features(), SPEC)
    with pytest.raises(CacheCorrupt):
        decode_features(blob[:cut], SPEC)


def test_damaged_values_are_corrupt() -> None:
    blob = encode_features(features(), SPEC)
    flipped = bytearray(blob)
    flipped[-3] ^= 0x01
    damaged = {
        "bad magic": b"PKL!" + blob[4:],
        "unknown version": blob[:4] + struct.pack("<H", 2) + blob[6:],
        "header length too big": blob[:6] + struct.pack("<I", 1 << 30) + blob[10:],
        "header not json": blob[:10] + b"\xff" * 20 + blob[30:],
        "payload bit flip": bytes(flipped),
        "trailing bytes": blob + b"\x00\x00\x00\x00",
        "pickle": b"\x80\x05\x95" + blob,
    }
    for reason, value in damaged.items():
        with pytest.raises(CacheCorrupt):
            decode_features(value, SPEC)
        assert reason  # names the case in the traceback


@pytest.mark.parametrize(
    "changes",
    [
        {"dtype": "float64"},
        {"dtype": "object"},
        {"shape": [5]},
        {"shape": [5, -8]},
        {"shape": [5, 8.0]},
        {"shape": [True, 8]},
        {"sampled": "7"},
        {"with_face": 99},
        {"crc32": -1},
        {"timestamps_s": [0.0]},
        {"timestamps_s": ["0", 1, 2, 3, 4]},
        {"spec_hash": 1},
        {"extra": 1},
    ],
)
def test_invalid_header_fields_are_corrupt(changes: dict) -> None:
    blob = with_header(encode_features(features(), SPEC), **changes)
    with pytest.raises(CacheCorrupt):
        decode_features(blob, SPEC)


def test_rows_must_lie_between_faces_and_sampled_frames() -> None:
    blob = encode_features(features(rows=5), SPEC)  # sampled 7, with_face 5
    decode_features(with_header(blob, sampled=5, with_face=0), SPEC)
    for changes in ({"sampled": 4, "with_face": 4}, {"with_face": 6, "sampled": 9}):
        with pytest.raises(CacheCorrupt, match="feature rows"):
            decode_features(with_header(blob, **changes), SPEC)


@pytest.mark.parametrize(
    "changes",
    [
        {"dtype": ["float32"]},
        {"dtype": {"a": 1}},
        {"shape": [5, 10**400]},
        {"timestamps_s": [[0.0]] * 5},
        {"crc32": 10**4000},
    ],
)
def test_odd_header_values_are_corrupt_not_errors(changes: dict) -> None:
    with pytest.raises(CacheCorrupt):
        decode_features(with_header(encode_features(features(), SPEC), **changes), SPEC)


@pytest.mark.parametrize(
    "raw", [b"[" * 100_000, b'{"a":' * 50_000, b'{"sampled": ' + b"9" * 5000 + b"}"]
)
def test_hostile_header_json_is_corrupt_not_an_error(raw: bytes) -> None:
    with pytest.raises(CacheCorrupt):
        decode_features(with_raw_header(encode_features(features(), SPEC), raw), SPEC)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (features(dim=4), "shape"),
        (features(rows=0), "shape"),
        (features(dtype=torch.float16), "dtype"),
        (features(dtype=torch.bfloat16), "dtype"),
    ],
)
def test_features_that_do_not_fit_the_spec_are_corrupt(value: VideoFeatures, reason: str) -> None:
    with pytest.raises(CacheCorrupt, match=reason):
        check_features(value, DIM)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_features_are_corrupt(bad: float) -> None:
    value = features()
    value.features[2, 3] = bad
    with pytest.raises(CacheCorrupt, match="finite"):
        check_features(value, DIM)
    assert check_features(features(), DIM) is not None


def test_header_holds_the_documented_fields() -> None:
    header = header_of(encode_features(features(rows=3, dim=4), SPEC))
    assert header["dtype"] == "float32"
    assert header["shape"] == [3, 4]
    assert header["spec_hash"] == SPEC
    assert (header["sampled"], header["with_face"]) == (5, 3)
    assert len(header["timestamps_s"]) == 3


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_corrupt(blob: bytes) -> None:
    with pytest.raises(CacheCorrupt):
        decode_features(blob, SPEC)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_values_decode_or_are_corrupt(data: st.DataObject) -> None:
    blob = bytearray(encode_features(features(rows=2, dim=3), SPEC))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_features(bytes(blob), SPEC)
    except CacheCorrupt:
        return
    assert decoded.features.shape == (2, 3)  # a header value changed, e.g. a timestamp digit


# ---------------------------------------------------------------- prediction codec


def test_prediction_codec_covers_every_field_of_prediction() -> None:
    names = {field.name for field in dataclasses.fields(Prediction)}
    stored = set(json.loads(encode_prediction(prediction(), MODEL)))
    assert stored == names | {"format", "version", "model_digest"}


@pytest.mark.parametrize("probability", [0.0, 1 / 3, 0.5, 0.7000000000000001, 1.0])
def test_prediction_round_trip_is_exact(probability: float) -> None:
    original = prediction(probability)
    blob = encode_prediction(original, MODEL)
    decoded = decode_prediction(blob, MODEL)
    assert decoded == original  # exact float equality, not approximate
    assert json.loads(blob)["format"] == "dfd-prediction"
    assert json.loads(blob)["version"] == 1


def test_prediction_of_another_model_is_corrupt() -> None:
    blob = encode_prediction(prediction(), MODEL)
    with pytest.raises(CacheCorrupt, match="model_digest"):
        decode_prediction(blob, "d" * 64)


def test_non_finite_predictions_are_refused_at_encode() -> None:
    broken = dataclasses.replace(prediction(), members={"lstm768": float("nan")})
    with pytest.raises(ValueError):
        encode_prediction(broken, MODEL)


@pytest.mark.parametrize(
    "changes",
    [
        {"format": "dfd-features"},
        {"version": 2},
        {"model_digest": 7},
        {"fake_probability": "0.3"},
        {"fake_probability": 1.5},
        {"fake_probability": -0.1},
        {"label": "maybe"},
        {"label": "fake"},  # 1/3 is below the threshold
        {"threshold": None},
        {"members": {"lstm768": "high"}},
        {"members": [0.1, 0.2]},
        {"timestamps_s": [0.0, 1.0]},  # three attention weights
        {"attention": [0.5, 2.0, 0.5]},
        {"sampled": 2},  # fewer than with_face
        {"sampled": 4.0},
        {"with_face": True},
        {"extra": 1},
    ],
)
def test_invalid_prediction_documents_are_corrupt(changes: dict) -> None:
    with pytest.raises(CacheCorrupt):
        decode_prediction(document_with(**changes), MODEL)


@pytest.mark.parametrize("field", ["fake_probability", "members", "attention", "sampled"])
def test_prediction_documents_missing_a_field_are_corrupt(field: str) -> None:
    document = json.loads(encode_prediction(prediction(), MODEL))
    del document[field]
    with pytest.raises(CacheCorrupt):
        decode_prediction(json.dumps(document).encode(), MODEL)


def test_damaged_prediction_documents_are_corrupt() -> None:
    blob = encode_prediction(prediction(), MODEL)
    damaged = [
        blob[: len(blob) // 2],
        blob.replace(b'"fake_probability":0.3333333333333333', b'"fake_probability":NaN'),
        b"\xff\xfe" + blob,
        encode_features(features(), SPEC),
        b"\x80\x05\x95" + blob,
        b"",
    ]
    assert damaged[1] != blob
    for value in damaged:
        with pytest.raises(CacheCorrupt):
            decode_prediction(value, MODEL)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_decode_as_a_prediction(blob: bytes) -> None:
    with pytest.raises(CacheCorrupt):
        decode_prediction(blob, MODEL)


# ---------------------------------------------------------------- keys and LRU


def test_cache_key_is_namespaced_by_spec_hash() -> None:
    assert cache_key(SPEC, "d1") == f"dfd:feat:{SPEC}:d1"
    assert cache_key("other", "d1") != cache_key(SPEC, "d1")
    assert cache_key(SPEC, "d1", prefix="test").startswith("test:")


def test_prediction_key_is_namespaced_by_model_digest() -> None:
    assert prediction_key(MODEL, "d1") == f"dfd:pred:{MODEL}:d1"
    assert prediction_key("e" * 64, "d1") != prediction_key(MODEL, "d1")
    assert prediction_key(MODEL, "d1") != cache_key(MODEL, "d1")


def test_lru_evicts_the_least_recently_used() -> None:
    lru = LruFeatureCache(max_entries=2)
    lru.put("a", b"1")
    lru.put("b", b"2")
    assert lru.get("a") == b"1"  # a is now the most recent
    lru.put("c", b"3")
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (b"1", None, b"3")
    lru.put("a", b"4")
    assert lru.get("a") == b"4"
    assert len(lru) == 2
    with pytest.raises(ValueError):
        LruFeatureCache(0)


def test_lru_is_safe_under_concurrent_use() -> None:
    lru = LruFeatureCache(max_entries=16)

    def work(worker: int) -> None:
        for n in range(300):
            lru.put(f"{worker}:{n}", b"x")
            lru.get(f"{worker}:{n - 1}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lru) == 16


# ---------------------------------------------------------------- ResilientCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """An LRU whose availability the test switches; counts backend calls."""

    def __init__(self) -> None:
        self.store = LruFeatureCache()
        self.down = False
        self.calls = 0

    def get(self, key: str) -> bytes | None:
        self.calls += 1
        if self.down:
            raise CacheUnavailable("down")
        return self.store.get(key)

    def put(self, key: str, blob: bytes) -> None:
        self.calls += 1
        if self.down:
            raise CacheUnavailable("down")
        self.store.put(key, blob)


def test_miss_put_hit() -> None:
    cache = ResilientCache(LruFeatureCache())
    value = features()
    assert cache.get("k", SPEC, DIM) == (None, "miss")
    assert cache.put("k", value, SPEC)
    cached, status = cache.get("k", SPEC, DIM)
    assert status == "hit" and cached is not None
    assert_identical(cached, value)
    assert cache.get("k", "other-spec", DIM) == (None, "miss")


def test_prediction_miss_put_hit() -> None:
    cache = ResilientCache(LruFeatureCache())
    value = prediction()
    assert cache.get_prediction("p", MODEL) == (None, "miss")
    assert cache.put_prediction("p", value, MODEL)
    assert cache.get_prediction("p", MODEL) == (value, "hit")
    assert cache.get_prediction("p", "d" * 64) == (None, "miss")


def test_corrupt_prediction_is_a_counted_miss() -> None:
    backend = LruFeatureCache()
    backend.put("p", encode_features(features(), SPEC))
    errors: list[Exception] = []
    cache = ResilientCache(backend, on_error=errors.append)
    assert cache.get_prediction("p", MODEL) == (None, "miss")
    assert [type(e) for e in errors] == [CacheCorrupt]


def test_prediction_lookups_share_the_bypass() -> None:
    backend, clock, errors = Flaky(), Clock(), []
    cache = ResilientCache(backend, retry_after_s=5.0, on_error=errors.append, clock=clock)
    backend.down = True
    assert cache.get_prediction("p", MODEL) == (None, "bypass")
    calls = backend.calls
    assert cache.get("k", SPEC, DIM) == (
        None,
        "bypass",
    )  # skipped after the prediction lookup failed
    assert not cache.put_prediction("p", prediction(), MODEL)
    assert backend.calls == calls
    backend.down = False
    clock.now += 5.0
    assert cache.put_prediction("p", prediction(), MODEL)
    assert cache.get_prediction("p", MODEL)[1] == "hit"
    assert len(errors) == 1


def test_corrupt_value_is_a_counted_miss() -> None:
    backend = LruFeatureCache()
    backend.put("k", b"garbage")
    errors: list[Exception] = []
    cache = ResilientCache(backend, on_error=errors.append)
    assert cache.get("k", SPEC, DIM) == (None, "miss")
    assert [type(e) for e in errors] == [CacheCorrupt]
    assert cache.available


@pytest.mark.parametrize(
    "stored",
    [
        features(dim=DIM + 1),  # another feature dimension under the same spec hash
        features(dtype=torch.float16),
        VideoFeatures(torch.full((2, DIM), float("nan")), [0.0, 1.0], 2, 2),
    ],
)
def test_value_that_does_not_fit_the_spec_is_a_counted_miss(stored: VideoFeatures) -> None:
    backend = LruFeatureCache()
    backend.put("k", encode_features(stored, SPEC))
    errors: list[Exception] = []
    cache = ResilientCache(backend, on_error=errors.append)
    assert cache.get("k", SPEC, DIM) == (None, "miss")
    assert [type(e) for e in errors] == [CacheCorrupt]


class Hostile:
    """A backend whose stored value is whatever the test puts there, without encoding."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def get(self, key: str) -> bytes | None:
        return self.blob

    def put(self, key: str, blob: bytes) -> None:
        self.blob = blob


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda tail: MAGIC + tail, st.binary(max_size=300)))
def test_arbitrary_cached_bytes_are_a_counted_miss(blob: bytes) -> None:
    errors: list[Exception] = []
    cache = ResilientCache(Hostile(blob), on_error=errors.append)
    assert cache.get("k", SPEC, DIM) == (None, "miss")
    assert cache.get_prediction("p", MODEL) == (None, "miss")
    assert len(errors) == 2
    assert cache.available


def test_any_exception_from_decoding_is_a_counted_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(blob: bytes, spec_hash: str) -> VideoFeatures:
        raise MemoryError("decoder bug")

    monkeypatch.setattr("worker.cache.decode_features", broken)
    errors: list[Exception] = []
    cache = ResilientCache(Hostile(encode_features(features(), SPEC)), on_error=errors.append)
    assert cache.get("k", SPEC, DIM) == (None, "miss")
    assert [type(e) for e in errors] == [MemoryError]


def test_failure_bypasses_skips_then_resumes() -> None:
    backend, clock, errors = Flaky(), Clock(), []
    cache = ResilientCache(backend, retry_after_s=5.0, on_error=errors.append, clock=clock)
    value = features()
    assert cache.put("k", value, SPEC)

    backend.down = True
    assert cache.get("k", SPEC, DIM) == (None, "bypass")
    assert not cache.available
    calls = backend.calls
    assert cache.get("k", SPEC, DIM) == (None, "bypass")  # skipped: the backend is not touched
    assert not cache.put("k", value, SPEC)
    assert backend.calls == calls
    assert len(errors) == 1

    clock.now += 5.0
    assert cache.get("k", SPEC, DIM) == (None, "bypass")  # retried, still down
    assert backend.calls == calls + 1
    assert len(errors) == 2

    backend.down = False
    clock.now += 5.0
    assert cache.get("k", SPEC, DIM)[1] == "hit"
    assert cache.available
    assert all(isinstance(e, CacheUnavailable) for e in errors)


def test_failing_error_callback_does_not_break_serving() -> None:
    def explode(exc: Exception) -> None:
        raise RuntimeError("metrics broken")

    backend = Flaky()
    backend.down = True
    cache = ResilientCache(backend, on_error=explode)
    assert cache.get("k", SPEC, DIM) == (None, "bypass")


def test_dead_redis_is_bypassed_and_counted() -> None:
    errors: list[Exception] = []
    backend = RedisFeatureCache(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.25)
    calls = []

    class Counting:
        def get(self, key: str) -> bytes | None:
            calls.append(key)
            return backend.get(key)

        def put(self, key: str, blob: bytes) -> None:
            calls.append(key)
            backend.put(key, blob)

    cache = ResilientCache(Counting(), retry_after_s=60.0, on_error=errors.append)
    assert cache.get("k", SPEC, DIM) == (None, "bypass")
    for _ in range(20):
        assert cache.get("k", SPEC, DIM) == (None, "bypass")
        assert not cache.put("k", features(), SPEC)
    assert calls == ["k"]  # one failed attempt, then skipped until retry_after_s
    assert len(errors) == 1
    assert isinstance(errors[0], CacheUnavailable)
    with pytest.raises(CacheUnavailable):
        backend.put("k", b"x")
    backend.close()
