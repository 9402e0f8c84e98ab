from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status

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
from app.schemas.common import Page
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


@router.get("", responses=error_responses(Unauthorized, NotFound))
def list_calls(
    session: DbSession,
    scope: TenantContext,
    limit: Limit = 20,
    cursor: Cursor = None,
    status: Annotated[CallStatus | None, Query()] = None,
    direction: Annotated[CallDirection | None, Query()] = None,
    phone_number_id: Annotated[uuid.UUID | None, Query()] = None,
    ai_profile_id: Annotated[uuid.UUID | None, Query()] = None,
    started_after: Annotated[
        datetime | None, Query(description="started_at >= this (RFC 3339; no offset = UTC).")
    ] = None,
    started_before: Annotated[
        datetime | None, Query(description="started_at < this (RFC 3339; no offset = UTC).")
    ] = None,
) -> Page[CallOut]:
    filters = CallFilters(
        status=status,
        direction=direction,
        phone_number_id=phone_number_id,
        ai_profile_id=ai_profile_id,
        started_after=started_after,
        started_before=started_before,
    )
    page = CallService(session, scope).list(filters, limit=limit, cursor=cursor)
    items = [CallOut.model_validate(row) for row in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


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
