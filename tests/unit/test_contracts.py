"""The wire contracts: strict validation, clear messages, schema files in sync."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from producer.contracts import (
    MAX_REQUEST_BYTES,
    ContractError,
    ErrorCode,
    Verdict,
    VideoRequest,
    parse_request,
    parse_verdict,
    schemas,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "deploy" / "schemas"

request_ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,128}\Z")
paths = st.lists(st.from_regex(r"\A[A-Za-z0-9_.-]{1,20}\Z"), min_size=1, max_size=5)
uris = st.one_of(
    paths.map(lambda parts: "file:///" + "/".join(parts)),
    st.tuples(st.sampled_from(["http", "https"]), st.from_regex(r"\A[a-z0-9-]{1,30}\Z"), paths).map(
        lambda t: f"{t[0]}://{t[1]}.example/" + "/".join(t[2])
    ),
)
metadata = st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=200), max_size=32)


def valid_request(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "schema_version": 1,
        "request_id": "req-1",
        "video_uri": "file:///videos/a.mp4",
    }
    document.update(overrides)
    return document


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


digests = st.none() | st.binary(min_size=32, max_size=32)


@given(request_id=request_ids, uri=uris, meta=metadata, digest=digests)
def test_any_valid_request_round_trips(request_id, uri, meta, digest):
    request = VideoRequest(
        request_id=request_id,
        video_uri=uri,
        metadata=meta,
        sha256=digest.hex() if digest else None,
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert parse_request(request.to_bytes()) == request


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_anything_but_contract_error(raw):
    try:
        parse_request(raw)
    except ContractError as exc:
        assert exc.code in {ErrorCode.INVALID_REQUEST, ErrorCode.UNSUPPORTED_SCHEME}


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_arbitrary_json_is_rejected_with_a_code(document):
    with pytest.raises(ContractError) as info:
        parse_request(encode(document))
    assert info.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"schema_version": 1, "video_uri": "file:///a.mp4"}, "request_id"),
        ({"schema_version": 1, "request_id": "a"}, "video_uri"),
        (valid_request(request_id=7), "request_id"),
        (valid_request(request_id="has space"), "request_id"),
        (valid_request(request_id="x" * 129), "request_id"),
        (valid_request(request_id=""), "request_id"),
        (valid_request(video_uri=["file:///a"]), "video_uri"),
        (valid_request(video_uri="relative/path.mp4"), "video_uri"),
        (valid_request(sha256="xyz"), "sha256"),
        (valid_request(submitted_at="2026-01-01T00:00:00"), "submitted_at"),
        (valid_request(metadata={"k": 1}), "metadata"),
        (valid_request(metadata={str(i): "v" for i in range(33)}), "metadata"),
        (valid_request(unexpected=True), "unexpected"),
    ],
)
def test_bad_fields_are_named(document, field):
    with pytest.raises(ContractError) as info:
        parse_request(encode(document))
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert field in info.value.message


@pytest.mark.parametrize("version", [None, 0, 2, "1", True, 1.5])
def test_unknown_schema_version(version):
    document = valid_request(schema_version=version)
    with pytest.raises(ContractError) as info:
        parse_request(encode(document))
    assert "schema_version" in info.value.message
    assert info.value.request_id == "req-1"


def test_missing_schema_version_is_invalid():
    document = valid_request()
    del document["schema_version"]
    with pytest.raises(ContractError, match="schema_version: field required"):
        parse_request(encode(document))


@pytest.mark.parametrize("uri", ["ftp://host/a.mp4", "s3://bucket/key.mp4", "gopher://x/y"])
def test_unknown_scheme_has_its_own_code_and_keeps_the_id(uri):
    with pytest.raises(ContractError) as info:
        parse_request(encode(valid_request(video_uri=uri)))
    assert info.value.code is ErrorCode.UNSUPPORTED_SCHEME
    assert info.value.request_id == "req-1"
    assert "not supported" in info.value.message


def test_oversized_message_is_rejected_before_parsing():
    document = valid_request(metadata={"blob": "x" * 1000})
    raw = encode(document)
    padded = raw[:-1] + b" " * (MAX_REQUEST_BYTES - len(raw) + 1) + b"}"
    assert len(padded) > MAX_REQUEST_BYTES
    with pytest.raises(ContractError, match="limit is 65536"):
        parse_request(padded)


@pytest.mark.parametrize(
    "raw", [b"\xff\xfe\x00garbage", b"not json", b"[1, 2]", b"", b"null", None]
)
def test_non_utf8_non_json_and_empty(raw):
    with pytest.raises(ContractError) as info:
        parse_request(raw)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.request_id is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":' * 5000,  # the 25 KB message that used to raise RecursionError
        b"[" * 2000,
        b"[" * 201 + b"]" * 201,
        b"1" * 5000,  # beyond Python's 4300-digit int conversion limit
        encode(valid_request(metadata={"n": 1})).replace(b"1}", b"9" * 5000 + b"}"),
        b'{"schema_version": NaN, "request_id": "a", "video_uri": "file:///a"}',
        b'{"schema_version": 1, "request_id": "a", "video_uri": "file:///\\ud800.mp4"}',
        b'{"schema_version": 1, "request_id": "a", "video_uri": "file:///a", "metadata": '
        b'{"k": "\\udfff"}}',
    ],
)
def test_hostile_json_is_an_invalid_request(raw):
    with pytest.raises(ContractError) as info:
        parse_request(raw)
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_nesting_a_request_needs_is_accepted():
    document = valid_request(metadata={"k": "v"})
    assert parse_request(encode(document)).metadata == {"k": "v"}
    deep = valid_request(extra=json.loads("[" * 150 + "]" * 150))
    with pytest.raises(ContractError, match="extra"):  # parsed, then refused by the schema
        parse_request(encode(deep))


@pytest.mark.parametrize("raw", ["a string", bytearray(b"{}"), 42])
def test_values_that_are_not_bytes_are_invalid_requests(raw):
    with pytest.raises(ContractError) as info:
        parse_request(raw)
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_request_id_and_uri_are_recovered_from_invalid_requests():
    uri = "ftp://host/a.mp4"
    with pytest.raises(ContractError) as info:
        parse_request(encode(valid_request(video_uri=uri)))
    assert (info.value.request_id, info.value.video_uri) == ("req-1", uri)
    with pytest.raises(ContractError) as info:
        parse_request(encode(valid_request(schema_version="x" * 5000, video_uri=7)))
    assert (info.value.request_id, info.value.video_uri) == ("req-1", "")
    assert len(info.value.message) < 200  # the odd value is shortened in the message


def test_sha256_is_normalised_to_lower_case():
    request = parse_request(encode(valid_request(sha256="AB" * 32)))
    assert request.sha256 == "ab" * 32


def ok_verdict(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "request_id": "req-1",
        "video_uri": "file:///videos/a.mp4",
        "status": "ok",
        "label": "fake",
        "fake_probability": 0.9,
        "threshold": 0.5,
        "model": {"name": "m", "version": "1", "spec_hash": "abc"},
        "members": {"lstm768": 0.8},
        "frames": {
            "sampled": 2,
            "with_face": 2,
            "timestamps_s": [0.0, 1.0],
            "attention": [0.25, 0.75],
        },
        "cache": "miss",
        "timings_ms": {"total": 10.0},
        "worker_id": "w1",
        "completed_at": "2026-11-25T12:00:00Z",
    }
    document.update(overrides)
    return document


def test_verdict_round_trip():
    verdict = Verdict.model_validate(ok_verdict())
    assert parse_verdict(verdict.to_bytes()) == verdict


@pytest.mark.parametrize(
    "overrides",
    [
        {"error": {"code": "INTERNAL", "message": "x"}},
        {"label": None},
        {"status": "error", "error": None, "label": None, "fake_probability": None},
        {"status": "error", "error": {"code": "NOT_FOUND", "message": "x"}},
        {"error": None, "status": "ok", "fake_probability": 1.5},
        {"frames": {"sampled": 1, "with_face": 2, "timestamps_s": [], "attention": []}},
        {"frames": {"sampled": 2, "with_face": 2, "timestamps_s": [0.0], "attention": [0.5, 0.5]}},
        {"completed_at": "2026-11-25T12:00:00"},
    ],
)
def test_inconsistent_verdicts_are_rejected(overrides):
    with pytest.raises(ValidationError):
        Verdict.model_validate(ok_verdict(**overrides))


def test_error_verdict_validates():
    verdict = Verdict.model_validate(
        ok_verdict(
            status="error",
            label=None,
            fake_probability=None,
            error={"code": "NOT_A_VIDEO", "message": "no video stream"},
        )
    )
    assert verdict.error is not None and verdict.error.code is ErrorCode.NOT_A_VIDEO


def test_schema_files_match_the_models():
    for name, schema in schemas().items():
        on_disk = json.loads((SCHEMA_DIR / name).read_text())
        assert on_disk == schema, f"{name} drifted: run `python -m producer schemas`"


def test_documented_example_is_a_valid_request():
    raw = (SCHEMA_DIR / "examples" / "video-request.json").read_bytes()
    assert parse_request(raw.strip()).request_id == "kcat-example-0001"


def test_importing_producer_does_not_import_torch():
    code = "import sys, producer, producer.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
