from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from app.schemas.common import RequestModel, ResponseModel


class InvoiceLine(ResponseModel):
    kind: Literal["base_fee", "overage", "late_usage"]
    description: str
    plan: str | None
    quantity: int
    unit_amount_cents: int
    amount_cents: int


class PlanHeldOut(ResponseModel):
    plan: str
    seconds: int = Field(description="How long the plan was held in the period.")
    base_fee_cents: int = Field(description="The plan's monthly fee, before proration.")
    included_minutes: int = Field(description="Its included minutes, prorated (rounded down).")


class UsageOut(ResponseModel):
    """A period's usage and its charges as the invoice would show them now."""

    period: str
    period_start: datetime = Field(description="In the period's timezone, with its offset.")
    period_end: datetime
    timezone: str
    plans: list[PlanHeldOut]
    included_minutes: int = Field(description="The plans' prorated included minutes, pooled.")
    used_minutes: int
    overage_minutes: int
    calls: int = Field(description="Calls metered in the period (ended in it).")
    currency: Literal["USD"] = "USD"
    lines: list[InvoiceLine]
    total_cents: int


class InvoiceOut(ResponseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    number: str = Field(examples=["VCA-2026-000001"])
    period: str
    period_start: datetime
    period_end: datetime
    timezone: str
    currency: str
    status: Literal["issued", "void"]
    lines: list[InvoiceLine]
    subtotal_cents: int
    total_cents: int
    included_minutes: int
    used_minutes: int
    issued_at: datetime
    voided_at: datetime | None
    void_reason: str | None
    created_at: datetime


class InvoiceVoid(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reason": "Billed twice by mistake"}]}
    )

    reason: str = Field(min_length=1, max_length=1000, examples=["Billed twice by mistake"])
