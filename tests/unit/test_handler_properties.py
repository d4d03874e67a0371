"""Property tests: whatever a message holds, `MessageHandler` answers it and never raises.

Values are arbitrary bytes, JSON nested to any depth, integers of thousands of digits, floats
with NaN and infinities, arbitrary JSON documents and valid requests; keys and headers are
arbitrary too, and the processor behind the handler may fail in any way.
"""

from __future__ import annotations

import json

from hypothesis import event, given, settings
from hypothesis import strategies as st

from producer.contracts import (
    ContractError,
    ErrorCode,
    Verdict,
    VideoRequest,
    parse_request,
    parse_verdict,
    utcnow,
)
from worker.handler import MessageHandler
from worker.messages import Inbound, Outbound
from worker.metrics import Metrics
from worker.verdicts import error_verdict

FAILURES = {
    "runtime": RuntimeError("processor bug"),
    "recursion": RecursionError("maximum recursion depth exceeded"),
    "memory": MemoryError(),
    "value": ValueError("Exceeds the limit (4300 digits) for integer string conversion"),
}


class Chaotic:
    """A processor that answers, raises or returns garbage, as the test draws."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def process(self, request: VideoRequest) -> Verdict:
        if self.behaviour in FAILURES:
            raise FAILURES[self.behaviour]
        if self.behaviour == "garbage":
            return "not a verdict"  # type: ignore[return-value]
        return error_verdict(
            request.request_id,
            request.video_uri,
            ErrorCode.NOT_FOUND,
            "no such file",
            worker_id="w",
            completed_at=utcnow(),
            metadata=request.metadata,
        )


def nested(depth: int, opener: str, closed: bool) -> bytes:
    inner = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "1" + "}" * depth
    return (inner if closed else opener * depth).encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
request_ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,128}\Z")
requests = st.fixed_dictionaries(
    {"schema_version": st.just(1), "request_id": request_ids},
    optional={
        "video_uri": st.sampled_from(["file:///videos/a.mp4", "https://x.example/a", "ftp://x/y"])
        | st.text(max_size=40),
        "metadata": st.dictionaries(st.text(max_size=10), st.text(max_size=20) | json_values),
        "sha256": st.text(max_size=70),
        "submitted_at": json_values,
        "extra": json_values,
    },
)
valid_requests = st.builds(
    lambda request_id, metadata: VideoRequest(
        request_id=request_id, video_uri="file:///videos/a.mp4", metadata=metadata
    ).to_bytes(),
    request_ids,
    st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=100), max_size=32),
)
digits = st.from_regex(r"\A-?[1-9][0-9]{0,30}\Z") | st.integers(1, 10_000).map(lambda n: "7" * n)


@st.composite
def with_raw_number(draw: st.DrawFn) -> bytes:
    """A request whose schema_version or a metadata value is a huge integer or odd float."""
    number = draw(digits | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0.0"]))
    field = draw(st.sampled_from(["schema_version", "metadata"]))
    if field == "schema_version":
        return (
            f'{{"schema_version": {number}, "request_id": "r", "video_uri": "file:///a"}}'.encode()
        )
    base = '{"schema_version": 1, "request_id": "r", "video_uri": "file:///a", "metadata": '
    return f'{base}{{"k": {number}}}}}'.encode()


values = st.one_of(
    st.none(),
    st.binary(max_size=2000),
    st.builds(nested, st.integers(1, 20_000), st.sampled_from(["[", '{"a":']), st.booleans()),
    with_raw_number(),
    json_values.map(lambda v: json.dumps(v).encode()),
    requests.map(lambda r: json.dumps(r).encode()),
    valid_requests,
)
headers = st.lists(st.tuples(st.text(max_size=20), st.none() | st.binary(max_size=40)), max_size=6)
messages = st.builds(
    Inbound,
    topic=st.just("video-requests"),
    partition=st.integers(0, 1000),
    offset=st.integers(0, 2**62),
    key=st.none() | st.binary(max_size=40),
    value=values,
    headers=headers,
    defect=st.none() | st.text(max_size=60),
)


def is_valid(message: Inbound) -> bool:
    try:
        parse_request(message.value)
    except ContractError:
        return False
    return message.defect is None


@settings(max_examples=200, deadline=None)
@given(message=messages, behaviour=st.sampled_from([*FAILURES, "garbage", "answer"]))
def test_every_message_is_answered_and_nothing_escapes(message: Inbound, behaviour: str) -> None:
    handler = MessageHandler(Chaotic(behaviour), "verdicts", "dlq", "w", Metrics())
    records = handler(message)
    assert records
    assert all(isinstance(r, Outbound) and isinstance(r.value, bytes) for r in records)
    verdicts = [r for r in records if r.topic == "verdicts"]
    for record in verdicts:
        verdict = parse_verdict(record.value)
        assert record.key == verdict.request_id.encode()
    dead = [r for r in records if r.topic == "dlq"]
    valid = is_valid(message)
    event("valid request" if valid else "invalid message")
    if valid:
        [record] = verdicts
        assert not dead
        error = parse_verdict(record.value).error
        assert error is not None
        expected = ErrorCode.NOT_FOUND if behaviour == "answer" else ErrorCode.INTERNAL
        assert error.code is expected
    else:
        [record] = dead
        assert record.value == (message.value or b"")
        assert record.key == message.key
        assert dict(record.headers)["dfd-error-code"] in {b"INVALID_REQUEST", b"UNSUPPORTED_SCHEME"}
        assert len(verdicts) <= 1


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20_000), st.sampled_from(["[", '{"a":']), st.booleans())
def test_json_of_any_depth_is_an_invalid_request(depth: int, opener: str, closed: bool) -> None:
    raw = nested(depth, opener, closed)
    handler = MessageHandler(Chaotic("answer"), "verdicts", "dlq", "w", Metrics())
    [record] = handler(Inbound("video-requests", 0, 1, None, raw))
    assert record.topic == "dlq"
    assert record.value == raw
    assert dict(record.headers)["dfd-error-code"] == b"INVALID_REQUEST"
