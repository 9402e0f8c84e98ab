from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class PlanChange(TenantOwned, Base):
    """A tenant's plan history: the plan it holds from `changed_at` on (`from_plan` NULL: the
    tenant's creation). Invoices prorate base fees and included minutes from these rows."""

    __tablename__ = "plan_changes"
    __table_args__ = (Index("ix_plan_changes_tenant_id_changed_at", "tenant_id", "changed_at"),)

    changed_at: Mapped[datetime]
    from_plan: Mapped[str | None] = mapped_column(String(20), ForeignKey("plans.name"))
    to_plan: Mapped[str] = mapped_column(String(20), ForeignKey("plans.name"))
