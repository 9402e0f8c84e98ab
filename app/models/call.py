from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    CheckConstraint,
    ForeignKeyConstraint,
    Index,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class CallStatus(StrEnum):
    """A call's status: the one vocabulary of the model, the API, the services and migrations."""

    queued = "queued"
    ringing = "ringing"
    in_progress = "in_progress"
    completed = "completed"
    busy = "busy"
    no_answer = "no_answer"
    failed = "failed"
    canceled = "canceled"
    rejected = "rejected"

    @property
    def is_terminal(self) -> bool:
        return self not in _LIVE

    @property
    def rank(self) -> int:
        """A call only moves forward: queued < ringing < in_progress < any terminal status."""
        return _LIVE.index(self) if self in _LIVE else len(_LIVE)


class EndReason(StrEnum):
    """Why a call ended (SPEC 5): one closed set, filled for every ended call."""

    caller_hangup = "caller_hangup"
    agent_hangup = "agent_hangup"
    transferred = "transferred"
    max_duration = "max_duration"
    no_answer = "no_answer"
    busy = "busy"
    failed = "failed"
    canceled = "canceled"
    # A refused call (`rejected`), or one whose tenant was suspended while it rang.
    tenant_suspended = "tenant_suspended"
    concurrency_limit = "concurrency_limit"
    minutes_exhausted = "minutes_exhausted"
    no_ai_profile = "no_ai_profile"
    relay_error = "relay_error"
    # The final status came from Twilio's REST API after a lost callback.
    reconciled = "reconciled"


_LIVE = (CallStatus.queued, CallStatus.ringing, CallStatus.in_progress)
# Calls that hold a line (the plan's concurrent-call limit), by how their age is measured.
RINGING_STATUSES = (CallStatus.queued, CallStatus.ringing)
TERMINAL_STATUSES = frozenset(status for status in CallStatus if status.is_terminal)


def _in(statuses: tuple[CallStatus, ...]) -> str:
    return "status IN (" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


class Call(TenantOwned, Base):
    __tablename__ = "calls"
    __table_args__ = (
        CheckConstraint("direction IN ('inbound', 'outbound')", name="direction"),
        CheckConstraint(_in(tuple(CallStatus)), name="status"),
        # A call talking since when: what its line is counted by (see the index below).
        CheckConstraint(
            f"status <> '{CallStatus.in_progress.value}' OR answered_at IS NOT NULL",
            name="talking_answered",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "phone_number_id"], ["phone_numbers.tenant_id", "phone_numbers.id"]
        ),
        ForeignKeyConstraint(
            ["tenant_id", "ai_profile_id"], ["ai_profiles.tenant_id", "ai_profiles.id"]
        ),
        Index("ix_calls_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_calls_tenant_id_started_at", "tenant_id", "started_at"),
        # The list filtered by status, in keyset order.
        Index("ix_calls_tenant_id_status_created_at_id", "tenant_id", "status", "created_at", "id"),
        Index("ix_calls_tenant_id_phone_number_id", "tenant_id", "phone_number_id"),
        Index("ix_calls_tenant_id_ai_profile_id", "tenant_id", "ai_profile_id"),
        # The concurrent-call count (app/services/telephony.py) reads only the recent end of these:
        # calls whose final callback never came stay ringing forever, and with an index on status
        # alone every admission visited each of them. Plain columns, not coalesce(): under row-level
        # security only leakproof conditions can be index conditions.
        Index(
            "ix_calls_tenant_id_ringing_since",
            "tenant_id",
            "created_at",
            postgresql_where=text(_in(RINGING_STATUSES)),
        ),
        Index(
            "ix_calls_tenant_id_talking_since",
            "tenant_id",
            "answered_at",
            postgresql_where=text(f"status = '{CallStatus.in_progress.value}'"),
        ),
    )

    phone_number_id: Mapped[uuid.UUID | None]
    ai_profile_id: Mapped[uuid.UUID | None]
    direction: Mapped[str] = mapped_column(String(10))
    status: Mapped[CallStatus] = mapped_column(String(20))
    from_number: Mapped[str] = mapped_column(String(32))
    to_number: Mapped[str] = mapped_column(String(32))
    # Twilio's CallSid, unique platform-wide: a status callback carries only it, and it binds the
    # request to the call's tenant (on Citus: a routing table, docs/scaling.md).
    provider_call_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    started_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    duration_seconds: Mapped[int | None]
    billable_minutes: Mapped[int] = mapped_column(default=0)
    end_reason: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[str | None] = mapped_column(Text)
    # What ended a live call as our side saw it (the agent's end_call or transfer, the duration
    # limit, a relay error): it becomes end_reason when Twilio's final status arrives, so
    # end_reason stays NULL until the call has really ended.
    pending_end_reason: Mapped[str | None] = mapped_column(String(64))
    # When a relay session took the call: the first `setup` owns it, any later one is refused.
    relay_bound_at: Mapped[datetime | None]
    # Reconciliation (app/services/reconciliation.py): not before this time (a claim's lease, or
    # the backoff after Twilio failed), and how many times Twilio failed for this call.
    reconcile_after: Mapped[datetime | None]
    reconcile_attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
