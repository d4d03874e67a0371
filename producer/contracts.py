"""Wire contracts (schema version 1) shared by upload services, workers and dashboards.

This module imports pydantic only: upload services import it without torch.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError, from_json

SCHEMA_VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
SUPPORTED_SCHEMES = ("file", "http", "https")
MAX_METADATA_ENTRIES = 32

REQUESTS_TOPIC = "video-requests"
VERDICTS_TOPIC = "video-verdicts"
DLQ_TOPIC = "video-requests.dlq"

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class ErrorCode(StrEnum):
    """Stable error codes carried by error verdicts and dead-letter headers."""

    INVALID_REQUEST = "INVALID_REQUEST"
    UNSUPPORTED_SCHEME = "UNSUPPORTED_SCHEME"
    URI_NOT_ALLOWED = "URI_NOT_ALLOWED"
    NOT_FOUND = "NOT_FOUND"
    FETCH_FAILED = "FETCH_FAILED"
    TOO_LARGE = "TOO_LARGE"
    NOT_A_VIDEO = "NOT_A_VIDEO"
    DECODE_FAILED = "DECODE_FAILED"
    NO_FRAMES = "NO_FRAMES"
    NO_FACE = "NO_FACE"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    TIMEOUT = "TIMEOUT"
    INTERNAL = "INTERNAL"


def _check_uri(uri: str) -> str:
    match = _URI_SCHEME.match(uri)
    if match is None or not uri[match.end() :].startswith("//"):
        raise PydanticCustomError(
            "uri_syntax", "must be an absolute URI like file:///path or https://host/path"
        )
    scheme = match.group(1).lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise PydanticCustomError(
            "unsupported_scheme",
            "URI scheme '{scheme}' is not supported (supported: {supported})",
            {"scheme": scheme, "supported": ", ".join(SUPPORTED_SCHEMES)},
        )
    if scheme != "file" and len(uri) <= len(scheme) + 3:
        raise PydanticCustomError("uri_syntax", "URI has no host")
    return uri


def _check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise PydanticCustomError(
            "metadata_too_large",
            "at most {limit} metadata entries are allowed",
            {"limit": MAX_METADATA_ENTRIES},
        )
    return metadata


RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
VideoUri = Annotated[str, StringConstraints(max_length=8192), AfterValidator(_check_uri)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64)],
        Annotated[str, StringConstraints(max_length=1024)],
    ],
    AfterValidator(_check_metadata),
]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VideoRequest(_Strict):
    """A request to classify one video (topic `video-requests`, key = `request_id`)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: RequestId
    video_uri: VideoUri
    sha256: Sha256 | None = None
    submitted_at: AwareDatetime | None = None
    metadata: Metadata = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise as compact UTF-8 JSON, the form published to Kafka."""
        return self.model_dump_json(exclude_none=True).encode()


class ModelInfo(_Strict):
    name: str
    version: str
    spec_hash: str


class FrameInfo(_Strict):
    sampled: Annotated[int, Field(ge=0)]
    with_face: Annotated[int, Field(ge=0)]
    timestamps_s: list[float]
    attention: list[float]

    @model_validator(mode="after")
    def _aligned(self) -> FrameInfo:
        if len(self.attention) not in (0, len(self.timestamps_s)):
            raise ValueError("attention must have one weight per timestamp")
        if self.with_face > self.sampled:
            raise ValueError("with_face cannot exceed sampled")
        return self


class ErrorInfo(_Strict):
    code: ErrorCode
    message: str


class Verdict(_Strict):
    """The one terminal answer to a request (topic `video-verdicts`, key = `request_id`)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: RequestId
    video_uri: str
    status: Literal["ok", "error"]
    label: Literal["fake", "real"] | None = None
    fake_probability: Probability | None = None
    threshold: Probability | None = None
    model: ModelInfo | None = None
    members: dict[str, Probability] = Field(default_factory=dict)
    frames: FrameInfo | None = None
    cache: Literal["hit", "miss", "bypass"] | None = None
    timings_ms: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    worker_id: str
    completed_at: AwareDatetime
    metadata: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Verdict:
        if self.status == "ok":
            if self.error is not None:
                raise ValueError("an ok verdict carries no error")
            if self.label is None or self.fake_probability is None or self.threshold is None:
                raise ValueError("an ok verdict needs label, fake_probability and threshold")
        else:
            if self.error is None:
                raise ValueError("an error verdict needs error.code and error.message")
            if self.label is not None or self.fake_probability is not None:
                raise ValueError("an error verdict carries no label or fake_probability")
        return self

    def to_bytes(self) -> bytes:
        """Serialise as compact UTF-8 JSON, the form published to Kafka."""
        return self.model_dump_json().encode()


class ContractError(Exception):
    """A message that does not satisfy the contract; `code` is a stable `ErrorCode`.

    `request_id` and `video_uri` are set whenever the message names them readably, so the
    requester can still be answered.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        request_id: str | None = None,
        video_uri: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.video_uri = video_uri


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _recover_request_id(document: dict[str, Any]) -> str | None:
    candidate = document.get("request_id")
    if isinstance(candidate, str) and re.fullmatch(REQUEST_ID_PATTERN, candidate):
        return candidate
    return None


def _recover_uri(document: dict[str, Any]) -> str:
    uri = document.get("video_uri")
    return uri if isinstance(uri, str) else ""


def parse_request(raw: bytes | None) -> VideoRequest:
    """Decode and validate one request message; any failure is a `ContractError`.

    Its code is `INVALID_REQUEST` (or `UNSUPPORTED_SCHEME`) and its message names each wrong
    field; `request_id` and `video_uri` are set whenever they can be recovered. The JSON parser
    refuses nesting deeper than 200 levels, integers beyond 4300 digits, NaN/Infinity and lone
    surrogates, so no message can exhaust the stack or smuggle unencodable text into a verdict.
    """
    try:
        return _parse_request(raw)
    except ContractError:
        raise
    except Exception as exc:  # a hostile message must never escape as anything else
        raise ContractError(
            ErrorCode.INVALID_REQUEST, f"message could not be read: {type(exc).__name__}"
        ) from None


def _parse_request(raw: bytes | None) -> VideoRequest:
    if raw is None:
        raise ContractError(ErrorCode.INVALID_REQUEST, "message has no value")
    if len(raw) > MAX_REQUEST_BYTES:
        raise ContractError(
            ErrorCode.INVALID_REQUEST,
            f"message is {len(raw)} bytes; the limit is {MAX_REQUEST_BYTES}",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(ErrorCode.INVALID_REQUEST, f"message is not UTF-8: {exc}") from None
    try:
        document = from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        raise ContractError(ErrorCode.INVALID_REQUEST, f"message is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ContractError(ErrorCode.INVALID_REQUEST, "message must be a JSON object")
    request_id, video_uri = _recover_request_id(document), _recover_uri(document)
    if "schema_version" not in document:
        raise ContractError(
            ErrorCode.INVALID_REQUEST,
            f"schema_version: field required (this worker speaks {SCHEMA_VERSION})",
            request_id,
            video_uri,
        )
    version = document["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ContractError(
            ErrorCode.INVALID_REQUEST,
            f"schema_version: unsupported value {_shorten(version)} "
            f"(this worker speaks {SCHEMA_VERSION})",
            request_id,
            video_uri,
        )
    try:
        return VideoRequest.model_validate(document)
    except ValidationError as exc:
        types = {item["type"] for item in exc.errors()}
        code = (
            ErrorCode.UNSUPPORTED_SCHEME
            if types == {"unsupported_scheme"}
            else ErrorCode.INVALID_REQUEST
        )
        raise ContractError(code, _describe(exc), request_id, video_uri) from None


def _shorten(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_verdict(raw: bytes) -> Verdict:
    """Decode and validate one verdict message (raises pydantic's `ValidationError`)."""
    return Verdict.model_validate_json(raw)


def schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of both messages, keyed by file name."""
    return {
        "video-request.v1.schema.json": VideoRequest.model_json_schema(mode="validation"),
        "verdict.v1.schema.json": Verdict.model_json_schema(mode="validation"),
    }


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)
