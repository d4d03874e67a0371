"""Tools of the drills: the raw Produce encoder and the hostile message set."""

from __future__ import annotations

import struct

from benchmarks.hostile import OVERSIZE_BYTES, hostile_messages
from benchmarks.raw_produce import crc32c, record_batch, varint


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_varints_are_zigzag_encoded() -> None:
    assert varint(0) == b"\x00"
    assert varint(-1) == b"\x01"
    assert varint(1) == b"\x02"
    assert varint(150) == b"\xac\x02"


def test_record_batch_header_is_consistent() -> None:
    batch = record_batch([(None, b"value", [(b"\xff", b"v")])])
    base_offset, length, _epoch, magic, crc = struct.unpack_from(">qiibI", batch)
    assert base_offset == 0 and magic == 2
    assert length == len(batch) - 12
    assert crc == crc32c(batch[21:])


def test_hostile_set_covers_every_kind_and_raw_headers() -> None:
    messages = hostile_messages(16, "h")
    kinds = {message.kind for message in messages}
    assert {"deep-object", "deep-array", "huge-int", "binary", "oversize"} <= kinds
    assert {"non-utf8-header-key", "huge-headers", "not-json"} <= kinds
    raw = [message for message in messages if message.raw]
    assert raw and all(message.request_id for message in raw)
    assert max(len(message.value) for message in messages) > OVERSIZE_BYTES
