from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Generator
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.api.deps import (
    Callbacks,
    Cursor,
    DbSession,
    Limit,
    TenantContext,
    TransactionalRoute,
    Writer,
)
from app.errors import NotFound, Unauthorized, error_responses
from app.schemas.calls import (
    CallDetailOut,
    CallDirection,
    CallFilters,
    CallOut,
    CallStatus,
    CallTurnOut,
    OutboundCallCreate,
)
from app.schemas.common import Page, Timestamp
from app.services.analytics import EXPORT_EXAMPLE, export_calls_csv
from app.services.calls import (
    CallService,
    ConcurrencyLimitReached,
    MinutesExhausted,
    ProviderError,
)
from app.telephony.numbers import InvalidPhoneNumber
from app.telephony.rest import TelephonyNotConfigured

router = APIRouter(
    route_class=TransactionalRoute, prefix="/tenants/{tenant_id}/calls", tags=["calls"]
)


async def call_filters(
    status: Annotated[CallStatus | None, Query()] = None,
    direction: Annotated[CallDirection | None, Query()] = None,
    phone_number_id: Annotated[uuid.UUID | None, Query()] = None,
    ai_profile_id: Annotated[uuid.UUID | None, Query()] = None,
    started_after: Annotated[
        Timestamp | None, Query(description="started_at >= this (RFC 3339 with an offset).")
    ] = None,
    started_before: Annotated[
        Timestamp | None, Query(description="started_at < this (RFC 3339 with an offset).")
    ] = None,
) -> CallFilters:
    """The call list's filters, shared by the list and the export (async: no threadpool trip)."""
    return CallFilters(
        status=status,
        direction=direction,
        phone_number_id=phone_number_id,
        ai_profile_id=ai_profile_id,
        started_after=started_after,
        started_before=started_before,
    )


Filters = Annotated[CallFilters, Depends(call_filters)]


@router.get("", responses=error_responses(Unauthorized, NotFound))
def list_calls(
    session: DbSession,
    scope: TenantContext,
    filters: Filters,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[CallOut]:
    page = CallService(session, scope).list(filters, limit=limit, cursor=cursor)
    items = [CallOut.model_validate(row) for row in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


# Declared before /{call_id}, which would otherwise take "export" for an id.
@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {"example": EXPORT_EXAMPLE}},
            "description": "Every matching call, newest first, as CSV with a header row.",
        },
        **error_responses(Unauthorized, NotFound),
    },
    summary="Export the calls matching the list's filters as CSV (streamed)",
    tags=["analytics"],
)
def export_calls(
    session: DbSession,  # only authentication's: committed before the rows stream in their own
    scope: TenantContext,
    filters: Filters,
    format_: Annotated[Literal["csv"], Query(alias="format")] = "csv",
) -> StreamingResponse:
    """Times are in the tenant's timezone with their offset; a read-only key may export."""
    return StreamingResponse(
        _in_threadpool(export_calls_csv(scope, filters)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="calls.csv"'},
    )


async def _in_threadpool(chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """Starlette's iteration of a sync iterator, plus closing it in the threadpool too: a client
    that hangs up mid-export ends the export's transaction off the event loop."""
    try:
        while (chunk := await run_in_threadpool(next, chunks, None)) is not None:
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(chunks.close)


@router.get("/{call_id}", responses=error_responses(Unauthorized, NotFound))
def get_call(call_id: uuid.UUID, session: DbSession, scope: TenantContext) -> CallDetailOut:
    call, turns = CallService(session, scope).get(call_id)
    return CallDetailOut(
        **CallOut.model_validate(call).model_dump(),
        turns=[CallTurnOut.model_validate(t) for t in turns],
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(
        Unauthorized,
        MinutesExhausted,
        NotFound,
        InvalidPhoneNumber,
        ConcurrencyLimitReached,
        ProviderError,
        TelephonyNotConfigured,
    ),
    summary="Place an outbound call (returned queued; progress arrives by Twilio's callbacks)",
)
def create_outbound_call(
    data: OutboundCallCreate, session: DbSession, scope: Writer, urls: Callbacks
) -> CallOut:
    return CallOut.model_validate(CallService(session, scope).create_outbound(data, urls))
