from __future__ import annotations

from app.schemas.common import ResponseModel


class PlanOut(ResponseModel):
    name: str
    base_fee_cents: int
    included_minutes: int
    overage_cents_per_minute: int | None
    max_phone_numbers: int
    max_concurrent_calls: int
    rejects_when_minutes_run_out: bool
