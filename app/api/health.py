from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import TransactionalRoute, in_thread
from app.config.settings import settings
from app.errors import DatabaseUnavailable
from app.schemas.health import HealthOut
from app.services.health import check_health, database_unavailable
from app.telephony.capacity import live_calls, loop_lag

router = APIRouter(route_class=TransactionalRoute, tags=["health"])


@router.get(
    "/healthz",
    summary="Readiness and configuration checks (no secrets)",
    responses={
        200: {"model": HealthOut},
        503: {
            "model": HealthOut,
            "description": "The database is unreachable (degraded), or the process is "
            "draining after SIGTERM (draining): send it no new calls.",
        },
    },
)
async def healthz() -> JSONResponse:
    try:
        report = await in_thread(check_health)
    except DatabaseUnavailable:  # every thread waits on the database: as good as down
        report = database_unavailable()
    status = "degraded" if not report.ok else "draining" if live_calls.draining else "ok"
    body = {
        "status": status,
        "checks": report.checks,
        "relay": {**live_calls.report(), "event_loop_lag": loop_lag.report()},
    }
    if status == "ok":
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/", summary="API information")
async def root() -> dict[str, str]:
    return {
        "name": settings.APP_NAME,
        "environment": settings.APP_ENV.value,
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/healthz",
        "api": "/api/v1",
    }
