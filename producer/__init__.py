"""Wire contracts and the client library that upload services use (no torch)."""

from producer.client import (
    Delivery,
    RequestPublisher,
    VerdictReader,
    await_verdicts,
    iter_verdicts,
    make_request,
)
from producer.contracts import ErrorCode, Verdict, VideoRequest, parse_request, parse_verdict

__all__ = [
    "Delivery",
    "ErrorCode",
    "RequestPublisher",
    "Verdict",
    "VerdictReader",
    "VideoRequest",
    "await_verdicts",
    "iter_verdicts",
    "make_request",
    "parse_request",
    "parse_verdict",
]
