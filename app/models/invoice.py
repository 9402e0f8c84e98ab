from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, Index, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class InvoiceStatus(StrEnum):
    issued = "issued"
    void = "void"


class Invoice(TenantOwned, Base):
    """One tenant's invoice for one billing period (SPEC 9).

    Issued invoices never change: the app role may update only the void columns (migration 0011
    grants no more), and the lines are the document as issued. `subtotal_cents` and
    `total_cents` are the sum of the lines' `amount_cents`, in integer cents.
    """

    __tablename__ = "invoices"
    __table_args__ = (
        # One issued invoice per tenant and period, whatever runs the close how many times; a
        # voided one may be followed by its reissue (BillingService.close, reissue=True).
        Index(
            "uq_invoices_tenant_id_period_issued",
            "tenant_id",
            "period",
            unique=True,
            postgresql_where=text("status = 'issued'"),
        ),
        # Platform-wide: the platform issues one gapless sequence per year (docs/scaling.md).
        UniqueConstraint("number"),
        CheckConstraint("status IN ('issued', 'void')", name="status"),
        CheckConstraint(
            "(status = 'void') = (voided_at IS NOT NULL AND void_reason IS NOT NULL)",
            name="void_has_reason",
        ),
        CheckConstraint("total_cents = subtotal_cents", name="no_tax"),
        Index("ix_invoices_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )

    number: Mapped[str] = mapped_column(String(20))  # VCA-2026-000001
    period: Mapped[str] = mapped_column(String(7))
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    timezone: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    status: Mapped[InvoiceStatus] = mapped_column(String(10), default=InvoiceStatus.issued)
    # [{kind, description, plan, quantity, unit_amount_cents, amount_cents}], as issued.
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    subtotal_cents: Mapped[int]
    total_cents: Mapped[int]
    # The plan held at the period's end, and the period's usage as billed: kept so that late
    # usage can be billed at the margin, at this period's overage price.
    plan: Mapped[str | None] = mapped_column(String(20))
    included_minutes: Mapped[int]
    used_minutes: Mapped[int]
    overage_cents_per_minute: Mapped[int | None]
    issued_at: Mapped[datetime]
    voided_at: Mapped[datetime | None]
    void_reason: Mapped[str | None] = mapped_column(Text)


class InvoiceCounter(Base):
    """The platform's invoice numbers, gapless per year: the one platform-wide row per year,
    locked only inside a period's close (a rolled-back close gives its number back)."""

    __tablename__ = "invoice_counters"

    year: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_number: Mapped[int]
