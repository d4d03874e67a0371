"""Produce records with raw header keys (e.g. not UTF-8) by speaking Kafka's Produce API directly.

confluent-kafka's producer turns a `bytes` header key into its `str()` form, so it cannot send the
hostile header keys a foreign client can; the drills need them. This writes one uncompressed
RecordBatch v2 in a Produce v3 request (Kafka 2.x-4.x) to the broker it connects to, which must
lead the partition: the drills' single-node stack. Not a client: no retries, no idempotence.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence

RawHeaders = Sequence[tuple[bytes, bytes]]
_PRODUCE, _VERSION = 0, 3


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of a RecordBatch v2."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def varint(value: int) -> bytes:
    """A zigzag-encoded variable-length integer."""
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        if encoded < 0x80:
            out.append(encoded)
            return bytes(out)
        out.append((encoded & 0x7F) | 0x80)
        encoded >>= 7


def _sized(data: bytes | None) -> bytes:
    return varint(-1) if data is None else varint(len(data)) + data


def record(index: int, key: bytes | None, value: bytes, headers: RawHeaders) -> bytes:
    """One record of a batch (offset and timestamp deltas of `index` and 0)."""
    body = (
        b"\x00"
        + varint(0)
        + varint(index)
        + _sized(key)
        + _sized(value)
        + varint(len(headers))
        + b"".join(_sized(name) + _sized(item) for name, item in headers)
    )
    return varint(len(body)) + body


def record_batch(records: Sequence[tuple[bytes | None, bytes, RawHeaders]]) -> bytes:
    """An uncompressed RecordBatch v2 without producer id (not idempotent)."""
    now_ms = int(time.time() * 1000)
    encoded = b"".join(record(i, k, v, h) for i, (k, v, h) in enumerate(records))
    after_crc = (
        struct.pack(">hiqqqhii", 0, len(records) - 1, now_ms, now_ms, -1, -1, -1, len(records))
        + encoded
    )
    after_length = struct.pack(">ibI", -1, 2, crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


_TRANSIENT = {3, 5, 6}
"""UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER: a new topic."""


def produce(
    bootstrap: str,
    topic: str,
    partition: int,
    records: Sequence[tuple[bytes | None, bytes, RawHeaders]],
    timeout_s: float = 30.0,
) -> int:
    """Append `records` to `topic[partition]` with acks=all; returns the base offset, raises
    `RuntimeError` with the broker's error code (after retrying a topic still being created)."""
    for _attempt in range(20):
        error, base = _produce_once(bootstrap, topic, partition, records, timeout_s)
        if error not in _TRANSIENT:
            break
        time.sleep(0.5)
    if error:
        raise RuntimeError(f"broker refused the raw batch: error code {error}")
    return base


def _produce_once(
    bootstrap: str,
    topic: str,
    partition: int,
    records: Sequence[tuple[bytes | None, bytes, RawHeaders]],
    timeout_s: float,
) -> tuple[int, int]:
    batch = record_batch(records)
    body = (
        struct.pack(">hhi", _PRODUCE, _VERSION, 1)
        + _string("dfd-drills-raw")
        + struct.pack(">hhi", -1, -1, int(timeout_s * 1000))
        + struct.pack(">i", 1)
        + _string(topic)
        + struct.pack(">iii", 1, partition, len(batch))
        + batch
    )
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        reply = _read(sock, struct.unpack(">i", _read(sock, 4))[0])
    # correlation id, 1 topic (name), 1 partition: index, error code, base offset
    name_length = struct.unpack_from(">h", reply, 8)[0]
    at = 10 + name_length + 4
    _index, error, base = struct.unpack_from(">ihq", reply, at)
    return int(error), int(base)


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data
