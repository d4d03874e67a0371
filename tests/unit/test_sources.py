"""URI policy of `worker.sources`: file roots, http(s) vetting, redirects, byte cap, timeouts."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from deploy.local.ports import free_port
from producer.contracts import ErrorCode
from worker import sources
from worker.sources import SourceError, SourcePolicy, file_digest, is_public_address, open_source

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
    assert error_code(file_uri(root / "sub"), policy) == ErrorCode.NOT_FOUND
    assert error_code(file_uri(root / "pipe.mp4"), policy) == ErrorCode.NOT_FOUND


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


def test_file_digest_matches_hashlib(root: Path) -> None:
    expected = hashlib.sha256(BODY).hexdigest()
    assert file_digest(root / "clip.mp4", chunk=1000) == expected


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
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_accepted(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


# ---------------------------------------------------------------- http(s)://


class _Server:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.hosts: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.hosts.append(self.headers.get("Host", ""))
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
    monkeypatch.setattr(sources, "is_public_address", lambda address: str(address) == "127.0.0.1")
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
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_checks_the_certificate_against_the_original_name(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _self_signed(tmp_path, "videos.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
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
