"""Intake step: a consumed `Message` -> `Inbound`, never raising.

The C client converts keys, values and headers lazily, and a header key that is not UTF-8 makes
`Message.headers()` raise. Whatever part cannot be read is replaced by an empty value and named in
`Inbound.defect`, so the handler answers the message (INVALID_REQUEST + DLQ) instead of the loop
dying on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, Message

from worker.loop.raw_headers import unreadable_header_key
from worker.messages import Headers, Inbound

log = logging.getLogger(__name__)

T = TypeVar("T")


def intake(message: Message) -> Inbound | None:
    """The message as an `Inbound`, or None for a consumer event that is not a message."""
    error = message.error()
    if error is not None:
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error", extra={"error": str(error)})
        return None
    defects: list[str] = []
    key = _read("key", message.key, None, defects)
    value = _read("value", message.value, b"", defects)
    headers = _read("headers", lambda: _headers(message), [], defects)
    return Inbound(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        key=key if isinstance(key, bytes) else None,
        value=value if isinstance(value, bytes) else b"",
        headers=headers,
        defect="; ".join(defects) or None,
    )


def _headers(message: Message) -> Headers:
    """Headers as (str, bytes) pairs; a None value becomes b"". A key that is not UTF-8 is found
    before confluent-kafka's conversion, which would crash the process (`raw_headers`)."""
    bad_key = unreadable_header_key(message)
    if bad_key is not None:
        message.set_headers([])
        raise UnicodeDecodeError("utf-8", bad_key[:64], 0, len(bad_key[:64]), "header key")
    read: Headers = []
    for name, value in message.headers() or []:
        if not isinstance(name, str) or not isinstance(value, bytes | None):
            raise TypeError(f"header of types {type(name).__name__}, {type(value).__name__}")
        read.append((name, value or b""))
    return read


def _read(part: str, read: Callable[[], T], fallback: T, defects: list[str]) -> T:
    try:
        return read()
    except Exception as exc:  # any failure of the C client's conversion is the message's defect
        defects.append(f"unreadable {part}: {type(exc).__name__}: {exc}")
        return fallback
