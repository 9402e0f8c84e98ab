"""Tests for app.webhooks.sender against real HTTP(S) servers on 127.0.0.1.

Name resolution is replaced by an in-memory table that maps every test host name to
127.0.0.1, so no test touches any other address, and names that real DNS could never
resolve (``*.invalid``) prove that the sender connects to the checked address instead of
resolving again.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.webhooks import sender, ssrf
from app.webhooks.sender import (
    MAX_RETRY_AFTER_SECONDS,
    DeliveryResult,
    parse_retry_after,
    post_webhook,
)

LOOPBACK = "127.0.0.1"
BIG_BODY_BYTES = 300 * 1024


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    host: str | None
    body: bytes


@dataclass
class ServerState:
    requests: list[Received] = field(default_factory=list)
    sni_names: list[str | None] = field(default_factory=list)
    release_slow: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests]


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or stop reading early make handlers hit broken pipes;
        # that is expected here and not worth a traceback.
        pass


class Handler(BaseHTTPRequestHandler):
    server: QuietServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        state = self.server.state
        with state.lock:
            state.requests.append(
                Received(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    host=self.headers.get("Host"),
                    body=body,
                )
            )
        if self.path == "/ok":
            self._reply(200, b'{"received": true}')
        elif self.path == "/error":
            self._reply(500, b"boom", {"Retry-After": "120"})
        elif self.path == "/unavailable-until":
            when = datetime.now(UTC) + timedelta(seconds=90)
            self._reply(503, b"later", {"Retry-After": format_datetime(when, usegmt=True)})
        elif self.path == "/redirect":
            port = self.server.server_address[1]
            self._reply(302, b"", {"Location": f"http://{LOOPBACK}:{port}/redirect-target"})
        elif self.path == "/redirect-target":
            self._reply(200, b"should never be reached")
        elif self.path == "/set-cookie":
            self._reply(200, b"", {"Set-Cookie": "session=tenant-a-secret; Path=/"})
        elif self.path == "/gone":
            self._reply(410, b"gone")
        elif self.path == "/slow":
            state.release_slow.wait(timeout=5)
            self._reply(200, b"too late")
        elif self.path == "/big":
            self._reply(200, b"x" * BIG_BODY_BYTES)
        else:
            self._reply(404, b"not found")

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _start(server: QuietServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return thread


def _stop(server: QuietServer, thread: threading.Thread) -> None:
    server.state.release_slow.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def http_server() -> Iterator[QuietServer]:
    server = QuietServer((LOOPBACK, 0), Handler)
    server.state = ServerState()
    thread = _start(server)
    yield server
    _stop(server, thread)
    sender.close_shared_transports()


@pytest.fixture
def server(http_server: QuietServer) -> QuietServer:
    with http_server.state.lock:
        http_server.state.requests.clear()
        http_server.state.sni_names.clear()
    return http_server


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Resolve every name to 127.0.0.1 (IPv4 only) and record the lookups."""
    lookups: list[str] = []

    def resolver(host: str, port: int, family: int = 0, type: int = 0) -> list[Any]:
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (LOOPBACK, port))]

    monkeypatch.setattr(ssrf, "_getaddrinfo", resolver)
    return lookups


def _port(server: QuietServer) -> int:
    return int(server.server_address[1])


def _post(url: str, **kwargs: Any) -> DeliveryResult:
    kwargs.setdefault("allow_private", True)
    kwargs.setdefault("require_https", False)
    kwargs.setdefault("timeout_seconds", 3.0)
    body = kwargs.pop("body", b'{"type":"call.completed"}')
    headers = kwargs.pop("headers", {"Content-Type": "application/json"})
    return post_webhook(url, body, headers, **kwargs)


def test_delivers_exact_body_and_headers(server: QuietServer) -> None:
    body = b'{"type":"call.completed","data":{"id":"c_1","text":"h\xc3\xa9llo"}}'
    headers = {
        "Content-Type": "application/json",
        "webhook-id": "msg_123",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,abc=",
    }
    result = _post(f"http://{LOOPBACK}:{_port(server)}/ok", body=body, headers=headers)

    assert result.ok
    assert result.status_code == 200
    assert result.error is None
    assert result.response_body_excerpt == '{"received": true}'
    assert result.retry_after_seconds is None
    assert result.duration_ms >= 0
    [received] = server.state.requests
    assert received.body == body
    for name, value in headers.items():
        assert received.headers[name.lower()] == value
    assert received.host == f"{LOOPBACK}:{_port(server)}"


def test_connects_to_checked_ip_and_keeps_host_header(
    server: QuietServer, fake_dns: list[str]
) -> None:
    result = _post(f"http://localhost:{_port(server)}/ok")

    assert result.status_code == 200
    assert fake_dns == ["localhost"]
    assert server.state.requests[0].host == f"localhost:{_port(server)}"


def test_never_resolves_again_after_the_check(server: QuietServer, fake_dns: list[str]) -> None:
    # Real DNS cannot resolve .invalid, so a 200 means the connection went to the address
    # returned by the (single) checked lookup.
    result = _post(f"http://hooks.tenant.invalid:{_port(server)}/ok")

    assert result.status_code == 200
    assert fake_dns == ["hooks.tenant.invalid"]
    assert server.state.requests[0].host == f"hooks.tenant.invalid:{_port(server)}"


def test_caller_cannot_override_host_header(server: QuietServer) -> None:
    result = _post(
        f"http://localhost:{_port(server)}/ok",
        headers={"Content-Type": "application/json", "Host": "internal.admin"},
    )

    assert result.status_code == 200
    assert server.state.requests[0].host == f"localhost:{_port(server)}"


def test_private_address_refused_without_connecting(server: QuietServer) -> None:
    result = _post(f"http://{LOOPBACK}:{_port(server)}/ok", allow_private=False)

    assert result.status_code is None
    assert result.error is not None
    assert "loopback" in result.error
    assert not result.ok
    assert server.state.requests == []


def test_name_resolving_to_private_address_refused_without_connecting(
    server: QuietServer,
) -> None:
    result = _post(f"http://rebind.tenant.invalid:{_port(server)}/ok", allow_private=False)

    assert result.status_code is None
    assert result.error is not None
    assert "127.0.0.1" in result.error
    assert server.state.requests == []


@pytest.mark.parametrize(
    "url",
    ["http://0x7f000001/ok", "http://user:pw@localhost/ok", "ftp://localhost/ok", "not a url"],
)
def test_malformed_urls_become_errors(url: str) -> None:
    result = _post(url)

    assert result.status_code is None
    assert result.error


def test_require_https_refuses_http_at_delivery(server: QuietServer) -> None:
    result = _post(f"http://localhost:{_port(server)}/ok", require_https=True)

    assert result.status_code is None
    assert result.error is not None
    assert "https" in result.error
    assert server.state.requests == []


def test_server_error_with_retry_after_seconds(server: QuietServer) -> None:
    result = _post(f"http://localhost:{_port(server)}/error")

    assert result.status_code == 500
    assert not result.ok
    assert result.error is None
    assert result.retry_after_seconds == 120
    assert result.response_body_excerpt == "boom"


def test_retry_after_http_date(server: QuietServer) -> None:
    result = _post(f"http://localhost:{_port(server)}/unavailable-until")

    assert result.status_code == 503
    assert result.retry_after_seconds is not None
    assert 80 <= result.retry_after_seconds <= 91


def test_redirect_is_not_followed(server: QuietServer) -> None:
    result = _post(f"http://localhost:{_port(server)}/redirect")

    assert result.status_code == 302
    assert not result.ok
    assert result.error is not None
    assert "redirect" in result.error
    assert server.state.paths() == ["/redirect"]


def test_no_cookie_travels_from_one_delivery_to_the_next(server: QuietServer) -> None:
    """Deliveries to one host share a connection pool, whichever tenant they belong to: a cookie
    one receiver sets must never be sent with a later delivery (another tenant's, maybe)."""
    port = _port(server)
    assert _post(f"http://hooks.shared.invalid:{port}/set-cookie").ok
    assert _post(f"http://hooks.shared.invalid:{port}/ok").ok
    with server.state.lock:
        sent = [r.headers for r in server.state.requests]
    assert len(sent) == 2
    assert all("cookie" not in headers for headers in sent), sent


def test_gone(server: QuietServer) -> None:
    result = _post(f"http://localhost:{_port(server)}/gone")

    assert result.status_code == 410
    assert not result.ok
    assert result.error is None


def test_slow_server_times_out(server: QuietServer) -> None:
    result = _post(f"http://localhost:{_port(server)}/slow", timeout_seconds=0.5)

    assert result.status_code is None
    assert result.error is not None
    assert "timed out" in result.error
    assert 400 <= result.duration_ms < 2500
    server.state.release_slow.set()


def test_large_response_is_truncated(server: QuietServer) -> None:
    result = _post(f"http://localhost:{_port(server)}/big")

    assert result.status_code == 200
    assert result.response_body_excerpt == "x" * 1000


def test_connection_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        closed_port = sock.getsockname()[1]

    result = _post(f"http://{LOOPBACK}:{closed_port}/ok")

    assert result.status_code is None
    assert result.error
    assert not result.ok
    assert result.retry_after_seconds is None
    assert result.response_body_excerpt == ""


# --- https: SNI and certificate verification use the registered host name ---------------


@dataclass
class TLSServer:
    server: QuietServer
    ca_file: Path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    workdir = tmp_path_factory.mktemp("tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=hooks.tenant.invalid",
            "-addext",
            "subjectAltName=DNS:hooks.tenant.invalid",
        ],
        check=True,
        capture_output=True,
    )
    server = QuietServer((LOOPBACK, 0), Handler)
    server.state = ServerState()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def remember_sni(sock: Any, server_name: str | None, ctx: Any) -> None:
        server.state.sni_names.append(server_name)

    context.sni_callback = remember_sni
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = _start(server)
    yield TLSServer(server=server, ca_file=cert)
    _stop(server, thread)


@pytest.fixture
def trusted_tls_server(
    tls_server: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TLSServer]:
    """The TLS server, with the sender's pooled transports trusting its certificate the way they
    trust a public CA's."""
    verify = ssl.create_default_context(cafile=str(tls_server.ca_file))
    monkeypatch.setattr(
        sender, "_new_transport", lambda: httpx.HTTPTransport(verify=verify, trust_env=False)
    )
    sender.close_shared_transports()
    yield tls_server
    sender.close_shared_transports()


def test_https_uses_original_host_for_sni_and_certificate(trusted_tls_server: TLSServer) -> None:
    tls_server = trusted_tls_server
    port = _port(tls_server.server)
    result = _post(f"https://hooks.tenant.invalid:{port}/ok", require_https=True)

    assert result.status_code == 200, result.error
    assert tls_server.server.state.sni_names[-1] == "hooks.tenant.invalid"
    assert tls_server.server.state.requests[-1].host == f"hooks.tenant.invalid:{port}"


def test_https_certificate_for_another_name_is_rejected(trusted_tls_server: TLSServer) -> None:
    tls_server = trusted_tls_server
    port = _port(tls_server.server)
    before = len(tls_server.server.state.requests)
    result = _post(f"https://other.tenant.invalid:{port}/ok", require_https=True)

    assert result.status_code is None
    assert result.error is not None
    assert "certificate" in result.error.lower()
    assert len(tls_server.server.state.requests) == before


# --- Retry-After parsing and the result type ---------------------------------------------


NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("120", 120),
        (" 7 ", 7),
        ("0", 0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("99999999999999999999", MAX_RETRY_AFTER_SECONDS),
        ("100000", MAX_RETRY_AFTER_SECONDS),
        ("Wed, 01 Jan 2025 12:02:00 GMT", 120),
        ("Wed, 01 Jan 2025 11:00:00 GMT", 0),
        ("Fri, 01 Jan 2027 12:00:00 GMT", MAX_RETRY_AFTER_SECONDS),
        ("Wed, 01 Jan 2025 12:00:30 +0000", 30),
    ],
)
def test_parse_retry_after(value: str | None, expected: int | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("status", "ok"), [(None, False), (199, False), (200, True), (204, True), (299, True)]
)
def test_delivery_result_ok(status: int | None, ok: bool) -> None:
    result = DeliveryResult(
        status_code=status,
        error=None,
        duration_ms=1,
        retry_after_seconds=None,
        response_body_excerpt="",
    )
    assert result.ok is ok
    for other in (300, 404, 500):
        assert not DeliveryResult(other, None, 1, None, "").ok
