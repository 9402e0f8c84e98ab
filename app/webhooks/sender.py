"""One HTTP delivery attempt of an already-signed webhook event.

:func:`post_webhook` re-runs the SSRF checks at delivery time (DNS may have changed since
registration) and then connects to an address that passed the check, never to a fresh DNS
answer: the request URL's host is replaced by that IP, while the ``Host`` header, TLS SNI
and certificate verification keep using the registered host name. Retries, signing and
persistence are the caller's business; this module only reports what happened.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.webhooks.ssrf import (
    UnsafeURLError,
    format_netloc,
    resolve_and_check,
    validate_url_syntax,
)

__all__ = [
    "MAX_RESPONSE_BYTES",
    "MAX_RETRY_AFTER_SECONDS",
    "RESPONSE_EXCERPT_CHARS",
    "USER_AGENT",
    "DeliveryResult",
    "close_shared_transports",
    "parse_retry_after",
    "post_webhook",
    "storable_text",
]

MAX_RESPONSE_BYTES = 64 * 1024
RESPONSE_EXCERPT_CHARS = 1000
MAX_RETRY_AFTER_SECONDS = 86_400
USER_AGENT = "VCA-Webhooks/1.0"

# A host with many A/AAAA records should not multiply the time one attempt can take.
_MAX_ADDRESSES_TRIED = 3
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome of one delivery attempt.

    ``status_code`` is None when no HTTP response was obtained (refused URL, DNS, connect,
    TLS or timeout failure); ``error`` then says why. ``error`` is also set for 3xx
    responses, which are never followed. ``retry_after_seconds`` comes from a
    ``Retry-After`` header on any status. ``response_body_excerpt`` holds at most
    1,000 characters of the response body.
    """

    status_code: int | None
    error: str | None
    duration_ms: int
    retry_after_seconds: int | None
    response_body_excerpt: str

    @property
    def ok(self) -> bool:
        """True only for a 2xx response."""
        return self.status_code is not None and 200 <= self.status_code < 300


# One connection pool per destination host name. httpcore pools connections by (scheme, IP, port),
# but a TLS session belongs to the host name it was verified for: sharing one pool between host
# names on the same IP would skip the second name's certificate check. Inside a per-host pool
# every connection was opened for that name, so keep-alive is safe and saves a TCP (and TLS)
# handshake per delivery.
# Each sending thread also has its own pool per host: one httpcore pool shared by the worker's
# 16 threads serialized them on the pool's lock (40 % of the worker's time in the benchmark).
#
# Requests go straight to the transport, not through an httpx.Client: a client keeps a cookie
# jar, and deliveries to one host share the pool whichever tenant they belong to, so a cookie
# one tenant's receiver set would have been sent with the next tenant's delivery. A transport
# keeps no cookies, follows no redirects, reads no proxy settings from the environment, and
# skips the client's per-request work (its cookie handling alone was a sixth of a send's CPU).
_MAX_HOST_TRANSPORTS = 1024
_transports: OrderedDict[tuple[int, str, str, int], httpx.HTTPTransport] = OrderedDict()
_transports_lock = threading.Lock()


def _new_transport() -> httpx.HTTPTransport:
    return httpx.HTTPTransport(
        # Certificate and key-log settings are not taken from the environment either.
        trust_env=False,
        # A pool serves one thread, so one request at a time.
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1, keepalive_expiry=30),
    )


def _transport_for(scheme: str, host: str, port: int) -> httpx.HTTPTransport:
    key = (threading.get_ident(), scheme, host, port)
    with _transports_lock:
        transport = _transports.get(key)
        if transport is not None:
            _transports.move_to_end(key)
            return transport
        transport = _transports[key] = _new_transport()
        while len(_transports) > _MAX_HOST_TRANSPORTS:
            _, evicted = _transports.popitem(last=False)
            evicted.close()
        return transport


def close_shared_transports() -> None:
    """Close the pooled per-host connections (e.g. at worker shutdown)."""
    with _transports_lock:
        while _transports:
            _, transport = _transports.popitem()
            transport.close()


def parse_retry_after(value: str | None, *, now: datetime) -> int | None:
    """Parse a ``Retry-After`` value (delay-seconds or HTTP-date, read at ``now``) into whole
    seconds.

    Returns None for a missing or unparseable value; otherwise an int in
    ``[0, MAX_RETRY_AFTER_SECONDS]`` (dates in the past give 0).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        # Long digit strings are capped before int() so absurd values cost nothing.
        if len(text) > 10:
            return MAX_RETRY_AFTER_SECONDS
        return min(int(text), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delay = math.ceil((when - now).total_seconds())
    return max(0, min(delay, MAX_RETRY_AFTER_SECONDS))


def post_webhook(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_seconds: float,
    allow_private: bool,
    require_https: bool,
) -> DeliveryResult:
    """POST ``body`` with ``headers`` to ``url`` once, and never raise.

    Guarantees:

    * The URL is re-validated and re-resolved; unless ``allow_private``, a host with any
      non-public address is refused before any connection is made.
    * The connection goes to an address that passed the check (the next one is tried only
      if connecting fails), with the original ``Host`` header and, for https, the original
      host name as SNI and certificate hostname.
    * Redirects are never followed; a 3xx is reported with its status and an error.
    * ``timeout_seconds`` bounds connecting and waiting for the response headers; reading
      the body stops at the same deadline or after ``MAX_RESPONSE_BYTES``, whichever is
      first. DNS resolution is not covered (the stdlib resolver has no timeout).
    * Any failure becomes ``status_code=None`` with a short ``error``.
    * No cookie is kept: a ``Set-Cookie`` in one response is never sent with another request.

    ``headers`` are sent as given (apart from ``Host``, which is always derived from the
    URL); the caller provides ``Content-Type`` and the signature headers.
    """
    started = time.monotonic()
    try:
        return _deliver(
            url,
            body,
            headers,
            started=started,
            timeout_seconds=timeout_seconds,
            allow_private=allow_private,
            require_https=require_https,
        )
    except Exception as exc:
        # The contract is "never raises": callers record the outcome and schedule retries.
        return _failure(started, f"unexpected error: {type(exc).__name__}: {exc}")


def _deliver(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    started: float,
    timeout_seconds: float,
    allow_private: bool,
    require_https: bool,
) -> DeliveryResult:
    try:
        scheme, host, port = validate_url_syntax(url, require_https=require_https)
        addresses = resolve_and_check(host, port, allow_private=allow_private)
    except UnsafeURLError as exc:
        return _failure(started, f"unsafe URL: {exc.reason}")

    parts = urlsplit(url)
    path_and_query = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_is_literal = _is_ip_literal(host)

    request_headers = httpx.Headers(headers)
    if "host" in request_headers:
        del request_headers["host"]
    request_headers["Host"] = format_netloc(scheme, host, port)
    request_headers.setdefault("User-Agent", USER_AGENT)
    request_headers.setdefault("Accept", "*/*")
    # Only an excerpt is kept; asking for identity avoids decompressing a hostile body.
    request_headers.setdefault("Accept-Encoding", "identity")

    extensions: dict[str, Any] = {}
    if scheme == "https" and not host_is_literal:
        extensions["sni_hostname"] = host

    http = _transport_for(scheme, host, port)
    deadline = started + timeout_seconds
    last_error = "connection failed"
    for ip in addresses[:_MAX_ADDRESSES_TRIED]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _failure(started, "timed out")
        target = f"{scheme}://{format_netloc(scheme, str(ip), port)}{path_and_query}"
        request = httpx.Request(
            "POST",
            target,
            content=body,
            headers=request_headers,
            extensions={**extensions, "timeout": httpx.Timeout(remaining).as_dict()},
        )
        try:
            response = http.handle_request(request)
        except httpx.TimeoutException as exc:
            return _failure(started, _describe_timeout(exc))
        except httpx.ConnectError as exc:
            # Nothing reached the server, so trying the host's next checked address is safe.
            last_error = _short(f"connection to {ip} failed: {exc}")
            continue
        except httpx.HTTPError as exc:
            return _failure(started, _short(f"{type(exc).__name__}: {exc}"))
        return _read_response(response, started=started, deadline=deadline)
    return _failure(started, last_error)


def _read_response(response: httpx.Response, *, started: float, deadline: float) -> DeliveryResult:
    try:
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=datetime.now(UTC))
        received = _read_capped(response, deadline)
    finally:
        response.close()
    excerpt = storable_text(received.decode("utf-8", errors="replace"))[:RESPONSE_EXCERPT_CHARS]
    error = f"redirect not followed (HTTP {status})" if 300 <= status < 400 else None
    return DeliveryResult(
        status_code=status,
        error=error,
        duration_ms=_elapsed_ms(started),
        retry_after_seconds=retry_after,
        response_body_excerpt=excerpt,
    )


def storable_text(value: str) -> str:
    """`value` as PostgreSQL text stores it: NUL (refused in text) as U+FFFD, like the invalid
    UTF-8 already is, and lone surrogates too; one receiver's bytes must never fail the batch
    of outcomes it is recorded with."""
    return value.replace("\x00", "\ufffd").encode("utf-8", errors="replace").decode("utf-8")


def _read_capped(response: httpx.Response, deadline: float) -> bytes:
    """Up to MAX_RESPONSE_BYTES of the raw body, stopping early at the deadline."""
    received = bytearray()
    try:
        # Raw bytes: a capped excerpt must not be inflated by a compressed body.
        for chunk in response.iter_raw():
            received += chunk
            if len(received) >= MAX_RESPONSE_BYTES or time.monotonic() >= deadline:
                break
    except httpx.HTTPError:
        # The status line already decided the outcome; a slow or broken body only
        # shortens the excerpt.
        pass
    return bytes(received[:MAX_RESPONSE_BYTES])


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _describe_timeout(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "timed out while connecting"
    if isinstance(exc, httpx.ReadTimeout):
        return "timed out waiting for the response"
    if isinstance(exc, httpx.WriteTimeout):
        return "timed out sending the request"
    return "timed out"


def _short(message: str) -> str:
    message = " ".join(message.split())
    if len(message) <= _MAX_ERROR_CHARS:
        return message
    return message[: _MAX_ERROR_CHARS - 1] + "…"


def _elapsed_ms(started: float) -> int:
    return max(0, int((time.monotonic() - started) * 1000))


def _failure(started: float, error: str) -> DeliveryResult:
    return DeliveryResult(
        status_code=None,
        error=_short(error),
        duration_ms=_elapsed_ms(started),
        retry_after_seconds=None,
        response_body_excerpt="",
    )
