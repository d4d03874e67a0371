"""`http(s)://` sources: fetched into a temporary file under byte and time limits.

The host is resolved once (with a timeout) and every resolved address is vetted (see
`worker.sources.addresses`); the connection goes to the vetted IP itself, with the original name
in the `Host` header and as the TLS SNI/certificate hostname, so a second DNS answer cannot
redirect the fetch (no DNS rebinding). Redirects are followed by hand, each hop vetted the same
way, never from https down to http. The body is asked for and stored as it is sent
(`Accept-Encoding: identity`, no content decoding: a compressed body cannot inflate past the
byte cap), hashed with SHA-256 while it streams in, and deleted when the context exits.

Time: the DNS lookup is bounded by the connect timeout; each socket operation by the connect or
read timeout; the whole download, redirects included, by `total_timeout_s`, a hard deadline: a
timer shuts the connection's socket down when it passes, which ends any read blocked inside the
TLS handshake, the headers or the body, so a server dripping a byte at a time cannot hold a
slot past it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import BinaryIO
from urllib.parse import SplitResult, quote, urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.ssl_match_hostname import CertificateError

from producer.contracts import ErrorCode
from worker.sources import addresses
from worker.sources.policy import LocalVideo, SourceError, SourcePolicy, split_uri

log = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GONE = frozenset({404, 410})
_CHUNK = 1 << 16
_USER_AGENT = "deepfake-stream-detector/1"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PRINTABLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))
"""Kept as they are in a request target; spaces, control and non-ASCII characters are %-encoded."""
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class Deadline:
    """A hard deadline for one download: when it passes, every watched socket is shut down.

    Shutting a socket down wakes a thread blocked reading it (the read returns end-of-file or
    fails), wherever that read is. Each watched socket is a duplicate descriptor owned here, so
    the timer never touches a descriptor number that was closed and reused elsewhere.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self._end

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down when the deadline passes (at once when it has passed)."""
        with self._lock:
            try:
                copy = sock.dup()
            except OSError:
                sock.close()
                raise
            self._sockets.append(copy)
            if self._fired:
                _shut_down(copy)

    def close(self) -> None:
        """Stop the timer and release the duplicate descriptors."""
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """Registers each new socket of an urllib3 connection with the download's deadline."""

    deadline: Deadline

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        self.deadline.watch(sock)
        return sock


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


@contextmanager
def download(uri: str, policy: SourcePolicy, tmp_dir: Path | None) -> Iterator[LocalVideo]:
    """Yield the body behind `uri` as a temporary file, deleted (and its fd closed) on exit."""
    fd, name = tempfile.mkstemp(prefix="dfd-", suffix=".video", dir=tmp_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as sink:
            size, digest = _fetch(uri, policy, sink)
        reader = os.open(path, _READ_FLAGS)
        try:
            yield LocalVideo(path=path, size=size, downloaded=True, fd=reader, sha256=digest)
        finally:
            os.close(reader)
    finally:
        with suppress(FileNotFoundError):
            path.unlink()


def _fetch(uri: str, policy: SourcePolicy, sink: BinaryIO) -> tuple[int, str]:
    """Follow redirects to the body and stream it into `sink`: (bytes, SHA-256 hex)."""
    deadline = Deadline(policy.total_timeout_s)
    try:
        current, previous = uri, None
        for _hop in range(policy.max_redirects + 1):
            if deadline.expired:
                raise _too_slow(deadline)
            parts = split_uri(current)
            host = _check_hop(parts, previous)
            with (
                _network_errors(host, deadline),
                closing(_connect(host, parts, policy, deadline)) as conn,
            ):
                response = _get(conn, host, parts, policy.read_timeout_s)
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    previous, current = parts, urljoin(current, location)
                    log.debug("following redirect", extra={"status": response.status})
                    continue
                _check_status(response.status)
                return _stream(response, policy, sink, deadline)
        raise SourceError(
            ErrorCode.FETCH_FAILED, f"more than {policy.max_redirects} redirects; giving up"
        )
    finally:
        deadline.close()


def _check_hop(parts: SplitResult, previous: SplitResult | None) -> str:
    """The hop's host name in ASCII (IDNA), once the hop passes the scheme and form checks."""
    if parts.scheme not in ("http", "https"):
        raise SourceError(
            ErrorCode.URI_NOT_ALLOWED, f"redirect to a {parts.scheme!r} URI is not allowed"
        )
    if previous is not None and previous.scheme == "https" and parts.scheme == "http":
        raise SourceError(
            ErrorCode.URI_NOT_ALLOWED, "redirect from https down to http is not allowed"
        )
    if not parts.hostname:
        raise SourceError(ErrorCode.INVALID_REQUEST, "http(s) URI has no host")
    if parts.username is not None:
        raise SourceError(ErrorCode.URI_NOT_ALLOWED, "credentials in URIs are not supported")
    try:
        return parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise SourceError(
            ErrorCode.INVALID_REQUEST, f"invalid host name {parts.hostname!r}"
        ) from None


def _connect(
    host: str, parts: SplitResult, policy: SourcePolicy, deadline: Deadline
) -> HTTPConnection:
    """An unopened connection to the vetted address of `host` (TLS checks the name)."""
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    address = str(_vetted_address(host, port, policy, deadline))
    timeout = min(policy.connect_timeout_s, deadline.remaining())
    conn: _HTTPConnection | _HTTPSConnection
    if parts.scheme == "https":
        conn = _HTTPSConnection(
            address,
            port,
            timeout=timeout,
            server_hostname=host,
            assert_hostname=host,
            ca_certs=str(policy.ca_bundle) if policy.ca_bundle else None,
        )
    else:
        conn = _HTTPConnection(address, port, timeout=timeout)
    conn.deadline = deadline
    return conn


def _vetted_address(
    host: str, port: int, policy: SourcePolicy, deadline: Deadline
) -> addresses.IpAddress:
    """Resolve `host` once and return an address that passes the policy."""
    timeout_s = min(policy.connect_timeout_s, deadline.remaining())
    resolved = addresses.resolve(host, port, timeout_s)
    refused = [a for a in resolved if not addresses.allowed(a, policy.allow_private_hosts)]
    if refused:
        log.info("refused address", extra={"host": host, "address": str(refused[0])})
        if policy.allow_private_hosts:
            reason = "a link-local or cloud metadata address"
        else:
            reason = "a non-public address; set allow_private_hosts to fetch from private networks"
        raise SourceError(ErrorCode.URI_NOT_ALLOWED, f"{host!r} resolves to {reason}")
    return resolved[0]


def _get(
    conn: HTTPConnection, host: str, parts: SplitResult, read_timeout_s: float
) -> urllib3.BaseHTTPResponse:
    """Connect, send the GET and read the response's headers (each read within the timeout)."""
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    headers = {
        "Host": _host_header(host, parts.port, _DEFAULT_PORTS[parts.scheme]),
        "User-Agent": _USER_AGENT,
        "Accept-Encoding": "identity",
    }
    conn.connect()
    conn.timeout = read_timeout_s
    conn.request(
        "GET",
        quote(target, safe=_PRINTABLE_ASCII),
        headers=headers,
        preload_content=False,
        decode_content=False,
    )
    return conn.getresponse()


def _host_header(host: str, port: int | None, default_port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port in (None, default_port) else f"{name}:{port}"


def _check_status(status: int) -> None:
    if status in _GONE:
        raise SourceError(ErrorCode.NOT_FOUND, f"the server answered HTTP {status}")
    if not 200 <= status < 300:
        raise SourceError(ErrorCode.FETCH_FAILED, f"the server answered HTTP {status}")


def _stream(
    response: urllib3.BaseHTTPResponse, policy: SourcePolicy, sink: BinaryIO, deadline: Deadline
) -> tuple[int, str]:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
        raise SourceError(
            ErrorCode.TOO_LARGE,
            f"Content-Length is {declared} bytes; the limit is {policy.max_bytes}",
        )
    digest = hashlib.sha256()
    written = 0
    # read1: at most one read from the socket per block, so the deadline is checked between any
    # two reads; the timer covers a read that is blocked.
    while block := response.read1(_CHUNK, decode_content=False):
        written += len(block)
        if written > policy.max_bytes:
            raise SourceError(
                ErrorCode.TOO_LARGE, f"download exceeds the limit of {policy.max_bytes} bytes"
            )
        if deadline.expired:
            break
        digest.update(block)
        sink.write(block)
    if deadline.expired:  # the body may have been cut short by the timer
        raise _too_slow(deadline)
    return written, digest.hexdigest()


def _too_slow(deadline: Deadline) -> SourceError:
    return SourceError(ErrorCode.TIMEOUT, f"the download took longer than {deadline.seconds:g} s")


@contextmanager
def _network_errors(host: str, deadline: Deadline) -> Iterator[None]:
    """Turn network failures into `SourceError`s that name the host, never its address."""
    try:
        yield
    except SourceError:
        raise
    except (Urllib3Error, OSError, http.client.HTTPException, CertificateError) as exc:
        log.info("download failed", extra={"host": host, "error": repr(exc)})
        if deadline.expired:
            raise _too_slow(deadline) from None
        timed_out = isinstance(exc, Urllib3Timeout | TimeoutError)
        if timed_out and not isinstance(exc, NewConnectionError):  # a subclass of a timeout
            raise SourceError(ErrorCode.TIMEOUT, f"timed out talking to {host!r}") from None
        raise SourceError(
            ErrorCode.FETCH_FAILED, f"fetching from {host!r} failed: {_reason(exc)}"
        ) from None


def _reason(exc: BaseException) -> str:
    """What went wrong, without the addresses urllib3 puts in its messages."""
    cause: BaseException | None = exc
    for _depth in range(8):  # the cause chain, bounded
        if cause is None:
            break
        if isinstance(cause, CertificateError):
            return f"TLS certificate: {cause}"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS: {cause.reason or type(cause).__name__}"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        if isinstance(cause, http.client.IncompleteRead):
            return "the body ended early"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__
