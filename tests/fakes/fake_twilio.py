"""A local, in-process fake of the parts of the Twilio REST API the app uses.

It is a real HTTP server on 127.0.0.1 (ephemeral port), so the official ``twilio``
client can talk to it unchanged once its base URL points here::

    with FakeTwilio(account_sid, auth_token) as tw:
        rest = TwilioRest(account_sid=..., auth_token=..., api_base_url=tw.base_url)
        sid = rest.create_call(...)
        assert tw.requests[-1].form["To"] == ["+15551230000"]

Implemented: ``POST/GET /2010-04-01/Accounts/{AccountSid}/Calls.json`` (create/list) and
``POST/GET /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` (update/fetch), with
HTTP Basic auth, Twilio-shaped JSON resources and Twilio-shaped JSON errors.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeTwilio", "RecordedRequest", "new_sid"]

API_VERSION = "2010-04-01"
_CALLS = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls\.json$")
_CALL = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls/(?P<sid>[^/]+)\.json$")
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two-letter prefix + 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def _now_rfc2822() -> str:
    return format_datetime(datetime.now(UTC))


def _error_body(status: int, code: int | None, message: str) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, "status": status}
    if code is not None:
        body["code"] = code
        body["more_info"] = f"https://www.twilio.com/docs/errors/{code}"
    return body


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, exactly as sent (before any validation)."""

    method: str
    path: str
    query: str
    form: dict[str, list[str]]
    headers: dict[str, str]

    def value(self, key: str) -> str | None:
        """First value of form field ``key`` (``None`` if absent)."""
        values = self.form.get(key)
        return values[0] if values else None

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """Decoded ``(username, password)`` of the Basic Authorization header, if any."""
        return _parse_basic_auth(self.header("Authorization"))

    def header(self, name: str) -> str | None:
        """Header value by case-insensitive name."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


@dataclass
class _Failure:
    status: int
    code: int | None
    message: str


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[RecordedRequest] = field(default_factory=list)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: deque[_Failure] = field(default_factory=deque)
    # While set, creating a call waits for it to be released: a slow Twilio.
    hold: threading.Event | None = None


def _parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeTwilio


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Mirrors the real API's banner; harmless, and keeps the library's logging readable.
    server_version = "FakeTwilio/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        # Keep pytest output clean.
        return

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length else ""
        form = parse_qs(body, keep_blank_values=True) if body else {}
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=split.query,
            form=form,
            headers=dict(self.headers.items()),
        )
        status, payload, extra_headers = self.server.fake._dispatch(request)
        raw = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)


class FakeTwilio:
    """Fake Twilio REST API server; use as a context manager (or ``start``/``stop``).

    ``base_url`` (``http://127.0.0.1:PORT``) is what to pass as the client's API base
    URL. ``requests`` lists every request received (thread-safe snapshot); ``calls``
    the call resources created so far by SID. ``fail_next`` scripts error responses.
    """

    def __init__(self, account_sid: str | None = None, auth_token: str | None = None) -> None:
        self.account_sid = account_sid or new_sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeTwilio:
        """Bind to an ephemeral 127.0.0.1 port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeTwilio already started")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- inspection and scripting ----------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeTwilio is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def calls(self) -> dict[str, dict[str, Any]]:
        with self._state.lock:
            return {sid: dict(call) for sid, call in self._state.calls.items()}

    def fail_next(self, status: int = 500, code: int | None = None, message: str = "") -> None:
        """Make the next request (whatever it is) fail with a Twilio-shaped JSON error.

        Calls queue up: each scripted failure is consumed by exactly one request.
        The request is still recorded. ``code`` is omitted from the body when ``None``.
        """
        if not message:
            message = "An internal server error has occurred" if status >= 500 else "Bad Request"
        with self._state.lock:
            self._state.failures.append(_Failure(status, code, message))

    def put_call(self, sid: str, status: str, *, duration: int | None = None) -> None:
        """Have Twilio know call `sid` in `status` (as GET Calls/{sid} then reports it)."""
        now = _now_rfc2822()
        with self._state.lock:
            self._state.calls[sid] = {
                "sid": sid,
                "account_sid": self.account_sid,
                "status": status,
                "duration": None if duration is None else str(duration),
                "date_created": now,
                "date_updated": now,
                "start_time": now,
                "end_time": now if status not in ("queued", "ringing", "in-progress") else None,
                "direction": "inbound",
                "from": "+14155550100",
                "to": "+14155550101",
            }

    def stall_calls(self) -> threading.Event:
        """Make call creation wait (as a slow Twilio would) until the returned event is set."""
        released = threading.Event()
        self._state.hold = released
        return released

    def reset(self) -> None:
        """Forget recorded requests, calls and pending scripted failures."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.calls.clear()
            self._state.failures.clear()

    # -- request handling (server threads) -------------------------------------------

    def _dispatch(self, request: RecordedRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._state.lock:
            self._state.requests.append(request)
            failure = self._state.failures.popleft() if self._state.failures else None
        if failure is not None:
            return failure.status, _error_body(failure.status, failure.code, failure.message), {}

        credentials = request.basic_auth
        if credentials is None or not (
            hmac.compare_digest(credentials[0].encode(), self.account_sid.encode())
            and hmac.compare_digest(credentials[1].encode(), self.auth_token.encode())
        ):
            return (
                401,
                _error_body(401, 20003, "Authenticate"),
                {"WWW-Authenticate": 'Basic realm="Twilio API"'},
            )

        if match := _CALLS.match(request.path):
            if not self._owns(match["account"]):
                return self._not_found(request.path)
            if request.method == "POST":
                return self._create_call(request)
            if request.method == "GET":
                return self._list_calls(request.path)
            return self._method_not_allowed()
        if match := _CALL.match(request.path):
            if not self._owns(match["account"]):
                return self._not_found(request.path)
            if request.method == "POST":
                return self._update_call(request, match["sid"])
            if request.method == "GET":
                return self._fetch_call(request.path, match["sid"])
            return self._method_not_allowed()
        return self._not_found(request.path)

    def _owns(self, account_sid: str) -> bool:
        return account_sid == self.account_sid

    @staticmethod
    def _not_found(path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        message = f"The requested resource {path} was not found"
        return 404, _error_body(404, 20404, message), {}

    @staticmethod
    def _method_not_allowed() -> tuple[int, dict[str, Any], dict[str, str]]:
        return 405, _error_body(405, 20004, "Method not allowed"), {}

    @staticmethod
    def _bad_request(code: int, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        return 400, _error_body(400, code, message), {}

    def _create_call(self, request: RecordedRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        hold = self._state.hold
        if hold is not None:
            hold.wait(timeout=30)
        to = request.value("To")
        from_ = request.value("From")
        if not to:
            return self._bad_request(21201, "No 'To' number is specified")
        if not from_:
            return self._bad_request(21603, "A 'From' phone number is required.")
        if not any(request.value(k) for k in ("Url", "Twiml", "ApplicationSid")):
            return self._bad_request(
                21205, "Either a 'Url', 'Twiml' or 'ApplicationSid' parameter is required."
            )
        if not (_E164.match(to) or to.startswith(("client:", "sip:"))):
            return self._bad_request(21211, f"Invalid 'To' Phone Number: {to}")
        if not (_E164.match(from_) or from_.startswith("client:")):
            return self._bad_request(21212, f"Invalid 'From' Phone Number: {from_}")

        sid = new_sid("CA")
        now = _now_rfc2822()
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{sid}.json"
        call: dict[str, Any] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": now,
            "date_updated": now,
            "direction": "outbound-api",
            "duration": None,
            "end_time": None,
            "forwarded_from": None,
            "from": from_,
            "from_formatted": from_,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "start_time": None,
            "status": "queued",
            "to": to,
            "to_formatted": to,
            "trunk_sid": None,
            "uri": uri,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
                "events": uri.replace(".json", "/Events.json"),
            },
        }
        with self._state.lock:
            self._state.calls[sid] = call
            snapshot = dict(call)
        return 201, snapshot, {}

    def _update_call(
        self, request: RecordedRequest, sid: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        status = request.value("Status")
        if status is not None and status not in ("completed", "canceled"):
            return self._bad_request(21218, f"Invalid value for Status: {status}")
        with self._state.lock:
            call = self._state.calls.get(sid)
            if call is None:
                return self._not_found(request.path)
            now = _now_rfc2822()
            if status is not None:
                call["status"] = status
                call["end_time"] = now
            call["date_updated"] = now
            snapshot = dict(call)
        return 200, snapshot, {}

    def _fetch_call(self, path: str, sid: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._state.lock:
            call = self._state.calls.get(sid)
            snapshot = dict(call) if call is not None else None
        if snapshot is None:
            return self._not_found(path)
        return 200, snapshot, {}

    def _list_calls(self, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._state.lock:
            calls = [dict(call) for call in self._state.calls.values()]
        page = {
            "calls": calls,
            "end": max(len(calls) - 1, 0),
            "first_page_uri": f"{path}?PageSize=50&Page=0",
            "next_page_uri": None,
            "page": 0,
            "page_size": 50,
            "previous_page_uri": None,
            "start": 0,
            "uri": f"{path}?PageSize=50&Page=0",
        }
        return 200, page, {}
