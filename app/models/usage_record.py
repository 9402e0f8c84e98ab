from __future__ import annotations

import uuid

from sqlalchemy import ForeignKeyConstraint, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class UsageRecord(TenantOwned, Base):
    """Billable minutes of one ended call, metered once (unique per call) in the tenant's billing
    period in which it ended (`period`), and billed on that period's invoice, or on the next
    open period's (`billed_period`) when it arrived after the close: late usage."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("tenant_id", "call_id"),
        ForeignKeyConstraint(
            ["tenant_id", "call_id"], ["calls.tenant_id", "calls.id"], ondelete="CASCADE"
        ),
        Index("ix_usage_records_tenant_id_period", "tenant_id", "period"),
        Index("ix_usage_records_tenant_id_billed_period", "tenant_id", "billed_period"),
    )

    call_id: Mapped[uuid.UUID]
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM, the tenant's billing period
    # The period whose invoice bills these minutes: `period` unless metered after its close.
    billed_period: Mapped[str] = mapped_column(
        String(7), default=lambda context: context.get_current_parameters()["period"]
    )
    minutes: Mapped[int]
