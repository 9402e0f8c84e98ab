"""The API's edge: what every HTTP request goes through before and after its route.

One pure ASGI pass (each middleware layer costs every request): the request id, the refusals
that need no route (two Authorization headers, bodies too large or not JSON, a NUL in the query),
the response headers a dependency asked for (RateLimit-*), the storing of an idempotent response
before it is sent, one log line and the request metrics. An error that escaped every handler is
answered here too, so that even a 500 carries its X-Request-ID.
"""

from __future__ import annotations

import logging
import time

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.api.deps import in_thread
from app.context import RequestContext, end_context, start_context
from app.errors import AppError, PayloadTooLarge, UnsupportedMediaType

logger = logging.getLogger("vca.request")

MAX_BODY_BYTES = 1 << 20  # 1 MiB
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# The REST API speaks JSON; Twilio's webhooks (outside it) post forms.
_JSON_API_PREFIX = "/api/"


class AmbiguousAuthorization(AppError):
    status_code = 400
    code = "ambiguous_authorization"
    default_detail = "Send one Authorization header, not several."


class NulInQuery(AppError):
    status_code = 422
    code = "invalid_text"
    default_detail = "The query string contains a NUL character."


class InternalError(AppError):
    status_code = 500
    code = "internal_error"
    default_detail = "Internal error."


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def refusal(scope: Scope, headers: Headers) -> AppError | None:
    """Why the request is refused before any route sees it, if it is."""
    # A proxy and the app could each pick a different one of two credentials.
    if len(headers.getlist("authorization")) > 1:
        return AmbiguousAuthorization()
    if b"%00" in scope["query_string"]:
        return NulInQuery()
    if scope["method"] in _BODY_METHODS:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return PayloadTooLarge()
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        if (
            has_body
            and scope["path"].startswith(_JSON_API_PREFIX)
            and not _is_json(headers.get("content-type", ""))
        ):
            return UnsupportedMediaType()
    return None


def _limited(receive: Receive) -> Receive:
    """`receive` that stops a body without Content-Length (chunked) once it passes the limit."""
    received = 0

    async def receive_within_limit() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise HTTPException(413, PayloadTooLarge.default_detail)
        return message

    return receive_within_limit


def _extra_headers(context: RequestContext) -> list[tuple[bytes, bytes]]:
    extra = [(b"x-request-id", context.request_id.encode())]
    if (limit := context.rate_limit) is not None:
        extra += [
            (b"ratelimit-limit", str(limit.limit).encode()),
            (b"ratelimit-remaining", str(limit.remaining).encode()),
            (b"ratelimit-reset", str(limit.reset_seconds).encode()),
        ]
    return extra


async def _send_error(send: Send, error: AppError, context: RequestContext) -> None:
    response = JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [*response.raw_headers, *_extra_headers(context)],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


def route_label(scope: Scope) -> str:
    """The route template the request matched (bounded label values), with the prefix of the
    router that included it (FastAPI keeps included routes' own paths: the prefix is the part
    of the concrete path before the template's segments)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if not template:
        return "unmatched"
    segments = template.count("/")
    prefix = scope["path"].split("/")[:-segments] if segments else []
    return "/".join(prefix) + template if len(prefix) > 1 else template


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            context, token = start_context(Headers(scope=scope).get("x-request-id"))
            try:
                await self.app(scope, receive, send)
            finally:
                end_context(token)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        context, token = start_context(headers.get("x-request-id"))
        status = 500
        response_started = False
        held: list[Message] = []

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                if context.idempotency is not None:
                    held.append(message)
                    return
                message["headers"] = [*message.get("headers", ()), *_extra_headers(context)]
            elif held:
                held.append(message)
                if message.get("more_body", False):
                    return
                await self._store_and_send(context, held, send)
                return
            await send(message)

        try:
            refused = refusal(scope, headers)
            if refused is not None:
                status = refused.status_code
                await _send_error(send, refused, context)
                return
            if scope["method"] in _BODY_METHODS and "content-length" not in headers:
                receive = _limited(receive)
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if response_started:
                raise
            logger.exception("unhandled error")
            if context.idempotency is not None:
                claim, context.idempotency = context.idempotency, None
                try:
                    await in_thread(claim.abandon)
                except Exception:
                    logger.exception("idempotency key not released")
            status = 500
            await _send_error(send, InternalError(), context)
        finally:
            duration = time.perf_counter() - started
            route = route_label(scope)
            metrics.observe_request(scope["method"], route, status, duration)
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(duration * 1000, 2),
                    },
                )
            end_context(token)

    @staticmethod
    async def _store_and_send(context: RequestContext, held: list[Message], send: Send) -> None:
        """An idempotent request's response: stored (or its key released, for a response that
        says retry) before the client sees it, so a retry that follows always finds it."""
        start, *bodies = held
        body = b"".join(message.get("body", b"") for message in bodies)
        claim, context.idempotency = context.idempotency, None
        try:
            await in_thread(claim.finish, start["status"], start.get("headers", []), body)
        except Exception:
            logger.exception("idempotent response not stored")
        start["headers"] = [*start.get("headers", ()), *_extra_headers(context)]
        await send(start)
        await send({"type": "http.response.body", "body": body})
