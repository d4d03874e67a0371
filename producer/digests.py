"""The one SHA-256 helper of the project: content digests of video files (no torch)."""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1 << 20


def sha256_file(source: str | os.PathLike[str] | int) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks.

    `source` is a path or an open descriptor; a descriptor is read with `os.pread` from offset 0,
    so its own offset does not move and other readers of it are not disturbed.
    """
    digest = hashlib.sha256()
    if isinstance(source, int):
        offset = 0
        while block := os.pread(source, CHUNK_BYTES, offset):
            digest.update(block)
            offset += len(block)
    else:
        with open(source, "rb") as handle:
            while block := handle.read(CHUNK_BYTES):
                digest.update(block)
    return digest.hexdigest()
