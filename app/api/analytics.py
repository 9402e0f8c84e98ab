"""A tenant's analytics: the summary of a range and its timeseries, in the tenant's timezone.

(The CSV export of calls lives with the calls: `GET /calls/export` in app/api/calls.py.)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import DbSession, TenantContext, TransactionalRoute
from app.errors import NotFound, Unauthorized, error_responses
from app.schemas.analytics import AnalyticsSummary, AnalyticsTimeseries, Interval
from app.services.analytics import ANALYTICS_ERRORS, AnalyticsService

router = APIRouter(
    route_class=TransactionalRoute, prefix="/tenants/{tenant_id}/analytics", tags=["analytics"]
)

From = Annotated[
    str | None,
    Query(
        alias="from",
        max_length=64,
        description="Start, inclusive: a date (YYYY-MM-DD, a local day in the tenant's timezone) "
        "or an RFC 3339 datetime with an offset. Default: 30 local days before `to`.",
        examples=["2026-03-01", "2026-03-01T00:00:00-05:00"],
    ),
]
To = Annotated[
    str | None,
    Query(
        max_length=64,
        description="End, exclusive: a date (that local day is not included) or a datetime with "
        "an offset. Default: the end of today, local time.",
        examples=["2026-04-01"],
    ),
]
RESPONSES = error_responses(Unauthorized, NotFound, *ANALYTICS_ERRORS)


@router.get("/summary", responses=RESPONSES, summary="A range's figures and the previous range's")
def get_summary(
    session: DbSession, scope: TenantContext, from_: From = None, to: To = None
) -> AnalyticsSummary:
    return AnalyticsService(session, scope).summary(from_, to)


@router.get("/timeseries", responses=RESPONSES, summary="A range's figures by local bucket")
def get_timeseries(
    session: DbSession,
    scope: TenantContext,
    from_: From = None,
    to: To = None,
    interval: Annotated[Interval, Query(description="Bucket size (weeks start on Monday).")] = (
        Interval.day
    ),
) -> AnalyticsTimeseries:
    return AnalyticsService(session, scope).timeseries(from_, to, interval)
