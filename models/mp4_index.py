"""Recognise an MP4 cut before its index: an ISO BMFF file without a whole top-level `moov`.

An MP4 written in one pass keeps its index (the `moov` box) after the media data, so an upload
or copy interrupted half-way leaves a file FFmpeg cannot open ("moov atom not found"). Telling
that apart from a file that was never a video lets the error say what happened.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import BinaryIO

Reader = Callable[[int, int], bytes]
"""Reads `size` bytes at `offset` (fewer at the end of the file)."""

MAX_BOXES = 1024
"""Top-level boxes walked at most (a hostile file could declare millions of tiny ones)."""


def lacks_index(source: str | os.PathLike[str] | BinaryIO | int) -> bool:
    """True when `source` starts like an MP4 (`ftyp`) but has no whole top-level `moov` box:
    none at all, or the file ends inside one of its top-level boxes.

    Reads box headers only: a path is opened, a descriptor is read with `pread`, a file object is
    read from its start and left at its position. Anything unreadable counts as not an MP4.
    """
    try:
        if isinstance(source, int):
            return _lacks_index(lambda offset, size: os.pread(source, size, offset))
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as file:
                return _lacks_index(_file_reader(file))
        position = source.tell()
        try:
            return _lacks_index(_file_reader(source))
        finally:
            source.seek(position)
    except (OSError, ValueError):
        return False


def _file_reader(file: BinaryIO) -> Reader:
    def read(offset: int, size: int) -> bytes:
        file.seek(offset)
        return file.read(size)

    return read


def _lacks_index(read: Reader) -> bool:
    offset = 0
    first = True
    has_index = False
    for _ in range(MAX_BOXES):
        header = read(offset, 16)
        if not header and offset and not read(offset - 1, 1):
            return not first  # the previous box runs past the end of the file
        if len(header) < 8:
            return not first and (bool(header) or not has_index)
        size, kind = struct.unpack(">I4s", header[:8])
        if first and kind != b"ftyp":
            return False
        first = False
        has_index = has_index or kind == b"moov"
        if size == 1 and len(header) == 16:
            size = struct.unpack(">Q", header[8:])[0]
        if size < 8:  # 0: the box runs to the end of the file; 1 without its 64-bit size; bogus
            break
        offset += size
    return not first and not has_index
