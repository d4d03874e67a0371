"""URI policy of `worker.sources`: file roots, http(s) vetting, redirects, byte cap, timeouts."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest.mock import patch
from urllib.parse import quote

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from deploy.local.ports import free_port
from producer.contracts import ErrorCode
from producer.digests import sha256_file
from worker.sources import (
    SourceError,
    SourcePolicy,
    addresses,
    fd_digest,
    is_public_address,
    open_source,
)

BODY = bytes(range(256)) * 40  # 10 KiB


def file_uri(path: Path) -> str:
    return "file://" + quote(str(path))


def error_code(uri: str, policy: SourcePolicy, tmp_dir: Path | None = None) -> ErrorCode:
    with pytest.raises(SourceError) as caught, open_source(uri, policy, tmp_dir):
        pass
    return caught.value.code


# ---------------------------------------------------------------- file://


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "videos"
    root.mkdir()
    (root / "clip.mp4").write_bytes(BODY)
    return root


def test_file_inside_root_is_served_in_place(root: Path) -> None:
    with open_source(file_uri(root / "clip.mp4"), SourcePolicy((root,))) as video:
        assert video.path == (root / "clip.mp4").resolve()
        assert video.size == len(BODY)
        assert not video.downloaded
    assert (root / "clip.mp4").exists()


def test_percent_encoded_path_is_decoded(root: Path) -> None:
    name = "my clip #1 (ü)?.mp4"
    (root / name).write_bytes(b"abc")
    uri = file_uri(root / name)
    assert "%23" in uri and "%3F" in uri
    with open_source(uri, SourcePolicy((root,))) as video:
        assert video.path.name == name
        assert video.size == 3


def test_localhost_host_is_accepted_other_hosts_are_not(root: Path) -> None:
    policy = SourcePolicy((root,))
    with open_source(f"file://localhost{root}/clip.mp4", policy) as video:
        assert video.size == len(BODY)
    assert error_code(f"file://evil.example{root}/clip.mp4", policy) == ErrorCode.URI_NOT_ALLOWED


def test_dotdot_cannot_escape_the_root(root: Path) -> None:
    (root.parent / "secret.mp4").write_bytes(b"secret")
    uri = f"file://{root}/../secret.mp4"
    assert error_code(uri, SourcePolicy((root,))) == ErrorCode.URI_NOT_ALLOWED
    encoded = f"file://{root}/%2E%2E/secret.mp4"
    assert error_code(encoded, SourcePolicy((root,))) == ErrorCode.URI_NOT_ALLOWED


def test_symlink_cannot_escape_the_root(root: Path) -> None:
    outside = root.parent / "outside.mp4"
    outside.write_bytes(b"outside")
    (root / "link.mp4").symlink_to(outside)
    (root / "dir-link").symlink_to(root.parent)
    policy = SourcePolicy((root,))
    assert error_code(file_uri(root / "link.mp4"), policy) == ErrorCode.URI_NOT_ALLOWED
    assert error_code(file_uri(root / "dir-link/outside.mp4"), policy) == ErrorCode.URI_NOT_ALLOWED


def test_symlink_inside_the_root_is_followed(root: Path) -> None:
    (root / "alias.mp4").symlink_to(root / "clip.mp4")
    with open_source(file_uri(root / "alias.mp4"), SourcePolicy((root,))) as video:
        assert video.path == (root / "clip.mp4").resolve()


def test_root_that_is_a_symlink(root: Path, tmp_path: Path) -> None:
    link_root = tmp_path / "link-root"
    link_root.symlink_to(root)
    policy = SourcePolicy((link_root,))
    for uri in (file_uri(link_root / "clip.mp4"), file_uri(root / "clip.mp4")):
        with open_source(uri, policy) as video:
            assert video.size == len(BODY)


def test_sibling_with_common_prefix_is_outside(root: Path) -> None:
    sibling = root.parent / (root.name + "-evil")
    sibling.mkdir()
    (sibling / "clip.mp4").write_bytes(b"x")
    assert error_code(file_uri(sibling / "clip.mp4"), SourcePolicy((root,))) == (
        ErrorCode.URI_NOT_ALLOWED
    )


def test_missing_inside_is_not_found_outside_is_not_allowed(root: Path) -> None:
    policy = SourcePolicy((root,))
    assert error_code(file_uri(root / "nope.mp4"), policy) == ErrorCode.NOT_FOUND
    assert error_code("file:///definitely/not/here.mp4", policy) == ErrorCode.URI_NOT_ALLOWED


def test_directory_and_fifo_are_not_found(root: Path) -> None:
    (root / "sub").mkdir()
    os.mkfifo(root / "pipe.mp4")
    policy = SourcePolicy((root,))
    assert code_of(file_uri(root / "sub"), policy) == ErrorCode.NOT_FOUND
    assert code_of(file_uri(root / "pipe.mp4"), policy) == ErrorCode.NOT_FOUND


def test_file_bigger_than_the_limit(root: Path) -> None:
    policy = SourcePolicy((root,), max_bytes=len(BODY) - 1)
    assert error_code(file_uri(root / "clip.mp4"), policy) == ErrorCode.TOO_LARGE


def test_no_roots_means_no_files(root: Path) -> None:
    assert error_code(file_uri(root / "clip.mp4"), SourcePolicy(())) == ErrorCode.URI_NOT_ALLOWED


def test_unknown_scheme_and_disabled_http(root: Path) -> None:
    policy = SourcePolicy((root,))
    assert error_code("ftp://example.com/a.mp4", policy) == ErrorCode.UNSUPPORTED_SCHEME
    with pytest.raises(SourceError) as caught, open_source("https://example.com/a.mp4", policy):
        pass
    assert caught.value.code == ErrorCode.URI_NOT_ALLOWED
    assert "http_enabled" in caught.value.message


def test_digests_match_hashlib_and_leave_the_offset(root: Path) -> None:
    expected = hashlib.sha256(BODY).hexdigest()
    assert sha256_file(root / "clip.mp4") == expected
    with open_source(file_uri(root / "clip.mp4"), SourcePolicy((root,))) as video:
        os.lseek(video.fd, 100, os.SEEK_SET)
        assert fd_digest(video.fd) == sha256_file(video.fd) == expected
        assert os.lseek(video.fd, 0, os.SEEK_CUR) == 100


def quickly(call: Callable[[], object], timeout_s: float = 20.0) -> object:
    """The result of `call` run in a thread; fails the test when it blocks (a FIFO would)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), "open_source blocked"
    return outcome[0]


def code_of(uri: str, policy: SourcePolicy) -> ErrorCode:
    result = quickly(lambda: error_code(uri, policy))
    assert isinstance(result, ErrorCode), result
    return result


def test_the_video_is_one_read_only_descriptor_closed_on_exit(root: Path) -> None:
    with open_source(file_uri(root / "clip.mp4"), SourcePolicy((root,))) as video:
        assert fcntl.fcntl(video.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert os.pread(video.fd, len(BODY) + 1, 0) == BODY
        assert video.sha256 is None
        fd = video.fd
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_file_replaced_after_opening_is_still_the_one_read(root: Path) -> None:
    with open_source(file_uri(root / "clip.mp4"), SourcePolicy((root,))) as video:
        (root / "clip.mp4").unlink()
        (root / "clip.mp4").write_bytes(b"other bytes")
        assert fd_digest(video.fd) == hashlib.sha256(BODY).hexdigest()


def swap_after_check(
    monkeypatch: pytest.MonkeyPatch, checked: Path, swap: Callable[[], None]
) -> None:
    """Run `swap` right after the allowed-root check resolved `checked` (the race window)."""
    real_realpath = os.path.realpath

    def realpath(path: str, *args: object, **kwargs: object) -> str:
        resolved = real_realpath(path, *args, **kwargs)  # type: ignore[arg-type]
        if resolved == str(checked):
            swap()
        return resolved

    monkeypatch.setattr(os.path, "realpath", realpath)


def test_a_symlink_swapped_in_after_the_check_is_not_followed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = root.parent / "secret.mp4"
    outside.write_bytes(b"secret")
    target = (root / "clip.mp4").resolve()

    def swap() -> None:
        target.unlink()
        target.symlink_to(outside)

    swap_after_check(monkeypatch, target, swap)
    assert code_of(file_uri(target), SourcePolicy((root,))) == ErrorCode.NOT_FOUND
    assert target.is_symlink()


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_followed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "clip.mp4").write_bytes(BODY)
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "clip.mp4").write_bytes(b"secret")
    target = (root / "sub" / "clip.mp4").resolve()

    def swap() -> None:
        (root / "sub").rename(root / "old-sub")
        (root / "sub").symlink_to(elsewhere)

    swap_after_check(monkeypatch, target, swap)
    assert code_of(file_uri(target), SourcePolicy((root,))) == ErrorCode.NOT_FOUND
    assert (root / "sub").is_symlink()


def test_a_fifo_swapped_in_after_the_type_check_does_not_block(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_stat = os.stat
    target = root / "clip.mp4"

    def stat_then_swap(path: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if path == "clip.mp4" and "dir_fd" in kwargs:
            target.unlink()
            os.mkfifo(target)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    assert code_of(file_uri(target), SourcePolicy((root,))) == ErrorCode.NOT_FOUND
    assert stat.S_ISFIFO(os.lstat(target).st_mode)


def test_devices_are_not_found() -> None:
    policy = SourcePolicy((Path("/dev"),))
    for device in ("/dev/zero", "/dev/null"):
        assert code_of(f"file://{device}", policy) == ErrorCode.NOT_FOUND


def test_messages_name_the_uri_not_the_resolved_path(root: Path, tmp_path: Path) -> None:
    alias = tmp_path / "published"
    alias.symlink_to(root)
    uri = file_uri(alias / "missing.mp4")
    with pytest.raises(SourceError) as caught, open_source(uri, SourcePolicy((alias,))):
        pass
    assert caught.value.code == ErrorCode.NOT_FOUND
    assert caught.value.message == f"not found: {uri}"
    assert str(root) not in caught.value.message


# ---------------------------------------------------------------- address vetting


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "2002:808:808::1",  # 6to4 of 8.8.8.8
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    ],
)
def test_public_addresses_are_accepted(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))
    assert addresses.allowed(ipaddress.ip_address(address), allow_private_hosts=False)


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack metadata
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.0.23",  # Tencent Cloud metadata
        "fe80::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud
        "::ffff:169.254.169.254",
        "::169.254.169.254",
        "2002:a9fe:a9fe::1",  # 6to4
        "64:ff9b::a9fe:a9fe",  # NAT64
        "64:ff9b:1:a9fe:a9:fe00::",  # local-use NAT64, RFC 6052 /48 layout
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64, /96 layout
    ],
)
def test_metadata_and_link_local_are_refused_even_when_private_hosts_are_allowed(
    address: str,
) -> None:
    parsed = ipaddress.ip_address(address)
    assert addresses.is_always_refused(parsed)
    assert not addresses.allowed(parsed, allow_private_hosts=True)
    assert not is_public_address(parsed)


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "127.0.0.1",
        "::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "2002:a00:1::",
        "64:ff9b::a00:1",
    ],
)
def test_private_addresses_pass_only_when_allowed(address: str) -> None:
    parsed = ipaddress.ip_address(address)
    assert addresses.allowed(parsed, allow_private_hosts=True)
    assert not addresses.allowed(parsed, allow_private_hosts=False)


def ipv4_forms(ipv4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """The IPv6 forms that carry `ipv4`: mapped, compatible, 6to4, NAT64 (both prefixes)."""
    value = int(ipv4)
    packed = ipv4.packed
    local_48 = bytes.fromhex("0064ff9b0001") + packed[:2] + b"\0" + packed[2:] + bytes(5)
    return [
        ipaddress.IPv6Address(f"::ffff:{ipv4}"),
        ipaddress.IPv6Address(value) if value > 1 else ipaddress.IPv6Address(f"::ffff:{ipv4}"),
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80)),
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | value),
        ipaddress.IPv6Address(local_48),
    ]


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=4))
def test_ipv6_forms_are_judged_by_the_ipv4_address_they_carry(
    ipv4: ipaddress.IPv4Address,
) -> None:
    for form in ipv4_forms(ipv4):
        assert addresses.embedded_ipv4(form)[0] == ipv4
        assert addresses.is_always_refused(form) == addresses.is_always_refused(ipv4), form
        if not is_public_address(ipv4):
            assert not is_public_address(form), form
        if form not in addresses._NAT64_LOCAL:  # local-use: public only if both readings are
            assert is_public_address(form) == is_public_address(ipv4), form


# ---------------------------------------------------------------- http(s)://


class _Server:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.hosts: list[str] = []
        self.encodings: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.hosts.append(self.headers.get("Host", ""))
                server.encodings.append(self.headers.get("Accept-Encoding", ""))
                route = _ROUTES.get(self.path.split("?", 1)[0])
                if route is None:
                    self.send_error(404)
                    return
                route(self, server)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _video(handler: BaseHTTPRequestHandler, server: _Server) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(BODY)))
    handler.end_headers()
    handler.wfile.write(BODY)


def _declared_big(handler: BaseHTTPRequestHandler, server: _Server) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(10 * len(BODY)))
    handler.end_headers()
    handler.wfile.write(BODY)


def _undeclared_big(handler: BaseHTTPRequestHandler, server: _Server) -> None:
    handler.send_response(200)
    handler.end_headers()
    for _ in range(10):
        handler.wfile.write(BODY)
    handler.close_connection = True


def _redirect_to(location: str):
    def route(handler: BaseHTTPRequestHandler, server: _Server) -> None:
        handler.send_response(302)
        handler.send_header("Location", location.format(port=server.port))
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def _status(code: int):
    def route(handler: BaseHTTPRequestHandler, server: _Server) -> None:
        handler.send_error(code)

    return route


def _stall(handler: BaseHTTPRequestHandler, server: _Server) -> None:
    server.release.wait(10)


GZIPPED = gzip.compress(bytes(1 << 20))  # 1 MiB of zeros in about 1 KiB


def _gzip(handler: BaseHTTPRequestHandler, server: _Server) -> None:
    handler.send_response(200)
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(GZIPPED)))
    handler.end_headers()
    handler.wfile.write(GZIPPED)


def _drip(handler: BaseHTTPRequestHandler, server: _Server) -> None:
    """A byte every 50 ms: each read is quick, the whole body would take a minute."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1200")
    handler.end_headers()
    for _ in range(1200):
        if server.release.wait(0.05):
            return
        handler.wfile.write(b"x")
        handler.wfile.flush()


def _drip_headers(handler: BaseHTTPRequestHandler, server: _Server) -> None:
    """The status line and an endless header, a byte every 50 ms."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1200:
        if server.release.wait(0.05):
            return
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()


_ROUTES = {
    "/video.mp4": _video,
    "/declared-big": _declared_big,
    "/undeclared-big": _undeclared_big,
    "/redirect": _redirect_to("/video.mp4"),
    "/redirect-abs": _redirect_to("http://127.0.0.1:{port}/video.mp4"),
    "/redirect-private": _redirect_to("http://10.0.0.1:{port}/video.mp4"),
    "/redirect-loopback": _redirect_to("http://127.0.0.2:{port}/video.mp4"),
    "/redirect-v6": _redirect_to("http://[::ffff:10.0.0.1]:{port}/video.mp4"),
    "/redirect-file": _redirect_to("file:///etc/passwd"),
    "/loop": _redirect_to("/loop"),
    "/gone": _status(410),
    "/broken": _status(500),
    "/stall": _stall,
    "/gzip": _gzip,
    "/drip": _drip,
    "/drip-headers": _drip_headers,
    "/redirect-down": _redirect_to("http://videos.test:{port}/video.mp4"),
}


@pytest.fixture
def server() -> Iterator[_Server]:
    server = _Server()
    server.thread.start()
    yield server
    server.release.set()
    server.httpd.shutdown()
    server.httpd.server_close()


def http_policy(**overrides: object) -> SourcePolicy:
    settings: dict[str, object] = {
        "allowed_roots": (),
        "http_enabled": True,
        "allow_private_hosts": True,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
    }
    settings.update(overrides)
    return SourcePolicy(**settings)  # type: ignore[arg-type]


def test_loopback_server_is_refused_by_default(server: _Server, tmp_path: Path) -> None:
    policy = http_policy(allow_private_hosts=False)
    assert error_code(server.url("/video.mp4"), policy, tmp_path) == ErrorCode.URI_NOT_ALLOWED
    assert server.hosts == []  # refused before connecting


def test_download_streams_into_a_temp_file_deleted_on_exit(server: _Server, tmp_path: Path) -> None:
    with open_source(server.url("/video.mp4"), http_policy(), tmp_path) as video:
        assert video.downloaded
        assert video.path.parent == tmp_path
        assert video.path.read_bytes() == BODY
        assert video.size == len(BODY)
        path = video.path
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_temp_file_deleted_when_the_body_raises(server: _Server, tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        open_source(server.url("/video.mp4"), http_policy(), tmp_path),
    ):
        raise RuntimeError("consumer failed")
    assert list(tmp_path.iterdir()) == []


def test_connects_to_the_vetted_address_with_the_original_host_header(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def fake_getaddrinfo(host: str, *args: object, **kwargs: object) -> list:
        lookups.append(host)
        return real_getaddrinfo("127.0.0.1" if host == "videos.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with open_source(server.url("/video.mp4", "videos.test"), http_policy(), tmp_path) as video:
        assert video.path.read_bytes() == BODY
    assert lookups.count("videos.test") == 1  # resolved once; the connection used the IP
    assert server.hosts == [f"videos.test:{server.port}"]


def test_redirects_are_followed(server: _Server, tmp_path: Path) -> None:
    for path in ("/redirect", "/redirect-abs"):
        with open_source(server.url(path), http_policy(), tmp_path) as video:
            assert video.path.read_bytes() == BODY


def test_redirect_hops_are_vetted(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Treat the test server's own address as public, so only the redirect target is judged.
    monkeypatch.setattr(addresses, "is_public_address", lambda address: str(address) == "127.0.0.1")
    policy = http_policy(allow_private_hosts=False)
    with open_source(server.url("/video.mp4"), policy, tmp_path) as video:
        assert video.size == len(BODY)
    for path in ("/redirect-private", "/redirect-loopback", "/redirect-v6", "/redirect-file"):
        assert error_code(server.url(path), policy, tmp_path) == ErrorCode.URI_NOT_ALLOWED, path
    assert list(tmp_path.iterdir()) == []


def test_too_many_redirects(server: _Server, tmp_path: Path) -> None:
    assert error_code(server.url("/loop"), http_policy(max_redirects=2), tmp_path) == (
        ErrorCode.FETCH_FAILED
    )


def test_byte_cap_declared_and_streamed(server: _Server, tmp_path: Path) -> None:
    policy = http_policy(max_bytes=2 * len(BODY))
    assert error_code(server.url("/declared-big"), policy, tmp_path) == ErrorCode.TOO_LARGE
    assert error_code(server.url("/undeclared-big"), policy, tmp_path) == ErrorCode.TOO_LARGE
    assert list(tmp_path.iterdir()) == []


def test_http_errors(server: _Server, tmp_path: Path) -> None:
    policy = http_policy()
    assert error_code(server.url("/missing"), policy, tmp_path) == ErrorCode.NOT_FOUND
    assert error_code(server.url("/gone"), policy, tmp_path) == ErrorCode.NOT_FOUND
    assert error_code(server.url("/broken"), policy, tmp_path) == ErrorCode.FETCH_FAILED


def test_stalled_server_times_out(server: _Server, tmp_path: Path) -> None:
    policy = http_policy(read_timeout_s=0.2)
    assert error_code(server.url("/stall"), policy, tmp_path) == ErrorCode.TIMEOUT


def test_connection_refused_is_fetch_failed(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}/video.mp4"
    assert error_code(uri, http_policy(), tmp_path) == ErrorCode.FETCH_FAILED


def test_credentials_in_uri_are_refused(server: _Server, tmp_path: Path) -> None:
    uri = f"http://user:pw@127.0.0.1:{server.port}/video.mp4"
    assert error_code(uri, http_policy(), tmp_path) == ErrorCode.URI_NOT_ALLOWED


def test_https_to_a_plain_http_server_fails_the_tls_handshake(
    server: _Server, tmp_path: Path
) -> None:
    uri = f"https://127.0.0.1:{server.port}/video.mp4"
    assert error_code(uri, http_policy(), tmp_path) == ErrorCode.FETCH_FAILED
    assert list(tmp_path.iterdir()) == []


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"]
    command += ["-addext", f"subjectAltName=DNS:{name}"]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


def _serve_tls(server: _Server, tmp_path: Path, name: str) -> Path:
    """Make `server` answer TLS with a self-signed certificate for `name`; returns the
    certificate (the CA bundle that trusts it)."""
    cert, key = _self_signed(tmp_path, name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    return cert


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_checks_the_certificate_against_the_original_name(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = _serve_tls(server, tmp_path, "videos.test")
    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host: str, *args: object, **kwargs: object) -> list:
        local = host in ("videos.test", "other.test")
        return real_getaddrinfo("127.0.0.1" if local else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    policy = http_policy(ca_bundle=cert)
    uri = f"https://videos.test:{server.port}/video.mp4"
    with open_source(uri, policy, downloads) as video:
        assert video.path.read_bytes() == BODY
    assert server.hosts == [f"videos.test:{server.port}"]
    wrong_name = f"https://other.test:{server.port}/video.mp4"
    assert error_code(wrong_name, policy, downloads) == ErrorCode.FETCH_FAILED
    untrusted = http_policy()  # the system CAs do not know the self-signed certificate
    assert error_code(uri, untrusted, downloads) == ErrorCode.FETCH_FAILED


def resolve_to_loopback(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make `names` resolve to 127.0.0.1 (other names resolve as usual)."""
    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host: str, *args: object, **kwargs: object) -> list:
        return real_getaddrinfo("127.0.0.1" if host in names else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)


def test_download_is_hashed_while_it_streams(server: _Server, tmp_path: Path) -> None:
    with open_source(server.url("/video.mp4"), http_policy(), tmp_path) as video:
        assert video.sha256 == hashlib.sha256(BODY).hexdigest()
        assert fcntl.fcntl(video.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert os.pread(video.fd, len(BODY) + 1, 0) == BODY


def test_bodies_are_stored_as_sent_without_content_decoding(
    server: _Server, tmp_path: Path
) -> None:
    policy = http_policy(max_bytes=64 * 1024)  # far below the 1 MiB the body would inflate to
    with open_source(server.url("/gzip"), policy, tmp_path) as video:
        assert video.path.read_bytes() == GZIPPED
        assert video.sha256 == hashlib.sha256(GZIPPED).hexdigest()
    assert server.encodings == ["identity"]


def test_a_slow_drip_body_hits_the_total_deadline(server: _Server, tmp_path: Path) -> None:
    policy = http_policy(read_timeout_s=2.0, total_timeout_s=0.5)
    with pytest.raises(SourceError) as caught, open_source(server.url("/drip"), policy, tmp_path):
        pass
    assert caught.value.code == ErrorCode.TIMEOUT
    assert caught.value.message == "the download took longer than 0.5 s"
    assert list(tmp_path.iterdir()) == []


def test_slow_drip_headers_hit_the_total_deadline(server: _Server, tmp_path: Path) -> None:
    policy = http_policy(read_timeout_s=2.0, total_timeout_s=0.5)
    assert error_code(server.url("/drip-headers"), policy, tmp_path) == ErrorCode.TIMEOUT


def test_a_slow_dns_lookup_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hanging_getaddrinfo(*args: object, **kwargs: object) -> list:
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    try:
        uri = "http://slow-dns.test/video.mp4"
        with (
            pytest.raises(SourceError) as caught,
            open_source(uri, http_policy(connect_timeout_s=0.2), tmp_path),
        ):
            pass
    finally:
        release.set()
    assert caught.value.code == ErrorCode.TIMEOUT
    assert "slow-dns.test" in caught.value.message


def test_a_name_that_does_not_resolve_is_fetch_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_such_name(*args: object, **kwargs: object) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    assert error_code("http://nowhere.test/a.mp4", http_policy(), tmp_path) == (
        ErrorCode.FETCH_FAILED
    )


def test_a_metadata_name_is_refused_with_private_hosts_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def metadata(host: str, port: object, *args: object, **kwargs: object) -> list:
        return real_getaddrinfo("169.254.169.254", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", metadata)
    uri = "http://metadata.google.internal/computeMetadata/v1/"
    with pytest.raises(SourceError) as caught, open_source(uri, http_policy(), tmp_path):
        pass
    assert caught.value.code == ErrorCode.URI_NOT_ALLOWED
    assert "169.254" not in caught.value.message
    assert "metadata" in caught.value.message


def test_messages_do_not_echo_resolved_addresses(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_to_loopback(monkeypatch, "videos.test", "closed.test")
    refused = http_policy(allow_private_hosts=False)
    closed = f"http://closed.test:{free_port()}/video.mp4"
    for uri, policy in (
        (server.url("/video.mp4", "videos.test"), refused),
        (closed, http_policy()),
    ):
        with pytest.raises(SourceError) as caught, open_source(uri, policy, tmp_path):
            pass
        assert "127.0.0.1" not in caught.value.message, caught.value.message
        assert caught.value.code in (ErrorCode.URI_NOT_ALLOWED, ErrorCode.FETCH_FAILED)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_never_redirects_down_to_http(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = _serve_tls(server, tmp_path, "videos.test")
    resolve_to_loopback(monkeypatch, "videos.test")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    policy = http_policy(ca_bundle=cert)
    uri = f"https://videos.test:{server.port}/redirect-down"
    with pytest.raises(SourceError) as caught, open_source(uri, policy, downloads):
        pass
    assert caught.value.code == ErrorCode.URI_NOT_ALLOWED
    assert "https down to http" in caught.value.message
    assert server.hosts == [f"videos.test:{server.port}"]  # the http hop was never tried


# ---------------------------------------------------------------- any URI at all


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with files, a subdirectory, inside and outside links, a FIFO; a secret beside it."""
    base = tmp_path_factory.mktemp("tree")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "clip.mp4").write_bytes(BODY)
    (root / "sub" / "clip.mp4").write_bytes(BODY)
    (root / "link-in").symlink_to(root / "clip.mp4")
    (root / "link-out").symlink_to(base / "secret.mp4")
    (root / "dir-out").symlink_to(base)
    os.mkfifo(root / "pipe")
    (base / "secret.mp4").write_bytes(b"secret")
    return root


SEGMENTS = st.sampled_from(
    (
        *("..", ".", "", "clip.mp4", "sub", "link-in", "link-out", "dir-out", "pipe"),
        *("secret.mp4", "%2e%2e", "%2F", "%00", "root", "tree0", "\udcff", "a\nb"),
    )
)


def file_uris() -> st.SearchStrategy[str]:
    """`file://` URIs around a tree: <ROOT> and <BASE> stand for the root and its parent."""
    prefixes = st.sampled_from(["<ROOT>", "<ROOT>", "<BASE>", "/", "", "//localhost<ROOT>"])
    paths = st.lists(st.one_of(SEGMENTS, SEGMENTS, st.text(max_size=8)), max_size=6).map("/".join)
    return st.builds(lambda prefix, path: f"file://{prefix}/{path}", prefixes, paths)


def http_uris() -> st.SearchStrategy[str]:
    hosts = st.one_of(
        st.text(max_size=20),
        st.ip_addresses().map(lambda a: f"[{a}]" if a.version == 6 else str(a)),
        st.sampled_from(["localhost", "metadata.google.internal", "0x7f.1", "017700000001"]),
    )
    ports = st.one_of(
        st.just(""), st.integers(-1, 70000).map(lambda p: f":{p}"), st.text(max_size=4)
    )
    return st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
        st.sampled_from(["http", "https", "HTTP"]),
        hosts,
        ports,
        st.text(max_size=10),
    )


def fake_private_dns(host: object, port: object, *args: object, **kwargs: object) -> list:
    """Numeric hosts as they are (public ones made private); every name resolves to 10.0.0.1."""
    try:
        infos = REAL_GETADDRINFO(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
        )
    except socket.gaierror:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 80))]
    return [
        info
        for info in infos
        if not is_public_address(ipaddress.ip_address(info[4][0].split("%")[0]))
    ] or [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 80))]


REAL_GETADDRINFO = socket.getaddrinfo


def outcome(uri: str, policy: SourcePolicy, root: Path) -> ErrorCode | None:
    """None when `uri` was served (checked to be a regular file inside `root`), else the code."""
    try:
        with open_source(uri, policy) as video:
            served = Path(os.readlink(f"/proc/self/fd/{video.fd}"))
            assert served.is_relative_to(root.resolve()), served
            assert stat.S_ISREG(os.fstat(video.fd).st_mode)
            return None
    except SourceError as exc:
        assert exc.code in set(ErrorCode)
        assert exc.message
        return exc.code


@settings(max_examples=400, deadline=None)
@given(uri=st.one_of(st.text(), st.binary().map(lambda raw: raw.decode("latin-1")), http_uris()))
def test_any_uri_is_served_inside_the_root_or_refused_with_a_stable_code(
    tree: Path, uri: str
) -> None:
    policy = SourcePolicy((tree,), http_enabled=True, connect_timeout_s=0.2, total_timeout_s=1.0)
    with patch.object(socket, "getaddrinfo", fake_private_dns):
        first = outcome(uri, policy, tree)
        assert outcome(uri, policy, tree) == first
    event("served" if first is None else f"refused: {first.value}")
    if uri.lower().startswith(("http://", "https://")):
        assert first is not None  # every host here is private, a metadata service or unusable


@settings(max_examples=400, deadline=None)
@given(uri=file_uris())
@example(uri="file://<ROOT>/clip.mp4")  # served
@example(uri="file://<ROOT>/sub/../link-in")  # served: the link stays inside
@example(uri="file://<ROOT>/link-out")
@example(uri="file://<ROOT>/dir-out/root/clip.mp4")  # back inside through an outside link
@example(uri="file://<ROOT>/pipe")
def test_any_file_uri_is_served_inside_the_root_or_refused_with_a_stable_code(
    tree: Path, uri: str
) -> None:
    uri = uri.replace("<ROOT>", str(tree)).replace("<BASE>", str(tree.parent))
    opened: list[str] = []
    real_open = os.open

    def recording_open(*args: object, **kwargs: object) -> int:
        fd = real_open(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fd

    policy = SourcePolicy((tree,))
    with patch.object(os, "open", recording_open):
        first = outcome(uri, policy, tree)
        assert outcome(uri, policy, tree) == first
    event("served" if first is None else f"refused: {first.value}")
    assert all(Path(path).is_relative_to(tree) for path in opened), opened
