"""Byte formats of the cache values, never pickle: video features and predictions.

Features (all integers little-endian):

    b"DFDF" | u16 format version | u32 header length | JSON header (UTF-8) | tensor bytes

The header holds `dtype`, `shape` ([T, D]), `spec_hash`, `timestamps_s`, `sampled`, `with_face`
and the CRC-32 of the tensor bytes. The tensor is stored row-major, little-endian. Decoding checks
every field, the length, the checksum and that `with_face <= T <= sampled`, and raises
`CacheCorrupt` on any mismatch; `check_features` then holds the features to the spec (float32,
the spec's feature dimension, finite values) before a worker uses them.

Predictions are one JSON object: `format` ("dfd-prediction"), `version`, the `model_digest` of
the detector that made it and every `Prediction` field. Floats are written as their shortest
round-trip repr, so a decoded prediction equals the stored one exactly. Decoding validates the
types, finiteness, lengths, ranges and the label against the threshold (`CacheCorrupt` otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.pipeline import Prediction, VideoFeatures

MAGIC = b"DFDF"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
_PREFIX = struct.Struct("<4sHI")
_HEADER_KEYS = frozenset(
    {"dtype", "shape", "spec_hash", "timestamps_s", "sampled", "with_face", "crc32"}
)
# dtype name -> (torch dtype, same-width integer dtype, little-endian numpy integer dtype)
_DTYPES: dict[str, tuple[torch.dtype, torch.dtype, str]] = {
    "float32": (torch.float32, torch.int32, "<i4"),
    "float16": (torch.float16, torch.int16, "<i2"),
    "bfloat16": (torch.bfloat16, torch.int16, "<i2"),
}
_DTYPE_NAMES = {torch_dtype: name for name, (torch_dtype, _, _) in _DTYPES.items()}


PREDICTION_FORMAT = "dfd-prediction"
PREDICTION_VERSION = 1


class CacheCorrupt(Exception):
    """A cached value that cannot be trusted: bad magic, truncated, wrong spec_hash, ..."""


def encode_features(features: VideoFeatures, spec_hash: str) -> bytes:
    """Serialise `features` for the cache, tagged with the `spec_hash` that produced them."""
    tensor = features.features.detach().cpu().contiguous()
    name = _DTYPE_NAMES.get(tensor.dtype)
    if name is None:
        raise ValueError(f"cannot cache features of dtype {tensor.dtype}")
    if tensor.dim() != 2:
        raise ValueError(f"features must be [T, D], got shape {tuple(tensor.shape)}")
    _, int_dtype, little_endian = _DTYPES[name]
    payload = tensor.view(int_dtype).numpy().astype(little_endian, copy=False).tobytes()
    header = {
        "dtype": name,
        "shape": list(tensor.shape),
        "spec_hash": spec_hash,
        "timestamps_s": [float(t) for t in features.timestamps_s],
        "sampled": features.sampled,
        "with_face": features.with_face,
        "crc32": zlib.crc32(payload),
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes + payload


def decode_features(blob: bytes, spec_hash: str) -> VideoFeatures:
    """Parse a cached value; raises `CacheCorrupt` (and nothing else) unless every check passes."""
    try:
        return _decode_features(blob, spec_hash)
    except CacheCorrupt:
        raise
    except Exception as exc:  # a value nobody checked for, e.g. absurd sizes
        raise CacheCorrupt(f"value cannot be decoded: {type(exc).__name__}: {exc}") from None


def check_features(features: VideoFeatures, feature_dim: int) -> VideoFeatures:
    """`features` when they fit a spec of `feature_dim`: float32 [T, feature_dim] with T >= 1, all
    finite (the codec itself round-trips any float, NaN included); raises `CacheCorrupt` otherwise.
    """
    tensor = features.features
    if tensor.dtype != torch.float32:
        raise CacheCorrupt(f"features have dtype {tensor.dtype}, expected torch.float32")
    shape = tuple(tensor.shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] != feature_dim:
        raise CacheCorrupt(f"features have shape {shape}, expected [T >= 1, {feature_dim}]")
    if not bool(torch.isfinite(tensor).all()):
        raise CacheCorrupt("features hold NaN or infinite values")
    return features


def _decode_features(blob: bytes, spec_hash: str) -> VideoFeatures:
    if len(blob) < _PREFIX.size:
        raise CacheCorrupt(f"value is {len(blob)} bytes, shorter than the prefix")
    magic, version, header_length = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise CacheCorrupt(f"bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise CacheCorrupt(f"unknown format version {version}")
    if header_length > MAX_HEADER_BYTES or _PREFIX.size + header_length > len(blob):
        raise CacheCorrupt(f"header length {header_length} does not fit the value")
    header = _parse_header(blob[_PREFIX.size : _PREFIX.size + header_length])
    if header["spec_hash"] != spec_hash:
        raise CacheCorrupt(f"spec_hash {header['spec_hash']!r} differs from {spec_hash!r}")
    torch_dtype, _, little_endian = _DTYPES[header["dtype"]]
    rows, columns = header["shape"]
    payload = blob[_PREFIX.size + header_length :]
    expected = rows * columns * np.dtype(little_endian).itemsize
    if len(payload) != expected:
        raise CacheCorrupt(f"tensor has {len(payload)} bytes, expected {expected}")
    if zlib.crc32(payload) != header["crc32"]:
        raise CacheCorrupt("tensor checksum mismatch")
    if len(header["timestamps_s"]) != rows:
        raise CacheCorrupt(f"{len(header['timestamps_s'])} timestamps for {rows} feature rows")
    if not header["with_face"] <= rows <= header["sampled"]:
        raise CacheCorrupt(
            f"{rows} feature rows for {header['sampled']} sampled frames, "
            f"{header['with_face']} with a face"
        )
    native = np.dtype(little_endian).newbyteorder("=")
    integers = np.frombuffer(payload, dtype=little_endian).astype(native, copy=True)
    tensor = torch.from_numpy(integers).view(torch_dtype).reshape(rows, columns)
    return VideoFeatures(
        features=tensor,
        timestamps_s=[float(t) for t in header["timestamps_s"]],
        sampled=header["sampled"],
        with_face=header["with_face"],
    )


_Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
_Count = Annotated[int, Field(ge=0)]


class _PredictionDocument(BaseModel):
    """The JSON document of a cached prediction (strict: no coercion, no extra fields)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    format: Literal["dfd-prediction"]
    version: Literal[1]
    model_digest: str
    fake_probability: _Probability
    label: Literal["fake", "real"]
    threshold: _Probability
    members: dict[str, _Probability]
    timestamps_s: list[Annotated[float, Field(allow_inf_nan=False)]]
    attention: list[_Probability]
    sampled: _Count
    with_face: _Count

    @model_validator(mode="after")
    def _consistent(self) -> _PredictionDocument:
        if self.with_face > self.sampled:
            raise ValueError("with_face exceeds sampled")
        if len(self.attention) != len(self.timestamps_s):
            raise ValueError("one attention weight per timestamp expected")
        if (self.fake_probability >= self.threshold) != (self.label == "fake"):
            raise ValueError("label disagrees with fake_probability and threshold")
        return self


def encode_prediction(prediction: Prediction, model_digest: str) -> bytes:
    """Serialise `prediction` for the cache, tagged with the model that made it."""
    document = {
        "format": PREDICTION_FORMAT,
        "version": PREDICTION_VERSION,
        "model_digest": model_digest,
        **dataclasses.asdict(prediction),
    }
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def decode_prediction(blob: bytes, model_digest: str) -> Prediction:
    """Parse a cached prediction; raises `CacheCorrupt` unless every check passes."""
    try:
        document = _PredictionDocument.model_validate_json(blob)
    except ValidationError as exc:
        raise CacheCorrupt(f"invalid prediction document: {exc}") from None
    if document.model_digest != model_digest:
        raise CacheCorrupt(f"model_digest {document.model_digest!r} differs from {model_digest!r}")
    fields = document.model_dump(exclude={"format", "version", "model_digest"})
    return Prediction(**fields)


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheCorrupt(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise CacheCorrupt("header does not have the expected fields")
    shape = header["shape"]
    problems = [
        ("dtype", isinstance(header["dtype"], str) and header["dtype"] in _DTYPES),
        ("spec_hash", isinstance(header["spec_hash"], str)),
        ("shape", isinstance(shape, list) and len(shape) == 2 and all(map(_count, shape))),
        ("sampled", _count(header["sampled"])),
        (
            "with_face",
            _count(header["with_face"])
            and _count(header["sampled"])
            and header["with_face"] <= header["sampled"],
        ),
        ("crc32", _count(header["crc32"])),
        (
            "timestamps_s",
            isinstance(header["timestamps_s"], list)
            and all(_finite(t) for t in header["timestamps_s"]),
        ),
    ]
    bad = [name for name, ok in problems if not ok]
    if bad:
        raise CacheCorrupt(f"invalid header fields: {', '.join(bad)}")
    return header


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
