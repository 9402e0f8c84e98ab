"""Twilio webhook signature checks and the public URLs they are computed over.

Twilio signs every webhook (form POSTs and the ConversationRelay WebSocket handshake)
with HMAC-SHA1 over the *public* URL it requested plus the sorted form parameters,
keyed by the account's Auth Token. Behind a reverse proxy or tunnel the URL the app
sees differs from the one Twilio signed, so the URL is rebuilt from the configured
public base URL instead of being taken from the incoming request.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

__all__ = ["is_valid_twilio_signature", "public_url", "websocket_url"]

_WS_SCHEMES = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}


def public_url(base_url: str, path: str, query: str) -> str:
    """Return the absolute URL Twilio requested (and therefore signed).

    ``base_url`` is the configured public base URL (e.g. ``https://vca.example.com`` or
    ``https://proxy.example.com/vca``); a trailing slash is ignored and any path prefix is
    kept. ``path`` is the request path as the app sees it and ``query`` the raw query
    string (without ``?``); the query is appended verbatim because Twilio signs it
    byte-for-byte, so it must not be re-encoded or re-ordered.
    """
    url = base_url.rstrip("/")
    if path:
        url += path if path.startswith("/") else "/" + path
    if query.startswith("?"):
        query = query[1:]
    if query:
        url += "?" + query
    return url


def websocket_url(base_url: str, path: str) -> str:
    """Return the ``ws://``/``wss://`` URL for ``path`` under the public base URL.

    ``https`` becomes ``wss`` and ``http`` becomes ``ws`` (a base URL that is already a
    WebSocket URL is kept as is); host, port and path prefix are preserved.

    :raises ValueError: if the base URL has another scheme or no host.
    """
    parts = urlsplit(public_url(base_url, path, ""))
    scheme = _WS_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"base URL must be an absolute http(s) URL, got {base_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


class _MultiParams:
    """Read-only multi-value view in the shape ``RequestValidator`` understands.

    The validator iterates the keys and, for each key, calls ``getall`` when it exists
    (its Flask/WebOb hook); repeated form fields (e.g. ``StatusCallbackEvent``) must all
    be signed, and a plain ``dict`` of lists would make it hash unhashable lists.
    """

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def getall(self, name: str) -> list[str]:
        return self._values[name]


def _normalize_params(
    params: Mapping[str, str] | Mapping[str, list[str]] | None,
) -> _MultiParams:
    normalized: dict[str, list[str]] = {}
    if not params:
        return _MultiParams(normalized)
    # Starlette's FormData / Werkzeug's MultiDict expose every value of a repeated key
    # only through getlist(); plain iteration would see just one of them.
    getlist = getattr(params, "getlist", None)
    for key in params:
        if callable(getlist):
            raw: object = getlist(key)
        else:
            raw = params[key]
        if isinstance(raw, str):
            normalized[str(key)] = [raw]
        elif isinstance(raw, Sequence):
            normalized[str(key)] = [str(item) for item in raw]
        else:
            normalized[str(key)] = [str(raw)]
    return _MultiParams(normalized)


@lru_cache(maxsize=4)
def _validator(auth_token: str) -> RequestValidator:
    return RequestValidator(auth_token)


def is_valid_twilio_signature(
    auth_token: str,
    url: str,
    params: Mapping[str, str] | dict[str, list[str]] | None,
    signature: str | None,
) -> bool:
    """Check an ``X-Twilio-Signature`` header value; never raises.

    ``url`` is the full public URL Twilio requested (see :func:`public_url`); ``params``
    are the POSTed form fields (a mapping of strings, a dict of lists for repeated keys,
    or a multi-dict such as Starlette's ``FormData``), and ``{}``/``None`` for a GET or
    the WebSocket handshake. Returns ``True`` only if the signature matches; a missing
    or empty signature, an empty auth token, or any malformed input yields ``False``.
    The comparison is done by the twilio library (timing-safe for equal lengths, and
    tolerant of Twilio signing the URL with or without an explicit default port).
    """
    # An empty token would make the HMAC key public knowledge: anyone could forge it.
    if not auth_token or not signature or not isinstance(signature, str):
        return False
    try:
        validator = _validator(auth_token)
        signed = _normalize_params(params)
        # Twilio signs the URL it requested, which is `url` as configured: one HMAC settles the
        # usual case. Anything else (the port written the other way, a body hash in the query)
        # gets the library's full check, which computes two.
        if "bodySHA256" not in url and hmac.compare_digest(
            validator.compute_signature(url, signed), signature
        ):
            return True
        return bool(validator.validate(url, signed, signature))
    except Exception:
        # Webhook input is attacker-controlled; any oddity is simply "not signed by Twilio".
        return False
