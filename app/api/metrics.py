"""GET /metrics: Prometheus exposition, for the platform admin key (a scraper's bearer token)."""

from __future__ import annotations

from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials

from app import metrics
from app.api.deps import TransactionalRoute, bearer_scheme
from app.config.settings import settings
from app.errors import Forbidden, Unauthorized, error_responses
from app.security import constant_time_equals

router = APIRouter(route_class=TransactionalRoute, tags=["health"])

# A scrape reads no database: a thread of its own, never queued behind requests stuck on one.
_SCRAPE_THREAD = anyio.CapacityLimiter(1)


async def require_admin_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """The admin key, checked without the database (a scrape never costs a query) and outside
    the rate limits (a scraper must see an overloaded platform)."""
    if credentials is None:
        raise Unauthorized()
    if not constant_time_equals(credentials.credentials.strip(), settings.ADMIN_API_KEY):
        raise Forbidden("Metrics need the platform admin key.")


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(require_admin_key)],
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format.",
        },
        **error_responses(Unauthorized, Forbidden),
    },
    summary="Prometheus metrics of every worker process",
)
async def get_metrics() -> Response:
    body, content_type = await anyio.to_thread.run_sync(metrics.render, limiter=_SCRAPE_THREAD)
    return Response(content=body, media_type=content_type)
