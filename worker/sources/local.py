"""`file://` sources: one descriptor, opened beneath an allowed root without following symlinks.

The percent-decoded path is resolved with `realpath` (so `..` and symlinks that stay inside a
root are fine) and must lie inside the realpath of an allowed root; a path outside every root is
`URI_NOT_ALLOWED` whether it exists or not (no probing outside the roots). The resolved path has
no symlink and no `..`, so it is then opened again from the root's directory descriptor one
component at a time, each with `O_NOFOLLOW` (directories also `O_DIRECTORY`): a symlink swapped
into the path after the check makes the open fail instead of leaving the root. The last
component is `lstat`-ed through its directory first, so a FIFO or a device is refused without
being opened, then opened `O_RDONLY|O_NONBLOCK|O_NOFOLLOW|O_NOCTTY|O_CLOEXEC` (a FIFO swapped
in meanwhile cannot block the slot) and checked with `fstat`: a regular file within the size
limit. Inside a root, a missing path or anything else is `NOT_FOUND`. That one descriptor is
what the worker hashes and decodes: there is no second open by name.

Why a walk and not `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: the walk is plain `os.open`
with `dir_fd` (no ctypes, no syscall numbers), works on every POSIX kernel, including the
container runtimes whose seccomp profiles refuse `openat2`, and gives the same guarantee here
because the path it walks was already resolved: one extra system call per path component.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import SplitResult, unquote_to_bytes

from producer.contracts import ErrorCode
from worker.sources.policy import LocalVideo, SourceError, SourcePolicy

_DIRECTORY_FLAGS = (
    getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
)
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


@contextmanager
def open_local(uri: str, parts: SplitResult, policy: SourcePolicy) -> Iterator[LocalVideo]:
    """Yield the file behind the `file://` URI `uri` (split as `parts`); its fd closes on exit."""
    resolved = Path(os.path.realpath(_requested_path(parts)))
    root = next((root for root in _real_roots(policy) if resolved.is_relative_to(root)), None)
    if root is None:
        raise SourceError(
            ErrorCode.URI_NOT_ALLOWED, "file URI is outside the allowed roots of this worker"
        )
    fd = _open_beneath(root, resolved.relative_to(root).parts, uri)
    try:
        size = _checked_size(fd, policy, uri)
        yield LocalVideo(path=resolved, size=size, downloaded=False, fd=fd)
    finally:
        os.close(fd)


def _requested_path(parts: SplitResult) -> str:
    if parts.hostname not in (None, "", "localhost") or parts.username or parts.port:
        raise SourceError(
            ErrorCode.URI_NOT_ALLOWED, f"file URIs must not name a host (got {parts.netloc!r})"
        )
    raw_path = unquote_to_bytes(parts.path)
    if b"\x00" in raw_path or not raw_path.startswith(b"/"):
        raise SourceError(ErrorCode.INVALID_REQUEST, "file URI path must be absolute, without NUL")
    return os.fsdecode(raw_path)


def _real_roots(policy: SourcePolicy) -> list[Path]:
    return [Path(os.path.realpath(root)) for root in policy.allowed_roots]


def _open_beneath(root: Path, names: tuple[str, ...], uri: str) -> int:
    """A read-only descriptor of the regular file `root/names...`, no symlink followed."""
    if not names:
        raise SourceError(ErrorCode.NOT_FOUND, f"not a regular file: {uri}")
    try:
        directory = os.open(root, _DIRECTORY_FLAGS)
    except OSError:
        raise SourceError(ErrorCode.NOT_FOUND, f"not found: {uri}") from None
    try:
        for name in names[:-1]:
            child = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
            os.close(directory)
            directory = child
        info = os.stat(names[-1], dir_fd=directory, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise SourceError(ErrorCode.NOT_FOUND, f"not a regular file: {uri}")
        return os.open(names[-1], _FILE_FLAGS, dir_fd=directory)
    except OSError:
        # Missing, unreadable, or changed since the check (a component is now a symlink).
        raise SourceError(ErrorCode.NOT_FOUND, f"not found: {uri}") from None
    finally:
        os.close(directory)


def _checked_size(fd: int, policy: SourcePolicy, uri: str) -> int:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(ErrorCode.NOT_FOUND, f"not a regular file: {uri}")
    if info.st_size > policy.max_bytes:
        raise SourceError(
            ErrorCode.TOO_LARGE, f"file is {info.st_size} bytes; the limit is {policy.max_bytes}"
        )
    return info.st_size
