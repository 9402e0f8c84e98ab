"""Twilio's side of a call: routing inbound calls, the plan's call limits, the status state machine.

Twilio is authenticated by its request signature (app/telephony/request.py), not by an API key, so
these entry points find the tenant themselves: by the dialled number or by the CallSid, each through
a pinned SQL function that also binds the transaction to that tenant for everything else.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    Table,
    bindparam,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session
from twilio.twiml.voice_response import VoiceResponse

from app.config.database import prepared
from app.config.settings import settings
from app.models import AIProfile, Call, CallTurn, Tenant, UsageRecord
from app.models.base import new_id, utcnow
from app.plans import PLANS, Plan, get_plan
from app.schemas.calls import CallOut, CallTurnOut
from app.services import events
from app.services.scope import (
    Principal,
    Role,
    TenantScope,
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

# The width of calls.provider_call_sid; Twilio's SIDs are 34 characters.
MAX_CALL_SID_LENGTH = 64

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

# end_reason of a call refused before it was answered: what `call_limit_violation` and
# `answer_inbound_call` (migration 0006) write and return.
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


def _plan_limits(plan: Plan) -> dict[str, Any]:
    return {
        "max_concurrent_calls": plan.max_concurrent_calls,
        "included_minutes": plan.included_minutes,
        "rejects_when_minutes_run_out": plan.rejects_when_minutes_run_out,
    }


# The plan catalogue as the SQL functions read it (app/plans.py stays its one definition).
_PLAN_LIMITS_JSON = {plan.name.value: json.dumps(_plan_limits(plan)) for plan in PLANS.values()}
_ALL_PLAN_LIMITS_JSON = json.dumps({plan.name.value: _plan_limits(plan) for plan in PLANS.values()})


def _limit_params(now: datetime) -> dict[str, Any]:
    return {
        "ring_cutoff": now - RING_TIMEOUT,
        "talk_cutoff": now - LONGEST_CALL,
        "period": billing_period(now),
    }


# The rule itself is the SQL function `call_limit_violation` (migration 0006), which the inbound
# path runs inside `answer_inbound_call`: one definition for both directions.
_CALL_LIMIT_VIOLATION = prepared(
    select(
        func.call_limit_violation(
            bindparam("tenant_id"),
            bindparam("tenant_status"),
            bindparam("limits"),
            bindparam("ring_cutoff"),
            bindparam("talk_cutoff"),
            bindparam("period"),
        )
    )
)


def call_limit_violation(session: Session, tenant: Tenant) -> str | None:
    """Why `tenant` may not start another call now (an end_reason), or None if it may.

    Exact under concurrency only if the caller holds the tenant row lock (`lock_tenant`) from
    before this check until its new call is flushed: the count and the insert are then serialized
    per tenant, so N racing calls against a limit of k admit exactly k.
    """
    params = {
        "tenant_id": tenant.id,
        "tenant_status": tenant.status,
        "limits": _PLAN_LIMITS_JSON[get_plan(tenant.plan).name.value],
        **_limit_params(utcnow()),
    }
    reason: str | None = session.scalar(_CALL_LIMIT_VIOLATION, params)
    return reason


_CALL_BY_SID_FOR_UPDATE = prepared(
    scoped_template(Call).where(Call.provider_call_sid == bindparam("call_sid")).with_for_update()
)
_PROFILE_BY_ID = prepared(scoped_template(AIProfile).where(AIProfile.id == bindparam("profile_id")))
_DEFAULT_PROFILE = prepared(
    scoped_template(AIProfile).where(AIProfile.is_default.is_(True)).limit(1)
)


@dataclass(frozen=True)
class AnsweringProfile:
    """What the TwiML of an admitted call needs from its AI profile."""

    id: uuid.UUID
    greeting: str | None
    language: str
    voice: str | None


_ANSWER_ROW = func.answer_inbound_call(
    bindparam("call_id"),
    bindparam("call_sid"),
    bindparam("to_number"),
    bindparam("from_number"),
    bindparam("outbound"),
    bindparam("plans"),
    bindparam("now"),
    bindparam("ring_cutoff"),
    bindparam("talk_cutoff"),
    bindparam("period"),
).table_valued(
    "outcome", "call_id", "call_status", "ai_profile_id", "greeting", "language", "voice"
)
_ANSWER_INBOUND_CALL = prepared(select(*_ANSWER_ROW.c))


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
        if not call_sid or len(call_sid) > MAX_CALL_SID_LENGTH:
            # Not a SID of Twilio's (34 characters): no call could be recorded under it.
            logger.warning("voice webhook without a usable CallSid", extra={"sid": call_sid[:80]})
            return twiml.reject("rejected")
        now = utcnow()
        row = self.session.execute(
            _ANSWER_INBOUND_CALL,
            {
                "call_id": new_id(),
                "call_sid": call_sid,
                "to_number": form.get("To", "").strip(),
                "from_number": form.get("From", "").strip()[:32] or "unknown",
                "outbound": form.get("Direction", "inbound").startswith("outbound"),
                "plans": _ALL_PLAN_LIMITS_JSON,
                "now": now,
                **_limit_params(now),
            },
        ).one()
        if row.outcome == "unknown_outbound":
            # Twilio asks for TwiML of an outbound call we have no row for (placed elsewhere).
            logger.warning("voice webhook for an unknown outbound call", extra={"sid": call_sid})
            return twiml.hangup()
        if row.outcome == "unrouted":
            logger.info("inbound call to an unrouted number", extra={"sid": call_sid})
            return twiml.reject("rejected")
        if row.call_status == "rejected":
            if row.outcome == "created":
                logger.info("inbound call rejected", extra={"call_id": str(row.call_id)})
            return twiml.reject("busy")
        if row.call_status in TERMINAL_STATUSES or row.ai_profile_id is None:
            return twiml.hangup()
        profile = AnsweringProfile(row.ai_profile_id, row.greeting, row.language, row.voice)
        return relay_twiml(row.call_id, profile)

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
