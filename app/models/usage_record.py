from __future__ import annotations

import uuid

from sqlalchemy import ForeignKeyConstraint, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class UsageRecord(TenantOwned, Base):
    """Billable minutes of one completed call, metered once (unique per call) in its UTC month."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("tenant_id", "id"),
        UniqueConstraint("tenant_id", "call_id"),
        ForeignKeyConstraint(
            ["tenant_id", "call_id"], ["calls.tenant_id", "calls.id"], ondelete="CASCADE"
        ),
        Index("ix_usage_records_tenant_id_period", "tenant_id", "period"),
    )

    call_id: Mapped[uuid.UUID]
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM, UTC
    minutes: Mapped[int]
