"""SSRF protection for tenant-supplied webhook URLs.

Tenants register URLs that the platform later POSTs to from inside its own network, so a
URL is only acceptable if it (a) parses unambiguously, and (b) every address its host
resolves to is on the public internet. The checks run at registration time
(:func:`check_webhook_url`) and again at delivery time (``app.webhooks.sender``), where the
request is sent to one of the addresses checked here rather than to a fresh DNS answer, so
a hostile DNS server cannot pass the check with a public address and then serve a private
one (DNS rebinding).

Nothing in this module reads settings: callers decide ``allow_private`` (only true in
development and tests, via ``WEBHOOK_ALLOW_PRIVATE_URLS``) and ``require_https``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import SplitResult, urlsplit

import idna

__all__ = [
    "MAX_URL_LENGTH",
    "IPAddress",
    "Resolver",
    "UnsafeURLError",
    "check_webhook_url",
    "format_netloc",
    "is_public_ip",
    "resolve_and_check",
    "validate_url_syntax",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Called as resolver(host, port, family, type); socket.getaddrinfo fits.
Resolver = Callable[[str, int, int, int], Iterable[tuple[Any, ...]]]

MAX_URL_LENGTH = 2048
_MAX_HOST_LENGTH = 253
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Module-level so tests can monkeypatch it instead of needing real DNS.
_getaddrinfo: Resolver = socket.getaddrinfo

_V4_BLOCKED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # CGNAT shared address space
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, incl. cloud metadata 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.31.196.0/24",  # AS112
        "192.52.193.0/24",  # AMT
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "192.175.48.0/24",  # AS112 direct delegation
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, incl. broadcast 255.255.255.255
    )
)
_V4_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")

# Public IPv6 unicast lives in 2000::/3; everything outside it (::/8 with loopback,
# unspecified and IPv4-compatible forms, fc00::/7 ULA, fe80::/10, fec0::/10, ff00::/8,
# 64:ff9b:1::/48 local NAT64, 100::/64 discard...) is refused outright, except the
# translation prefixes below whose embedded IPv4 address decides.
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_V6_BLOCKED = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments, incl. Teredo 2001::/32, ORCHID, benchmarking
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
    )
)

_HOST_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# A final label like this makes WHATWG-style parsers (and inet_aton) read the whole host
# as a number, e.g. "2852039166", "0x7f000001", "127.1".
_NUMERIC_LABEL_RE = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_CANONICAL_OCTET_RE = re.compile(r"^(?:0|[1-9][0-9]{0,2})$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


class UnsafeURLError(ValueError):
    """A webhook URL was refused; ``reason`` is a sentence fit to show the tenant."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_public_ip(ip: IPAddress) -> bool:
    """Return True only if ``ip`` is a globally routable unicast address.

    Strict by design: anything special-purpose, or anything not recognised, is not public.
    IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses are judged by the IPv4
    address embedded in them, since traffic to them ends up there.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return _is_public_v4(ip)
    if not isinstance(ip, ipaddress.IPv6Address):
        return False
    if ip.scope_id:
        return False
    embedded = _embedded_v4(ip)
    if embedded is not None:
        return _is_public_v4(embedded)
    if ip not in _V6_GLOBAL_UNICAST:
        return False
    if any(ip in net for net in _V6_BLOCKED):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_private)


def _is_public_v4(ip: ipaddress.IPv4Address) -> bool:
    if any(ip in net for net in _V4_BLOCKED):
        return False
    # Belt and braces: the stdlib's own special-purpose tables, in case they know more.
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried by an IPv4-mapped, NAT64 or 6to4 address, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _V6_NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _refusal(ip: IPAddress, verb: str) -> UnsafeURLError:
    """An error naming the kind of address, e.g. "the host resolves to a private address"."""
    subject: IPAddress = ip
    shown = str(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            subject = embedded
            shown = f"{ip}, which embeds {embedded}"
    if subject.is_loopback:
        kind = "a loopback"
    elif subject.is_link_local:
        kind = "a link-local"
    elif subject.is_multicast:
        kind = "a multicast"
    elif subject.is_unspecified:
        kind = "an unspecified"
    elif isinstance(subject, ipaddress.IPv4Address) and subject in _V4_CGNAT:
        kind = "a shared (CGNAT)"
    elif subject.is_private:
        kind = "a private"
    else:
        kind = "a non-public"
    return UnsafeURLError(f"the host {verb} {kind} address ({shown})")


def _parse_literal_ip(host: str) -> IPAddress | None:
    """Parse a canonical literal address (as returned by validate_url_syntax), else None."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def _normalise_hostname(raw: str) -> str:
    """Lower-case/IDNA-encode a DNS host name and refuse numeric tricks and odd characters."""
    if raw.endswith("."):
        # An absolute name; drop the root dot so it cannot dodge the numeric checks below.
        raw = raw[:-1]
    if not raw:
        raise UnsafeURLError("the URL must include a host")
    if raw.isascii():
        host = raw.lower()
    else:
        try:
            # UTS 46 mapping also folds look-alikes such as full-width digits, which is why
            # the numeric checks run on the encoded form.
            host = idna.encode(raw, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise UnsafeURLError("the host is not a valid internationalised domain name") from exc
    if len(host) > _MAX_HOST_LENGTH:
        raise UnsafeURLError("the host name is too long")
    labels = host.split(".")
    if _NUMERIC_LABEL_RE.match(labels[-1]):
        # Only the canonical dotted quad is accepted; decimal, hex, octal and short forms
        # are parsed differently by different libraries, which is the whole trick.
        if len(labels) == 4 and all(
            _CANONICAL_OCTET_RE.match(label) and int(label) <= 255 for label in labels
        ):
            return host
        raise UnsafeURLError("numeric host forms are not allowed")
    if not all(_HOST_LABEL_RE.match(label) for label in labels):
        raise UnsafeURLError("the host contains characters that are not allowed")
    return host


def _split_netloc(netloc: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` / ``[v6][:port]`` into host (brackets kept) and port text."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end == -1:
            raise UnsafeURLError("the URL has an unterminated IPv6 address")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise UnsafeURLError("the URL has an invalid host")
        return host, rest[1:]
    host, sep, port = netloc.rpartition(":")
    if not sep:
        return netloc, None
    if ":" in host:
        raise UnsafeURLError("IPv6 addresses must be enclosed in brackets")
    return host, port


def _split(url: str, *, require_https: bool) -> tuple[SplitResult, str, str, int]:
    if not isinstance(url, str) or not url:
        raise UnsafeURLError("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    # urlsplit silently strips or tolerates these, and other parsers treat "\" as "/";
    # refusing them keeps every parser reading the same host.
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url):
        raise UnsafeURLError("the URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnsafeURLError("the URL could not be parsed") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeURLError("the URL must use http or https")
    if require_https and scheme != "https":
        raise UnsafeURLError("the URL must use https")
    netloc = parts.netloc
    if not netloc:
        raise UnsafeURLError("the URL must include a host")
    if "@" in netloc:
        raise UnsafeURLError("the URL must not contain credentials")

    raw_host, raw_port = _split_netloc(netloc)
    if raw_port is None or raw_port == "":
        port = _DEFAULT_PORTS[scheme]
    elif _PORT_RE.match(raw_port) and 1 <= int(raw_port) <= 65535:
        port = int(raw_port)
    else:
        raise UnsafeURLError("the URL port must be a number between 1 and 65535")

    if raw_host.startswith("["):
        inner = raw_host[1:-1]
        if "%" in inner:
            raise UnsafeURLError("IPv6 zone identifiers are not allowed")
        try:
            host = ipaddress.IPv6Address(inner).compressed
        except ValueError as exc:
            raise UnsafeURLError("the URL has an invalid IPv6 address") from exc
    else:
        host = _normalise_hostname(raw_host)
    return parts, scheme, host, port


def validate_url_syntax(url: str, *, require_https: bool) -> tuple[str, str, int]:
    """Check a URL's syntax without any network access and return ``(scheme, host, port)``.

    Guarantees on success: scheme is ``http`` or ``https`` (only ``https`` when
    ``require_https``); the URL has no credentials, no whitespace/control characters and is at
    most 2048 characters; the port is 1-65535 (scheme default if absent); ``host`` is either a
    lower-case ASCII (IDNA-encoded) DNS name, a canonical dotted-quad IPv4 address, or an
    IPv6 address in compressed form without brackets. Numeric host tricks (``2852039166``,
    ``0x7f000001``, ``0177.0.0.1``, ``127.1``) are refused.

    Raises:
        UnsafeURLError: with a human-readable ``reason``.
    """
    _, scheme, host, port = _split(url, require_https=require_https)
    return scheme, host, port


def resolve_and_check(
    host: str, port: int, *, allow_private: bool, resolver: Resolver | None = None
) -> list[IPAddress]:
    """Resolve ``host`` (IPv4 and IPv6) and return its addresses in resolver order, de-duplicated.

    A literal IP address is returned as-is without DNS. Unless ``allow_private`` is set,
    ANY non-public address in the answer makes the whole host unsafe, because the caller
    cannot control which address a later connection would use. ``resolver`` defaults to
    ``socket.getaddrinfo``. Connect only to the returned addresses: they are what was
    checked.

    Raises:
        UnsafeURLError: if the host does not resolve, or resolves to a non-public address
            while ``allow_private`` is false.
    """
    literal = _parse_literal_ip(host)
    if literal is not None:
        if not allow_private and not is_public_ip(literal):
            raise _refusal(literal, "is")
        return [literal]

    resolve = resolver if resolver is not None else _getaddrinfo
    try:
        answers = list(resolve(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM))
    except (OSError, UnicodeError, ValueError) as exc:
        raise UnsafeURLError("the host could not be resolved") from exc

    addresses: list[IPAddress] = []
    for answer in answers:
        family, sockaddr = answer[0], answer[4]
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except (ValueError, TypeError, IndexError) as exc:
            raise UnsafeURLError("the host resolved to an unrecognised address") from exc
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise UnsafeURLError("the host could not be resolved")
    if not allow_private:
        for ip in addresses:
            if not is_public_ip(ip):
                raise _refusal(ip, "resolves to")
    return addresses


def format_netloc(scheme: str, host: str, port: int) -> str:
    """``host[:port]`` as used in a URL or ``Host`` header: IPv6 bracketed, default port omitted."""
    shown = f"[{host}]" if ":" in host else host
    return shown if _DEFAULT_PORTS.get(scheme) == port else f"{shown}:{port}"


def check_webhook_url(
    url: str, *, allow_private: bool, require_https: bool, resolve: bool = True
) -> str:
    """Registration-time check of a webhook URL; returns the normalised URL.

    Applies :func:`validate_url_syntax`, then :func:`resolve_and_check` (when ``resolve``;
    literal IP hosts are always checked since that needs no DNS). The normalised URL has a
    lower-case scheme and host, IDNA-encoded host, no default port, ``/`` for an empty path,
    and no fragment (fragments are never sent).

    Raises:
        UnsafeURLError: with a human-readable ``reason``.
    """
    parts, scheme, host, port = _split(url, require_https=require_https)
    if resolve:
        resolve_and_check(host, port, allow_private=allow_private)
    else:
        literal = _parse_literal_ip(host)
        if literal is not None and not allow_private and not is_public_ip(literal):
            raise _refusal(literal, "is")
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{format_netloc(scheme, host, port)}{path}{query}"
