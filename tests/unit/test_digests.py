"""`producer.digests.sha256_file`: one SHA-256 helper for paths and open descriptors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from producer.digests import CHUNK_BYTES, sha256_file


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, 2 * CHUNK_BYTES + 7])
def test_path_and_descriptor_digests_match_hashlib(tmp_path: Path, size: int) -> None:
    body = os.urandom(size)
    path = tmp_path / "clip.mp4"
    path.write_bytes(body)
    expected = hashlib.sha256(body).hexdigest()
    assert sha256_file(path) == sha256_file(str(path)) == expected
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 5, os.SEEK_SET)
        assert sha256_file(fd) == expected  # the whole file, whatever the offset
        assert os.lseek(fd, 0, os.SEEK_CUR) == 5  # and the offset did not move
    finally:
        os.close(fd)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing.mp4")
