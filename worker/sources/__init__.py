"""Resolve a request's `video_uri` to one open file descriptor, under an explicit safety policy.

`file://` URIs are served in place, only under the allowed roots, opened once without following
symlinks after the check (`worker.sources.local`). `http(s)://` URIs are off by default; when on,
they are fetched from vetted addresses into a temporary file under byte and time limits
(`worker.sources.download`, `worker.sources.addresses`). Either way the caller gets a
`LocalVideo` whose descriptor is the one thing it hashes and decodes, closed when the context
exits; every refusal is a `SourceError` with a stable `ErrorCode`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from producer.contracts import ErrorCode
from producer.digests import sha256_file
from worker.sources.addresses import is_public_address
from worker.sources.download import download
from worker.sources.local import open_local
from worker.sources.policy import LocalVideo, SourceError, SourcePolicy, split_uri

__all__ = [
    "LocalVideo",
    "SourceError",
    "SourcePolicy",
    "fd_digest",
    "is_public_address",
    "open_source",
]


@contextmanager
def open_source(
    uri: str, policy: SourcePolicy, tmp_dir: Path | None = None
) -> Iterator[LocalVideo]:
    """Yield the video behind `uri`; its descriptor closes (a downloaded copy is deleted) on exit.

    Raises `SourceError` with the `ErrorCode` describing why the URI cannot be served.
    """
    parts = split_uri(uri)
    if parts.scheme == "file":
        with open_local(uri, parts, policy) as video:
            yield video
    elif parts.scheme in ("http", "https"):
        if not policy.http_enabled:
            raise SourceError(
                ErrorCode.URI_NOT_ALLOWED,
                "http(s) sources are disabled; enable them in the worker settings "
                "(SourcePolicy.http_enabled=True)",
            )
        with download(uri, policy, tmp_dir) as video:
            yield video
    else:
        raise SourceError(
            ErrorCode.UNSUPPORTED_SCHEME,
            f"URI scheme {parts.scheme!r} is not supported (supported: file, http, https)",
        )


def fd_digest(fd: int) -> str:
    """SHA-256 hex of the bytes behind an open descriptor (read with pread: its offset stays)."""
    return sha256_file(fd)
