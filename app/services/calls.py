"""A tenant's calls: the list with filters, the detail with its transcript, and outbound calls."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, String, Table, Uuid, bindparam, select
from sqlalchemy import cast as cast_
from sqlalchemy.orm import Session

from app.config.settings import settings
from app.errors import (
    BadGateway,
    Forbidden,
    InvalidInput,
    NotFound,
    TenantSuspended,
    TooManyRequests,
)
from app.models import AIProfile, Call, CallTurn, PhoneNumber
from app.models.base import utcnow
from app.plans import get_plan
from app.schemas.calls import CallFilters, OutboundCallCreate
from app.services.pagination import PageResult, PageStatements, page_statements, run_page
from app.services.scope import (
    TenantScope,
    get_scoped,
    lock_tenant,
    scope_param_filter,
    scope_params,
)
from app.services.telephony import (
    REJECT_CONCURRENCY_LIMIT,
    REJECT_MINUTES_EXHAUSTED,
    REJECT_TENANT_SUSPENDED,
    STATUS_PATH,
    TURNS_OF_CALL,
    VOICE_PATH,
    call_limit_violation,
    resolve_ai_profile,
)
from app.telephony.numbers import normalize_e164
from app.telephony.request import require_telephony
from app.telephony.rest import TwilioAPIError, TwilioRest
from app.telephony.signature import public_url

logger = logging.getLogger("vca.calls")

STATUS_CALLBACK_EVENTS = ["initiated", "ringing", "answered", "completed"]
# Bounds how long an outbound create holds the tenant lock while Twilio answers.
TWILIO_TIMEOUT_SECONDS = 8.0
# A line frees up when a call ends; calls last minutes, so a short wait is the useful hint.
CONCURRENCY_RETRY_AFTER_SECONDS = 30


class ConcurrencyLimitReached(TooManyRequests):
    code = "concurrency_limit"
    default_detail = "The plan's concurrent-call limit is reached; retry when a call ends."


class MinutesExhausted(Forbidden):
    code = "minutes_exhausted"
    default_detail = "The plan's included minutes for this month are used up."


class NoAIProfile(InvalidInput):
    code = "no_ai_profile"
    default_detail = (
        "No AI profile: give ai_profile_id, attach one to the number, or set a default."
    )


class PhoneNumberInactive(InvalidInput):
    code = "phone_number_inactive"
    default_detail = "The phone number is inactive; activate it to place calls from it."


class ProviderError(BadGateway):
    code = "provider_error"
    default_detail = "Twilio refused or failed to place the call."


def _utc(moment: datetime) -> datetime:
    # A timestamp without an offset in a query string is taken as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# The list's filters, each a condition on a bound parameter of its own name.
_FILTERS: dict[str, ColumnElement[bool]] = {
    "status": Call.status == bindparam("status"),
    "direction": Call.direction == bindparam("direction"),
    "phone_number_id": Call.phone_number_id == bindparam("phone_number_id"),
    "ai_profile_id": Call.ai_profile_id == bindparam("ai_profile_id"),
    "started_after": Call.started_at >= bindparam("started_after"),
    "started_before": Call.started_at < bindparam("started_before"),
}


def _as_sent(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A UUID column read as its text, which is what a page sends: psycopg2 turns each UUID into
    a Python object in Python code, 84 of them per page (8% of the list's time)."""
    if isinstance(column.type, Uuid):
        return cast_(column, String).label(column.key)
    return column


def _given(filters: CallFilters) -> dict[str, Any]:
    """The filters that were given, as the bound parameters of their `_FILTERS` conditions."""
    return {
        name: _utc(value) if isinstance(value, datetime) else value
        for name in _FILTERS
        if (value := getattr(filters, name)) is not None
    }


def apply_call_filters(
    statement: Select[Any], filters: CallFilters
) -> tuple[Select[Any], dict[str, Any]]:
    """`statement` narrowed by the given filters exactly as the call list is, and the values to
    bind (the CSV export lists what the list would)."""
    given = _given(filters)
    return statement.where(*(_FILTERS[name] for name in given)), given


@lru_cache(maxsize=2 ** len(_FILTERS))  # every subset, in `_FILTERS` order
def _call_pages(filters: tuple[str, ...]) -> PageStatements:
    """The list's statements for one combination of filters (in `_FILTERS` order)."""
    statement = select(*(_as_sent(column) for column in cast(Table, Call.__table__).c)).where(
        scope_param_filter(Call)
    )
    for name in filters:
        statement = statement.where(_FILTERS[name])
    return page_statements(statement, Call)


def twilio_client() -> TwilioRest:
    """A Twilio REST client from the settings (the caller has checked telephony is configured)."""
    return TwilioRest(
        account_sid=settings.TWILIO_ACCOUNT_SID or "",
        auth_token=settings.TWILIO_AUTH_TOKEN or "",
        api_base_url=settings.TWILIO_API_BASE_URL,
        timeout_seconds=TWILIO_TIMEOUT_SECONDS,
    )


class CallService:
    def __init__(self, session: Session, scope: TenantScope) -> None:
        self.session = session
        self.scope = scope

    def list(self, filters: CallFilters, *, limit: int, cursor: str | None) -> PageResult[Any]:
        """One page of the tenant's calls (a dict of every column of `calls` each) matching every
        given filter, newest first."""
        given = _given(filters)
        return run_page(
            self.session,
            _call_pages(tuple(given)),
            scope_params(self.scope, **given),
            limit=limit,
            cursor=cursor,
            as_dicts=True,
        )

    def get(self, call_id: uuid.UUID) -> tuple[Call, Sequence[CallTurn]]:
        """The call and its transcript turns by seq (two queries), or 404 (also another tenant's)."""
        call = get_scoped(self.session, Call, self.scope, call_id, what="Call")
        turns = list(self.session.scalars(TURNS_OF_CALL, scope_params(self.scope, call_id=call.id)))
        return call, turns

    def create_outbound(self, data: OutboundCallCreate) -> Call:
        """Place a call through Twilio from one of the tenant's numbers; the call is `queued`.

        The plan's limits are checked under the tenant row lock, held until the call row is
        committed, so concurrent creates never exceed the concurrent-call limit. If Twilio refuses
        (502 provider_error) the exception rolls the transaction back: no call row remains.
        """
        require_telephony()
        to = normalize_e164(data.to, field="to")
        number = get_scoped(
            self.session, PhoneNumber, self.scope, data.phone_number_id, what="Phone number"
        )
        if number.status != "active":
            raise PhoneNumberInactive()
        if data.ai_profile_id is not None:
            profile: AIProfile | None = get_scoped(
                self.session, AIProfile, self.scope, data.ai_profile_id, what="AI profile"
            )
        else:
            profile = resolve_ai_profile(self.session, self.scope, number.ai_profile_id)
        if profile is None:
            raise NoAIProfile()

        tenant = lock_tenant(self.session, self.scope.tenant_id)
        if tenant is None:
            raise NotFound("Tenant not found.")
        reason = call_limit_violation(self.session, tenant)
        if reason == REJECT_TENANT_SUSPENDED:
            raise TenantSuspended()
        if reason == REJECT_CONCURRENCY_LIMIT:
            plan = get_plan(tenant.plan)
            raise ConcurrencyLimitReached(
                f"The {plan.name.value} plan allows {plan.max_concurrent_calls} concurrent call(s).",
                headers={"Retry-After": str(CONCURRENCY_RETRY_AFTER_SECONDS)},
            )
        if reason == REJECT_MINUTES_EXHAUSTED:
            raise MinutesExhausted()

        call = Call(
            tenant_id=self.scope.tenant_id,
            phone_number_id=number.id,
            ai_profile_id=profile.id,
            direction="outbound",
            status="queued",
            from_number=number.number,
            to_number=to,
            started_at=utcnow(),
            billable_minutes=0,
        )
        self.session.add(call)
        self.session.flush()

        base = settings.PUBLIC_BASE_URL or ""
        try:
            call.provider_call_sid = twilio_client().create_call(
                to=to,
                from_=number.number,
                url=public_url(base, VOICE_PATH, ""),
                status_callback=public_url(base, STATUS_PATH, ""),
                status_callback_events=STATUS_CALLBACK_EVENTS,
            )
        except TwilioAPIError as exc:
            logger.warning("Twilio refused an outbound call", extra={"error": str(exc)})
            raise ProviderError(f"Twilio: {exc.message}") from exc
        self.session.flush()
        return call
