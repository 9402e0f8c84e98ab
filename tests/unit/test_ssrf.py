"""Tests for app.webhooks.ssrf: URL syntax, address classification and DNS checks.

DNS is replaced by an in-memory table for every test, so nothing here touches the network.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from app.webhooks import ssrf
from app.webhooks.ssrf import (
    UnsafeURLError,
    check_webhook_url,
    is_public_ip,
    resolve_and_check,
    validate_url_syntax,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

FAKE_DNS: dict[str, list[str]] = {
    "localhost": ["127.0.0.1", "::1"],
    "example.com": [PUBLIC_V4],
    "hooks.example.org": [PUBLIC_V4, PUBLIC_V6],
    "mixed.example.org": [PUBLIC_V4, "10.0.0.5"],
    "mapped.example.org": [PUBLIC_V4, "::ffff:127.0.0.1"],
    "metadata.example.org": ["169.254.169.254"],
    "xn--bcher-kva.example": [PUBLIC_V4],
}


class FakeResolver:
    """Stands in for socket.getaddrinfo and remembers which names were looked up."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0) -> list[Any]:
        self.calls.append(host)
        if host not in FAKE_DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers: list[Any] = []
        for text in FAKE_DNS[host]:
            if ipaddress.ip_address(text).version == 4:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (text, port)))
            else:
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (text, port, 0, 0)))
        return answers


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeResolver:
    resolver = FakeResolver()
    monkeypatch.setattr(ssrf, "_getaddrinfo", resolver)
    return resolver


HOSTILE_URLS = [
    ("http://127.0.0.1/", "loopback"),
    ("http://localhost/", "127.0.0.1"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1", "private"),
    ("http://192.168.1.1", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://metadata.example.org/latest/meta-data", "169.254.169.254"),
    ("http://100.64.0.1", "CGNAT"),
    ("http://0.0.0.0", "0.0.0.0"),
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "::"),
    ("http://[::ffff:127.0.0.1]/", "loopback address (::ffff:7f00:1, which embeds 127.0.0.1)"),
    ("http://[::ffff:a9fe:a9fe]/", "a9fe"),
    ("http://[::127.0.0.1]/", "non-public"),
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local address (64:ff9b::a9fe:a9fe, which embeds"),
    ("http://[64:ff9b:1::808:808]/", "64:ff9b:1::808:808"),
    ("http://[2002:7f00:1::]/", "embeds 127.0.0.1"),
    ("http://[2001:0:4136:e378::1]/", "2001:0:4136:e378::1"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fec0::1]/", "fec0::1"),
    ("http://[fd00::1]/", "fd00::1"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[2001:db8::1]/", "2001:db8::1"),
    ("http://224.0.0.1", "multicast"),
    ("http://255.255.255.255/", "255.255.255.255"),
    ("http://198.18.0.1/", "198.18.0.1"),
    ("http://192.0.0.8/", "192.0.0.8"),
    ("http://192.0.2.10/", "192.0.2.10"),
    ("http://2852039166/", "numeric"),
    ("http://0x7f000001/", "numeric"),
    ("http://0177.0.0.1/", "numeric"),
    ("http://127.1/", "numeric"),
    ("http://127.0.0.1./", "loopback"),
    ("http://0x7f.0.0.1/", "numeric"),
    ("http://127.000.000.001/", "numeric"),
    ("http://１２７.０.０.１/", "loopback"),
    ("http://user:pass@example.com/", "credentials"),
    ("http://user@example.com/", "credentials"),
    ("http://example.com@127.0.0.1/", "credentials"),
    ("ftp://example.com/", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("gopher://example.com/", "http or https"),
    ("//example.com/", "http or https"),
    ("http:///path", "host"),
    ("http://exa mple.com/", "whitespace"),
    ("http://example.com\\@127.0.0.1/", "backslash"),
    ("http://example.com/\r\nX-Injected: 1", "control"),
    ("http://%31%32%37.0.0.1/", "not allowed"),
    ("http://exa$mple.com/", "characters"),
    ("http://-bad-.example.com/", "characters"),
    ("http://example.com:0/", "port"),
    ("http://example.com:65536/", "port"),
    ("http://example.com:http/", "port"),
    ("http://[::1/", "parsed"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http://::1/", "brackets"),
    ("http://mixed.example.org/", "10.0.0.5"),
    ("http://mapped.example.org/", "embeds 127.0.0.1"),
    ("http://does-not-exist.example/", "could not be resolved"),
    ("http://" + "a" * 2048 + ".com/", "longer than"),
    ("http://" + ".".join(["abcdefghij"] * 25) + "/", "too long"),
]


@pytest.mark.parametrize(("url", "reason_fragment"), HOSTILE_URLS)
def test_hostile_urls_are_refused(url: str, reason_fragment: str) -> None:
    with pytest.raises(UnsafeURLError) as excinfo:
        check_webhook_url(url, allow_private=False, require_https=False)
    reason = excinfo.value.reason
    assert reason
    assert str(excinfo.value) == reason
    assert reason_fragment.lower() in reason.lower()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"https://{PUBLIC_V4}/hook", f"https://{PUBLIC_V4}/hook"),
        ("https://example.com/hook?a=1&b=2", "https://example.com/hook?a=1&b=2"),
        ("https://hooks.example.org", "https://hooks.example.org/"),
        ("HTTPS://Hooks.Example.ORG:443/X#frag", "https://hooks.example.org/X"),
        ("https://example.com:8443/h", "https://example.com:8443/h"),
        ("https://example.com./h", "https://example.com/h"),
        ("https://bücher.example/h", "https://xn--bcher-kva.example/h"),
        (f"https://[{PUBLIC_V6.upper()}]:8443/h", f"https://[{PUBLIC_V6}]:8443/h"),
        ("https://[64:ff9b::808:808]/h", "https://[64:ff9b::808:808]/h"),
    ],
)
def test_public_urls_are_accepted_and_normalised(url: str, expected: str) -> None:
    assert check_webhook_url(url, allow_private=False, require_https=True) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost:8000/hook",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://mixed.example.org/",
        "http://metadata.example.org/",
    ],
)
def test_private_urls_allowed_when_allow_private(url: str) -> None:
    assert check_webhook_url(url, allow_private=True, require_https=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://2852039166/",
        "http://user:pass@localhost/",
        "ftp://localhost/",
        "http://does-not-exist.example/",
    ],
)
def test_allow_private_does_not_relax_syntax_or_resolution(url: str) -> None:
    with pytest.raises(UnsafeURLError):
        check_webhook_url(url, allow_private=True, require_https=False)


def test_require_https_refuses_http() -> None:
    with pytest.raises(UnsafeURLError) as excinfo:
        check_webhook_url("http://example.com/hook", allow_private=False, require_https=True)
    assert excinfo.value.reason == "the URL must use https"
    with pytest.raises(UnsafeURLError):
        validate_url_syntax("http://localhost/", require_https=True)


def test_validate_url_syntax_returns_scheme_host_port_without_dns(fake_dns: FakeResolver) -> None:
    assert validate_url_syntax("https://Example.COM/x", require_https=True) == (
        "https",
        "example.com",
        443,
    )
    assert validate_url_syntax("http://example.com:8080", require_https=False) == (
        "http",
        "example.com",
        8080,
    )
    assert validate_url_syntax("http://[::FFFF:7f00:1]:81/", require_https=False) == (
        "http",
        "::ffff:7f00:1",
        81,
    )
    assert validate_url_syntax("http://localhost/", require_https=False) == (
        "http",
        "localhost",
        80,
    )
    assert fake_dns.calls == []


def test_literal_ips_are_checked_without_dns(fake_dns: FakeResolver) -> None:
    assert resolve_and_check(PUBLIC_V4, 443, allow_private=False) == [
        ipaddress.ip_address(PUBLIC_V4)
    ]
    with pytest.raises(UnsafeURLError):
        resolve_and_check("127.0.0.1", 80, allow_private=False)
    with pytest.raises(UnsafeURLError):
        check_webhook_url(
            "http://127.0.0.1/", allow_private=False, require_https=False, resolve=False
        )
    assert fake_dns.calls == []


def test_resolve_false_skips_dns_for_names(fake_dns: FakeResolver) -> None:
    url = "https://does-not-exist.example/hook"
    assert check_webhook_url(url, allow_private=False, require_https=True, resolve=False) == url
    assert fake_dns.calls == []


def test_resolve_and_check_returns_all_addresses_in_order() -> None:
    assert resolve_and_check("hooks.example.org", 443, allow_private=False) == [
        ipaddress.ip_address(PUBLIC_V4),
        ipaddress.ip_address(PUBLIC_V6),
    ]
    assert resolve_and_check("localhost", 80, allow_private=True) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_one_private_answer_taints_the_whole_host() -> None:
    with pytest.raises(UnsafeURLError) as excinfo:
        resolve_and_check("mixed.example.org", 443, allow_private=False)
    assert "10.0.0.5" in excinfo.value.reason


def test_resolver_parameter_overrides_module_resolver() -> None:
    seen: list[tuple[str, int]] = []

    def resolver(host: str, port: int, family: int, type: int) -> list[Any]:
        seen.append((host, port))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    with pytest.raises(UnsafeURLError):
        resolve_and_check("example.com", 8443, allow_private=False, resolver=resolver)
    assert seen == [("example.com", 8443)]


def test_empty_or_unparseable_resolver_answers_are_refused() -> None:
    def empty(host: str, port: int, family: int, type: int) -> list[Any]:
        return []

    def garbage(host: str, port: int, family: int, type: int) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("not-an-ip", port))]

    with pytest.raises(UnsafeURLError, match="could not be resolved"):
        resolve_and_check("example.com", 80, allow_private=True, resolver=empty)
    with pytest.raises(UnsafeURLError, match="unrecognised"):
        resolve_and_check("example.com", 80, allow_private=True, resolver=garbage)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        PUBLIC_V4,
        PUBLIC_V6,
        "2a00:1450:4001:81a::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_is_public_ip_accepts_public_addresses(address: str) -> None:
    assert is_public_ip(ipaddress.ip_address(address)) is True


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0",
        "0.1.2.3",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.255.255.255",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.1",
        "192.0.0.8",
        "192.0.0.170",
        "192.0.2.1",
        "192.88.99.1",
        "192.168.0.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::127.0.0.1",
        "::8.8.8.8",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b:1::808:808",
        "100::1",
        "2001::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:2::1",
        "2001:10::1",
        "2001:db8::1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::1",
        "2002:c0a8:101::1",
        "3fff::1",
        "fc00::1",
        "fd12:3456:789a::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "fe80::1%eth0",
    ],
)
def test_is_public_ip_refuses_special_addresses(address: str) -> None:
    assert is_public_ip(ipaddress.ip_address(address)) is False


def test_unsafe_url_error_is_a_value_error() -> None:
    error = UnsafeURLError("the URL must use https")
    assert isinstance(error, ValueError)
    assert error.reason == "the URL must use https"
