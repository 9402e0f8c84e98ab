"""Reconciliation: calls whose final status callback was lost are ended from Twilio's REST API.

A call still `queued`/`ringing` 3 minutes after it was created, or `in_progress` 4 h 05 min after
it was answered, no longer holds a line (SQL `call_line_cutoffs`, the one home of those limits,
also used by admission): its final callback was lost. The worker claims such calls, asks Twilio
how each ended, and ends it like a status callback would (`TelephonyService.transition`: ended,
metered and announced once) with end_reason `reconciled`.

Several workers may run: a claim takes the calls with `FOR UPDATE SKIP LOCKED` and gives them a
lease (`reconcile_after`) in the claim's own transaction, so another worker skips them; the end
itself happens under the call's row lock and only for a call not yet ended, so even a call whose
lease expired mid-way is ended, metered and announced once. Twilio failing backs off per call.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import and_, func, or_, select, tuple_, update

from app.config.database import system_scope, transaction
from app.config.settings import settings
from app.models import Call
from app.models.base import utcnow
from app.models.call import RINGING_STATUSES, CallStatus, EndReason
from app.services.scope import scoped
from app.services.telephony import TWILIO_CALL_STATUSES, TelephonyService
from app.telephony.rest import TwilioAPIError, TwilioCall

logger = logging.getLogger("vca.reconciliation")

CLAIM_LIMIT = 50
# How long a claimed call is left to its worker before another may take it.
LEASE = timedelta(minutes=2)
# After Twilio failed for a call: 30 s, 1 min, 2 min, … at most an hour.
BACKOFF_FIRST = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
# Twilio says the call is still live (a very long ring, a call past every profile limit): ask again.
STILL_LIVE_RECHECK = timedelta(minutes=5)


@dataclass(frozen=True)
class StaleCall:
    """A call claimed for reconciliation."""

    tenant_id: uuid.UUID
    call_id: uuid.UUID
    call_sid: str | None
    attempts: int


def backoff(attempts: int) -> timedelta:
    """The wait before asking Twilio again about a call it failed `attempts` times for."""
    return min(BACKOFF_FIRST * 2 ** max(0, attempts - 1), BACKOFF_MAX)


def claim_stale_calls(now: datetime | None = None, limit: int = CLAIM_LIMIT) -> list[StaleCall]:
    """Take up to `limit` calls past their line's limits whose lease or backoff is over, and
    lease them (committed at once): a cross-tenant scan, pinned in tests/db/test_system_scope.py."""
    now = now or utcnow()
    with transaction() as session, system_scope(session):
        cutoffs = func.call_line_cutoffs(now).table_valued("ringing_since", "talking_since")
        ringing_since, talking_since = session.execute(
            select(cutoffs.c.ringing_since, cutoffs.c.talking_since)
        ).one()
        stale = (
            select(Call.tenant_id, Call.id)
            .where(
                or_(
                    and_(Call.status.in_(RINGING_STATUSES), Call.created_at <= ringing_since),
                    and_(Call.status == CallStatus.in_progress, Call.answered_at <= talking_since),
                ),
                or_(Call.reconcile_after.is_(None), Call.reconcile_after <= now),
            )
            .order_by(Call.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = session.execute(
            update(Call)
            # The primary key, (tenant_id, id): `id IN (…)` alone matches no index.
            .where(tuple_(Call.tenant_id, Call.id).in_(stale))
            .values(reconcile_after=now + LEASE)
            .returning(Call.tenant_id, Call.id, Call.provider_call_sid, Call.reconcile_attempts)
            .execution_options(synchronize_session=False)
        ).all()
    return [StaleCall(*row) for row in rows]


class TwilioCalls(Protocol):
    """What reconciliation needs of Twilio (app/telephony/rest.py: TwilioRest)."""

    def fetch_call(self, call_sid: str) -> TwilioCall: ...


def reconcile_call(stale: StaleCall, twilio: TwilioCalls, now: datetime | None = None) -> str:
    """Ask Twilio how `stale` ended and end it so; returns what happened (for logs and tests):
    `ended`, `already_ended`, `still_live` or `retry` (Twilio failed: backed off)."""
    now = now or utcnow()
    status: CallStatus | None
    remote: TwilioCall | None = None
    if stale.call_sid is None:
        # Placed, but Twilio's answer never stored (the API died in between): no call to ask about.
        status = CallStatus.failed
    else:
        try:
            remote = twilio.fetch_call(stale.call_sid)
            status = TWILIO_CALL_STATUSES.get(remote.status)
        except TwilioAPIError as exc:
            if exc.status != 404:
                return _back_off(stale, now, str(exc))
            status = CallStatus.failed  # Twilio has no such call: it never connected
    if status is None or not status.is_terminal:
        _postpone(stale, now + STILL_LIVE_RECHECK)
        return "still_live"
    with transaction(stale.tenant_id) as session:
        call = session.scalars(
            scoped(Call, stale.tenant_id).where(Call.id == stale.call_id).with_for_update()
        ).one_or_none()
        if call is None or CallStatus(call.status).is_terminal:
            return "already_ended"
        call.end_reason = EndReason.reconciled
        TelephonyService(session).transition(
            call,
            status,
            duration_seconds=remote.duration if remote is not None else None,
            event_time=remote.end_time if remote is not None else None,
        )
    logger.info(
        "call reconciled",
        extra={"call_id": str(stale.call_id), "tenant_id": str(stale.tenant_id), "status": status},
    )
    return "ended"


def _back_off(stale: StaleCall, now: datetime, error: str) -> str:
    attempts = stale.attempts + 1
    logger.warning(
        "Twilio failed while reconciling a call",
        extra={"call_id": str(stale.call_id), "attempts": attempts, "error": error[:200]},
    )
    with transaction(stale.tenant_id) as session:
        session.execute(
            update(Call)
            .where(Call.tenant_id == stale.tenant_id, Call.id == stale.call_id)
            .values(reconcile_attempts=attempts, reconcile_after=now + backoff(attempts))
        )
    return "retry"


def _postpone(stale: StaleCall, until: datetime) -> None:
    with transaction(stale.tenant_id) as session:
        session.execute(
            update(Call)
            .where(Call.tenant_id == stale.tenant_id, Call.id == stale.call_id)
            .values(reconcile_after=until)
        )


def reconcile_stale_calls(twilio: TwilioCalls | None = None, now: datetime | None = None) -> int:
    """One pass: claim the stale calls and reconcile each; returns how many were ended."""
    if twilio is None:
        if not settings.telephony_configured:
            return 0
        from app.services.calls import twilio_client

        twilio = twilio_client()
    client: TwilioCalls = twilio
    ended = 0
    for stale in claim_stale_calls(now):
        try:
            ended += reconcile_call(stale, client, now) == "ended"
        except Exception:
            logger.exception("reconciling a call failed", extra={"call_id": str(stale.call_id)})
    return ended
