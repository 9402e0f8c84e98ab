"""Twilio's side of a call: routing inbound calls, the plan's call limits, the status state machine.

Twilio is authenticated by its request signature (app/telephony/request.py), not by an API key, so
these entry points find the tenant themselves: by the dialled number or by the CallSid, each through
a pinned SQL function that also binds the transaction to that tenant for everything else.
"""

from __future__ import annotations

import logging
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Select,
    Table,
    and_,
    bindparam,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session
from twilio.twiml.voice_response import VoiceResponse

from app.config.database import prepared
from app.config.settings import settings
from app.models import AIProfile, Call, CallTurn, Tenant, UsageRecord
from app.models.base import new_id, utcnow
from app.models.call import RINGING_STATUSES, TALKING_STATUS
from app.plans import get_plan
from app.schemas.calls import CallOut, CallTurnOut
from app.services import events
from app.services.scope import (
    Principal,
    Role,
    TenantScope,
    scope_param_filter,
    scope_params,
    scoped_template,
)
from app.telephony import twiml
from app.telephony.signature import public_url, websocket_url

logger = logging.getLogger("vca.telephony")

RELAY_PATH = "/telephony/twilio/relay"
RELAY_ACTION_PATH = "/telephony/twilio/relay-action"
VOICE_PATH = "/telephony/twilio/voice"
STATUS_PATH = "/telephony/twilio/status"

# The answer to a callback that needs no instructions.
EMPTY_TWIML = str(VoiceResponse())

TERMINAL_STATUSES = frozenset({"completed", "busy", "no_answer", "failed", "canceled", "rejected"})
# A call only moves forward: queued < ringing < in_progress < any terminal status.
_RANK = {"queued": 0, "ringing": 1, "in_progress": 2}
_TERMINAL_RANK = 3

# Twilio's CallStatus values (and "initiated", the status of the `initiated` event) -> ours.
TWILIO_CALL_STATUSES = {
    "queued": "queued",
    "initiated": "queued",
    "ringing": "ringing",
    "in-progress": "in_progress",
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "failed",
    "canceled": "canceled",
}

# end_reason of a call refused before it was answered.
REJECT_TENANT_SUSPENDED = "tenant_suspended"
REJECT_CONCURRENCY_LIMIT = "concurrency_limit"
REJECT_MINUTES_EXHAUSTED = "minutes_exhausted"
REJECT_NO_AI_PROFILE = "no_ai_profile"


def rank(status: str) -> int:
    return _TERMINAL_RANK if status in TERMINAL_STATUSES else _RANK[status]


def billing_period(moment: datetime) -> str:
    """The UTC month `moment` falls in, as YYYY-MM (the usage_records period)."""
    return moment.astimezone(UTC).strftime("%Y-%m")


def telephony_scope(tenant: Tenant) -> TenantScope:
    """The scope Twilio acts in once a signed request has been routed to `tenant`."""
    return TenantScope(
        tenant_id=tenant.id,
        principal=Principal(role=Role.admin, tenant_id=tenant.id),
        tenant_status=tenant.status,
        plan=tenant.plan,
    )


@dataclass(frozen=True)
class RoutableNumber:
    id: uuid.UUID
    tenant_id: uuid.UUID
    number: str
    status: str
    ai_profile_id: uuid.UUID | None


@dataclass(frozen=True)
class LockedTenant:
    """A tenant as read under its row lock, held until the transaction ends."""

    id: uuid.UUID
    status: str
    plan: str


@dataclass(frozen=True)
class VoiceRoute:
    """What a voice webhook found: the tenant of a call already known by its CallSid (a retry,
    or an outbound call being answered), or the dialled number with its tenant, locked when the
    number is active."""

    known_call_tenant_id: uuid.UUID | None
    number: RoutableNumber | None
    tenant: LockedTenant | None


_ROUTE_VOICE_ROW = func.route_inbound_call(
    bindparam("call_sid"), bindparam("to_number")
).table_valued(
    "known_tenant_id",
    "number_id",
    "tenant_id",
    "number",
    "number_status",
    "ai_profile_id",
    "tenant_status",
    "tenant_plan",
)
_ROUTE_VOICE = prepared(select(*_ROUTE_VOICE_ROW.c))


def route_voice(session: Session, call_sid: str, to_number: str) -> VoiceRoute:
    """Route a voice webhook in one round trip and bind the transaction to the tenant found.

    The cross-tenant lookups (the CallSid, then `To`) run in the SQL function
    `route_inbound_call` (migration 0004), which also takes the tenant row lock for an active
    number: the limit check and the insert that follow are serialized per tenant.
    """
    row = session.execute(_ROUTE_VOICE, {"call_sid": call_sid, "to_number": to_number}).one()
    number = (
        RoutableNumber(
            row.number_id, row.tenant_id, row.number, row.number_status, row.ai_profile_id
        )
        if row.number_id is not None
        else None
    )
    tenant = (
        LockedTenant(row.tenant_id, row.tenant_status, row.tenant_plan)
        if row.tenant_status is not None
        else None
    )
    return VoiceRoute(known_call_tenant_id=row.known_tenant_id, number=number, tenant=tenant)


_BIND_CALL_SID = prepared(select(func.bind_call_sid(bindparam("call_sid"))))


def bind_call_sid(session: Session, call_sid: str) -> uuid.UUID | None:
    """The tenant owning the call with Twilio CallSid `call_sid`, or None if no call has it.

    The transaction is then bound to that tenant (SQL function `bind_call_sid`, migration 0004):
    the lookup and the binding cost one round trip.
    """
    return session.scalar(_BIND_CALL_SID, {"call_sid": call_sid})


# A call whose final status callback never arrived would hold a line forever (on the free plan,
# the tenant's only one). A call still unanswered after RING_TIMEOUT, or talking longer than any
# profile allows (14,400 s) plus a margin, is stale and no longer counts. Ringing counts from the
# call's creation, talking from its answer (a CHECK guarantees a talking call has answered_at).
RING_TIMEOUT = timedelta(minutes=3)
LONGEST_CALL = timedelta(seconds=14_400) + timedelta(minutes=5)


def _status_in(statuses: tuple[str, ...]) -> ColumnElement[bool]:
    """`status IN ('a', 'b')` with the values in the SQL text: it then matches the partial
    indexes' predicates as written, and needs no per-execution expansion of a bound list."""
    return Call.status.in_([literal_column(f"'{status}'") for status in statuses])


def _count(*conditions: ColumnElement[bool]) -> ScalarSelect[int]:
    return (
        select(func.count())
        .select_from(Call)
        .where(scope_param_filter(Call), *conditions)
        .scalar_subquery()
    )


# Two counts, each a range scan of its partial index (migration 0005): calls left ringing or
# talking long ago are outside the range and cost nothing.
_ACTIVE_CALLS = (
    _count(_status_in(RINGING_STATUSES), Call.created_at > bindparam("ring_cutoff"))
    + _count(_status_in((TALKING_STATUS,)), Call.answered_at > bindparam("talk_cutoff"))
).label("active_calls")
_MINUTES_USED = (
    select(func.coalesce(func.sum(UsageRecord.minutes), 0))
    .where(scope_param_filter(UsageRecord), UsageRecord.period == bindparam("period"))
    .scalar_subquery()
    .label("minutes_used")
)
_NOT_METERED = literal(0).label("minutes_used")
# What the limits need, in one statement; the month's minutes only for plans that stop on them.
_LIMIT_COUNTS = {
    True: prepared(select(_ACTIVE_CALLS, _MINUTES_USED)),
    False: prepared(select(_ACTIVE_CALLS, _NOT_METERED)),
}


def _limit_params(tenant_id: uuid.UUID) -> dict[str, Any]:
    now = utcnow()
    return scope_params(
        tenant_id,
        ring_cutoff=now - RING_TIMEOUT,
        talk_cutoff=now - LONGEST_CALL,
        period=billing_period(now),
    )


def _check_limits(
    session: Session, tenant: Tenant | LockedTenant, statements: dict[bool, Any], **params: Any
) -> tuple[str | None, Any]:
    """Run the limit statement for `tenant`'s plan; (the end_reason refusing a call or None,
    the row read). A suspended tenant is refused without a query."""
    if tenant.status == "suspended":
        return REJECT_TENANT_SUSPENDED, None
    plan = get_plan(tenant.plan)
    statement = statements[plan.rejects_when_minutes_run_out]
    row = session.execute(statement, {**_limit_params(tenant.id), **params}).one()
    if row.active_calls >= plan.max_concurrent_calls:
        return REJECT_CONCURRENCY_LIMIT, row
    if plan.rejects_when_minutes_run_out and row.minutes_used >= plan.included_minutes:
        return REJECT_MINUTES_EXHAUSTED, row
    return None, row


def call_limit_violation(session: Session, tenant: Tenant | LockedTenant) -> str | None:
    """Why `tenant` may not start another call now (an end_reason), or None if it may.

    Exact under concurrency only if the caller holds the tenant row lock (`lock_tenant`) from
    before this check until its new call is flushed: the count and the insert are then serialized
    per tenant, so N racing calls against a limit of k admit exactly k.
    """
    return _check_limits(session, tenant, _LIMIT_COUNTS)[0]


_CALL_BY_SID = prepared(
    scoped_template(Call).where(Call.provider_call_sid == bindparam("call_sid"))
)
_CALL_BY_SID_FOR_UPDATE = _CALL_BY_SID.with_for_update()
_PROFILE_BY_ID = prepared(scoped_template(AIProfile).where(AIProfile.id == bindparam("profile_id")))
_DEFAULT_PROFILE = prepared(
    scoped_template(AIProfile).where(AIProfile.is_default.is_(True)).limit(1)
)
# The limits and the profile of an inbound call in one statement: the number's profile if it
# has one, else the tenant's default (the one row; no profile at all leaves it NULL).
_ONE_ROW = select(literal(1).label("one")).subquery()


@dataclass(frozen=True)
class AnsweringProfile:
    """What the TwiML of an admitted call needs from its AI profile."""

    id: uuid.UUID
    greeting: str | None
    language: str
    voice: str | None


def _admission(metered: bool) -> Select[Any]:
    counts = (_ACTIVE_CALLS, _MINUTES_USED if metered else _NOT_METERED)
    profile = (
        AIProfile.id.label("answering_id"),
        AIProfile.greeting.label("answering_greeting"),
        AIProfile.language.label("answering_language"),
        AIProfile.voice.label("answering_voice"),
    )
    return (
        select(*counts, *profile)
        .select_from(_ONE_ROW)
        .outerjoin(
            AIProfile,
            and_(
                scope_param_filter(AIProfile),
                or_(AIProfile.id == bindparam("profile_id"), AIProfile.is_default.is_(True)),
            ),
        )
        .order_by((AIProfile.id == bindparam("profile_id")).desc().nulls_last())
        .limit(1)
    )


_ADMISSION = {True: prepared(_admission(True)), False: prepared(_admission(False))}


def admit_inbound_call(
    session: Session, tenant: LockedTenant, number_profile_id: uuid.UUID | None
) -> tuple[str | None, AnsweringProfile | None]:
    """The reason an inbound call is refused (or None) and the profile that answers it.

    The caller holds the tenant row lock (`route_voice`), as `call_limit_violation` requires.
    """
    reason, row = _check_limits(session, tenant, _ADMISSION, profile_id=number_profile_id)
    if reason is not None:
        return reason, None
    if row.answering_id is None:
        return REJECT_NO_AI_PROFILE, None
    return None, AnsweringProfile(
        row.answering_id, row.answering_greeting, row.answering_language, row.answering_voice
    )


def resolve_ai_profile(
    session: Session,
    scope: TenantScope,
    number_profile_id: uuid.UUID | None,
) -> AIProfile | None:
    """The number's profile if it has one, else the tenant's default profile, else None."""
    if number_profile_id is not None:
        profile = session.scalars(
            _PROFILE_BY_ID, scope_params(scope, profile_id=number_profile_id)
        ).one_or_none()
        if profile is not None:
            return profile
    return session.scalars(_DEFAULT_PROFILE, scope_params(scope)).first()


def relay_twiml(call_id: uuid.UUID, profile: AIProfile | AnsweringProfile) -> str:
    """The ConversationRelay TwiML that connects `call` to our WebSocket with `profile`'s voice."""
    before, after = _relay_twiml_around_call_id(
        settings.PUBLIC_BASE_URL or "", profile.greeting or None, profile.language, profile.voice
    )
    return before + str(call_id) + after  # a UUID's text needs no XML escaping


# Where the call id goes: random, so no profile text can contain it.
_CALL_ID_SLOT = "call-id-" + secrets.token_hex(16)


@lru_cache(maxsize=1024)
def _relay_twiml_around_call_id(
    base: str, greeting: str | None, language: str, voice: str | None
) -> tuple[str, str]:
    """A profile's ConversationRelay TwiML, built once (by `twiml.conversation_relay`, which
    escapes it) and split where the call's id goes: every admitted call answers with it."""
    document = twiml.conversation_relay(
        ws_url=websocket_url(base, RELAY_PATH),
        welcome_greeting=greeting,
        language=language,
        voice=voice or None,
        parameters={"call_id": _CALL_ID_SLOT},
        action_url=public_url(base, RELAY_ACTION_PATH, ""),
    )
    before, after = document.split(_CALL_ID_SLOT)
    return before, after


def call_ended_data(call: Call, turns: list[CallTurn]) -> dict[str, Any]:
    """The `call.ended` event payload: the call as the API shows it, and its transcript."""
    return {
        "call": CallOut.model_validate(call).model_dump(mode="json"),
        "transcript": [
            CallTurnOut.model_validate(turn).model_dump(
                mode="json", include={"seq", "role", "text", "interrupted", "latency_ms"}
            )
            for turn in turns
        ],
    }


def _parse_duration(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


# ON CONFLICT: a retry of a CallSid racing its first delivery waits for the tenant lock, then
# finds the committed row and answers with that call instead.
# Core, not ORM: the ORM's bulk-insert machinery cost more Python time than the round trip.
_CALLS = cast(Table, Call.__table__)
_INSERT_CALL = prepared(
    pg_insert(_CALLS)
    .on_conflict_do_nothing(index_elements=[_CALLS.c.provider_call_sid])
    .returning(_CALLS.c.id)
)


_USAGE = cast(Table, UsageRecord.__table__)
_INSERT_USAGE = prepared(
    pg_insert(_USAGE).on_conflict_do_nothing(index_elements=[_USAGE.c.tenant_id, _USAGE.c.call_id])
)
# A call's transcript in order (run with `scope_params(tenant, call_id=...)`).
TURNS_OF_CALL = prepared(
    scoped_template(CallTurn).where(CallTurn.call_id == bindparam("call_id")).order_by(CallTurn.seq)
)


class TelephonyService:
    """Handles Twilio's webhooks. Each method runs inside the request's one transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- voice webhook -------------------------------------------------------------------------

    def answer_voice(self, form: dict[str, str]) -> str:
        """The TwiML answering a (signed) voice webhook; records the inbound call it routes.

        Guarantees: an unknown or inactive `To` is rejected and nothing is stored (no tenant would
        own the row); a refused call is stored as `rejected` with its end_reason; an admitted one
        as `ringing`; a CallSid already known (a Twilio retry, or an outbound call we placed being
        answered) creates nothing and gets the TwiML of the existing call.
        """
        call_sid = form.get("CallSid", "").strip()
        to_number = form.get("To", "").strip()
        if not call_sid:
            logger.warning("voice webhook without CallSid")
            return twiml.reject("rejected")

        route = route_voice(self.session, call_sid, to_number)
        if route.known_call_tenant_id is not None:
            existing = self._call_by_sid(route.known_call_tenant_id, call_sid)
            if existing is not None:
                return self._twiml_for_existing(existing)

        if form.get("Direction", "inbound").startswith("outbound"):
            # Twilio asks for TwiML of an outbound call we have no row for (placed elsewhere).
            logger.warning("voice webhook for an unknown outbound call", extra={"sid": call_sid})
            return twiml.hangup()

        number, tenant = route.number, route.tenant
        if number is None or number.status != "active" or tenant is None:
            logger.info("inbound call to an unrouted number", extra={"sid": call_sid})
            return twiml.reject("rejected")

        reason, profile = admit_inbound_call(self.session, tenant, number.ai_profile_id)

        now = utcnow()
        call_id = new_id()
        inserted = self.session.scalar(
            _INSERT_CALL,
            {
                "id": call_id,
                "tenant_id": tenant.id,
                "phone_number_id": number.id,
                "ai_profile_id": profile.id if profile is not None else None,
                "direction": "inbound",
                "status": "rejected" if reason else "ringing",
                "from_number": form.get("From", "").strip()[:32] or "unknown",
                "to_number": number.number,
                "provider_call_sid": call_sid,
                "started_at": now,
                "ended_at": now if reason else None,
                "duration_seconds": 0 if reason else None,
                "billable_minutes": 0,
                "end_reason": reason,
                "created_at": now,
                "updated_at": now,
            },
        )
        if inserted is None:
            existing = self._call_by_sid(tenant.id, call_sid)
            if existing is not None:
                return self._twiml_for_existing(existing)
            logger.warning("CallSid already used by another tenant", extra={"sid": call_sid})
            return twiml.reject("rejected")

        if reason is not None or profile is None:
            logger.info("inbound call rejected", extra={"reason": reason, "call_id": str(call_id)})
            return twiml.reject("busy")
        return relay_twiml(call_id, profile)

    def _call_by_sid(self, tenant_id: uuid.UUID, call_sid: str) -> Call | None:
        return self.session.scalars(
            _CALL_BY_SID, scope_params(tenant_id, call_sid=call_sid)
        ).one_or_none()

    def _twiml_for_existing(self, call: Call) -> str:
        if call.status == "rejected":
            return twiml.reject("busy")
        if call.status in TERMINAL_STATUSES or call.ai_profile_id is None:
            return twiml.hangup()
        profile = self.session.scalars(
            _PROFILE_BY_ID, scope_params(call.tenant_id, profile_id=call.ai_profile_id)
        ).one_or_none()
        if profile is None:
            return twiml.hangup()
        return relay_twiml(call.id, profile)

    # -- status callback -----------------------------------------------------------------------

    def apply_status_callback(self, form: dict[str, str]) -> None:
        """Apply a (signed) status callback to its call; unknown calls and statuses are ignored.

        Guarantees (see `transition`): calls only move forward, terminal statuses are final, and
        the end of a call is metered and announced exactly once whatever the callbacks' order.
        """
        call_sid = form.get("CallSid", "").strip()
        raw_status = form.get("CallStatus", "").strip()
        status = TWILIO_CALL_STATUSES.get(raw_status)
        if not call_sid or status is None:
            logger.warning(
                "status callback ignored", extra={"sid": call_sid, "call_status": raw_status}
            )
            return
        tenant_id = bind_call_sid(self.session, call_sid)
        if tenant_id is None:
            logger.warning("status callback for an unknown CallSid", extra={"sid": call_sid})
            return
        call = self.session.scalars(
            _CALL_BY_SID_FOR_UPDATE, scope_params(tenant_id, call_sid=call_sid)
        ).one_or_none()
        if call is None:
            return
        self.transition(call, status, duration_seconds=_parse_duration(form.get("CallDuration")))

    def transition(self, call: Call, status: str, *, duration_seconds: int | None = None) -> bool:
        """Move `call` to `status` if that is a step forward; returns whether anything changed.

        The caller must hold the call's row lock (`SELECT ... FOR UPDATE`) in a transaction bound
        to the call's tenant: with the terminal check below, that makes the end of a call happen
        once. `in_progress` sets answered_at. A terminal status sets ended_at, duration_seconds,
        billable_minutes (ceil(duration / 60), only for a call that connected), one usage record
        for the UTC month of ended_at, and emits `call.ended`.
        """
        if call.status in TERMINAL_STATUSES or rank(status) <= rank(call.status):
            return False
        now = utcnow()
        call.status = status
        if status == "in_progress":
            call.answered_at = call.answered_at or now
        if status in TERMINAL_STATUSES:
            self._end(call, status, duration_seconds, now)
        self.session.flush()
        return True

    def _end(self, call: Call, status: str, duration_seconds: int | None, now: datetime) -> None:
        if duration_seconds is None:
            # No CallDuration: measure from the answer, if there was one.
            answered = call.answered_at
            duration_seconds = int((now - answered).total_seconds()) if answered else 0
        connected = duration_seconds > 0 and (call.answered_at is not None or status == "completed")
        if connected and call.answered_at is None:
            call.answered_at = now - timedelta(seconds=duration_seconds)
        call.ended_at = now
        call.duration_seconds = duration_seconds
        call.billable_minutes = math.ceil(duration_seconds / 60) if connected else 0
        self.session.flush()
        # Unique (tenant_id, call_id): even a second path to this point could not meter twice.
        self.session.execute(
            _INSERT_USAGE,
            {
                "id": new_id(),
                "tenant_id": call.tenant_id,
                "call_id": call.id,
                "period": billing_period(now),
                "minutes": call.billable_minutes,
                "created_at": now,
                "updated_at": now,
            },
        )
        turns = list(
            self.session.scalars(TURNS_OF_CALL, scope_params(call.tenant_id, call_id=call.id))
        )
        events.emit_event(self.session, call.tenant_id, "call.ended", call_ended_data(call, turns))
