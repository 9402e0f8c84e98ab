from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class BillingPeriod(TenantOwned, Base):
    """A tenant's billing period (SPEC 9) once opened: its boundaries are fixed from then on.

    Rows are opened by the SQL function `open_billing_period` (app/models/sql/), the one home of
    the period rule, and form a contiguous chain per tenant. `closed_at` marks the period invoiced
    (or closed with nothing to bill): usage metered after it goes on the next invoice.
    """

    __tablename__ = "billing_periods"
    __table_args__ = (
        UniqueConstraint("tenant_id", "period"),
        CheckConstraint("starts_at < ends_at", name="ordered"),
        CheckConstraint("notified_percent IN (0, 80, 100)", name="notified_percent"),
        Index("ix_billing_periods_tenant_id_starts_at", "tenant_id", "starts_at"),
        # The worker's list of periods due for closing: only the unclosed ones.
        Index(
            "ix_billing_periods_unclosed_ends_at",
            "ends_at",
            postgresql_where=text("closed_at IS NULL"),
        ),
    )

    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM, the month in the tenant's timezone
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    timezone: Mapped[str] = mapped_column(String(64))  # the timezone the boundaries were cut in
    closed_at: Mapped[datetime | None]
    # The highest usage threshold (percent of the included minutes) announced for this period.
    notified_percent: Mapped[int] = mapped_column(default=0, server_default="0")
