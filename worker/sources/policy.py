"""What every source shares: the policy, the opened video and the typed error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from producer.contracts import ErrorCode


@dataclass(frozen=True)
class SourcePolicy:
    """Where videos may come from and how much may be fetched."""

    allowed_roots: tuple[Path, ...]
    http_enabled: bool = False
    allow_private_hosts: bool = False
    max_bytes: int = 1 << 30
    connect_timeout_s: float = 5.0  # also the DNS lookup's timeout
    read_timeout_s: float = 30.0
    max_redirects: int = 3
    total_timeout_s: float = 300.0  # a hard deadline of the whole download, redirects included
    ca_bundle: Path | None = None  # CA certificates for https; None uses the system's


@dataclass(frozen=True)
class LocalVideo:
    """A video as one open, read-only file descriptor, valid until its context exits.

    `path` names the file for logs only (a downloaded copy's temporary file, or the resolved path
    of a `file://` source); readers use `fd`. `sha256` is the digest of a download, computed
    while it streamed in; None for a `file://` source (hash `fd` with `fd_digest`).
    """

    path: Path
    size: int
    downloaded: bool
    fd: int
    sha256: str | None = None


class SourceError(Exception):
    """A video URI that cannot be served; `code` is a stable `ErrorCode`.

    The message names only what the requester sent (its URI, host name): never a resolved
    address or a path of the worker's filesystem.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def split_uri(uri: str) -> SplitResult:
    """The parts of `uri`; INVALID_REQUEST when it does not parse or has no scheme."""
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        raise SourceError(ErrorCode.INVALID_REQUEST, "URI is not valid Unicode") from None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise SourceError(ErrorCode.INVALID_REQUEST, f"malformed URI: {exc}") from None
    if not parts.scheme:
        raise SourceError(ErrorCode.INVALID_REQUEST, "URI has no scheme")
    return parts
