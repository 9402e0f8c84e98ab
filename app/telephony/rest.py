"""Thin blocking wrapper over the Twilio REST API (via the official ``twilio`` client).

Only what the platform needs: start an outbound call and hang one up. All failures
surface as :class:`TwilioAPIError`, so callers never depend on ``twilio`` or
``requests`` exception types. Calls block; run them in a threadpool from async code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import requests
from twilio.base.exceptions import (
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from app.config.settings import settings
from app.errors import ServiceUnavailable

__all__ = [
    "TelephonyNotConfigured",
    "TwilioAPIError",
    "TwilioCall",
    "TwilioRest",
    "require_telephony",
]


class TelephonyNotConfigured(ServiceUnavailable):
    code = "telephony_not_configured"
    default_detail = (
        "Telephony is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, PUBLIC_BASE_URL)."
    )


def require_telephony() -> None:
    if not settings.telephony_configured:
        raise TelephonyNotConfigured()


# The library prefixes Twilio's message with its own context ("Unable to create record: ").
_LIBRARY_PREFIX = re.compile(r"^Unable to \w+ record: ")


class TwilioAPIError(Exception):
    """A Twilio REST call failed.

    ``status`` is the HTTP status (``None`` when Twilio could not be reached at all),
    ``code`` Twilio's numeric error code when it sent one (e.g. 21211), and ``message``
    Twilio's own human-readable message (or a short description of the transport error).
    """

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        details = [
            f"{name}={value}"
            for name, value in (("status", self.status), ("code", self.code))
            if value is not None
        ]
        return f"{self.message} ({', '.join(details)})" if details else self.message


def _from_rest_exception(exc: TwilioRestException) -> TwilioAPIError:
    status = int(exc.status) if exc.status is not None else None
    message = _LIBRARY_PREFIX.sub("", str(exc.msg or "")) or f"HTTP {status}"
    code: int | None = None
    try:
        code = int(exc.code) if exc.code is not None else None
    except (TypeError, ValueError):
        code = None
    # Without a Twilio code in the body the library substitutes the HTTP status.
    if code is not None and code == status:
        code = None
    return TwilioAPIError(message, status=status, code=code)


def _from_service_exception(exc: TwilioServiceException) -> TwilioAPIError:
    message = exc.detail or exc.title or f"HTTP {exc.status}"
    return TwilioAPIError(str(message), status=int(exc.status), code=int(exc.code))


def _from_transport_error(exc: requests.RequestException) -> TwilioAPIError:
    if isinstance(exc, requests.Timeout):
        return TwilioAPIError("Twilio API request timed out")
    if isinstance(exc, requests.ConnectionError):
        return TwilioAPIError("Could not connect to the Twilio API")
    return TwilioAPIError(f"Twilio API request failed ({type(exc).__name__})")


def _translate(exc: Exception) -> TwilioAPIError | None:
    """Map library/transport failures to TwilioAPIError; None means "not ours, re-raise"."""
    if isinstance(exc, TwilioRestException):
        return _from_rest_exception(exc)
    if isinstance(exc, TwilioServiceException):
        return _from_service_exception(exc)
    if isinstance(exc, requests.RequestException):
        return _from_transport_error(exc)
    if isinstance(exc, TwilioException):
        return TwilioAPIError(str(exc) or type(exc).__name__)
    if isinstance(exc, ValueError):
        # JSON decoding of a 2xx body that is not Twilio's (e.g. a misrouted proxy).
        return TwilioAPIError(f"Unexpected response from the Twilio API ({exc})")
    return None


@dataclass(frozen=True)
class TwilioCall:
    """A call as Twilio's REST API reports it: `status` in Twilio's words (`in-progress`,
    `completed`, `no-answer`…), `duration` in seconds once ended, `end_time` if known."""

    sid: str
    status: str
    duration: int | None
    end_time: datetime | None


class TwilioRest:
    """Twilio REST client bound to one account's credentials.

    ``api_base_url`` redirects every request of the ``api`` domain (where Calls live,
    normally ``https://api.twilio.com``) to a Twilio-compatible server, e.g. a local fake
    at ``http://127.0.0.1:PORT``; a path prefix in it is kept. ``timeout_seconds`` bounds
    each HTTP request (connect and read). Instances are reusable (pooled connections).
    """

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        api_base_url: str | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        # The Client falls back to TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN from the process
        # environment when given empty values; tenants' credentials must never mix.
        if not account_sid or not auth_token:
            raise ValueError("account_sid and auth_token are required")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.account_sid = account_sid
        self._http_client = TwilioHttpClient(timeout=timeout_seconds)
        self._client = Client(
            username=account_sid,
            password=auth_token,
            account_sid=account_sid,
            http_client=self._http_client,
        )
        if api_base_url:
            parts = urlsplit(api_base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"api_base_url must be an http(s) URL, got {api_base_url!r}")
            # Domains build absolute URLs from their base_url; the Api domain is created
            # lazily and cached, so overriding it here covers every later request.
            self._client.api.base_url = api_base_url.rstrip("/")
            # Edge/region (also read from TWILIO_EDGE/TWILIO_REGION) make the client
            # rewrite the hostname into "api.<edge>.<region>.twilio.com" form, which
            # would mangle a custom host.
            self._client.edge = None
            self._client.region = None

    @property
    def api_base_url(self) -> str:
        """Base URL requests currently go to (``https://api.twilio.com`` by default)."""
        return str(self._client.api.base_url)

    def create_call(
        self,
        *,
        to: str,
        from_: str,
        url: str,
        status_callback: str,
        status_callback_events: list[str],
        method: str = "POST",
    ) -> str:
        """Start an outbound call and return its CallSid.

        Twilio fetches TwiML from ``url`` (with ``method``) once the callee answers and
        POSTs call progress for each of ``status_callback_events`` (e.g. ``initiated``,
        ``ringing``, ``answered``, ``completed``) to ``status_callback``.

        :raises TwilioAPIError: on any API error (``status``/``code``/``message`` as
            Twilio sent them) or if Twilio is unreachable (``status`` is ``None``).
        """
        try:
            call = self._client.api.v2010.account.calls.create(
                to=to,
                from_=from_,
                url=url,
                method=method,
                status_callback=status_callback,
                status_callback_event=list(status_callback_events),
                status_callback_method="POST",
            )
        except Exception as exc:
            error = _translate(exc)
            if error is None:
                raise
            raise error from exc
        sid = getattr(call, "sid", None)
        if not sid:
            raise TwilioAPIError("Twilio returned a call without a sid", status=None)
        return str(sid)

    def fetch_call(self, call_sid: str) -> TwilioCall:
        """The call `call_sid` as Twilio has it now.

        :raises TwilioAPIError: as for :meth:`create_call` (status 404 for an unknown CallSid).
        """
        try:
            call = self._client.api.v2010.account.calls(call_sid).fetch()
        except Exception as exc:
            error = _translate(exc)
            if error is None:
                raise
            raise error from exc
        try:
            duration = int(call.duration) if call.duration not in (None, "") else None
        except (TypeError, ValueError):
            duration = None
        end_time = call.end_time if isinstance(call.end_time, datetime) else None
        return TwilioCall(
            sid=str(call.sid or call_sid),
            status=str(call.status or ""),
            duration=duration,
            end_time=end_time,
        )

    def hangup_call(self, call_sid: str) -> None:
        """End a call in any state by setting its status to ``completed``.

        :raises TwilioAPIError: as for :meth:`create_call` (e.g. status 404 for an
            unknown CallSid).
        """
        try:
            self._client.api.v2010.account.calls(call_sid).update(status="completed")
        except Exception as exc:
            error = _translate(exc)
            if error is None:
                raise
            raise error from exc
