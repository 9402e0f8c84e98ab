from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned

CALL_STATUSES = (
    "queued",
    "ringing",
    "in_progress",
    "completed",
    "busy",
    "no_answer",
    "failed",
    "canceled",
    "rejected",
)


class Call(TenantOwned, Base):
    __tablename__ = "calls"
    __table_args__ = (
        UniqueConstraint("tenant_id", "id"),
        CheckConstraint("direction IN ('inbound', 'outbound')", name="direction"),
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in CALL_STATUSES) + ")", name="status"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "phone_number_id"], ["phone_numbers.tenant_id", "phone_numbers.id"]
        ),
        ForeignKeyConstraint(
            ["tenant_id", "ai_profile_id"], ["ai_profiles.tenant_id", "ai_profiles.id"]
        ),
        Index("ix_calls_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_calls_tenant_id_started_at", "tenant_id", "started_at"),
        Index("ix_calls_tenant_id_status", "tenant_id", "status"),
        Index("ix_calls_tenant_id_phone_number_id", "tenant_id", "phone_number_id"),
        Index("ix_calls_tenant_id_ai_profile_id", "tenant_id", "ai_profile_id"),
    )

    phone_number_id: Mapped[uuid.UUID | None]
    ai_profile_id: Mapped[uuid.UUID | None]
    direction: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20))
    from_number: Mapped[str] = mapped_column(String(32))
    to_number: Mapped[str] = mapped_column(String(32))
    provider_call_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    started_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    duration_seconds: Mapped[int | None]
    billable_minutes: Mapped[int] = mapped_column(default=0)
    end_reason: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[str | None] = mapped_column(Text)
