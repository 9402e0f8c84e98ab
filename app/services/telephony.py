"""Twilio's side of a call: routing inbound calls, the plan's call limits, the status state machine.

Twilio is authenticated by its request signature (app/telephony/request.py), not by an API key, so
these entry points find the tenant themselves: by the dialled number or by the CallSid, each through
a pinned SQL function (app/models/sql/) that also binds the transaction to that tenant.
"""

from __future__ import annotations

import logging
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session
from twilio.twiml.voice_response import VoiceResponse

from app import metrics
from app.config.database import bind_tenant
from app.errors import AtCapacity
from app.models import Call, CallTurn, Tenant
from app.models.base import new_id, utcnow
from app.models.call import CallStatus, EndReason
from app.services import billing, events
from app.services.scope import Principal, Role, TenantScope, scoped
from app.telephony import twiml
from app.telephony.capacity import LiveCalls
from app.telephony.urls import RELAY_TOKEN_PARAMETER, TwilioUrls, relay_token

logger = logging.getLogger("vca.telephony")

# The answer to a callback that needs no instructions.
EMPTY_TWIML = str(VoiceResponse())

# The width of calls.provider_call_sid; Twilio's SIDs are 34 characters.
MAX_CALL_SID_LENGTH = 64

# Twilio's CallStatus values (and "initiated", the status of the `initiated` event) -> ours.
TWILIO_CALL_STATUSES = {
    "queued": CallStatus.queued,
    "initiated": CallStatus.queued,
    "ringing": CallStatus.ringing,
    "in-progress": CallStatus.in_progress,
    "completed": CallStatus.completed,
    "busy": CallStatus.busy,
    "no-answer": CallStatus.no_answer,
    "failed": CallStatus.failed,
    "canceled": CallStatus.canceled,
}

# end_reason of a call Twilio ended with this status, when nothing on our side ended it first:
# a `completed` call that neither the agent, a transfer, the duration limit nor a relay error
# ended was hung up by the caller.
END_REASON_OF_STATUS = {
    CallStatus.completed: EndReason.caller_hangup,
    CallStatus.busy: EndReason.busy,
    CallStatus.no_answer: EndReason.no_answer,
    CallStatus.failed: EndReason.failed,
    CallStatus.canceled: EndReason.canceled,
}

# A reported CallDuration may exceed the wall time since the answer by this much (clock skew,
# Twilio rounding up); beyond it, it is capped.
DURATION_SLACK = timedelta(minutes=1)

# end_reason of a call refused before it was answered: what `call_limit_violation` returns.
REJECT_TENANT_SUSPENDED = "tenant_suspended"
REJECT_CONCURRENCY_LIMIT = "concurrency_limit"
REJECT_MINUTES_EXHAUSTED = "minutes_exhausted"


def telephony_scope(tenant: Tenant) -> TenantScope:
    """The scope Twilio acts in once a signed request has been routed to `tenant`."""
    return TenantScope(
        tenant_id=tenant.id,
        principal=Principal(role=Role.admin, tenant_id=tenant.id),
        tenant_status=tenant.status,
        plan=tenant.plan,
    )


def bind_call_sid(session: Session, call_sid: str) -> uuid.UUID | None:
    """The tenant owning the call with Twilio CallSid `call_sid`, or None if no call has it.

    The transaction is then bound to that tenant (SQL function `bind_call_sid`): the lookup and
    the binding cost one round trip.
    """
    tenant_id: uuid.UUID | None = session.scalar(select(func.bind_call_sid(call_sid)))
    if tenant_id is not None:
        bind_tenant(session, tenant_id, bound_by_sql=True)
    return tenant_id


def call_limit_violation(session: Session, tenant: Tenant) -> str | None:
    """Why `tenant` may not start another call now (an end_reason), or None if it may.

    The rule is the SQL function `call_limit_violation` (app/models/sql/), which the inbound path
    runs inside `answer_inbound_call`: one definition for both directions. Exact under
    concurrency only if the caller holds the tenant row lock (`lock_tenant`) until its new call
    is stored.
    """
    reason: str | None = session.scalar(
        select(func.call_limit_violation(tenant.id, tenant.status, tenant.plan, utcnow()))
    )
    return reason


_ANSWER_ROW = func.answer_inbound_call(
    bindparam("call_id"),
    bindparam("call_sid"),
    bindparam("to_number"),
    bindparam("from_number"),
    bindparam("outbound"),
    bindparam("now"),
).table_valued(
    "outcome", "call_id", "call_status", "ai_profile_id", "greeting", "language", "voice"
)
_ANSWER_INBOUND_CALL = select(*_ANSWER_ROW.c)


@dataclass(frozen=True)
class AnsweringProfile:
    """What the TwiML of an admitted call needs from its AI profile."""

    id: uuid.UUID
    greeting: str | None
    language: str
    voice: str | None


def call_payload(call: Call) -> dict[str, Any]:
    """A call as its events carry it (`call.started`, `call.ended`), in JSON's own types."""

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    def moment(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat().replace("+00:00", "Z")

    return {
        "id": str(call.id),
        "tenant_id": str(call.tenant_id),
        "phone_number_id": text(call.phone_number_id),
        "ai_profile_id": text(call.ai_profile_id),
        "direction": call.direction,
        "status": str(call.status),
        "from_number": call.from_number,
        "to_number": call.to_number,
        "provider_call_sid": call.provider_call_sid,
        "started_at": moment(call.started_at),
        "answered_at": moment(call.answered_at),
        "ended_at": moment(call.ended_at),
        "duration_seconds": call.duration_seconds,
        "billable_minutes": call.billable_minutes,
        "end_reason": call.end_reason,
        "summary": call.summary,
        "created_at": moment(call.created_at),
        "updated_at": moment(call.updated_at),
    }


def call_ended_data(call: Call, turns: list[CallTurn]) -> dict[str, Any]:
    """The `call.ended` event payload: the call and its transcript."""
    return {
        "call": call_payload(call),
        "transcript": [
            {
                "seq": turn.seq,
                "role": turn.role,
                "text": turn.text,
                "interrupted": turn.interrupted,
                "latency_ms": turn.latency_ms,
            }
            for turn in turns
        ],
    }


def turns_of_call(
    session: Session, scope: TenantScope | uuid.UUID, call_id: uuid.UUID
) -> list[CallTurn]:
    """A call's transcript in order."""
    return list(
        session.scalars(
            scoped(CallTurn, scope).where(CallTurn.call_id == call_id).order_by(CallTurn.seq)
        )
    )


# Twilio ends every call within 24 hours; a longer CallDuration is not one Twilio sent.
MAX_CALL_DURATION_SECONDS = 24 * 3600


def _parse_duration(raw: str | None) -> int | None:
    """Twilio's CallDuration in seconds, or None (the call is then measured from its answer)
    for anything that is not a plausible count of seconds."""
    raw = (raw or "").strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        return None
    value = int(raw)
    return value if value <= MAX_CALL_DURATION_SECONDS else None


def _parse_event_time(raw: str | None) -> datetime | None:
    """Twilio's `Timestamp` of a status callback (RFC 2822), or None if absent or unreadable."""
    if not raw or not raw.strip():
        return None
    try:
        moment = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo is not None else None


def relay_twiml(call_id: uuid.UUID, profile: AnsweringProfile, urls: TwilioUrls) -> str:
    """The ConversationRelay TwiML that connects a call to our WebSocket with `profile`'s voice:
    its relay URL carries the call's token (app/telephony/urls.py: relay_token)."""
    before, between, after = _relay_twiml_around_call(
        urls.relay, urls.relay_action, profile.greeting or None, profile.language, profile.voice
    )
    # A UUID's text and the token's hex need no XML escaping.
    return before + relay_token(call_id) + between + str(call_id) + after


# Where the token and the call id go: random, so no profile text can contain them.
_TOKEN_SLOT = "token-" + secrets.token_hex(16)
_CALL_ID_SLOT = "call-id-" + secrets.token_hex(16)


@lru_cache(maxsize=1024)
def _relay_twiml_around_call(
    relay_url: str, action_url: str, greeting: str | None, language: str, voice: str | None
) -> tuple[str, str, str]:
    """A profile's ConversationRelay TwiML, built once (by `twiml.conversation_relay`, which
    escapes it) and split where the call's token and id go: every admitted call answers with it."""
    document = twiml.conversation_relay(
        ws_url=f"{relay_url}?{RELAY_TOKEN_PARAMETER}={_TOKEN_SLOT}",
        welcome_greeting=greeting,
        language=language,
        voice=voice or None,
        parameters={"call_id": _CALL_ID_SLOT},
        action_url=action_url,
    )
    before, rest = document.split(_TOKEN_SLOT)
    between, after = rest.split(_CALL_ID_SLOT)
    return before, between, after


class TelephonyService:
    """Handles Twilio's webhooks. Each method runs inside the request's one transaction."""

    def __init__(self, session: Session, urls: TwilioUrls | None = None) -> None:
        self.session = session
        self._urls = urls

    @property
    def urls(self) -> TwilioUrls:
        """Our public URLs, for the TwiML (not needed to apply a status: reconciliation)."""
        if self._urls is None:
            raise RuntimeError("TelephonyService needs the public URLs to answer a voice webhook")
        return self._urls

    # -- voice webhook -------------------------------------------------------------------------

    def answer_voice(self, form: dict[str, str], capacity: LiveCalls | None = None) -> str:
        """The TwiML answering a (signed) voice webhook; records the inbound call it routes.

        Guarantees: an unknown or inactive `To` is rejected and nothing is stored (no tenant would
        own the row); a refused call is stored as `rejected` with its end_reason; an admitted one
        as `ringing`; a CallSid already known (a Twilio retry, or an outbound call we placed being
        answered) creates nothing and gets the TwiML of the existing call. A process at its
        `capacity` of live calls (or draining) raises AtCapacity (503) before anything is stored,
        so the CallSid stays free for the retry Twilio's fallback URL sends to another server.
        """
        if capacity is not None and not capacity.has_room():
            logger.warning(
                "voice webhook refused",
                extra={"end_reason": "capacity", "sid": form.get("CallSid", "")[:64]},
            )
            raise AtCapacity()
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
                "now": now,
            },
        ).one()
        if row.outcome == "unknown_outbound":
            # Twilio asks for TwiML of an outbound call we have no row for (placed elsewhere).
            logger.warning("voice webhook for an unknown outbound call", extra={"sid": call_sid})
            return twiml.hangup()
        if row.outcome == "unrouted":
            logger.info("inbound call to an unrouted number", extra={"sid": call_sid})
            metrics.CALLS.labels("inbound", "unrouted").inc()
            return twiml.reject("rejected")
        if row.call_status == "rejected":
            if row.outcome == "created":
                logger.info("inbound call rejected", extra={"call_id": str(row.call_id)})
                metrics.CALLS.labels("inbound", "rejected").inc()
            return twiml.reject("busy")
        if row.outcome == "created":
            metrics.CALLS.labels("inbound", "admitted").inc()
        if CallStatus(row.call_status).is_terminal or row.ai_profile_id is None:
            return twiml.hangup()
        profile = AnsweringProfile(row.ai_profile_id, row.greeting, row.language, row.voice)
        if capacity is not None:
            capacity.reserve(row.call_id)
        return relay_twiml(row.call_id, profile, self.urls)

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
            scoped(Call, tenant_id).where(Call.provider_call_sid == call_sid).with_for_update()
        ).one_or_none()
        if call is None:
            return
        self.transition(
            call,
            status,
            duration_seconds=_parse_duration(form.get("CallDuration")),
            event_time=_parse_event_time(form.get("Timestamp")),
        )

    def transition(
        self,
        call: Call,
        status: CallStatus,
        *,
        duration_seconds: int | None = None,
        event_time: datetime | None = None,
    ) -> bool:
        """Move `call` to `status` if that is a step forward; returns whether anything changed.

        The caller must hold the call's row lock (`SELECT ... FOR UPDATE`) in a transaction bound
        to the call's tenant: with the terminal check below, that makes the end of a call happen
        once. `in_progress` sets answered_at. A terminal status sets ended_at, duration_seconds,
        billable_minutes (ceil(duration / 60), only for a call that connected), emits
        `call.ended` and, last, meters it once in the billing period of ended_at
        (app/services/billing.py; a close of that period waits for the caller's commit).
        ended_at is Twilio's `event_time` when it is plausible (after the call started, not in
        the future): a callback arriving late is still billed to the period the call ended in.
        """
        current = CallStatus(call.status)
        if current.is_terminal or status.rank <= current.rank:
            return False
        now = utcnow()
        call.status = status
        if status is CallStatus.in_progress:
            call.answered_at = call.answered_at or now
        if status.is_terminal:
            self._end(call, status, duration_seconds, now, event_time)
        self.session.flush()
        return True

    def _end(
        self,
        call: Call,
        status: CallStatus,
        duration_seconds: int | None,
        now: datetime,
        event_time: datetime | None,
    ) -> None:
        started = call.started_at or call.created_at
        if event_time is not None and (event_time > now or (started and event_time < started)):
            event_time = None
        ended_at = event_time or now
        if duration_seconds is None:
            # No CallDuration: measure from the answer, if there was one.
            answered = call.answered_at
            duration_seconds = max(0, int((ended_at - answered).total_seconds())) if answered else 0
        # A forged or broken CallDuration never bills more than the call can have lasted: the
        # wall time since it was answered (or, never seen answered, since it was created).
        since = call.answered_at or call.created_at or started
        if since is not None:
            longest = max(0, int((now - since + DURATION_SLACK).total_seconds()))
            duration_seconds = min(duration_seconds, longest)
        call.end_reason = (
            call.end_reason
            or call.pending_end_reason
            or END_REASON_OF_STATUS.get(status, EndReason.failed)
        )
        connected = duration_seconds > 0 and (
            call.answered_at is not None or status is CallStatus.completed
        )
        if connected and call.answered_at is None:
            call.answered_at = ended_at - timedelta(seconds=duration_seconds)
        call.ended_at = ended_at
        call.duration_seconds = duration_seconds
        call.billable_minutes = math.ceil(duration_seconds / 60) if connected else 0
        self.session.flush()
        turns = turns_of_call(self.session, call.tenant_id, call.id)
        events.emit_event(self.session, call.tenant_id, "call.ended", call_ended_data(call, turns))
        # Last: metering's KEY SHARE lock on the billing period, which a close waits for, is
        # then held only until the commit.
        billing.meter_call(self.session, call, now)
