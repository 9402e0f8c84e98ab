"""A tenant's calls: the list with filters, the detail with its transcript, and outbound calls."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, String, Table, Uuid, func, literal, select
from sqlalchemy import cast as cast_
from sqlalchemy.orm import Session

from app import metrics
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
from app.models.call import CallStatus
from app.schemas.calls import CallFilters, OutboundCallCreate
from app.services.pagination import PageResult, paginate
from app.services.scope import TenantScope, get_scoped, lock_tenant, tenant_filter
from app.services.telephony import (
    REJECT_CONCURRENCY_LIMIT,
    REJECT_MINUTES_EXHAUSTED,
    REJECT_TENANT_SUSPENDED,
    call_limit_violation,
    turns_of_call,
)
from app.telephony.numbers import normalize_e164
from app.telephony.rest import TwilioAPIError, TwilioRest, require_telephony
from app.telephony.urls import TwilioUrls

logger = logging.getLogger("vca.calls")

STATUS_CALLBACK_EVENTS = ["initiated", "ringing", "answered", "completed"]
# Bounds how long an outbound create waits for Twilio's answer (no lock is held meanwhile).
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


# The list's filters: the condition each puts on its value (timestamps are aware: app/schemas).
_FILTERS: dict[str, Callable[[Any], ColumnElement[bool]]] = {
    "status": lambda value: Call.status == value,
    "direction": lambda value: Call.direction == value,
    "phone_number_id": lambda value: Call.phone_number_id == value,
    "ai_profile_id": lambda value: Call.ai_profile_id == value,
    "started_after": lambda value: Call.started_at >= value,
    "started_before": lambda value: Call.started_at < value,
}


def _as_sent(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A UUID column read as its text, which is what a page sends: the driver would turn each
    UUID into a Python object only for the response to turn it back (84 per page)."""
    if isinstance(column.type, Uuid):
        return cast_(column, String).label(column.key)
    return column


# The list's SELECT, built once (its 22 columns cost 15 µs to coerce on every request).
_CALL_LIST = select(*(_as_sent(column) for column in cast(Table, Call.__table__).c))


def apply_call_filters(statement: Select[Any], filters: CallFilters) -> Select[Any]:
    """`statement` narrowed by the given filters, as the call list is (the CSV export lists
    what the list would)."""
    for name, condition in _FILTERS.items():
        if (value := getattr(filters, name)) is not None:
            statement = statement.where(condition(value))
    return statement


@lru_cache(maxsize=4)
def _twilio(account_sid: str, auth_token: str, api_base_url: str | None) -> TwilioRest:
    return TwilioRest(
        account_sid=account_sid,
        auth_token=auth_token,
        api_base_url=api_base_url,
        timeout_seconds=TWILIO_TIMEOUT_SECONDS,
    )


def twilio_client() -> TwilioRest:
    """The process's one Twilio REST client (its connection pool is shared by every request);
    the caller has checked that telephony is configured."""
    return _twilio(
        settings.TWILIO_ACCOUNT_SID or "",
        settings.TWILIO_AUTH_TOKEN or "",
        settings.TWILIO_API_BASE_URL,
    )


class CallService:
    def __init__(self, session: Session, scope: TenantScope) -> None:
        self.session = session
        self.scope = scope

    def list(self, filters: CallFilters, *, limit: int, cursor: str | None) -> PageResult[Any]:
        """One page of the tenant's calls (a dict of every column of `calls` each) matching every
        given filter, newest first."""
        statement = apply_call_filters(_CALL_LIST.where(tenant_filter(Call, self.scope)), filters)
        return paginate(self.session, statement, Call, limit=limit, cursor=cursor, as_dicts=True)

    def get(self, call_id: uuid.UUID) -> tuple[Call, Sequence[CallTurn]]:
        """The call and its transcript turns by seq (two queries), or 404 (also another tenant's)."""
        call = get_scoped(self.session, Call, self.scope, call_id, what="Call")
        return call, turns_of_call(self.session, self.scope, call.id)

    def create_outbound(self, data: OutboundCallCreate, urls: TwilioUrls) -> Call:
        """Place a call through Twilio from one of the tenant's numbers; the call is `queued`.

        The plan's limits are checked under the tenant row lock and the call row is committed at
        once (the reservation counts against the limit), so concurrent creates never exceed the
        concurrent-call limit, and Twilio's answer (up to its timeout) is awaited with no lock
        held: inbound calls of the tenant are admitted meanwhile. The one service method that
        commits, for that reason. If Twilio refuses (502 provider_error) the reservation is
        deleted: no call row remains.
        """
        require_telephony()
        to = normalize_e164(data.to, field="to")
        number = get_scoped(
            self.session, PhoneNumber, self.scope, data.phone_number_id, what="Phone number"
        )
        if number.status != "active":
            raise PhoneNumberInactive()
        if data.ai_profile_id is not None:
            profile = get_scoped(
                self.session, AIProfile, self.scope, data.ai_profile_id, what="AI profile"
            )
        else:
            profile_id = self.session.scalar(
                select(
                    func.answering_profile(
                        self.scope.tenant_id, cast_(literal(number.ai_profile_id), Uuid)
                    )
                )
            )
            if profile_id is None:
                raise NoAIProfile()
            profile = get_scoped(self.session, AIProfile, self.scope, profile_id, what="AI profile")

        call = self._reserve(number, profile, to)
        self.session.commit()  # releases the tenant lock
        try:
            call.provider_call_sid = twilio_client().create_call(
                to=to,
                from_=number.number,
                url=urls.voice,
                status_callback=urls.status,
                status_callback_events=STATUS_CALLBACK_EVENTS,
            )
        except TwilioAPIError as exc:
            logger.warning("Twilio refused an outbound call", extra={"error": str(exc)})
            self.session.delete(call)
            self.session.commit()
            raise ProviderError(f"Twilio: {exc.message}") from exc
        self.session.flush()
        return call

    def _reserve(self, number: PhoneNumber, profile: AIProfile, to: str) -> Call:
        """The new `queued` call, if the plan admits it now (checked under the tenant lock)."""
        tenant = lock_tenant(self.session, self.scope.tenant_id)
        if tenant is None:
            raise NotFound("Tenant not found.")
        reason = call_limit_violation(self.session, tenant)
        metrics.CALLS.labels("outbound", reason or "admitted").inc()
        if reason == REJECT_TENANT_SUSPENDED:
            raise TenantSuspended()
        if reason == REJECT_CONCURRENCY_LIMIT:
            raise ConcurrencyLimitReached(
                f"The {tenant.plan} plan's concurrent-call limit is reached.",
                headers={"Retry-After": str(CONCURRENCY_RETRY_AFTER_SECONDS)},
            )
        if reason == REJECT_MINUTES_EXHAUSTED:
            raise MinutesExhausted()
        call = Call(
            tenant_id=self.scope.tenant_id,
            phone_number_id=number.id,
            ai_profile_id=profile.id,
            direction="outbound",
            status=CallStatus.queued,
            from_number=number.number,
            to_number=to,
            started_at=utcnow(),
            billable_minutes=0,
        )
        self.session.add(call)
        self.session.flush()
        return call
