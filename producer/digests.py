"""The one SHA-256 helper of producers and workers (a request's `sha256` is a file's digest)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_file(source: str | Path | int) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks.

    `source` is a path or an open file descriptor; a descriptor is read with `os.pread` from
    offset 0, so its own offset does not move and it can be decoded afterwards as it is.
    """
    digest = hashlib.sha256()
    if isinstance(source, int):
        offset = 0
        while chunk := os.pread(source, CHUNK_BYTES, offset):
            digest.update(chunk)
            offset += len(chunk)
    else:
        with open(source, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()
