"""Resolve a request's `video_uri` to a local file, under an explicit safety policy.

`file://` URIs are served in place, only under the allowed roots: the percent-decoded path is
resolved with `realpath` (so `..` and symlinks, including a root that is itself a symlink, are
followed before the check) and must lie inside the realpath of a root. A path outside every root
is `URI_NOT_ALLOWED` whether it exists or not (no probing outside the roots); inside a root, a
missing path or anything that is not a regular file (directory, FIFO, device) is `NOT_FOUND`.

`http(s)://` URIs are off by default. When on, the host is resolved once, every resolved address is
vetted (private, loopback, link-local, multicast, reserved, unspecified and shared addresses are
refused unless `allow_private_hosts`; IPv4-mapped IPv6 addresses are judged as IPv4) and the
connection goes to the vetted IP itself, with the original name in the `Host` header and as the TLS
SNI/certificate hostname, so a second DNS answer cannot redirect the fetch (no DNS rebinding).
Redirects are followed by hand, each hop vetted the same way. The body is streamed into a temporary
file under a byte cap and deleted when the context exits.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import SplitResult, unquote_to_bytes, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from producer.contracts import ErrorCode

log = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GONE = frozenset({404, 410})
_CHUNK = 1 << 16
_USER_AGENT = "deepfake-stream-detector/1"
_DEFAULT_PORTS = {"http": 80, "https": 443}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SourcePolicy:
    """Where videos may come from and how much may be fetched."""

    allowed_roots: tuple[Path, ...]
    http_enabled: bool = False
    allow_private_hosts: bool = False
    max_bytes: int = 1 << 30
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_redirects: int = 3
    total_timeout_s: float = 300.0
    ca_bundle: Path | None = None  # CA certificates for https; None uses the system's


@dataclass(frozen=True)
class LocalVideo:
    """A video available as a local file; `downloaded` says it is a temporary copy."""

    path: Path
    size: int
    downloaded: bool


class SourceError(Exception):
    """A video URI that cannot be served; `code` is a stable `ErrorCode`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@contextmanager
def open_source(
    uri: str, policy: SourcePolicy, tmp_dir: Path | None = None
) -> Iterator[LocalVideo]:
    """Yield the video behind `uri` as a local file; a downloaded copy is deleted on exit.

    Raises `SourceError` with the `ErrorCode` describing why the URI cannot be served.
    """
    parts = _split(uri)
    if parts.scheme == "file":
        yield _local_file(parts, policy)
    elif parts.scheme in ("http", "https"):
        if not policy.http_enabled:
            raise SourceError(
                ErrorCode.URI_NOT_ALLOWED,
                "http(s) sources are disabled; enable them in the worker settings "
                "(SourcePolicy.http_enabled=True)",
            )
        with _download(uri, policy, tmp_dir) as video:
            yield video
    else:
        raise SourceError(
            ErrorCode.UNSUPPORTED_SCHEME,
            f"URI scheme {parts.scheme!r} is not supported (supported: file, http, https)",
        )


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in `chunk`-byte pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _split(uri: str) -> SplitResult:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise SourceError(ErrorCode.INVALID_REQUEST, f"malformed URI: {exc}") from None
    if not parts.scheme:
        raise SourceError(ErrorCode.INVALID_REQUEST, "URI has no scheme")
    return parts


def _local_file(parts: SplitResult, policy: SourcePolicy) -> LocalVideo:
    if parts.hostname not in (None, "", "localhost") or parts.username or parts.port:
        raise SourceError(
            ErrorCode.URI_NOT_ALLOWED, f"file URIs must not name a host (got {parts.netloc!r})"
        )
    raw_path = unquote_to_bytes(parts.path)
    if b"\x00" in raw_path or not raw_path.startswith(b"/"):
        raise SourceError(ErrorCode.INVALID_REQUEST, "file URI path must be absolute, without NUL")
    resolved = Path(os.path.realpath(os.fsdecode(raw_path)))
    if not any(resolved.is_relative_to(root) for root in _real_roots(policy)):
        raise SourceError(
            ErrorCode.URI_NOT_ALLOWED, "file URI is outside the allowed roots of this worker"
        )
    try:
        info = resolved.stat()
    except FileNotFoundError:
        raise SourceError(ErrorCode.NOT_FOUND, f"no file at {resolved}") from None
    except OSError as exc:
        raise SourceError(ErrorCode.NOT_FOUND, f"cannot stat {resolved}: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(ErrorCode.NOT_FOUND, f"{resolved} is not a regular file")
    if info.st_size > policy.max_bytes:
        raise SourceError(
            ErrorCode.TOO_LARGE, f"file is {info.st_size} bytes; the limit is {policy.max_bytes}"
        )
    return LocalVideo(path=resolved, size=info.st_size, downloaded=False)


def _real_roots(policy: SourcePolicy) -> list[Path]:
    return [Path(os.path.realpath(root)) for root in policy.allowed_roots]


@contextmanager
def _download(uri: str, policy: SourcePolicy, tmp_dir: Path | None) -> Iterator[LocalVideo]:
    fd, name = tempfile.mkstemp(prefix="dfd-", suffix=".video", dir=tmp_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as sink:
            size = _fetch(uri, policy, sink)
        yield LocalVideo(path=path, size=size, downloaded=True)
    finally:
        with suppress(FileNotFoundError):
            path.unlink()


def _fetch(uri: str, policy: SourcePolicy, sink: BinaryIO) -> int:
    deadline = time.monotonic() + policy.total_timeout_s
    current = uri
    for _hop in range(policy.max_redirects + 1):
        parts = _split(current)
        if parts.scheme not in ("http", "https"):
            raise SourceError(
                ErrorCode.URI_NOT_ALLOWED, f"redirect to a {parts.scheme!r} URI is not allowed"
            )
        with _pool(parts, policy) as pool:
            response = _get(pool, parts)
            try:
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    current = urljoin(current, location)
                    log.debug("following redirect", extra={"status": response.status})
                    continue
                _check_status(response.status)
                return _stream(response, policy, sink, deadline)
            except Urllib3Timeout:
                raise SourceError(ErrorCode.TIMEOUT, "timed out reading the video") from None
            except (Urllib3Error, OSError) as exc:
                raise SourceError(ErrorCode.FETCH_FAILED, f"download failed: {exc}") from None
            finally:
                response.release_conn()
    raise SourceError(
        ErrorCode.FETCH_FAILED, f"more than {policy.max_redirects} redirects; giving up"
    )


def _pool(parts: SplitResult, policy: SourcePolicy) -> urllib3.HTTPConnectionPool:
    """A one-connection pool to the vetted address of the URI's host (TLS checks the name)."""
    host = parts.hostname
    if not host:
        raise SourceError(ErrorCode.INVALID_REQUEST, "http(s) URI has no host")
    if parts.username is not None:
        raise SourceError(ErrorCode.URI_NOT_ALLOWED, "credentials in URIs are not supported")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    address = str(_vetted_address(host, port, policy))
    timeout = urllib3.Timeout(connect=policy.connect_timeout_s, read=policy.read_timeout_s)
    if parts.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            server_hostname=host,
            assert_hostname=host,
            ca_certs=str(policy.ca_bundle) if policy.ca_bundle else None,
        )
    return urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False, maxsize=1)


def _get(pool: urllib3.HTTPConnectionPool, parts: SplitResult) -> urllib3.BaseHTTPResponse:
    host = parts.hostname or ""
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    headers = {
        "Host": _host_header(host, parts.port, _DEFAULT_PORTS[parts.scheme]),
        "User-Agent": _USER_AGENT,
        "Accept-Encoding": "identity",
    }
    try:
        return pool.urlopen(
            "GET",
            target,
            headers=headers,
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
        )
    except NewConnectionError as exc:
        raise SourceError(ErrorCode.FETCH_FAILED, f"cannot connect to {host}: {exc}") from None
    except Urllib3Timeout:
        raise SourceError(ErrorCode.TIMEOUT, f"timed out connecting to {host}") from None
    except (Urllib3Error, OSError) as exc:
        raise SourceError(ErrorCode.FETCH_FAILED, f"cannot fetch from {host}: {exc}") from None


def _host_header(host: str, port: int | None, default_port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port in (None, default_port) else f"{name}:{port}"


def _vetted_address(host: str, port: int, policy: SourcePolicy) -> IpAddress:
    """Resolve `host` once and return an address that passes the policy."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SourceError(ErrorCode.FETCH_FAILED, f"cannot resolve {host!r}: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise SourceError(ErrorCode.FETCH_FAILED, f"{host!r} has no addresses")
    if not policy.allow_private_hosts:
        refused = [address for address in addresses if not is_public_address(address)]
        if refused:
            raise SourceError(
                ErrorCode.URI_NOT_ALLOWED,
                f"{host!r} resolves to a non-public address ({refused[0]}); "
                "set allow_private_hosts to fetch from private networks",
            )
    return addresses[0]


def is_public_address(address: IpAddress) -> bool:
    """True for globally routable unicast addresses (IPv4-mapped IPv6 judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def _check_status(status: int) -> None:
    if status in _GONE:
        raise SourceError(ErrorCode.NOT_FOUND, f"the server answered HTTP {status}")
    if not 200 <= status < 300:
        raise SourceError(ErrorCode.FETCH_FAILED, f"the server answered HTTP {status}")


def _stream(
    response: urllib3.BaseHTTPResponse, policy: SourcePolicy, sink: BinaryIO, deadline: float
) -> int:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
        raise SourceError(
            ErrorCode.TOO_LARGE,
            f"Content-Length is {declared} bytes; the limit is {policy.max_bytes}",
        )
    written = 0
    for block in response.stream(_CHUNK):
        written += len(block)
        if written > policy.max_bytes:
            raise SourceError(
                ErrorCode.TOO_LARGE, f"download exceeds the limit of {policy.max_bytes} bytes"
            )
        if time.monotonic() > deadline:
            raise SourceError(
                ErrorCode.TIMEOUT, f"download took longer than {policy.total_timeout_s} s"
            )
        sink.write(block)
    return written
