from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from app.api.deps import Cursor, DbSession, Limit, TenantContext, TransactionalRoute, Writer
from app.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PlanLimitReached,
    Unauthorized,
    error_responses,
)
from app.schemas.common import Page
from app.schemas.phone_numbers import PhoneNumberCreate, PhoneNumberOut, PhoneNumberUpdate
from app.services.phone_numbers import PhoneNumberService

router = APIRouter(
    route_class=TransactionalRoute,
    prefix="/tenants/{tenant_id}/phone-numbers",
    tags=["phone numbers"],
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(Unauthorized, PlanLimitReached, NotFound, Conflict, InvalidInput),
    summary="Register a phone number (E.164, unique platform-wide, limited by plan)",
)
def create_phone_number(
    data: PhoneNumberCreate, session: DbSession, scope: Writer
) -> PhoneNumberOut:
    return PhoneNumberOut.model_validate(PhoneNumberService(session, scope).create(data))


@router.get("", responses=error_responses(Unauthorized, NotFound))
def list_phone_numbers(
    session: DbSession,
    scope: TenantContext,
    limit: Limit = 20,
    cursor: Cursor = None,
    status: Annotated[Literal["active", "inactive"] | None, Query()] = None,
    ai_profile_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[PhoneNumberOut]:
    page = PhoneNumberService(session, scope).list(
        limit=limit, cursor=cursor, status=status, ai_profile_id=ai_profile_id
    )
    return Page(
        items=[PhoneNumberOut.model_validate(n) for n in page.items], next_cursor=page.next_cursor
    )


@router.get("/{phone_number_id}", responses=error_responses(Unauthorized, NotFound))
def get_phone_number(
    phone_number_id: uuid.UUID, session: DbSession, scope: TenantContext
) -> PhoneNumberOut:
    return PhoneNumberOut.model_validate(PhoneNumberService(session, scope).get(phone_number_id))


@router.patch(
    "/{phone_number_id}", responses=error_responses(Unauthorized, Forbidden, NotFound, InvalidInput)
)
def update_phone_number(
    phone_number_id: uuid.UUID, data: PhoneNumberUpdate, session: DbSession, scope: Writer
) -> PhoneNumberOut:
    return PhoneNumberOut.model_validate(
        PhoneNumberService(session, scope).update(phone_number_id, data)
    )


@router.delete(
    "/{phone_number_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(Unauthorized, Forbidden, NotFound),
)
def delete_phone_number(phone_number_id: uuid.UUID, session: DbSession, scope: Writer) -> Response:
    PhoneNumberService(session, scope).delete(phone_number_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
