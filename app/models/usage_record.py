from __future__ import annotations

import uuid

from sqlalchemy import ForeignKeyConstraint, Index, String, UniqueConstraint, false, text
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
        # Only the records the worker has not looked at yet (a few seconds' worth).
        Index(
            "ix_usage_records_tenant_id_thresholds_unchecked",
            "tenant_id",
            postgresql_where=text("NOT thresholds_checked"),
        ),
    )

    call_id: Mapped[uuid.UUID]
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM, the tenant's billing period
    # The period whose invoice bills these minutes: `period` unless metered after its close.
    billed_period: Mapped[str] = mapped_column(
        String(7), default=lambda context: context.get_current_parameters()["period"]
    )
    minutes: Mapped[int]
    # Whether the worker has looked at the usage thresholds since this record was written
    # (app/services/billing.py: announce_usage_thresholds); metering only appends.
    thresholds_checked: Mapped[bool] = mapped_column(default=False, server_default=false())
