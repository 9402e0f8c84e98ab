"""The application factory: routers, error handlers, middleware, OpenAPI."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import (
    ai_profiles,
    analytics,
    api_keys,
    billing,
    calls,
    health,
    metrics,
    phone_numbers,
    plans,
    relay,
    telephony,
    tenants,
    webhooks,
)
from app.config.settings import settings
from app.errors import (
    VALIDATION_ERROR_RESPONSE,
    AppError,
    DatabaseUnavailable,
    excerpt,
    printable,
)
from app.llm.agent import close_llm_client, get_llm_client
from app.logging import configure_logging
from app.middleware import EdgeMiddleware
from app.services.idempotency import StoredResponse
from app.telephony.capacity import install_drain, loop_lag

logger = logging.getLogger("vca")

API_PREFIX = "/api/v1"
# The cycle collector's (young, middle, full) thresholds. A middle collection walks every young
# survivor since the last one: after 10 young collections it paused every live call 6-9 ms (p50,
# 500 calls), after 3 about 3 ms. A full collection walks every live call's objects and finds
# almost nothing (a call's garbage is freed by reference counting: test_relay_session.py), so it
# still comes after about 1,000 young collections (3 x 333), ten times rarer than CPython's 100.
COLLECTOR_THRESHOLDS = (700, 3, 333)

DESCRIPTION = """
Backend of a multi-tenant Voice AI Agent platform.

Authenticate with `Authorization: Bearer <key>`: the platform admin key, or a tenant API key.
Every tenant resource lives under `/api/v1/tenants/{tenant_id}/…`. Errors are
`{"detail": "...", "code": "..."}`; lists are `{"items": [...], "next_cursor": ...}`.
"""

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


# A human sentence may quote a little more of the input than a validation error's excerpt.
DETAIL_CHARS = 300


def _describe(error: dict[str, Any]) -> dict[str, Any]:
    """One validation error as sent: its fields, with the input's excerpt and every string
    (loc may hold an unknown key the client sent; msg and ctx may quote the input) printable."""
    described: dict[str, Any] = {}
    for key, value in error.items():
        if key == "input":
            described[key] = excerpt(value)
        elif key == "loc":
            described[key] = [
                part if isinstance(part, int) else printable(str(part)) for part in value
            ]
        elif key == "ctx":
            described[key] = {k: printable(str(v), DETAIL_CHARS) for k, v in value.items()}
        else:
            described[key] = printable(str(value), DETAIL_CHARS)
    return described


def _verify_database_role() -> None:
    """Production must not run as a role that skips row-level security."""
    from app.services.health import probe_database

    _, safety = probe_database()
    if safety.bypasses_rls:
        raise SystemExit(
            "DATABASE_URL: the app role is a superuser or has BYPASSRLS, so row-level security "
            "would not apply; connect as a plain role (see README, Production)."
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if settings.is_production:
        await run_in_threadpool(_verify_database_role)
    install_drain(asyncio.get_running_loop(), settings.DRAIN_TIMEOUT_SECONDS)
    # The threadpool of FastAPI and anyio.to_thread, on this loop.
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.API_THREADS
    get_llm_client()  # its TLS setup (20-25 ms) here, not on the loop in the first call's answer
    # What the app imported and built lives as long as the process: out of the collector's reach,
    # so a full collection walks only what requests made (it stalled the loop 100-150 ms).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    loop_lag.start()
    try:
        yield
    finally:
        await loop_lag.stop()
        await close_llm_client()


def _register_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        body = {"detail": printable(exc.detail, DETAIL_CHARS), "code": exc.error_code}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            {"detail": printable(str(exc.detail), DETAIL_CHARS), "code": code},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's body is kept (clients parse it) with a code, like every other error; what it
        # echoes of the input is cut short and made serialisable (bytes, NaN, surrogates).
        return JSONResponse(
            {"detail": [_describe(error) for error in exc.errors()], "code": "validation_error"},
            status_code=422,
        )

    @app.exception_handler(StoredResponse)
    async def replay(_: Request, stored: StoredResponse) -> Response:
        response = Response(content=stored.body, status_code=stored.status_code)
        response.raw_headers += [
            *((name.encode("latin-1"), value.encode("latin-1")) for name, value in stored.headers),
            (b"idempotent-replayed", b"true"),
        ]
        return response

    @app.exception_handler(IntegrityError)
    async def integrity_error(_: Request, exc: IntegrityError) -> JSONResponse:
        logger.warning("integrity error", extra={"error": str(exc.orig)[:300]})
        return JSONResponse(
            {"detail": "The request conflicts with existing data.", "code": "conflict"},
            status_code=409,
        )

    # The server is down or restarting, a pooled connection died while idle (no pre-ping: the
    # pool drops it and its peers, so the next request reconnects), or no connection was free
    # within DATABASE_POOL_TIMEOUT_SECONDS: all worth a retry.
    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_unavailable(
        request: Request, exc: OperationalError | PoolTimeout
    ) -> JSONResponse:
        error = exc.orig if isinstance(exc, OperationalError) else exc
        logger.error("database unavailable", extra={"error": str(error)[:300]})
        return await app_error(request, DatabaseUnavailable())

    @app.exception_handler(DBAPIError)
    async def database_error(_: Request, exc: DBAPIError) -> JSONResponse:
        logger.exception("database error", exc_info=exc)
        return JSONResponse(
            {"detail": "Internal error.", "code": "internal_error"}, status_code=500
        )

    # An exception no handler took is answered by the edge middleware (app/middleware.py), so
    # that the 500 carries the request id like every other response.


def operation_id(route: APIRoute) -> str:
    """The route function's name (`list_calls`): what a generated client names its method.
    Unique across the app (tests/api/test_openapi.py)."""
    return route.name


def create_app() -> FastAPI:
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT.value)
    app = FastAPI(
        title=settings.APP_NAME,
        description=DESCRIPTION,
        version="0.1.0",
        debug=settings.DEBUG,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        responses=VALIDATION_ERROR_RESPONSE,
        openapi_tags=[
            {"name": "health", "description": "Liveness and readiness."},
            {"name": "tenants", "description": "Tenants (platform admin creates and lists)."},
            {"name": "api keys", "description": "A tenant's API keys."},
            {"name": "phone numbers", "description": "A tenant's phone numbers (E.164)."},
            {"name": "ai profiles", "description": "AI agent profiles: prompt, greeting, voice."},
            {"name": "calls", "description": "A tenant's calls and transcripts; outbound calls."},
            {
                "name": "telephony",
                "description": "Twilio webhooks (signed with X-Twilio-Signature, answered in TwiML).",
            },
            {"name": "billing", "description": "Plans, usage and invoices."},
            {
                "name": "analytics",
                "description": "A range's figures and timeseries, in the tenant's timezone.",
            },
            {
                "name": "webhooks",
                "description": "Signed event deliveries to a tenant's URLs, and their log.",
            },
        ],
    )
    _register_error_handlers(app)
    # A request is matched against the routes in this order, one by one: the busiest paths go
    # first (no two groups overlap, so the order changes nothing else).
    app.include_router(telephony.router)
    app.include_router(relay.router)
    for module in (
        calls,
        phone_numbers,
        tenants,
        api_keys,
        ai_profiles,
        plans,
        webhooks,
        analytics,
        billing,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(metrics.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    app.add_middleware(EdgeMiddleware)
    return app
